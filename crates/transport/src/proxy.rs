//! Reaching a relay through a proxy: SOCKS5 (RFC 1928, with RFC 1929 user/password) and HTTP
//! CONNECT. Pluggable transports are SOCKS5 proxies too, with the bridge's arguments in the
//! user/password fields (PT spec §3.5).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::TransportError;

/// A proxy every connection goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// `socks5://[user:pass@]host:port` (`socks5h://` is the same: names resolve at the proxy).
    Socks5 {
        /// `host:port`.
        addr: String,
        /// RFC 1929 credentials.
        auth: Option<(String, String)>,
    },
    /// `http://host:port`: HTTP CONNECT.
    Http {
        /// `host:port`.
        addr: String,
    },
}

impl std::str::FromStr for Proxy {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, TransportError> {
        let bad =
            || TransportError::BadEndpoint(format!("proxy {url:?} (want socks5://HOST:PORT or http://HOST:PORT)"));
        let (scheme, rest) = url.trim().split_once("://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (auth, addr) = match rest.rsplit_once('@') {
            Some((creds, addr)) => {
                let (u, p) = creds.split_once(':').unwrap_or((creds, ""));
                (Some((u.to_string(), p.to_string())), addr)
            }
            None => (None, rest),
        };
        if !addr.contains(':') || addr.ends_with(':') {
            return Err(bad());
        }
        match scheme.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" => Ok(Proxy::Socks5 { addr: addr.to_string(), auth }),
            "http" if auth.is_none() => Ok(Proxy::Http { addr: addr.to_string() }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proxy::Socks5 { addr, .. } => write!(f, "socks5://{addr}"),
            Proxy::Http { addr } => write!(f, "http://{addr}"),
        }
    }
}

impl Proxy {
    /// Opens a tunnel to `target` (`host:port`; names are resolved by the proxy).
    pub async fn connect(&self, target: &str) -> Result<TcpStream, TransportError> {
        let (Proxy::Socks5 { addr, .. } | Proxy::Http { addr }) = self;
        let mut tcp =
            TcpStream::connect(addr.as_str()).await.map_err(|e| TransportError::Proxy(format!("{self}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match self {
            Proxy::Socks5 { auth, .. } => {
                let auth = auth.as_ref().map(|(u, p)| (u.as_bytes().to_vec(), p.as_bytes().to_vec()));
                socks5_connect(&mut tcp, target, auth).await?;
            }
            Proxy::Http { .. } => http_connect(&mut tcp, target).await?,
        }
        Ok(tcp)
    }
}

/// The SOCKS5 request for `target`, which may be `IP:PORT` or `name:port`.
fn socks5_target(target: &str) -> Result<Vec<u8>, TransportError> {
    let bad = || TransportError::BadEndpoint(target.into());
    let mut out = vec![5, 1, 0];
    if let Ok(addr) = target.parse::<SocketAddr>() {
        match addr {
            SocketAddr::V4(a) => {
                out.push(1);
                out.extend_from_slice(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                out.push(4);
                out.extend_from_slice(&a.ip().octets());
            }
        }
        out.extend_from_slice(&addr.port().to_be_bytes());
        return Ok(out);
    }
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    out.push(3);
    out.push(u8::try_from(host.len()).map_err(|_| bad())?);
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    Ok(out)
}

/// Runs the SOCKS5 handshake on an open stream. `auth` is sent with RFC 1929 when given.
pub async fn socks5_connect(
    io: &mut (impl AsyncRead + AsyncWrite + Unpin),
    target: &str,
    auth: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<(), TransportError> {
    let err = |what: &str| TransportError::Proxy(format!("SOCKS5: {what}"));
    let io_err = |e: std::io::Error| TransportError::Proxy(format!("SOCKS5: {e}"));
    let method = if auth.is_some() { 2 } else { 0 };
    io.write_all(&[5, 1, method]).await.map_err(io_err)?;
    let mut reply = [0u8; 2];
    io.read_exact(&mut reply).await.map_err(io_err)?;
    if reply[0] != 5 || reply[1] != method {
        return Err(err("the proxy refused our authentication method"));
    }
    if let Some((user, pass)) = auth {
        let (Ok(ul), Ok(pl)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
            return Err(err("credentials longer than 255 bytes"));
        };
        let mut msg = vec![1, ul];
        msg.extend_from_slice(&user);
        msg.push(pl);
        msg.extend_from_slice(&pass);
        io.write_all(&msg).await.map_err(io_err)?;
        io.read_exact(&mut reply).await.map_err(io_err)?;
        if reply[1] != 0 {
            return Err(err("the proxy refused our credentials"));
        }
    }
    io.write_all(&socks5_target(target)?).await.map_err(io_err)?;
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await.map_err(io_err)?;
    if head[1] != 0 {
        let why = match head[1] {
            2 => "not allowed by the proxy's rules",
            3 => "network unreachable from the proxy",
            4 => "host unreachable from the proxy",
            5 => "connection refused at the far end",
            6 => "TTL expired",
            _ => "the proxy could not connect",
        };
        return Err(TransportError::Connect { endpoint: target.into(), reason: format!("via SOCKS5: {why}") });
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            io.read_exact(&mut len).await.map_err(io_err)?;
            usize::from(len[0]) + 2
        }
        _ => return Err(err("unreadable reply")),
    };
    let mut skip = vec![0u8; rest];
    io.read_exact(&mut skip).await.map_err(io_err)?;
    Ok(())
}

/// Runs an HTTP CONNECT on an open stream, reading the reply head byte by byte so no tunnel
/// byte is consumed.
async fn http_connect(io: &mut (impl AsyncRead + AsyncWrite + Unpin), target: &str) -> Result<(), TransportError> {
    let io_err = |e: std::io::Error| TransportError::Proxy(format!("HTTP CONNECT: {e}"));
    io.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.map_err(io_err)?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(TransportError::Proxy("HTTP CONNECT: reply head too long".into()));
        }
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await.map_err(io_err)?;
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or_default().to_string();
    if status != "200" {
        return Err(TransportError::Connect {
            endpoint: target.into(),
            reason: format!("via HTTP proxy: status {status}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse() {
        assert_eq!(
            "socks5://192.0.2.108:1080".parse::<Proxy>().unwrap(),
            Proxy::Socks5 { addr: "192.0.2.108:1080".into(), auth: None }
        );
        assert_eq!(
            "socks5h://u:p@proxy.example:1080/".parse::<Proxy>().unwrap(),
            Proxy::Socks5 { addr: "proxy.example:1080".into(), auth: Some(("u".into(), "p".into())) }
        );
        assert_eq!("http://127.0.0.1:3128".parse::<Proxy>().unwrap(), Proxy::Http { addr: "127.0.0.1:3128".into() });
        for bad in ["socks4://1.2.3.4:1", "1.2.3.4:1080", "socks5://host", "ftp://1.2.3.4:21"] {
            assert!(bad.parse::<Proxy>().is_err(), "{bad}");
        }
    }

    /// A SOCKS5 server in a task: checks the handshake and then echoes.
    #[tokio::test]
    async fn socks5_handshake_with_credentials_reaches_the_target() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 3];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [5, 1, 2]);
            s.write_all(&[5, 2]).await.unwrap();
            let mut v = [0u8; 2];
            s.read_exact(&mut v).await.unwrap();
            let mut user = vec![0u8; usize::from(v[1])];
            s.read_exact(&mut user).await.unwrap();
            let mut pl = [0u8; 1];
            s.read_exact(&mut pl).await.unwrap();
            let mut pass = vec![0u8; usize::from(pl[0])];
            s.read_exact(&mut pass).await.unwrap();
            s.write_all(&[1, 0]).await.unwrap();
            let mut req = [0u8; 10];
            s.read_exact(&mut req).await.unwrap();
            assert_eq!(&req[..4], &[5, 1, 0, 1]);
            s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
            (user, pass)
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        socks5_connect(&mut tcp, "203.0.113.10:443", Some((b"cert=x;iat-mode=0".to_vec(), vec![0]))).await.unwrap();
        let (user, pass) = server.await.unwrap();
        assert_eq!(user, b"cert=x;iat-mode=0");
        assert_eq!(pass, vec![0]);
    }
}
