#![doc = include_str!("../README.md")]

mod cover;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
mod server;
mod session;
mod shards;
mod sqlite_writer;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use limits::Limits;
pub use server::{DEFAULT_RETENTION, Relay, RelayConfig};
pub use tamizdat_wire::ErrorKind;

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The database failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The relay is stopping.
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// The data directory is unusable.
    #[error("relay data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS or listener setup failed.
    #[error(transparent)]
    Transport(#[from] tamizdat_transport::TransportError),
    /// Connection shards could not be set up (see `RelayConfig::shards`).
    #[error("connection shards: {0}")]
    Shards(String),
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

impl RelayError {
    /// What an operator can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RelayError::Storage(_) | RelayError::ShuttingDown => ErrorKind::Retry,
            RelayError::DataDir { .. } | RelayError::Listen { .. } | RelayError::Shards(_) => ErrorKind::BadInput,
            RelayError::Transport(e) => e.kind(),
        }
    }
}

/// Seconds since the Unix epoch, rounded down to the hour: the only clock the relay stores.
pub(crate) fn current_hour() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    i64::try_from(secs / 3600).unwrap_or(i64::MAX)
}
