//! Invite codes: a post-quantum invite is about 5.5 KB, more than a QR code holds (2,953 bytes
//! at most). A code puts the invite link, encrypted with a fresh key, on the inviter's relay
//! as a blob, and carries only the relay, the blob's id and the key: about 200 characters.
//! Whoever holds the code can fetch and open the invite, exactly as whoever holds the link can
//! use it; the relay holds only ciphertext, deleted with its retention.

use ed25519_dalek::SigningKey;
use prost::Message;
use rand::RngCore;
use tamizdat_e2e::proto::InviteCode;
use tamizdat_wire::{
    link::{LinkKind, MAX_LINK_LEN, SCHEME, armor, dearmor},
    proto::{GetBlob, Op, PutBlob, Reply},
};

use crate::{Client, ClientError, attachments::ChunkCipher};

/// Whether `text` is an invite code rather than an invite link.
pub fn is_invite_code(text: &str) -> bool {
    text.trim().starts_with(&format!("{SCHEME}code/"))
}

fn bad(why: &str) -> ClientError {
    ClientError::BadInput(format!("this invite code is not usable: {why}"))
}

impl Client {
    /// A short code for an invite link made by [`Client::invite`]. Unlike the link, it needs
    /// the relay: the invite is stored there, encrypted.
    pub async fn invite_code(&mut self, link: &str) -> Result<String, ClientError> {
        let plain = link.as_bytes();
        let size = u32::try_from(plain.len()).map_err(|_| ClientError::Corrupt("an invite too long".into()))?;
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let sealed = ChunkCipher::new(&key, u64::from(size), size.max(1))?.seal(0, plain)?;
        let relay = self.profile.relay.clone();
        let relay_link = relay.to_link();
        let write_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let blob_id = self.create_blob(&relay_link, &write_key, sealed.len() as u64, "the invite").await?;
        let put = Op::PutBlob(PutBlob { blob_id: blob_id.clone(), offset: 0, data: sealed.clone() });
        match self.call(&relay_link, put, Some(&write_key)).await? {
            Reply::BlobStored(s) if s.length == sealed.len() as u64 => {}
            _ => return Err(ClientError::Protocol("the relay did not store the invite".into())),
        }
        let code = InviteCode { relay: Some(relay), blob_id, key, size };
        Ok(armor(LinkKind::InviteCode, &code.encode_to_vec()))
    }

    /// The invite link an invite code stands for, fetched from the inviter's relay.
    pub(crate) async fn resolve_invite_code(&mut self, text: &str) -> Result<String, ClientError> {
        let payload = dearmor(LinkKind::InviteCode, text).map_err(|e| bad(&e.to_string()))?;
        let code = InviteCode::decode(payload.as_slice()).map_err(|_| bad("undecodable"))?;
        let relay = code.relay.ok_or_else(|| bad("it names no relay"))?;
        relay.validate().map_err(|e| bad(&e.to_string()))?;
        if code.blob_id.len() != tamizdat_wire::limits::ID_LEN || code.key.len() != 32 {
            return Err(bad("malformed"));
        }
        let size = usize::try_from(code.size).unwrap_or(usize::MAX);
        if size == 0 || size > MAX_LINK_LEN {
            return Err(bad("it announces an invite of an impossible size"));
        }
        let cipher = ChunkCipher::new(&code.key, u64::from(code.size), code.size)?;
        let total = cipher.encrypted_size();
        let mut sealed = Vec::new();
        while (sealed.len() as u64) < total {
            let get = Op::GetBlob(GetBlob { blob_id: code.blob_id.clone(), offset: sealed.len() as u64, max_bytes: 0 });
            let data = match self.call(&relay.to_link(), get, None).await {
                Ok(Reply::BlobData(d)) => d,
                Ok(_) => return Err(ClientError::Protocol("expected BlobData".into())),
                Err(ClientError::Relay { .. }) => return Err(bad("the relay no longer has it; ask for a new invite")),
                Err(e) => return Err(e),
            };
            if data.size != total || data.data.is_empty() {
                return Err(bad("the relay's copy does not match the code"));
            }
            sealed.extend_from_slice(&data.data);
        }
        sealed.truncate(usize::try_from(total).unwrap_or(usize::MAX));
        let plain = cipher.open(0, &sealed).map_err(|_| bad("it does not open with its key"))?;
        String::from_utf8(plain).map_err(|_| bad("it does not hold an invite"))
    }
}
