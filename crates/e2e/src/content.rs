//! What travels inside MLS application messages.

use prost::Message;

use crate::E2eError;
pub use crate::proto::{Body, Content, GroupInvite, GroupInvitePart, KeyPackages, Leave, MemberName, Profile, Text};

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
            Some(Body::Text(t)) if t.text.len() <= MAX_TEXT => Ok(c),
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
            _ => Err(E2eError::BadContent),
        }
    }
}
