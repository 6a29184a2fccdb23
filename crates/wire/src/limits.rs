//! Sizes every implementation enforces. Checked before any work is done on a frame.

/// Protocol versions this build speaks.
pub const MIN_VERSION: u32 = 1;
/// Newest protocol version this build speaks.
pub const MAX_VERSION: u32 = 1;

/// Largest opaque payload (one MLS message or sealed queue message) a relay accepts.
/// A 60 KiB text plus MLS and content overhead fits with room to spare.
pub const MAX_PAYLOAD: usize = 128 * 1024;

/// Largest MLS commit a relay accepts. A commit with an update path is encrypted to every
/// member not yet merged into the group's tree: right after a large group is built that is
/// nearly everyone (about 0.09 KB per member with the classic suite, 1.2 KB with the
/// post-quantum one), so commits get this much more room than other messages.
pub const MAX_COMMIT_PAYLOAD: usize = 512 * 1024;

/// Largest frame on the wire, padding included: the last padding bucket.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Largest number of entries one read returns.
pub const MAX_READ_ENTRIES: u32 = 256;

/// A reply to a read stops adding entries once its payloads pass this many bytes, so the
/// padded reply stays within [`MAX_FRAME`].
/// A single larger entry (a commit) is still returned alone.
pub const READ_REPLY_BUDGET: usize = 256 * 1024 - MAX_PAYLOAD / 2 - 4096;

/// Most bytes one `PutBlob` carries and one `GetBlob` returns. With the command around it a
/// piece fills the largest bucket, so a blob travels with almost no padding; pieces need not
/// line up with the attachment's encrypted chunks (the relay stores a byte string).
pub const MAX_BLOB_PIECE: usize = MAX_FRAME - 4096;

/// Length of relay-assigned ids (queue ids, log ids) and client-chosen dedup and cursor ids.
pub const ID_LEN: usize = 16;

/// Logs and queues one connection is remembered to have proven the key of; past it, the
/// relay checks every command for the others and a client signs again when refused.
pub const MAX_PROVEN: usize = 4096;

/// Most logs and queues one connection may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 4096;

/// Largest payload a notice carries inside it (a text message fits); larger entries are read.
/// The relay pushes no more; a client keeps no more.
pub const MAX_PUSHED_PAYLOAD: usize = 2048;

/// Length of an Ed25519 public key and signature.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIG_LEN: usize = 64;
