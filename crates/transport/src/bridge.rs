//! A bridge: a TCP forwarder on an unblocked address that passes a client's TLS bytes to the
//! relay. It never sees plaintext (the TLS session is between client and relay, checked by
//! the certificate pin), keeps nothing, and anyone can run one.

use std::{net::SocketAddr, sync::Arc};

use tamizdat_wire::{endpoint::Endpoint, proto::RelayDescriptor};
use tokio::net::{TcpListener, TcpStream};

use crate::{TransportError, dial::Dialer};

/// The relay link a bridge hands out: the bridge's public endpoint first, then the relay's own.
pub fn bridge_link(relay: &RelayDescriptor, public: &str) -> Result<String, TransportError> {
    let public: Endpoint = public.parse().map_err(|_| TransportError::BadEndpoint(public.into()))?;
    let mut d = relay.clone();
    d.endpoints.retain(|e| *e != public.to_string());
    d.endpoints.insert(0, public.to_string());
    d.endpoints.truncate(16);
    Ok(d.to_link())
}

/// Accepts connections on `listener` and forwards each to the first of the relay's endpoints
/// that answers (the relay's direct endpoints only: IP literals and domains).
pub async fn serve(listener: TcpListener, relay: RelayDescriptor, dialer: Arc<Dialer>) -> Result<(), TransportError> {
    let upstream: Vec<Endpoint> =
        relay.parsed_endpoints().into_iter().filter(|e| !matches!(e, Endpoint::Pt(_))).collect();
    if upstream.is_empty() {
        return Err(TransportError::BadEndpoint("the relay link has no direct endpoint to forward to".into()));
    }
    let upstream = Arc::new(upstream);
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        let dialer = dialer.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &upstream, &dialer).await {
                tracing::debug!(%peer, error = %e, "bridged connection ended");
            }
        });
    }
}

async fn forward(mut client: TcpStream, upstream: &[Endpoint], dialer: &Dialer) -> Result<(), TransportError> {
    let _ = client.set_nodelay(true);
    let mut last = None;
    for e in upstream {
        match dialer.open_stream(e).await {
            Ok(mut relay) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut relay).await;
                return Ok(());
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| TransportError::BadEndpoint("no upstream".into())))
}

/// Binds the bridge's listening socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr).await.map_err(|e| TransportError::Setup(format!("cannot listen on {addr}: {e}")))
}
