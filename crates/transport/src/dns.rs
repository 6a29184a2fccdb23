//! Name lookups that do not trust the local network's DNS.
//!
//! Censors answer plain DNS themselves: NXDOMAIN for a removed name, a wrong address, or every
//! UDP/53 flow hijacked to their own resolver. So a domain endpoint is resolved, in order,
//! through DNS-over-HTTPS to resolvers addressed by IP (no lookup needed to reach them), DNS
//! over TCP, and only then the system resolver. Whatever answers, the relay's certificate pin
//! still decides: a poisoned address fails the handshake instead of reaching an impostor.
//!
//! The DNS messages are the few fields a lookup of A/AAAA records needs (RFC 1035 §4), read
//! defensively: a hostile answer is an error, never a panic.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::TlsConnector;

use crate::TransportError;

/// How long one resolver may take to answer.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(4);
/// Well-known public resolvers, by address, used when nothing else is configured.
pub const DEFAULT_DOH: [&str; 3] =
    ["https://1.1.1.1/dns-query", "https://9.9.9.9/dns-query", "https://8.8.8.8/dns-query"];
/// Well-known public resolvers for DNS over TCP.
pub const DEFAULT_DNS_TCP: [&str; 2] = ["8.8.8.8:53", "1.1.1.1:53"];

/// Where an answer came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// DNS-over-HTTPS at this URL.
    Doh(String),
    /// DNS over TCP to this server.
    Tcp(SocketAddr),
    /// The operating system's resolver (the network's DNS, usually the censor's).
    System,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Doh(url) => write!(f, "DNS-over-HTTPS {url}"),
            Source::Tcp(a) => write!(f, "DNS over TCP {a}"),
            Source::System => write!(f, "system resolver"),
        }
    }
}

/// What one resolver said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name's addresses.
    Addresses(Vec<IpAddr>),
    /// The resolver says the name does not exist.
    NxDomain,
    /// No answer (timeout, refused, unreadable).
    Failed(String),
}

/// A DNS-over-HTTPS resolver addressed by IP.
#[derive(Clone, Debug)]
struct DohServer {
    url: String,
    addr: SocketAddr,
    path: String,
}

impl DohServer {
    fn parse(url: &str) -> Result<Self, TransportError> {
        let bad = || TransportError::BadEndpoint(format!("DNS-over-HTTPS resolver {url:?} (want https://IP/path)"));
        let rest = url.trim().strip_prefix("https://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let addr = authority
            .parse::<SocketAddr>()
            .or_else(|_| authority.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 443)))
            .or_else(|_| {
                authority
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<Ipv6Addr>()
                    .map(|ip| SocketAddr::new(ip.into(), 443))
            })
            .map_err(|_| bad())?;
        Ok(Self { url: url.trim().to_string(), addr, path })
    }
}

/// Resolves host names without trusting the network's DNS.
#[derive(Clone)]
pub struct Resolver {
    doh: Vec<DohServer>,
    dns_tcp: Vec<SocketAddr>,
    tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("doh", &self.doh).field("dns_tcp", &self.dns_tcp).finish()
    }
}

impl Resolver {
    /// A resolver with these DoH URLs (`https://IP/dns-query`), DNS-over-TCP servers and an
    /// optional extra CA file (PEM) for a private DoH resolver.
    pub fn new(doh: &[String], dns_tcp: &[String], extra_ca: Option<&Path>) -> Result<Self, TransportError> {
        let doh = doh.iter().filter(|u| !u.trim().is_empty()).map(|u| DohServer::parse(u)).collect::<Result<_, _>>()?;
        let dns_tcp = dns_tcp
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                let a = a.trim();
                a.parse::<SocketAddr>()
                    .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| TransportError::BadEndpoint(format!("DNS-over-TCP server {a:?} (want IP:53)")))
            })
            .collect::<Result<_, _>>()?;
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| TransportError::Setup(format!("DoH CA file {}: {e}", path.display())))?;
            for cert in certs {
                roots.add(cert).map_err(|e| TransportError::Setup(format!("DoH CA file {}: {e}", path.display())))?;
            }
        }
        let tls = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { doh, dns_tcp, tls: Arc::new(tls) })
    }

    /// The resolver configured by `TAMIZDAT_DOH` (comma-separated URLs), `TAMIZDAT_DOH_CA` and
    /// `TAMIZDAT_DNS_TCP` (comma-separated), with the built-in public resolvers where unset.
    pub fn from_env() -> Result<Self, TransportError> {
        let list = |var: &str, default: &[&str]| -> Vec<String> {
            match std::env::var(var) {
                Ok(v) => v.split(',').map(str::to_string).collect(),
                Err(_) => default.iter().map(|s| s.to_string()).collect(),
            }
        };
        let ca = std::env::var_os("TAMIZDAT_DOH_CA").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
        Self::new(&list("TAMIZDAT_DOH", &DEFAULT_DOH), &list("TAMIZDAT_DNS_TCP", &DEFAULT_DNS_TCP), ca.as_deref())
    }

    /// Every source in bootstrap order.
    pub fn sources(&self) -> Vec<Source> {
        let mut out: Vec<Source> = self.doh.iter().map(|d| Source::Doh(d.url.clone())).collect();
        out.extend(self.dns_tcp.iter().map(|a| Source::Tcp(*a)));
        out.push(Source::System);
        out
    }

    /// Asks one source.
    pub async fn ask(&self, source: &Source, host: &str) -> Answer {
        let result = match source {
            Source::Doh(url) => match self.doh.iter().find(|d| &d.url == url) {
                Some(server) => timeout(LOOKUP_TIMEOUT, self.doh_lookup(server, host)).await,
                None => return Answer::Failed("unknown resolver".into()),
            },
            Source::Tcp(addr) => timeout(LOOKUP_TIMEOUT, tcp_lookup(*addr, host)).await,
            Source::System => timeout(LOOKUP_TIMEOUT, system_lookup(host)).await,
        };
        result.unwrap_or_else(|_| Answer::Failed("timed out".into()))
    }

    /// The first addresses any source gives, in bootstrap order. NXDOMAIN from one source is
    /// not believed while another may still answer.
    pub async fn resolve(&self, host: &str) -> Result<(Vec<IpAddr>, Source), TransportError> {
        let mut said = Vec::new();
        for source in self.sources() {
            match self.ask(&source, host).await {
                Answer::Addresses(a) if !a.is_empty() => return Ok((a, source)),
                Answer::Addresses(_) => said.push(format!("{source}: no address")),
                Answer::NxDomain => said.push(format!("{source}: no such name")),
                Answer::Failed(why) => said.push(format!("{source}: {why}")),
            }
        }
        Err(TransportError::Connect {
            endpoint: host.into(),
            reason: format!("name lookup failed ({})", said.join("; ")),
        })
    }

    async fn doh_lookup(&self, server: &DohServer, host: &str) -> Answer {
        let attempt = async {
            let tcp = TcpStream::connect(server.addr).await.map_err(|e| e.to_string())?;
            let name = ServerName::IpAddress(server.addr.ip().into());
            let mut tls = TlsConnector::from(self.tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
            let query = encode_query(host, RECORD_A);
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nAccept: application/dns-message\r\nContent-Type: application/dns-message\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                server.path,
                server.addr.ip(),
                query.len()
            );
            tls.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
            tls.write_all(&query).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let body = read_http_body(&mut tls).await?;
            Ok::<_, String>(body)
        };
        match attempt.await {
            Ok(body) => decode_answer(&body).unwrap_or_else(|e| Answer::Failed(e.into())),
            Err(e) => Answer::Failed(e),
        }
    }
}

/// IPv4 addresses are asked for; relays list IPv6 literals in their descriptors directly.
const RECORD_A: u16 = 1;

async fn tcp_lookup(addr: SocketAddr, host: &str) -> Answer {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let query = encode_query(host, RECORD_A);
        let mut msg = u16::try_from(query.len()).map_err(|_| "query too long")?.to_be_bytes().to_vec();
        msg.extend_from_slice(&query);
        tcp.write_all(&msg).await.map_err(|e| e.to_string())?;
        let len = tcp.read_u16().await.map_err(|e| e.to_string())?;
        let mut body = vec![0; usize::from(len)];
        tcp.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(body)
    };
    match attempt.await {
        Ok(body) => decode_answer(&body).unwrap_or_else(|e| Answer::Failed(e.into())),
        Err(e) => Answer::Failed(e),
    }
}

async fn system_lookup(host: &str) -> Answer {
    match tokio::net::lookup_host((host, 0)).await {
        Ok(addrs) => Answer::Addresses(addrs.map(|a| a.ip()).collect()),
        // getaddrinfo does not tell NXDOMAIN from other failures portably; its message does.
        Err(e) if e.to_string().contains("not known") || e.to_string().contains("No address") => Answer::NxDomain,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// Reads an HTTP/1.1 response to the end and returns its body, if the status is 200.
async fn read_http_body(io: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, String> {
    const MAX: usize = 64 * 1024;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match io.read(&mut chunk).await {
            Ok(n) => n,
            // Many servers close without a TLS close_notify; the body length still tells.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.to_string()),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(&buf) {
            if response.code != Some(200) {
                return Err(format!("HTTP status {}", response.code.unwrap_or(0)));
            }
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
            match length {
                Some(len) if buf.len() >= head + len => return Ok(buf[head..head + len].to_vec()),
                None if n == 0 => return Ok(buf[head..].to_vec()),
                _ => {}
            }
        }
        if n == 0 {
            return Err("the resolver closed the connection early".into());
        }
        if buf.len() > MAX {
            return Err("answer too long".into());
        }
    }
}

/// A recursive query for `host` of the given record type.
pub fn encode_query(host: &str, rtype: u16) -> Vec<u8> {
    let mut id = [0u8; 2];
    let _ = crate::tls::getrandom(&mut id);
    let mut out = Vec::with_capacity(32 + host.len());
    out.extend_from_slice(&id);
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in host.trim_end_matches('.').split('.') {
        let label = &label.as_bytes()[..label.len().min(63)];
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend_from_slice(label);
    }
    out.push(0);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // class IN
    out
}

/// Reads the addresses out of an answer.
pub fn decode_answer(msg: &[u8]) -> Result<Answer, &'static str> {
    let u16_at = |i: usize| -> Result<u16, &'static str> {
        msg.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or("truncated answer")
    };
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err("not a response");
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Answer::NxDomain),
        _ => return Ok(Answer::Failed(format!("resolver error code {}", flags & 0x000f))),
    }
    let questions = u16_at(4)?;
    let answers = u16_at(6)?;
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..answers {
        pos = skip_name(msg, pos)?;
        let rtype = u16_at(pos)?;
        let len = usize::from(u16_at(pos + 8)?);
        let data = msg.get(pos + 10..pos + 10 + len).ok_or("truncated record")?;
        match (rtype, data.len()) {
            (1, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]))),
            (28, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                addrs.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {}
        }
        pos += 10 + len;
    }
    Ok(Answer::Addresses(addrs))
}

/// The position after a (possibly compressed) name.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, &'static str> {
    loop {
        let len = *msg.get(pos).ok_or("truncated name")?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => return Ok(pos + 2),
            l if l & 0xc0 == 0 => pos += 1 + usize::from(l),
            _ => return Err("bad label"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(rcode: u8, ips: &[[u8; 4]]) -> Vec<u8> {
        let q = encode_query("relay.example.net", 1);
        let mut m = q.clone();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[7] = u8::try_from(ips.len()).unwrap();
        for ip in ips {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            m.extend_from_slice(ip);
        }
        m
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(
            decode_answer(&answer(0, &[[203, 0, 113, 10], [203, 0, 113, 11]])).unwrap(),
            Answer::Addresses(vec![IpAddr::from([203, 0, 113, 10]), IpAddr::from([203, 0, 113, 11])])
        );
        assert_eq!(decode_answer(&answer(3, &[])).unwrap(), Answer::NxDomain);
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let good = answer(0, &[[1, 2, 3, 4]]);
        for cut in 0..good.len() {
            let _ = decode_answer(&good[..cut]);
        }
        let mut looped = good.clone();
        looped[7] = 200; // claims 200 answers
        assert!(decode_answer(&looped).is_err());
        assert!(decode_answer(&encode_query("x.example", 1)).is_err(), "a query is not an answer");
    }

    #[test]
    fn doh_urls_must_name_an_address() {
        assert!(DohServer::parse("https://192.0.2.53/dns-query").is_ok());
        assert_eq!(DohServer::parse("https://192.0.2.53:8443/q").unwrap().addr.port(), 8443);
        assert!(DohServer::parse("https://dns.example/dns-query").is_err());
        assert!(DohServer::parse("http://192.0.2.53/dns-query").is_err());
    }
}
