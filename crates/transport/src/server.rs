//! The relay's front door: TLS, then one HTTP request decides between the protocol and the
//! cover site. Nothing that lacks the door path ever sees anything but the cover site.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

use crate::{HANDSHAKE_TIMEOUT, TransportError, ws_config};

/// Longest HTTP request head read before answering 400, like a web server's header limit.
const MAX_HEAD: usize = 8 * 1024;
/// How long an idle keep-alive connection to the cover site stays open.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Most requests served on one cover connection.
const MAX_REQUESTS: usize = 100;

/// The static web site anyone without a relay link sees.
pub struct CoverSite {
    /// `(path, content type, body)`; `/` should be present.
    pub pages: Vec<(String, &'static str, Vec<u8>)>,
    /// The body of 404 answers.
    pub not_found: Vec<u8>,
    /// When the site was "published", for Last-Modified and ETag.
    pub modified: SystemTime,
}

/// A protocol session's stream on the server side.
pub type ServerWs = WebSocketStream<TlsStream<TcpStream>>;

/// What came through the door.
pub enum Accepted {
    /// A client with the door key: a protocol session.
    Protocol(Box<ServerWs>),
    /// Someone else, who was served the cover site until they left.
    Cover,
}

/// Decides, per connection, between the protocol and the cover site.
pub struct FrontDoor {
    acceptor: TlsAcceptor,
    door_path: String,
    cover: Arc<CoverSite>,
}

impl FrontDoor {
    /// A front door with this TLS configuration, door path and cover site.
    pub fn new(tls: Arc<rustls::ServerConfig>, door_path: String, cover: Arc<CoverSite>) -> Self {
        Self { acceptor: TlsAcceptor::from(tls), door_path, cover }
    }

    /// Runs TLS and HTTP on one accepted TCP connection.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Accepted, TransportError> {
        let _ = tcp.set_nodelay(true);
        let mut tls = timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| TransportError::Timeout { step: "TLS handshake", endpoint: "client".into() })?
            .map_err(|e| TransportError::Tls { endpoint: "client".into(), reason: e.to_string() })?;
        let mut buf = Vec::with_capacity(1024);
        for served in 0..MAX_REQUESTS {
            let wait = if served == 0 { HANDSHAKE_TIMEOUT } else { KEEPALIVE };
            let head = match timeout(wait, read_head(&mut tls, &mut buf)).await {
                Ok(Ok(Some(head))) => head,
                Ok(Ok(None)) | Err(_) => return Ok(Accepted::Cover),
                Ok(Err(HeadError::Bad)) => {
                    let _ = write_response(&mut tls, &self.cover, 400, "text/html", BAD_REQUEST, false, true).await;
                    return Ok(Accepted::Cover);
                }
                Ok(Err(HeadError::Io)) => return Ok(Accepted::Cover),
            };
            let leftover = buf.split_off(head.len);
            buf = leftover;
            if let Some(key) =
                head.upgrade_key.as_deref().filter(|_| head.method == "GET" && head.path == self.door_path)
            {
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nServer: nginx\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                tls.write_all(response.as_bytes()).await.map_err(|e| TransportError::Closed(e.to_string()))?;
                let ws = WebSocketStream::from_partially_read(tls, buf, Role::Server, Some(ws_config())).await;
                return Ok(Accepted::Protocol(Box::new(ws)));
            }
            if !self.serve_cover(&mut tls, &head).await || head.close {
                break;
            }
        }
        let _ = tls.shutdown().await;
        Ok(Accepted::Cover)
    }

    async fn serve_cover(&self, tls: &mut TlsStream<TcpStream>, head: &Head) -> bool {
        let page =
            self.cover.pages.iter().find(|(p, _, _)| *p == head.path || (head.path == "/index.html" && p == "/"));
        let (status, ctype, body): (u16, &str, &[u8]) = match (head.method.as_str(), page) {
            ("GET" | "HEAD", Some((_, ctype, body))) => (200, ctype, body),
            ("GET" | "HEAD", None) => (404, "text/html", &self.cover.not_found),
            (_, Some(_)) => (405, "text/html", NOT_ALLOWED),
            (_, None) => (404, "text/html", &self.cover.not_found),
        };
        let with_body = head.method != "HEAD";
        write_response(tls, &self.cover, status, ctype, body, with_body, false).await.is_ok()
    }
}

const BAD_REQUEST: &[u8] = b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const NOT_ALLOWED: &[u8] = b"<html>\r\n<head><title>405 Not Allowed</title></head>\r\n<body>\r\n<center><h1>405 Not Allowed</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

async fn write_response(
    tls: &mut TlsStream<TcpStream>,
    cover: &CoverSite,
    status: u16,
    ctype: &str,
    body: &[u8],
    with_body: bool,
    close: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Not Allowed",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: nginx\r\nDate: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now()),
        body.len()
    );
    if status == 200 {
        let secs = cover.modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        out.push_str(&format!(
            "Last-Modified: {}\r\nETag: \"{secs:x}-{:x}\"\r\nAccept-Ranges: bytes\r\n",
            httpdate::fmt_http_date(cover.modified),
            body.len()
        ));
    }
    out.push_str(if close { "Connection: close\r\n\r\n" } else { "Connection: keep-alive\r\n\r\n" });
    let mut bytes = out.into_bytes();
    if with_body {
        bytes.extend_from_slice(body);
    }
    tls.write_all(&bytes).await?;
    tls.flush().await
}

struct Head {
    len: usize,
    method: String,
    path: String,
    upgrade_key: Option<String>,
    close: bool,
}

enum HeadError {
    Bad,
    Io,
}

/// Reads one request head; `Ok(None)` when the peer closed before sending one.
async fn read_head(tls: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>) -> Result<Option<Head>, HeadError> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 48];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => return Ok(Some(head_from(&req, len))),
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(HeadError::Bad),
            }
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::Bad);
            }
        }
        let mut chunk = [0u8; 2048];
        let n = tls.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(HeadError::Bad) };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head_from(req: &httparse::Request<'_, '_>, len: usize) -> Head {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && header("sec-websocket-version") == Some("13");
    let upgrade_key = if upgrade { header("sec-websocket-key").map(str::to_string) } else { None };
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) || req.version == Some(0);
    Head {
        len,
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        upgrade_key,
        close,
    }
}

/// Sends one binary frame on a server-side session.
pub async fn send_frame(ws: &mut ServerWs, frame: Vec<u8>) -> Result<(), TransportError> {
    ws.send(Message::Binary(frame.into())).await.map_err(|e| TransportError::Closed(e.to_string()))
}

/// Receives the next binary frame on a server-side session; `None` when the client left.
/// Text frames are a protocol violation and end the session.
pub async fn recv_frame(ws: &mut ServerWs) -> Result<Option<Vec<u8>>, TransportError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(Some(b.to_vec())),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(Message::Text(_))) => return Err(TransportError::Closed("text frame".into())),
            Some(Err(e)) => return Err(TransportError::Closed(e.to_string())),
        }
    }
}
