#![doc = include_str!("../README.md")]

pub mod civil;
pub mod endpoint;
pub mod frame;
pub mod limits;
pub mod link;
pub mod mls;
pub mod proto;

use ed25519_dalek::{Signature, VerifyingKey};

/// What a user interface can do about an error, shared by every Tamizdat crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Try again later: the network, the relay or a race; nothing is lost.
    Retry,
    /// Something on the path is blocking us: try another transport, proxy or bridge.
    Blocked,
    /// The input was wrong (a damaged link, a wrong passphrase, an unknown name).
    BadInput,
    /// A bug or corrupted state: report it.
    Fatal,
}

/// Why bytes from the network or a pasted link were refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Over a protocol limit.
    #[error("{size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The size seen.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a well-formed frame or message.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A link that is damaged or not a Tamizdat link.
    #[error("the link is damaged: {0}")]
    BadLink(&'static str),
    /// A link of another kind than expected (an invite where a relay link belongs).
    #[error("this is a tamizdat:{found} link, but a tamizdat:{expected} link is needed here")]
    WrongLinkKind {
        /// The kind expected.
        expected: &'static str,
        /// The kind found.
        found: String,
    },
    /// A payload that must be an MLS group message is not one.
    #[error("not an MLS group message: {0}")]
    NotMls(&'static str),
}

impl WireError {
    /// What to do about it: wire errors are always bad input from somebody.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

/// The bytes a capability signature covers: a label, the session nonce the relay chose for
/// this connection (so a captured request cannot be replayed on another connection), the
/// request id and the exact command bytes.
pub fn auth_payload(session_nonce: &[u8], request_id: u64, command: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + session_nonce.len() + command.len());
    out.extend_from_slice(b"tamizdat-auth-v1\0");
    out.extend_from_slice(session_nonce);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(command);
    out
}

/// Whose key authorizes a command: a log's (its members'), a queue's (its reader's) or a
/// blob's (its uploader's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability<'a> {
    /// The log with this id.
    Log(&'a [u8]),
    /// The queue with this read id.
    Queue(&'a [u8]),
    /// The blob with this id.
    Blob(&'a [u8]),
}

impl<'a> Capability<'a> {
    /// The log or queue id.
    pub fn id(self) -> &'a [u8] {
        match self {
            Capability::Log(id) | Capability::Queue(id) | Capability::Blob(id) => id,
        }
    }
}

impl proto::Op {
    /// The log or queue whose key must sign this command, if any. Once a session has proven a
    /// key for an id, later commands for that id on the same session need no signature: the
    /// TLS session already binds them to whoever proved it. A subscription naming both a log
    /// and a queue is malformed and names no capability.
    pub fn signed_for(&self) -> Option<Capability<'_>> {
        use proto::Op;
        match self {
            Op::ReadQueue(c) => Some(Capability::Queue(&c.read_id)),
            Op::AckQueue(c) => Some(Capability::Queue(&c.read_id)),
            Op::Append(c) => Some(Capability::Log(&c.log_id)),
            Op::ReadLog(c) => Some(Capability::Log(&c.log_id)),
            Op::AckLog(c) => Some(Capability::Log(&c.log_id)),
            Op::Subscribe(c) => match (c.log_id.is_empty(), c.read_id.is_empty()) {
                (false, false) => None,
                (true, _) => Some(Capability::Queue(&c.read_id)),
                (false, true) => Some(Capability::Log(&c.log_id)),
            },
            Op::PutBlob(c) => Some(Capability::Blob(&c.blob_id)),
            // Holding a blob's id is what lets one read it; its content is encrypted end to end.
            Op::GetBlob(_) | Op::BlobStatus(_) => None,
            Op::Hello(_) | Op::CreateQueue(_) | Op::SendToQueue(_) | Op::CreateLog(_) | Op::CreateBlob(_) => None,
        }
    }
}

/// Checks a capability signature. False for malformed keys or signatures.
pub fn verify_auth(key: &[u8], session_nonce: &[u8], request_id: u64, command: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = <[u8; limits::KEY_LEN]>::try_from(key) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(&auth_payload(session_nonce, request_id, command), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn auth_binds_nonce_request_and_command() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let public = key.verifying_key().to_bytes();
        let sig = key.sign(&auth_payload(b"nonce", 1, b"cmd")).to_bytes();
        assert!(verify_auth(&public, b"nonce", 1, b"cmd", &sig));
        assert!(!verify_auth(&public, b"other", 1, b"cmd", &sig));
        assert!(!verify_auth(&public, b"nonce", 2, b"cmd", &sig));
        assert!(!verify_auth(&public, b"nonce", 1, b"cmx", &sig));
        assert!(!verify_auth(&public[..31], b"nonce", 1, b"cmd", &sig));
        assert!(!verify_auth(&public, b"nonce", 1, b"cmd", &sig[..63]));
    }

    /// The largest blob piece, with the largest numbers and a signature around it, still fits
    /// the largest bucket, both ways.
    #[test]
    fn a_full_blob_piece_fits_a_frame() {
        use prost::Message;
        use proto::{BlobData, ClientFrame, Command, Op, PutBlob, Reply, ServerFrame};
        let data = vec![0xff; limits::MAX_BLOB_PIECE];
        let put = Op::PutBlob(PutBlob { blob_id: vec![1; limits::ID_LEN], offset: u64::MAX, data: data.clone() });
        let command = Command { op: Some(put) }.encode_to_vec();
        let request = ClientFrame { request_id: u64::MAX, command, signature: vec![2; limits::SIG_LEN] };
        assert_eq!(frame::encode(&request).unwrap().len(), limits::MAX_FRAME);
        let reply = Reply::BlobData(BlobData { data, length: u64::MAX, size: u64::MAX });
        let reply = ServerFrame { request_id: u64::MAX, reply: Some(reply) };
        assert_eq!(frame::encode(&reply).unwrap().len(), limits::MAX_FRAME);
    }
}
