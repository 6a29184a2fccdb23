//! The relay's front door: TLS, then one HTTP request decides between the protocol and the
//! cover site. Nothing that lacks the door path ever sees anything but the cover site.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
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
    pub async fn accept(&self, mut tcp: TcpStream) -> Result<Accepted, TransportError> {
        let _ = tcp.set_nodelay(true);
        // Like nginx on its TLS port: plain HTTP gets a 400 page saying so; other non-TLS bytes
        // fail the handshake below.
        let mut first = [0u8; 1];
        if let Ok(Ok(1)) = timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await
            && first[0].is_ascii_uppercase()
        {
            let mut buf = Vec::new();
            if let Ok(Ok(Some(_))) = timeout(HANDSHAKE_TIMEOUT, read_head(&mut tcp, &mut buf)).await {
                let _ = write_response(&mut tcp, &self.cover, 400, "text/html", PLAIN_HTTP, true, true).await;
            }
            return Ok(Accepted::Cover);
        }
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
                    let _ = write_response(&mut tls, &self.cover, 400, "text/html", BAD_REQUEST, true, true).await;
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
            if head.http11 && !head.host {
                let _ = write_response(&mut tls, &self.cover, 400, "text/html", BAD_REQUEST, true, true).await;
                return Ok(Accepted::Cover);
            }
            // A request body is read and dropped, up to nginx's default 1 MiB.
            if head.content_length > MAX_BODY {
                let _ = write_response(&mut tls, &self.cover, 413, "text/html", TOO_LARGE, true, true).await;
                return Ok(Accepted::Cover);
            }
            if !discard_body(&mut tls, &mut buf, head.content_length).await {
                return Ok(Accepted::Cover);
            }
            if !self.serve_cover(&mut tls, &head).await || head.close {
                break;
            }
        }
        let _ = tls.shutdown().await;
        Ok(Accepted::Cover)
    }

    async fn serve_cover(&self, tls: &mut TlsStream<TcpStream>, head: &Head) -> bool {
        // nginx ignores the query for static files and merges repeated slashes.
        let mut path = head.path.split(['?', '#']).next().unwrap_or("").to_string();
        while path.contains("//") {
            path = path.replace("//", "/");
        }
        let page = self.cover.pages.iter().find(|(p, _, _)| *p == path || (path == "/index.html" && p == "/"));
        let (status, ctype, body): (u16, &str, &[u8]) = match (head.method.as_str(), page) {
            ("GET" | "HEAD", Some((_, ctype, body))) if self.not_modified(head, body) => (304, ctype, body),
            ("GET" | "HEAD", Some((_, ctype, body))) => (200, ctype, body),
            ("GET" | "HEAD", None) => (404, "text/html", &self.cover.not_found),
            (_, Some(_)) => (405, "text/html", NOT_ALLOWED),
            (_, None) => (404, "text/html", &self.cover.not_found),
        };
        let with_body = head.method != "HEAD" && status != 304;
        write_response(tls, &self.cover, status, ctype, body, with_body, head.close).await.is_ok()
    }

    /// A conditional request whose copy is current, by ETag or by date.
    fn not_modified(&self, head: &Head, body: &[u8]) -> bool {
        if let Some(tags) = &head.if_none_match {
            let etag = etag(&self.cover, body);
            return tags.split(',').any(|t| t.trim() == etag || t.trim() == "*");
        }
        head.if_modified_since
            .as_deref()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .is_some_and(|since| since >= self.cover.modified)
    }
}

const BAD_REQUEST: &[u8] = b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const PLAIN_HTTP: &[u8] = b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const NOT_ALLOWED: &[u8] = b"<html>\r\n<head><title>405 Not Allowed</title></head>\r\n<body>\r\n<center><h1>405 Not Allowed</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const TOO_LARGE: &[u8] = b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
/// nginx's default `client_max_body_size`.
const MAX_BODY: usize = 1024 * 1024;

fn etag(cover: &CoverSite, body: &[u8]) -> String {
    let secs = cover.modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("\"{secs:x}-{:x}\"", body.len())
}

/// Reads and drops `len` body bytes, using what is already buffered first.
async fn discard_body(tls: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>, len: usize) -> bool {
    let from_buf = len.min(buf.len());
    buf.drain(..from_buf);
    let mut left = len - from_buf;
    let mut chunk = [0u8; 4096];
    while left > 0 {
        match timeout(KEEPALIVE, tls.read(&mut chunk[..left.min(4096)])).await {
            Ok(Ok(n)) if n > 0 => left -= n,
            _ => return false,
        }
    }
    true
}

async fn write_response<W: AsyncWrite + Unpin>(
    out: &mut W,
    cover: &CoverSite,
    status: u16,
    ctype: &str,
    body: &[u8],
    with_body: bool,
    close: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        _ => "Not Allowed",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: nginx\r\nDate: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    );
    if status != 304 {
        head.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", body.len()));
    }
    if status == 200 || status == 304 {
        head.push_str(&format!(
            "Last-Modified: {}\r\nETag: {}\r\n",
            httpdate::fmt_http_date(cover.modified),
            etag(cover, body)
        ));
    }
    if status == 200 {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    head.push_str(if close { "Connection: close\r\n\r\n" } else { "Connection: keep-alive\r\n\r\n" });
    let mut bytes = head.into_bytes();
    if with_body {
        bytes.extend_from_slice(body);
    }
    out.write_all(&bytes).await?;
    out.flush().await
}

struct Head {
    len: usize,
    method: String,
    path: String,
    upgrade_key: Option<String>,
    close: bool,
    http11: bool,
    host: bool,
    content_length: usize,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

enum HeadError {
    Bad,
    Io,
}

/// Reads one request head; `Ok(None)` when the peer closed before sending one.
async fn read_head<R: AsyncRead + Unpin>(input: &mut R, buf: &mut Vec<u8>) -> Result<Option<Head>, HeadError> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => return head_from(&req, len).map(Some),
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(HeadError::Bad),
            }
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::Bad);
            }
        }
        let mut chunk = [0u8; 2048];
        let n = input.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(HeadError::Bad) };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head_from(req: &httparse::Request<'_, '_>, len: usize) -> Result<Head, HeadError> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let connection =
        |token: &str| header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)));
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && connection("upgrade")
        && header("sec-websocket-version") == Some("13");
    let upgrade_key = if upgrade { header("sec-websocket-key").map(str::to_string) } else { None };
    let http11 = req.version == Some(1);
    let close = connection("close") || (!http11 && !connection("keep-alive"));
    let content_length = match header("content-length") {
        None => 0,
        Some(v) => v.parse().map_err(|_| HeadError::Bad)?,
    };
    if header("transfer-encoding").is_some() {
        return Err(HeadError::Bad); // a static site has no use for chunked uploads
    }
    Ok(Head {
        len,
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        upgrade_key,
        close,
        http11,
        host: header("host").is_some(),
        content_length,
        if_none_match: header("if-none-match").map(str::to_string),
        if_modified_since: header("if-modified-since").map(str::to_string),
    })
}

/// Sends one binary frame on a server-side session.
pub async fn send_frame(ws: &mut ServerWs, frame: Vec<u8>) -> Result<(), TransportError> {
    ws.send(Message::Binary(frame.into())).await.map_err(|e| TransportError::Closed(e.to_string()))
}

/// Sends several binary frames with one flush: a burst of replies becomes one write.
pub async fn send_frames(ws: &mut ServerWs, frames: Vec<Vec<u8>>) -> Result<(), TransportError> {
    let closed = |e: tokio_tungstenite::tungstenite::Error| TransportError::Closed(e.to_string());
    for frame in frames {
        ws.feed(Message::Binary(frame.into())).await.map_err(closed)?;
    }
    ws.flush().await.map_err(closed)
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
