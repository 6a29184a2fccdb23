#![doc = include_str!("../README.md")]

pub mod content;
mod conversation;
mod identity;
pub mod invite;
pub mod key_packages;
pub mod proto;
pub mod seal;

pub use conversation::{CommitSummary, Conversation, Incoming, Outgoing};
pub use identity::Identity;
pub use openmls::prelude::Ciphersuite;
pub use tamizdat_wire::ErrorKind;

/// The ciphersuite of new conversations: X25519 + ML-KEM-768 hybrid (X-Wing) KEM, AES-128-GCM,
/// SHA-256, Ed25519. Post-quantum confidentiality for everything recorded today.
pub const DEFAULT_SUITE: Ciphersuite = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;

/// The classic ciphersuite (X25519, AES-128-GCM, SHA-256, Ed25519): for groups too large for
/// post-quantum Welcomes to travel well (see docs/BENCHMARKS.md for the numbers).
pub const CLASSIC_SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Most members one commit adds: an add commit carries each new member's KeyPackage and must
/// stay well inside one relay entry (128 KiB for messages). A post-quantum KeyPackage is about
/// 2.6 KB (two X-Wing keys), a classic one about 0.3 KB.
pub fn max_adds_per_commit(suite: Ciphersuite) -> usize {
    if suite == CLASSIC_SUITE { 200 } else { 32 }
}

/// Most members a group of this ciphersuite may have. A commit with an update path (a
/// removal, a key refresh) is encrypted to every member whose keys are not yet merged into the
/// tree; right after a group is built that is nearly everyone: about 1.2 KB per member with the
/// post-quantum suite and 0.09 KB with the classic one (docs/BENCHMARKS.md). Such a commit must
/// fit in one relay entry for commits (512 KiB), and a Welcome carries the whole tree (7 MB for
/// 5,000 post-quantum members, over six minutes at 150 kbit/s). So post-quantum groups stop
/// at 384 members; larger groups, up to 5,000, use the classic suite.
pub fn max_members(suite: Ciphersuite) -> usize {
    if suite == CLASSIC_SUITE { 5000 } else { 384 }
}

/// The ciphersuites a client hands KeyPackages out for.
pub const SUITES: [Ciphersuite; 2] = [DEFAULT_SUITE, CLASSIC_SUITE];

/// Errors of the end-to-end core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// An invite that fails its signature or does not decode.
    #[error("the invite is not valid: {0}")]
    BadInvite(String),
    /// An invite past its expiry.
    #[error("the invite expired; ask for a new one")]
    ExpiredInvite,
    /// A link that is damaged.
    #[error(transparent)]
    Wire(#[from] tamizdat_wire::WireError),
    /// A sealed message that does not open with our key.
    #[error("a sealed message did not open: {0}")]
    Unseal(String),
    /// MLS refused a message or an operation.
    #[error("MLS: {0}")]
    Mls(String),
    /// Content inside a decrypted message that does not decode.
    #[error("undecodable content")]
    BadContent,
    /// The state store failed.
    #[error("key storage failed: {0}")]
    Storage(String),
}

impl E2eError {
    /// What a user interface can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            E2eError::BadInvite(_) | E2eError::ExpiredInvite | E2eError::Wire(_) => ErrorKind::BadInput,
            E2eError::Unseal(_) | E2eError::Mls(_) | E2eError::BadContent => ErrorKind::BadInput,
            E2eError::Storage(_) => ErrorKind::Fatal,
        }
    }
}

pub(crate) fn mls_err(e: impl std::fmt::Debug) -> E2eError {
    E2eError::Mls(format!("{e:?}"))
}
