//! The endpoints a relay descriptor lists: where and how a relay can be reached.
//!
//! Three kinds, written as text so links stay readable in a debugger and bridge lines can be
//! pasted from anywhere:
//! - `203.0.113.10:443` or `[2001:db8::1]:443`: an IP literal, reached without DNS and without
//!   a server name in the TLS ClientHello;
//! - `relay.example.net:443`: a domain, resolved at connect time and sent as the TLS SNI;
//! - `obfs4 203.0.113.10:8443 cert=… iat-mode=0`: a Pluggable Transports bridge line in Tor's
//!   format: transport name, address, then `key=value` arguments for the transport.
//!
//! A bridge run with `tamizdat bridge serve` is an ordinary IP or domain endpoint: it forwards
//! TLS bytes to the relay, and the certificate pin still proves the far end is the relay.

use std::{fmt, net::SocketAddr, str::FromStr};

use crate::WireError;

/// Longest endpoint string a descriptor may carry.
pub const MAX_ENDPOINT_LEN: usize = 512;

/// One parsed endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name and port.
    Domain {
        /// The name, lower-cased.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A Pluggable Transports bridge.
    Pt(PtBridge),
}

/// A bridge reached through a Pluggable Transport (obfs4, webtunnel, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PtBridge {
    /// The transport's name as the PT binary knows it (`obfs4`).
    pub transport: String,
    /// Where the bridge listens.
    pub addr: SocketAddr,
    /// The per-bridge arguments (`cert`, `iat-mode`, …), in order.
    pub args: Vec<(String, String)>,
}

impl PtBridge {
    /// The arguments in the PT v1 SOCKS form: `k=v` pairs joined by `;`, with `\`, `=` and
    /// `;` inside keys and values escaped by a backslash.
    pub fn socks_args(&self) -> String {
        fn escape(s: &str) -> String {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                if matches!(c, '\\' | '=' | ';') {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
        self.args.iter().map(|(k, v)| format!("{}={}", escape(k), escape(v))).collect::<Vec<_>>().join(";")
    }
}

impl Endpoint {
    /// A short word for the kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Ip(_) => "ip",
            Endpoint::Domain { .. } => "domain",
            Endpoint::Pt(_) => "pt",
        }
    }

    /// `host:port` for the TLS layer (the pluggable transport's bridge address for PT).
    pub fn authority(&self) -> String {
        match self {
            Endpoint::Ip(a) => a.to_string(),
            Endpoint::Domain { host, port } => format!("{host}:{port}"),
            Endpoint::Pt(b) => b.addr.to_string(),
        }
    }
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && host.bytes().any(|b| b.is_ascii_alphabetic())
}

impl FromStr for Endpoint {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, WireError> {
        let s = s.trim();
        if s.is_empty() || s.len() > MAX_ENDPOINT_LEN {
            return Err(WireError::BadLink("an endpoint is empty or too long"));
        }
        let mut words = s.split_ascii_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some(second) = words.next() {
            let transport = first.to_ascii_lowercase();
            if transport.is_empty() || !transport.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(WireError::BadLink("a bridge line's transport name is not a word"));
            }
            let addr = second.parse().map_err(|_| WireError::BadLink("a bridge line's address is not IP:PORT"))?;
            let args = words
                .map(|w| {
                    w.split_once('=')
                        .filter(|(k, _)| !k.is_empty())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or(WireError::BadLink("a bridge line's argument is not key=value"))
                })
                .collect::<Result<_, _>>()?;
            return Ok(Endpoint::Pt(PtBridge { transport, addr, args }));
        }
        if let Ok(addr) = first.parse::<SocketAddr>() {
            return Ok(Endpoint::Ip(addr));
        }
        let (host, port) = first.rsplit_once(':').ok_or(WireError::BadLink("an endpoint is not HOST:PORT"))?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or(WireError::BadLink("an endpoint's port"))?;
        let host = host.to_ascii_lowercase();
        if !is_host_name(&host) {
            return Err(WireError::BadLink("an endpoint's host is neither an IP address nor a host name"));
        }
        Ok(Endpoint::Domain { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Ip(a) => write!(f, "{a}"),
            Endpoint::Domain { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Pt(b) => {
                write!(f, "{} {}", b.transport, b.addr)?;
                for (k, v) in &b.args {
                    write!(f, " {k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_parse_and_print_back() {
        for text in [
            "203.0.113.10:443",
            "[2001:db8::1]:8443",
            "relay.example.net:443",
            "obfs4 203.0.113.10:8443 cert=AbC+/x iat-mode=0",
        ] {
            let e: Endpoint = text.parse().unwrap();
            assert_eq!(e.to_string(), text);
        }
        assert_eq!("Relay.Example.NET:443".parse::<Endpoint>().unwrap().to_string(), "relay.example.net:443");
    }

    #[test]
    fn nonsense_is_refused() {
        for text in [
            "",
            "443",
            "host",
            "host:0",
            "host:99999",
            "-bad-.example:443",
            "a b",
            "obfs4 host:1",
            "ob fs4 1.2.3.4:5 x",
            "obfs4 1.2.3.4:5 =v",
            "exa mple.com:443 x=y",
        ] {
            assert!(text.parse::<Endpoint>().is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn socks_arguments_are_escaped() {
        let Endpoint::Pt(b) = "obfs4 1.2.3.4:5 cert=a=b;c iat-mode=0".parse().unwrap() else { panic!() };
        assert_eq!(b.socks_args(), "cert=a\\=b\\;c;iat-mode=0");
    }
}
