//! Protobuf messages of protocol version 1, mirroring `proto/tamizdat.proto`.
//!
//! Written with prost derives instead of generated at build time, so building needs no
//! `protoc`. The schema file is the reference; field numbers must match it.
#![allow(missing_docs)] // each message is documented in the schema

use prost::{Enumeration, Message, Oneof};

/// Where and how to reach a relay, without DNS or a certificate authority.
#[derive(Clone, PartialEq, Message)]
pub struct RelayDescriptor {
    #[prost(string, repeated, tag = "1")]
    pub endpoints: Vec<String>,
    #[prost(bytes = "vec", tag = "2")]
    pub cert_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub door: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ClientFrame {
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub command: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Command {
    #[prost(oneof = "Op", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15")]
    pub op: Option<Op>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Op {
    #[prost(message, tag = "1")]
    Hello(Hello),
    #[prost(message, tag = "2")]
    CreateQueue(CreateQueue),
    #[prost(message, tag = "3")]
    SendToQueue(SendToQueue),
    #[prost(message, tag = "4")]
    ReadQueue(ReadQueue),
    #[prost(message, tag = "5")]
    AckQueue(AckQueue),
    #[prost(message, tag = "6")]
    CreateLog(CreateLog),
    #[prost(message, tag = "7")]
    Append(Append),
    #[prost(message, tag = "8")]
    ReadLog(ReadLog),
    #[prost(message, tag = "9")]
    AckLog(AckLog),
    #[prost(message, tag = "11")]
    Subscribe(Subscribe),
    #[prost(message, tag = "12")]
    CreateBlob(CreateBlob),
    #[prost(message, tag = "13")]
    PutBlob(PutBlob),
    #[prost(message, tag = "14")]
    GetBlob(GetBlob),
    #[prost(message, tag = "15")]
    BlobStatus(BlobStatus),
}

#[derive(Clone, PartialEq, Message)]
pub struct Hello {
    #[prost(uint32, tag = "1")]
    pub min_version: u32,
    #[prost(uint32, tag = "2")]
    pub max_version: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateQueue {
    #[prost(bytes = "vec", tag = "1")]
    pub read_key: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SendToQueue {
    #[prost(bytes = "vec", tag = "1")]
    pub send_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub dedup_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadQueue {
    #[prost(bytes = "vec", tag = "1")]
    pub read_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub after: u64,
    #[prost(uint32, tag = "3")]
    pub limit: u32,
    /// Most payload bytes in the reply (0: the relay's own budget); at least one entry comes back.
    #[prost(uint32, tag = "4")]
    pub max_bytes: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct AckQueue {
    #[prost(bytes = "vec", tag = "1")]
    pub read_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub up_to: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateLog {
    #[prost(bytes = "vec", tag = "1")]
    pub log_key: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Append {
    #[prost(bytes = "vec", tag = "1")]
    pub log_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub dedup_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadLog {
    #[prost(bytes = "vec", tag = "1")]
    pub log_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub after: u64,
    #[prost(uint32, tag = "3")]
    pub limit: u32,
    /// Most payload bytes in the reply (0: the relay's own budget); at least one entry comes back.
    #[prost(uint32, tag = "4")]
    pub max_bytes: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct AckLog {
    #[prost(bytes = "vec", tag = "1")]
    pub log_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub cursor_id: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub up_to: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Subscribe {
    #[prost(bytes = "vec", tag = "1")]
    pub log_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub read_id: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub entries: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateBlob {
    #[prost(bytes = "vec", tag = "1")]
    pub write_key: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub size: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PutBlob {
    #[prost(bytes = "vec", tag = "1")]
    pub blob_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GetBlob {
    #[prost(bytes = "vec", tag = "1")]
    pub blob_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// Most bytes in the reply (0: [`crate::limits::MAX_BLOB_PIECE`]).
    #[prost(uint32, tag = "3")]
    pub max_bytes: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct BlobStatus {
    #[prost(bytes = "vec", tag = "1")]
    pub blob_id: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerFrame {
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(oneof = "Reply", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub reply: Option<Reply>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Reply {
    #[prost(message, tag = "2")]
    HelloOk(HelloOk),
    #[prost(message, tag = "3")]
    Error(Error),
    #[prost(message, tag = "4")]
    QueueCreated(QueueCreated),
    #[prost(message, tag = "5")]
    Done(Done),
    #[prost(message, tag = "6")]
    Entries(Entries),
    #[prost(message, tag = "7")]
    LogCreated(LogCreated),
    #[prost(message, tag = "8")]
    Appended(Appended),
    #[prost(message, tag = "9")]
    Notify(Notify),
    #[prost(message, tag = "10")]
    BlobCreated(BlobCreated),
    #[prost(message, tag = "11")]
    BlobStored(BlobStored),
    #[prost(message, tag = "12")]
    BlobData(BlobData),
}

#[derive(Clone, PartialEq, Message)]
pub struct HelloOk {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub session_nonce: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub max_frame: u32,
    #[prost(uint32, tag = "4")]
    pub max_payload: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Error {
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(uint64, tag = "3")]
    pub current_epoch: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueueCreated {
    #[prost(bytes = "vec", tag = "1")]
    pub read_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub send_id: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Done {}

#[derive(Clone, PartialEq, Message)]
pub struct Entries {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    #[prost(bool, tag = "2")]
    pub more: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub dedup_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub received_hour: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct LogCreated {
    #[prost(bytes = "vec", tag = "1")]
    pub log_id: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Appended {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    #[prost(bool, tag = "3")]
    pub duplicate: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Notify {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(message, optional, tag = "3")]
    pub entry: Option<Entry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BlobCreated {
    #[prost(bytes = "vec", tag = "1")]
    pub blob_id: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BlobStored {
    #[prost(uint64, tag = "1")]
    pub length: u64,
    #[prost(uint64, tag = "2")]
    pub size: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct BlobData {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub length: u64,
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    Unspecified = 0,
    BadRequest = 1,
    Unauthorized = 2,
    StaleEpoch = 3,
    TooLarge = 4,
    RateLimited = 5,
    VersionMismatch = 6,
    Internal = 7,
    NotMls = 8,
}
