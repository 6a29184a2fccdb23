#![doc = include_str!("../README.md")]

pub mod bridge;
pub mod client;
pub mod diagnose;
pub mod dial;
pub mod dns;
pub mod network;
pub mod proxy;
pub mod pt;
pub mod server;
pub mod tls;

pub use tamizdat_wire::endpoint;

use std::time::Duration;

pub use tamizdat_wire::ErrorKind;

/// Any byte stream a carrier can run over (TCP today; proxies and pluggable transports later).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A boxed byte stream.
pub type BoxIo = Box<dyn Io>;

/// How long a TCP connect, a TLS handshake or a WebSocket upgrade may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection failed, in terms a user can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No endpoint could be reached at the TCP level.
    #[error("could not connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// What the operating system said.
        reason: String,
    },
    /// A step took longer than allowed.
    #[error("{step} with {endpoint} timed out")]
    Timeout {
        /// TCP, TLS or WebSocket.
        step: &'static str,
        /// The endpoint tried.
        endpoint: String,
    },
    /// The TLS handshake failed, or the certificate is not the pinned one (interception).
    #[error("TLS with {endpoint} failed: {reason}")]
    Tls {
        /// The endpoint tried.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The server answered, but with another certificate than the link pins: a forged DNS
    /// answer, an intercepting middlebox, or simply another server at that address.
    #[error("the server at {endpoint} is not the relay: its certificate does not match the link")]
    WrongCertificate {
        /// The endpoint tried.
        endpoint: String,
    },
    /// The connection was reset or closed in the middle of a step: what DPI does to a flow it
    /// has recognised.
    #[error("the connection to {endpoint} was cut during the {step}")]
    Cut {
        /// TCP connect or TLS handshake.
        step: &'static str,
        /// The endpoint tried.
        endpoint: String,
    },
    /// The server did not accept the WebSocket upgrade (wrong door, or not a relay).
    #[error("{endpoint} did not open the protocol: {reason}")]
    Upgrade {
        /// The endpoint tried.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The connection broke after it was established.
    #[error("connection lost: {0}")]
    Closed(String),
    /// The proxy (or the pluggable transport's local proxy) failed or refused.
    #[error("proxy: {0}")]
    Proxy(String),
    /// A reply stopped arriving: no byte for seconds on an open connection, as when a censor
    /// freezes connections that carried more than a few kilobytes.
    #[error("the connection through {endpoint} froze after {received} bytes")]
    Stalled {
        /// The endpoint.
        endpoint: String,
        /// Bytes received on the connection before it froze.
        received: u64,
    },
    /// Every endpoint failed; each failure is listed.
    #[error("no way to the relay worked: {0}")]
    AllFailed(String),
    /// An endpoint string that is not HOST:PORT.
    #[error("bad endpoint {0:?}")]
    BadEndpoint(String),
    /// Local configuration (TLS keys) is broken.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

impl TransportError {
    /// What a user interface can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransportError::Connect { .. }
            | TransportError::Timeout { .. }
            | TransportError::Closed(_)
            | TransportError::Stalled { .. } => ErrorKind::Retry,
            TransportError::Tls { .. }
            | TransportError::WrongCertificate { .. }
            | TransportError::Cut { .. }
            | TransportError::Upgrade { .. }
            | TransportError::Proxy(_)
            | TransportError::AllFailed(_) => ErrorKind::Blocked,
            TransportError::BadEndpoint(_) => ErrorKind::BadInput,
            TransportError::Setup(_) => ErrorKind::Fatal,
        }
    }
}

/// Bytes the WebSocket layer reads at once. It reads from TLS's already-decrypted buffer, so
/// a small one costs no system calls; every idle session keeps one (1 KiB instead of 4 KiB
/// took 3 KiB off each idle session, with no change in throughput or file transfer times
/// beyond run-to-run spread; docs/BENCHMARKS.md).
const READ_BUFFER: usize = 1024;

/// The WebSocket limits both sides enforce: one frame is one message, at most the largest
/// padding bucket. The read buffer is small because every idle connection holds one (the
/// library's 128 KiB default is also zeroed on every read); larger frames still arrive, in
/// several reads.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(tamizdat_wire::limits::MAX_FRAME))
        .max_frame_size(Some(tamizdat_wire::limits::MAX_FRAME))
}
