//! `tamizdat doctor`: what happens on the way to a relay, step by step, and what it means.
//!
//! For each endpoint, the steps a connection takes are tried one at a time and timed: name
//! lookup (the network's resolver against DNS-over-HTTPS and DNS over TCP), TCP, TLS with the
//! relay's pin, the protocol door, and a download from the relay's cover site that shows
//! throttling and the freezes some censors apply to busy connections. The outcome is
//! classified the way OONI classifies web blocking (`dns`, `tcp_ip`, `http-failure`, …), in
//! the terms of this threat model, with advice a non-expert can follow.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde::Serialize;
use tamizdat_wire::{endpoint::Endpoint, proto::RelayDescriptor};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::timeout,
};

use crate::{TransportError, dial::Dialer, dns::Answer};

/// The cover-site asset downloaded to measure throughput; big enough to cross a 16 KB freeze.
pub const PROBE_PATH: &str = "/images/ferns.jpg";
/// No byte for this long during the download means the connection froze.
const STALL: Duration = Duration::from_secs(4);
/// Below this rate (bits per second) the path counts as throttled.
const THROTTLED_BPS: f64 = 1_000_000.0;

/// What one endpoint's check concluded, from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Works, at full speed.
    Ok,
    /// The network's DNS lies about the relay's name (NXDOMAIN or a wrong address).
    DnsTampering,
    /// Works but slowly: the path is rate-limited.
    Throttling,
    /// Connections stop receiving after a few kilobytes, without a reset.
    Freeze,
    /// The TLS handshake is cut when it carries the relay's name, and passes without it.
    SniBlocking,
    /// TLS to the relay is cut whatever the name: DPI on the protocol or address.
    TlsBlocking,
    /// TCP to the address is dropped or reset.
    IpBlocking,
    /// Nothing answers (name unknown everywhere, proxy or transport missing).
    Unreachable,
}

impl Verdict {
    /// Whether Tamizdat can still carry messages over an endpoint with this verdict.
    pub fn usable(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::DnsTampering | Verdict::Throttling | Verdict::Freeze)
    }

    /// What it means and what Tamizdat does about it, for someone who is not a network expert.
    pub fn advice(self) -> &'static str {
        match self {
            Verdict::Ok => "works normally.",
            Verdict::DnsTampering => {
                "your network's DNS gives a false answer for the relay's name. Tamizdat asks encrypted DNS instead and checks the relay's certificate, so this is handled."
            }
            Verdict::Throttling => {
                "the connection is slowed down on purpose. Messages still go through; large files will be slow."
            }
            Verdict::Freeze => {
                "connections freeze after a few kilobytes. Tamizdat keeps every connection under that size and opens new ones as needed."
            }
            Verdict::SniBlocking => {
                "connections that name the relay are cut. Tamizdat connects by address instead, without the name."
            }
            Verdict::TlsBlocking => {
                "encrypted connections to this address are cut. Tamizdat tries bridges and pluggable transports (obfs4) instead."
            }
            Verdict::IpBlocking => {
                "the address is blocked. Tamizdat tries the relay's other addresses and bridges; ask a contact for a bridge link and add it with `tamizdat relay add LINK`."
            }
            Verdict::Unreachable => "could not be reached at all from here.",
        }
    }
}

/// One step of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// `dns`, `tcp`, `tls`, `protocol`, `throughput` or `cover-site`.
    pub step: &'static str,
    /// Whether it worked.
    pub ok: bool,
    /// What happened, in words.
    pub detail: String,
    /// How long it took.
    pub millis: u64,
}

/// The check of one endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointReport {
    /// The endpoint as the link lists it.
    pub endpoint: String,
    /// `direct`, the proxy, or the pluggable transport.
    pub transport: String,
    /// The conclusion.
    pub verdict: Verdict,
    /// The conclusion in a sentence.
    pub detail: String,
    /// Throughput of the download, when it finished.
    pub kbit_per_s: Option<u64>,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Checks every endpoint in turn.
pub async fn diagnose(dialer: &Dialer, relay: &RelayDescriptor, endpoints: &[Endpoint]) -> Vec<EndpointReport> {
    let mut out = Vec::new();
    for e in endpoints {
        out.push(check(dialer, relay, e).await);
    }
    out
}

struct Checker<'a> {
    dialer: &'a Dialer,
    relay: &'a RelayDescriptor,
    steps: Vec<Step>,
}

impl Checker<'_> {
    fn step(&mut self, step: &'static str, ok: bool, detail: impl Into<String>, started: Instant) {
        self.steps.push(Step { step, ok, detail: detail.into(), millis: ms(started) });
    }
}

/// Checks one endpoint.
pub async fn check(dialer: &Dialer, relay: &RelayDescriptor, endpoint: &Endpoint) -> EndpointReport {
    let transport = match (endpoint, &dialer.proxy) {
        (Endpoint::Pt(b), _) => b.transport.clone(),
        (_, Some(p)) => p.to_string(),
        (_, None) => "direct".into(),
    };
    let mut c = Checker { dialer, relay, steps: Vec::new() };
    let (verdict, detail, rate) = c.run(endpoint).await;
    EndpointReport {
        endpoint: endpoint.to_string(),
        transport,
        verdict,
        detail,
        kbit_per_s: rate.map(|bps| (bps / 1000.0) as u64),
        steps: c.steps,
    }
}

impl Checker<'_> {
    async fn run(&mut self, endpoint: &Endpoint) -> (Verdict, String, Option<f64>) {
        // 1. DNS, for domains reached directly: the network's answer against encrypted DNS.
        let mut dns_problem = None;
        let mut target = endpoint.clone();
        if let (Endpoint::Domain { host, port }, None) = (endpoint, &self.dialer.proxy) {
            match self.dns(host, *port).await {
                Ok((addr, problem)) => {
                    dns_problem = problem;
                    target = Endpoint::Ip(addr);
                }
                Err(why) => return (Verdict::Unreachable, why, None),
            }
        }
        // 2. TCP (through the proxy or transport, if any).
        let started = Instant::now();
        let stream = match self.dialer.open_stream(&target).await {
            Ok(s) => {
                self.step("tcp", true, "connected", started);
                s
            }
            Err(e) => {
                let detail = match &e {
                    TransportError::Timeout { .. } => {
                        "no answer to the connection attempt: packets are dropped".to_string()
                    }
                    TransportError::Connect { reason, .. } => format!("the connection was refused or reset ({reason})"),
                    other => other.to_string(),
                };
                self.step("tcp", false, detail.clone(), started);
                let verdict = match e {
                    TransportError::Setup(_) => Verdict::Unreachable,
                    TransportError::Proxy(_) if !matches!(endpoint, Endpoint::Pt(_)) => Verdict::Unreachable,
                    _ => Verdict::IpBlocking,
                };
                return (verdict, detail, None);
            }
        };
        // 3. TLS, with the name for domains; if that is cut, again without the name.
        let started = Instant::now();
        let (io, received) = crate::dial::counted(stream);
        let tls = match crate::dial::tls_handshake(self.relay, endpoint, io).await {
            Ok(t) => {
                self.step("tls", true, "handshake done; the certificate is the relay's", started);
                t
            }
            Err(e) => {
                let why = tls_failure(&e);
                self.step("tls", false, why.clone(), started);
                if self.cut_for_its_name(endpoint, &target).await {
                    let detail = format!("TLS naming the relay is cut ({why}); without the name it works");
                    return (Verdict::SniBlocking, detail, None);
                }
                return match (e, &dns_problem) {
                    (TransportError::WrongCertificate { .. }, Some(dns)) => (Verdict::DnsTampering, dns.clone(), None),
                    _ => (Verdict::TlsBlocking, why, None),
                };
            }
        };
        // 4. The protocol door, on the same connection.
        let started = Instant::now();
        match crate::dial::open_protocol(self.relay, endpoint, tls, received).await {
            Ok(conn) => {
                self.step("protocol", true, "the relay opened the protocol", started);
                conn.close().await;
            }
            Err(e) => {
                self.step("protocol", false, e.to_string(), started);
                return (Verdict::TlsBlocking, format!("the protocol did not open: {e}"), None);
            }
        }
        // 5. Throughput and freezes, downloading from the cover site (which is also what an
        //    active prober sees: the page must come back like any web site's).
        let (verdict, detail, rate) = self.throughput(endpoint, &target).await;
        match (dns_problem, verdict) {
            (Some(dns), Verdict::Ok) => (Verdict::DnsTampering, dns, rate),
            _ => (verdict, detail, rate),
        }
    }

    /// Resolves through every source; returns the address to use and a DNS problem, if the
    /// network's own answer disagrees with encrypted DNS.
    async fn dns(&mut self, host: &str, port: u16) -> Result<(SocketAddr, Option<String>), String> {
        let started = Instant::now();
        let mut trusted: Option<(Vec<IpAddr>, String)> = None;
        let mut system = Answer::Failed("not asked".into());
        for source in self.dialer.resolver.sources() {
            let answer = self.dialer.resolver.ask(&source, host).await;
            if source == crate::dns::Source::System {
                system = answer;
            } else if trusted.is_none()
                && let Answer::Addresses(a) = &answer
                && !a.is_empty()
            {
                trusted = Some((a.clone(), source.to_string()));
            }
        }
        let problem = match (&system, &trusted) {
            (Answer::NxDomain, Some((_, via))) => {
                Some(format!("the network's DNS says {host} does not exist; {via} knows it"))
            }
            (Answer::Addresses(sys), Some((good, via))) if !sys.iter().any(|a| good.contains(a)) => Some(format!(
                "the network's DNS answers {host} with {} but {via} with {}: a forged answer",
                list(sys),
                list(good)
            )),
            (Answer::Failed(why), Some((_, via))) => {
                Some(format!("the network's DNS fails for {host} ({why}); {via} knows it"))
            }
            _ => None,
        };
        let addrs = match (&trusted, &system) {
            (Some((a, _)), _) => a.clone(),
            (None, Answer::Addresses(a)) if !a.is_empty() => a.clone(),
            _ => {
                self.step("dns", false, format!("no resolver knows {host}"), started);
                return Err(format!("no resolver knows {host}, neither the network's nor encrypted DNS"));
            }
        };
        let detail = problem.clone().unwrap_or_else(|| format!("{host} is {}", list(&addrs)));
        self.step("dns", problem.is_none(), detail, started);
        Ok((SocketAddr::new(addrs[0], port), problem))
    }

    /// After a TLS handshake naming a domain endpoint was cut: whether one to the same
    /// address without the name works, so the name is what the network cuts.
    async fn cut_for_its_name(&self, endpoint: &Endpoint, target: &Endpoint) -> bool {
        if !matches!(endpoint, Endpoint::Domain { .. }) {
            return false;
        }
        let Ok(stream) = self.dialer.open_stream(target).await else { return false };
        crate::dial::tls_handshake(self.relay, target, Box::new(stream)).await.is_ok()
    }

    async fn throughput(&mut self, endpoint: &Endpoint, target: &Endpoint) -> (Verdict, String, Option<f64>) {
        let started = Instant::now();
        let (verdict, detail, rate) = match self.download(endpoint, target).await {
            Download::Done { body, took } => {
                let head_ok = body.starts_with(b"HTTP/1.1 200") && contains(&body, b"Server: nginx");
                let cover = if head_ok {
                    "without the door key the relay is an ordinary web site"
                } else {
                    "the cover site answered oddly"
                };
                self.step("cover-site", head_ok, cover, started);
                let bps = body.len() as f64 * 8.0 / took.as_secs_f64().max(0.001);
                let kbps = (bps / 1000.0) as u64;
                if bps < THROTTLED_BPS {
                    (Verdict::Throttling, format!("downloads run at {kbps} kbit/s"), Some(bps))
                } else {
                    (Verdict::Ok, format!("{kbps} kbit/s"), Some(bps))
                }
            }
            // Bytes came, then none for seconds and no reset: the freeze. (Nothing at all
            // would be a dead path, not a freeze.)
            Download::Stalled { raw_bytes } if raw_bytes > 1024 => (
                Verdict::Freeze,
                format!(
                    "the download stopped after {} KB with no reset: this network freezes busy connections",
                    raw_bytes / 1024
                ),
                None,
            ),
            Download::Stalled { .. } => (Verdict::Throttling, "the download got no byte at all".into(), None),
            // A censor that matches the name in single packets misses a handshake whose
            // ClientHello splits the name across two (rustls orders extensions at random, and
            // the post-quantum key share makes the hello longer than one packet): the first
            // handshake can pass and this one be cut.
            Download::HandshakeCut(why) if self.cut_for_its_name(endpoint, target).await => (
                Verdict::SniBlocking,
                format!("TLS naming the relay is cut at times ({why}); without the name it works"),
                None,
            ),
            Download::HandshakeCut(why) | Download::Failed(why) => {
                (Verdict::TlsBlocking, format!("the download was cut: {why}"), None)
            }
        };
        self.step("throughput", verdict == Verdict::Ok, detail.clone(), started);
        let detail = if verdict == Verdict::Ok { "works".into() } else { detail };
        (verdict, detail, rate)
    }

    /// Downloads [`PROBE_PATH`] on a fresh connection, counting raw bytes: a freeze can stop a
    /// connection in the middle of a TLS record, before one decrypted byte arrives.
    async fn download(&self, endpoint: &Endpoint, target: &Endpoint) -> Download {
        let stream = match self.dialer.open_stream(target).await {
            Ok(s) => s,
            Err(e) => return Download::Failed(e.to_string()),
        };
        let (io, received) = crate::dial::counted(stream);
        let mut tls = match crate::dial::tls_handshake(self.relay, endpoint, io).await {
            Ok(t) => t,
            Err(e) => return Download::HandshakeCut(e.to_string()),
        };
        let request = format!(
            "GET {PROBE_PATH} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            endpoint.authority()
        );
        if let Err(e) = tls.write_all(request.as_bytes()).await {
            return Download::Failed(e.to_string());
        }
        let began = Instant::now();
        let mut body = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match timeout(STALL, tls.read(&mut buf)).await {
                Err(_) => {
                    let raw_bytes = usize::try_from(received.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
                    return Download::Stalled { raw_bytes };
                }
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => body.extend_from_slice(&buf[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Ok(Err(e)) => return Download::Failed(e.to_string()),
            }
        }
        Download::Done { body, took: began.elapsed() }
    }
}

/// How the throughput download ended.
enum Download {
    /// The whole response, and how long it took from the request.
    Done { body: Vec<u8>, took: Duration },
    /// No byte for [`STALL`], after this many raw bytes on the connection.
    Stalled { raw_bytes: usize },
    /// The TLS handshake failed.
    HandshakeCut(String),
    /// An error after it (reset, closed), or no connection.
    Failed(String),
}

fn tls_failure(e: &TransportError) -> String {
    match e {
        TransportError::Timeout { .. } => "the TLS handshake got no answer".into(),
        TransportError::Cut { .. } => "the TLS handshake was reset".into(),
        TransportError::WrongCertificate { .. } => "the certificate is not the relay's".into(),
        TransportError::Tls { reason, .. } => format!("the TLS handshake failed ({reason})"),
        other => other.to_string(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn list(addrs: &[IpAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The whole report: every endpoint, an overall verdict and what Tamizdat will do.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The most telling verdict: `ok` only if every endpoint is fine.
    pub verdict: Verdict,
    /// The endpoints Tamizdat can use, best first.
    pub working: Vec<String>,
    /// Every endpoint's check.
    pub endpoints: Vec<EndpointReport>,
    /// What it all means, in words.
    pub advice: String,
}

impl Report {
    /// Sums up endpoint reports.
    pub fn new(endpoints: Vec<EndpointReport>) -> Self {
        let working: Vec<&EndpointReport> = endpoints.iter().filter(|e| e.verdict.usable()).collect();
        let verdict = endpoints.iter().map(|e| e.verdict).find(|v| *v != Verdict::Ok).unwrap_or(Verdict::Ok);
        let mut advice: Vec<String> = Vec::new();
        for e in endpoints.iter().filter(|e| e.verdict != Verdict::Ok) {
            advice.push(format!("{} ({}): {}", e.endpoint, e.transport, e.verdict.advice()));
        }
        match working.first() {
            Some(best) => advice.push(format!("Tamizdat will use {} ({}).", best.endpoint, best.transport)),
            None => advice.push(
                "No way to the relay works from this network. Add a bridge (`tamizdat relay add LINK`), a proxy (`--proxy socks5://…`) or a pluggable transport bridge line from someone you trust.".into(),
            ),
        }
        Self {
            verdict,
            working: working.iter().map(|e| e.endpoint.clone()).collect(),
            endpoints,
            advice: advice.join(" "),
        }
    }
}
