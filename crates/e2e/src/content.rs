//! What travels inside MLS application messages.

use prost::Message;

use crate::E2eError;
pub use crate::proto::{Body, Content, Profile, Text};

/// Longest text a message may carry (the CLI promises at least 60 KiB).
pub const MAX_TEXT: usize = 64 * 1024;
/// Longest display name.
pub const MAX_NAME: usize = 64;

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
            _ => Err(E2eError::BadContent),
        }
    }
}
