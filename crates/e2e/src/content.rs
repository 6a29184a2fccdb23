//! What travels inside MLS application messages.

use prost::Message;

use crate::E2eError;
pub use crate::proto::{
    Attachment, AttachmentKind, Body, Content, Delete, Edit, ExpiryTimer, GroupInvite, GroupInvitePart, KeyPackages,
    Leave, MemberName, Profile, Reaction, Receipt, ReceiptKind, Text, Typing,
};

/// Longest text a message may carry (the CLI promises at least 60 KiB).
pub const MAX_TEXT: usize = 64 * 1024;
/// Longest display name.
pub const MAX_NAME: usize = 64;
/// Most one-time KeyPackages in one message.
pub const MAX_ONE_TIME_PACKAGES: usize = 8;
/// Most last-resort KeyPackages in one message (one per ciphersuite).
pub const MAX_LAST_RESORT_PACKAGES: usize = 2;
/// Largest KeyPackage accepted (a post-quantum one is about 1.3 KiB).
pub const MAX_KEY_PACKAGE: usize = 8 * 1024;
/// Largest part of a group invite: with MLS overhead and padding it stays well inside one relay
/// entry.
pub const MAX_INVITE_PART: usize = 96 * 1024;
/// Longest reaction (one emoji with its modifiers).
pub const MAX_REACTION: usize = 32;
/// Most message ids one receipt names.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Longest disappearing-message timer: a year.
pub const MAX_EXPIRE_SECS: u32 = 366 * 86_400;
/// Longest attachment file name.
pub const MAX_FILE_NAME: usize = 255;
/// Longest attachment media type.
pub const MAX_MIME: usize = 127;
/// Largest attachment chunk (plaintext): a receiver holds one to decrypt it, so this bounds its
/// memory whatever the sender chose.
pub const MAX_CHUNK: u32 = 1024 * 1024;
/// Largest attachment (plaintext).
pub const MAX_ATTACHMENT: u64 = 2 * 1024 * 1024 * 1024;
/// Most parts of one group invite (a 96 MiB Welcome, far beyond a 5,000-member group).
pub const MAX_INVITE_PARTS: u32 = 1024;

impl Content {
    /// Encodes for encryption.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes a decrypted payload and checks its limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, E2eError> {
        let c = Content::decode(bytes).map_err(|_| E2eError::BadContent)?;
        if c.message_id.len() != tamizdat_wire::limits::ID_LEN {
            return Err(E2eError::BadContent);
        }
        match &c.body {
            _ if c.expire_secs > MAX_EXPIRE_SECS => Err(E2eError::BadContent),
            Some(Body::Text(t)) if t.text.len() <= MAX_TEXT && (t.reply_to.is_empty() || is_id(&t.reply_to)) => Ok(c),
            Some(Body::Profile(p)) if p.display_name.len() <= MAX_NAME => Ok(c),
            Some(Body::KeyPackages(k))
                if k.one_time.len() <= MAX_ONE_TIME_PACKAGES
                    && k.last_resort.len() <= MAX_LAST_RESORT_PACKAGES
                    && k.one_time.iter().chain(&k.last_resort).all(|p| p.len() <= MAX_KEY_PACKAGE) =>
            {
                Ok(c)
            }
            Some(Body::GroupInvite(g))
                if g.invite_id.len() == tamizdat_wire::limits::ID_LEN
                    && g.parts >= 1
                    && g.parts <= MAX_INVITE_PARTS
                    && g.part < g.parts
                    && g.data.len() <= MAX_INVITE_PART =>
            {
                Ok(c)
            }
            Some(Body::Leave(_)) => Ok(c),
            Some(Body::Edit(e)) if is_id(&e.target) && e.text.len() <= MAX_TEXT && !e.text.is_empty() => Ok(c),
            Some(Body::Delete(d)) if is_id(&d.target) => Ok(c),
            Some(Body::Reaction(r))
                if is_id(&r.target) && r.emoji.len() <= MAX_REACTION && !r.emoji.chars().any(char::is_control) =>
            {
                Ok(c)
            }
            Some(Body::Receipt(r))
                if matches!(ReceiptKind::try_from(r.kind), Ok(ReceiptKind::Delivered | ReceiptKind::Read))
                    && r.message_ids.len() <= MAX_RECEIPT_IDS
                    && r.message_ids.iter().all(|id| is_id(id)) =>
            {
                Ok(c)
            }
            Some(Body::Typing(_)) => Ok(c),
            Some(Body::ExpiryTimer(t)) if t.seconds <= MAX_EXPIRE_SECS => Ok(c),
            Some(Body::Attachment(a))
                if a.name.len() <= MAX_FILE_NAME
                    && a.mime.len() <= MAX_MIME
                    && a.size <= MAX_ATTACHMENT
                    && a.sha256.len() == 32
                    && a.key.len() == 32
                    && is_id(&a.blob_id)
                    && a.relay.is_some()
                    && a.chunk_size >= 1
                    && a.chunk_size <= MAX_CHUNK
                    && a.caption.len() <= MAX_TEXT
                    && (a.reply_to.is_empty() || is_id(&a.reply_to)) =>
            {
                Ok(c)
            }
            _ => Err(E2eError::BadContent),
        }
    }
}

fn is_id(id: &[u8]) -> bool {
    id.len() == tamizdat_wire::limits::ID_LEN
}
