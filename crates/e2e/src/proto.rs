//! Protobuf messages that only clients read: invites, join requests and content. The relay
//! sees none of these in the clear (invites travel out of band; the rest is encrypted).
#![allow(missing_docs)] // documented in crates/e2e/proto/e2e.proto, which this mirrors

use prost::{Message, Oneof};
use tamizdat_wire::proto::RelayDescriptor;

#[derive(Clone, PartialEq, Message)]
pub struct InviteBody {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(message, repeated, tag = "2")]
    pub relays: Vec<RelayDescriptor>,
    #[prost(bytes = "vec", tag = "3")]
    pub send_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub key_package: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub identity_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    pub box_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    pub invite_id: Vec<u8>,
    #[prost(uint64, tag = "8")]
    pub expires_at: u64,
    #[prost(uint32, tag = "9")]
    pub ciphersuite: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct SignedInvite {
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// Where a conversation's log lives and the capability to use it.
#[derive(Clone, PartialEq, Message)]
pub struct LogRef {
    #[prost(message, optional, tag = "1")]
    pub relay: Option<RelayDescriptor>,
    #[prost(bytes = "vec", tag = "2")]
    pub log_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub log_secret: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct JoinRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub invite_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub welcome: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub log: Option<LogRef>,
    #[prost(string, tag = "4")]
    pub display_name: String,
    #[prost(bytes = "vec", tag = "5")]
    pub cursor_id: Vec<u8>,
    #[prost(uint64, tag = "6")]
    pub cursor_position: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sealed {
    #[prost(bytes = "vec", tag = "1")]
    pub kem_output: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub ciphertext: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Content {
    #[prost(bytes = "vec", tag = "1")]
    pub message_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub sent_at_ms: u64,
    #[prost(oneof = "Body", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14")]
    pub body: Option<Body>,
    #[prost(uint32, tag = "15")]
    pub expire_secs: u32,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Body {
    #[prost(message, tag = "3")]
    Text(Text),
    #[prost(message, tag = "4")]
    Profile(Profile),
    #[prost(message, tag = "5")]
    KeyPackages(KeyPackages),
    #[prost(message, tag = "6")]
    GroupInvite(GroupInvitePart),
    #[prost(message, tag = "7")]
    Leave(Leave),
    #[prost(message, tag = "8")]
    Edit(Edit),
    #[prost(message, tag = "9")]
    Delete(Delete),
    #[prost(message, tag = "10")]
    Reaction(Reaction),
    #[prost(message, tag = "11")]
    Receipt(Receipt),
    #[prost(message, tag = "12")]
    Typing(Typing),
    #[prost(message, tag = "13")]
    ExpiryTimer(ExpiryTimer),
    #[prost(message, tag = "14")]
    Attachment(Attachment),
}

#[derive(Clone, PartialEq, Message)]
pub struct Text {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub reply_to: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(string, tag = "1")]
    pub display_name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyPackages {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub one_time: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub last_resort: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GroupInvitePart {
    #[prost(bytes = "vec", tag = "1")]
    pub invite_id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub part: u32,
    #[prost(uint32, tag = "3")]
    pub parts: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GroupInvite {
    #[prost(bytes = "vec", tag = "1")]
    pub welcome: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub log: Option<LogRef>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(bytes = "vec", tag = "4")]
    pub cursor_id: Vec<u8>,
    #[prost(uint64, tag = "5")]
    pub cursor_position: u64,
    #[prost(message, repeated, tag = "6")]
    pub roster: Vec<MemberName>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberName {
    #[prost(bytes = "vec", tag = "1")]
    pub identity_key: Vec<u8>,
    #[prost(string, tag = "2")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Leave {}

#[derive(Clone, PartialEq, Message)]
pub struct Edit {
    #[prost(bytes = "vec", tag = "1")]
    pub target: Vec<u8>,
    #[prost(string, tag = "2")]
    pub text: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Delete {
    #[prost(bytes = "vec", tag = "1")]
    pub target: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Reaction {
    #[prost(bytes = "vec", tag = "1")]
    pub target: Vec<u8>,
    #[prost(string, tag = "2")]
    pub emoji: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ReceiptKind {
    Unspecified = 0,
    Delivered = 1,
    Read = 2,
}

#[derive(Clone, PartialEq, Message)]
pub struct Receipt {
    #[prost(enumeration = "ReceiptKind", tag = "1")]
    pub kind: i32,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub message_ids: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Typing {
    #[prost(bool, tag = "1")]
    pub typing: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ExpiryTimer {
    #[prost(uint32, tag = "1")]
    pub seconds: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttachmentKind {
    Unspecified = 0,
    File = 1,
    Image = 2,
    Voice = 3,
}

#[derive(Clone, PartialEq, Message)]
pub struct Attachment {
    #[prost(enumeration = "AttachmentKind", tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub mime: String,
    #[prost(uint64, tag = "4")]
    pub size: u64,
    #[prost(bytes = "vec", tag = "5")]
    pub sha256: Vec<u8>,
    #[prost(message, optional, tag = "6")]
    pub relay: Option<RelayDescriptor>,
    #[prost(bytes = "vec", tag = "7")]
    pub blob_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    pub key: Vec<u8>,
    #[prost(uint32, tag = "9")]
    pub chunk_size: u32,
    #[prost(string, tag = "10")]
    pub caption: String,
    #[prost(bytes = "vec", tag = "11")]
    pub reply_to: Vec<u8>,
}

/// Where an invite waits, encrypted, for whoever holds this code.
#[derive(Clone, PartialEq, Message)]
pub struct InviteCode {
    #[prost(message, optional, tag = "1")]
    pub relay: Option<RelayDescriptor>,
    #[prost(bytes = "vec", tag = "2")]
    pub blob_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub size: u32,
}
