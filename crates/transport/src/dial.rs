//! Choosing a way through: every endpoint of a relay, over every configured path, raced.
//!
//! Endpoints are tried in the caller's order (what worked last on this network first), each
//! started a short stagger after the previous one or as soon as it fails, happy-eyeballs
//! style; the first to finish the handshake wins and the others are dropped. A user whose
//! first path works waits one handshake; a user behind a block waits seconds, not minutes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use rustls::pki_types::ServerName;
use tamizdat_wire::{endpoint::Endpoint, proto::RelayDescriptor};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{
    BoxIo, HANDSHAKE_TIMEOUT, TransportError, client::Connection, dns::Resolver, proxy::Proxy, pt::PtClients,
    tls::pinned_client_config, ws_config,
};

/// How long the next endpoint waits for the previous one before starting anyway.
pub const STAGGER: Duration = Duration::from_millis(300);

/// Everything a client needs to reach relays: a resolver, an optional proxy and pluggable
/// transports.
pub struct Dialer {
    /// Resolves domain endpoints.
    pub resolver: Resolver,
    /// A proxy every connection goes through.
    pub proxy: Option<Proxy>,
    /// Client-side pluggable transports, started on first use.
    pub pts: Arc<PtClients>,
    /// The stagger between racing attempts.
    pub stagger: Duration,
}

impl Dialer {
    /// A dialer for tools without a home directory (the bridge, `doctor --relay`, tests): PT
    /// state in the system's temporary directory.
    pub fn from_env_transient() -> Result<Self, TransportError> {
        Self::from_env(std::env::temp_dir().join("tamizdat-pt"))
    }

    /// A dialer with the resolvers from the environment, no proxy, and PT state in `state_dir`.
    pub fn from_env(state_dir: PathBuf) -> Result<Self, TransportError> {
        Ok(Self {
            resolver: Resolver::from_env()?,
            proxy: None,
            pts: Arc::new(PtClients::new(state_dir)),
            stagger: STAGGER,
        })
    }

    /// Races `endpoints` (in order of preference) to `relay`. The error lists every failure.
    pub async fn dial<'a>(
        &'a self,
        relay: &'a RelayDescriptor,
        endpoints: &'a [Endpoint],
    ) -> Result<Connection, TransportError> {
        if endpoints.is_empty() {
            return Err(TransportError::BadEndpoint("the relay has no endpoints".into()));
        }
        let attempt = |e: &'a Endpoint| async move { (e, self.connect(relay, e).await) };
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        let mut failures = Vec::new();
        loop {
            if pending.is_empty() {
                let Some(e) = endpoints.get(next) else { break };
                pending.push(attempt(e));
                next += 1;
            }
            let finished = if let Some(e) = endpoints.get(next) {
                match timeout(self.stagger, pending.next()).await {
                    Ok(finished) => finished,
                    Err(_) => {
                        pending.push(attempt(e));
                        next += 1;
                        continue;
                    }
                }
            } else {
                pending.next().await
            };
            match finished {
                Some((_, Ok(conn))) => return Ok(conn),
                Some((e, Err(err))) => {
                    tracing::debug!(endpoint = %e, error = %err, "endpoint failed");
                    failures.push(err);
                }
                None => {}
            }
        }
        if failures.len() == 1 {
            return Err(failures.remove(0));
        }
        Err(TransportError::AllFailed(failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; ")))
    }

    /// A byte stream to the endpoint's TLS port, through the proxy or PT if any.
    pub async fn open_stream(&self, endpoint: &Endpoint) -> Result<TcpStream, TransportError> {
        let name = endpoint.to_string();
        let step = async {
            match (endpoint, &self.proxy) {
                (Endpoint::Pt(bridge), proxy) => self.pts.connect(bridge, proxy.as_ref()).await,
                (e, Some(proxy)) => proxy.connect(&e.authority()).await,
                (Endpoint::Ip(addr), None) => tcp_connect(*addr, &name).await,
                (Endpoint::Domain { host, port }, None) => {
                    let (addrs, _) = self.resolver.resolve(host).await?;
                    let mut last = None;
                    for ip in addrs {
                        match tcp_connect(SocketAddr::new(ip, *port), &name).await {
                            Ok(s) => return Ok(s),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| TransportError::Connect {
                        endpoint: name.clone(),
                        reason: "no address".into(),
                    }))
                }
            }
        };
        // Name lookups have their own timeouts; the whole step is bounded too.
        timeout(HANDSHAKE_TIMEOUT * 2, step)
            .await
            .map_err(|_| TransportError::Timeout { step: "TCP connect", endpoint: name.clone() })?
    }

    /// Connects to one endpoint: stream, pinned TLS, WebSocket on the door path.
    pub async fn connect(&self, relay: &RelayDescriptor, endpoint: &Endpoint) -> Result<Connection, TransportError> {
        let (io, received) = counted(self.open_stream(endpoint).await?);
        let tls = tls_handshake(relay, endpoint, io).await?;
        open_protocol(relay, endpoint, tls, received).await
    }
}

/// Wraps a stream so the bytes it receives are counted (TLS and framing included): what a
/// censor that freezes busy connections counts.
pub fn counted(stream: TcpStream) -> (BoxIo, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    (Box::new(Counting { inner: stream, received: received.clone() }), received)
}

/// Opens the protocol on an established TLS stream: the WebSocket upgrade on the door path.
pub async fn open_protocol(
    relay: &RelayDescriptor,
    endpoint: &Endpoint,
    tls: TlsStream<BoxIo>,
    received: Arc<AtomicU64>,
) -> Result<Connection, TransportError> {
    let name = endpoint.to_string();
    let url = format!("wss://{}{}", endpoint.authority(), relay.door_path());
    let (ws, _) = timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config())))
        .await
        .map_err(|_| TransportError::Timeout { step: "WebSocket upgrade", endpoint: name.clone() })?
        .map_err(|e| TransportError::Upgrade { endpoint: name.clone(), reason: e.to_string() })?;
    Ok(Connection::new(ws, name, received))
}

/// TLS with the relay's pin; the server name is sent only for domain endpoints.
pub async fn tls_handshake(
    relay: &RelayDescriptor,
    endpoint: &Endpoint,
    io: BoxIo,
) -> Result<TlsStream<BoxIo>, TransportError> {
    let name = endpoint.to_string();
    let server_name = match endpoint {
        Endpoint::Domain { host, .. } => {
            ServerName::try_from(host.clone()).map_err(|_| TransportError::BadEndpoint(name.clone()))?
        }
        Endpoint::Ip(a) => ServerName::IpAddress(a.ip().into()),
        Endpoint::Pt(b) => ServerName::IpAddress(b.addr.ip().into()),
    };
    tls_handshake_with(pinned_client_config(&relay.cert_sha256)?, server_name, name, io).await
}

/// TLS with a given client configuration (one shared configuration lets a client resume
/// sessions).
pub async fn tls_handshake_with(
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    name: String,
    io: BoxIo,
) -> Result<TlsStream<BoxIo>, TransportError> {
    let connector = TlsConnector::from(config);
    timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name, io))
        .await
        .map_err(|_| TransportError::Timeout { step: "TLS handshake", endpoint: name.clone() })?
        .map_err(|e| tls_error(name, e))
}

/// Tells apart the TLS failures that mean different things: the wrong certificate (not the
/// relay), a cut connection (DPI), and the rest.
fn tls_error(endpoint: String, e: std::io::Error) -> TransportError {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => TransportError::WrongCertificate { endpoint },
        _ if matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof) => {
            TransportError::Cut { step: "TLS handshake", endpoint }
        }
        _ => TransportError::Tls { endpoint, reason: e.to_string() },
    }
}

async fn tcp_connect(addr: SocketAddr, name: &str) -> Result<TcpStream, TransportError> {
    let tcp = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout { step: "TCP connect", endpoint: name.into() })?
        .map_err(|e| TransportError::Connect { endpoint: name.into(), reason: e.to_string() })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A stream that counts the bytes it received: the server-to-client volume a freezing
/// censor watches.
struct Counting<T> {
    inner: T,
    received: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.received.fetch_add(u64::try_from(read).unwrap_or(0), Ordering::Relaxed);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
