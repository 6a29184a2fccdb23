//! Dialing a relay: TCP, TLS pinned to the link's certificate, WebSocket on the door path.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tamizdat_wire::proto::RelayDescriptor;
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use crate::{BoxIo, HANDSHAKE_TIMEOUT, TransportError, tls::pinned_client_config, ws_config};

/// An open protocol connection to a relay: a sequence of binary messages both ways.
pub struct Connection {
    ws: WebSocketStream<TlsStream<BoxIo>>,
    endpoint: String,
}

impl Connection {
    /// The endpoint this connection reached.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        self.ws.send(Message::Binary(frame.into())).await.map_err(|e| TransportError::Closed(e.to_string()))
    }

    /// Receives the next frame, answering pings on the way.
    pub async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(TransportError::Closed("closed by the relay".into()));
                }
                Some(Ok(_)) => {
                    return Err(TransportError::Closed("unexpected text message".into()));
                }
                Some(Err(e)) => return Err(TransportError::Closed(e.to_string())),
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Connects to the first endpoint of the relay that answers, trying them in order. The
/// error names every endpoint's failure.
pub async fn connect(relay: &RelayDescriptor) -> Result<Connection, TransportError> {
    let mut last = None;
    for endpoint in &relay.endpoints {
        match connect_endpoint(relay, endpoint).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::debug!(endpoint = %endpoint, error = %e, "endpoint failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| TransportError::BadEndpoint("the relay has no endpoints".into())))
}

async fn resolve(endpoint: &str) -> Result<SocketAddr, TransportError> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| TransportError::Connect { endpoint: endpoint.into(), reason: format!("name lookup: {e}") })?;
    addrs
        .next()
        .ok_or_else(|| TransportError::Connect { endpoint: endpoint.into(), reason: "name has no address".into() })
}

/// The TLS server name: none (no SNI) for IP literals, the host name otherwise.
fn server_name(endpoint: &str, addr: SocketAddr) -> Result<ServerName<'static>, TransportError> {
    if endpoint.parse::<SocketAddr>().is_ok() {
        return Ok(ServerName::IpAddress(addr.ip().into()));
    }
    let host = endpoint.rsplit_once(':').map(|(h, _)| h).unwrap_or(endpoint);
    ServerName::try_from(host.to_string()).map_err(|_| TransportError::BadEndpoint(endpoint.into()))
}

/// Connects to one endpoint.
pub async fn connect_endpoint(relay: &RelayDescriptor, endpoint: &str) -> Result<Connection, TransportError> {
    let addr = resolve(endpoint).await?;
    let tcp = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout { step: "TCP connect", endpoint: endpoint.into() })?
        .map_err(|e| TransportError::Connect { endpoint: endpoint.into(), reason: e.to_string() })?;
    let _ = tcp.set_nodelay(true);
    let io: BoxIo = Box::new(tcp);
    let connector = TlsConnector::from(pinned_client_config(&relay.cert_sha256)?);
    let tls = timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name(endpoint, addr)?, io))
        .await
        .map_err(|_| TransportError::Timeout { step: "TLS handshake", endpoint: endpoint.into() })?
        .map_err(|e| TransportError::Tls { endpoint: endpoint.into(), reason: e.to_string() })?;
    let url = format!("wss://{endpoint}{}", relay.door_path());
    let (ws, _) = timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config())))
        .await
        .map_err(|_| TransportError::Timeout { step: "WebSocket upgrade", endpoint: endpoint.into() })?
        .map_err(|e| TransportError::Upgrade { endpoint: endpoint.into(), reason: e.to_string() })?;
    Ok(Connection { ws, endpoint: endpoint.into() })
}
