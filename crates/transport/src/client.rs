//! Dialing a relay: TCP, TLS pinned to the link's certificate, WebSocket on the door path.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use futures_util::{SinkExt, StreamExt};
use tamizdat_wire::proto::RelayDescriptor;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use crate::{BoxIo, TransportError, dial::Dialer};

/// An open protocol connection to a relay: a sequence of binary messages both ways.
pub struct Connection {
    ws: WebSocketStream<TlsStream<BoxIo>>,
    endpoint: String,
    received: Arc<AtomicU64>,
}

impl Connection {
    pub(crate) fn new(ws: WebSocketStream<TlsStream<BoxIo>>, endpoint: String, received: Arc<AtomicU64>) -> Self {
        Self { ws, endpoint, received }
    }

    /// Bytes received on this connection so far, TLS and WebSocket framing included: what a
    /// censor that freezes busy connections counts.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

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

/// Connects to the relay with a dialer configured from the environment (resolvers, no proxy),
/// racing the descriptor's endpoints in order. Apps keep one [`Dialer`] instead.
pub async fn connect(relay: &RelayDescriptor) -> Result<Connection, TransportError> {
    let dialer = Dialer::from_env_transient()?;
    dialer.dial(relay, &relay.parsed_endpoints()).await
}
