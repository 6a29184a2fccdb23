//! Connection-level measurements: TLS handshakes per second (full and resumed) and a reconnect
//! storm, and the session opening that the idle measurement shares.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use prost::Message;
use rustls::{ClientConfig, HandshakeKind, client::Resumption, pki_types::ServerName};
use serde::Serialize;
use tamizdat_transport::{
    client::Connection,
    dial::{counted, open_protocol, tls_handshake_with},
    endpoint::Endpoint,
    tls::pinned_client_config,
};
use tamizdat_wire::{
    frame,
    limits::{MAX_VERSION, MIN_VERSION},
    proto::{ClientFrame, Command, Hello, Op, RelayDescriptor, Reply, ServerFrame},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{relay_proc::RelayProcess, stats::percentile};

/// Sessions opened from one source address. A socket bound to port 0 before it connects gets
/// a port of its own, and the kernel's search for a free one most likely slows as the
/// address's share of the ephemeral range (32768–60999 here) fills: at 20,000 per address,
/// 19,900 sessions took 41.8 s to open; at 8,000, 18,900 took 6.9 s.
pub const PER_SOURCE: usize = 8_000;

/// A relay's plain IP endpoint and its descriptor.
pub(crate) fn target(relay: &RelayProcess) -> anyhow::Result<(RelayDescriptor, SocketAddr)> {
    let d = RelayDescriptor::from_link(&relay.link)?;
    let addr = d
        .parsed_endpoints()
        .into_iter()
        .find_map(|e| match e {
            Endpoint::Ip(a) => Some(a),
            _ => None,
        })
        .context("the relay link has no IP endpoint")?;
    Ok((d, addr))
}

/// The `i`-th loopback source address (127.0.0.2 onwards), so that connection counts are not
/// capped by one address's ports.
pub(crate) fn source(i: usize, per_source: usize) -> Ipv4Addr {
    let n = (i / per_source) as u32 + 2;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n)
}

async fn tcp_from(src: Ipv4Addr, to: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((src, 0)))?;
    let tcp = socket.connect(to).await?;
    // As the client's own dialer does: small writes leave at once.
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// TCP from `src`, TLS with `config`, the WebSocket upgrade and the protocol hello: a session
/// the relay holds.
pub(crate) async fn open_session(
    d: &RelayDescriptor,
    to: SocketAddr,
    src: Ipv4Addr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<Connection> {
    let endpoint = Endpoint::Ip(to);
    let (io, received) = counted(tcp_from(src, to).await?);
    let tls = tls_handshake_with(config, ServerName::IpAddress(to.ip().into()), to.to_string(), io).await?;
    let mut conn = open_protocol(d, &endpoint, tls, received).await?;
    let hello = Command { op: Some(Op::Hello(Hello { min_version: MIN_VERSION, max_version: MAX_VERSION })) };
    conn.send(frame::encode(&ClientFrame { request_id: 1, command: hello.encode_to_vec(), signature: vec![] })?)
        .await?;
    let reply: ServerFrame = frame::decode(&conn.recv().await?)?;
    if !matches!(reply.reply, Some(Reply::HelloOk(_))) {
        bail!("no hello from the relay");
    }
    Ok(conn)
}

pub(crate) fn client_config(d: &RelayDescriptor, resume: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let mut config = (*pinned_client_config(&d.cert_sha256)?).clone();
    config.resumption = if resume { Resumption::in_memory_sessions(4096) } else { Resumption::disabled() };
    Ok(Arc::new(config))
}

/// TLS handshakes per second.
#[derive(Debug, Serialize)]
pub struct Handshakes {
    /// Full handshakes (no resumption) per second, each with one front-page request.
    pub full_per_second: f64,
    /// Relay CPU during them (percent of one core).
    pub full_relay_cpu_percent: f64,
    /// Handshakes per second with a client that keeps session tickets.
    pub resumed_per_second: f64,
    /// Of those, the share that did resume (the rest fell back to a full handshake).
    pub resumed_share: f64,
    /// Relay CPU during them.
    pub resumed_relay_cpu_percent: f64,
}

/// TCP + TLS handshakes, each followed by one request for the cover site's front page,
/// `parallel` at a time, for `seconds` each way.
pub async fn handshakes(relay: &RelayProcess, seconds: f64, parallel: usize) -> anyhow::Result<Handshakes> {
    let (d, to) = target(relay)?;
    let mut rates = Vec::new();
    for resume in [false, true] {
        let config = client_config(&d, resume)?;
        let before = relay.usage();
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(seconds);
        let done = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for p in 0..parallel {
            let (config, done, resumed) = (config.clone(), done.clone(), resumed.clone());
            tasks.push(tokio::spawn(async move {
                let mut k = 0usize;
                while Instant::now() < deadline {
                    // Spread over source addresses: closed connections wait in TIME_WAIT.
                    let src = source(10 + (p + k * parallel) % 64, 1);
                    k += 1;
                    let Ok(tcp) = tcp_from(src, to).await else { continue };
                    let (io, _) = counted(tcp);
                    let name = ServerName::IpAddress(to.ip().into());
                    if let Ok(mut tls) = tls_handshake_with(config.clone(), name, to.to_string(), io).await {
                        // One request for the front page, as a browser would make: the relay
                        // sends its session tickets with its first bytes, so a client that
                        // hangs up without a reply has nothing to resume with.
                        if first_response(&mut tls).await.is_err() {
                            continue;
                        }
                        if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed) as f64;
        let share = resumed.load(Ordering::Relaxed) as f64 / n.max(1.0);
        rates.push((n / elapsed, before.cpu_percent(relay.usage(), elapsed), share));
    }
    Ok(Handshakes {
        full_per_second: rates[0].0,
        full_relay_cpu_percent: rates[0].1,
        resumed_per_second: rates[1].0,
        resumed_relay_cpu_percent: rates[1].1,
        resumed_share: rates[1].2,
    })
}

/// Asks for `/` and reads the start of the answer.
async fn first_response(tls: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> std::io::Result<()> {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let mut buf = [0u8; 1024];
    match tls.read(&mut buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// Every client of a relay reconnecting at once.
#[derive(Debug, Serialize)]
pub struct Storm {
    /// Clients.
    pub clients: usize,
    /// Sessions back (TLS, WebSocket, hello) at the end.
    pub reconnected: usize,
    /// Until the last one was back.
    pub all_back_seconds: f64,
    /// Time to reconnect, per client.
    pub reconnect_ms_p50: f64,
    /// 99th percentile.
    pub reconnect_ms_p99: f64,
}

/// Opens `n` sessions, drops them all at once, and reconnects all of them at once with full
/// handshakes (a relay restart, or a network that cut everyone).
pub async fn storm(relay: &RelayProcess, n: usize) -> anyhow::Result<Storm> {
    let (d, to) = target(relay)?;
    let config = client_config(&d, false)?;
    let first: Vec<Connection> = stream::iter(0..n)
        .map(|i| open_session(&d, to, source(100 + i, PER_SOURCE), config.clone()))
        .buffer_unordered(256)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (d, config) = (d.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            // A client retries until it is back, as a real one would.
            for _ in 0..20 {
                if let Ok(conn) = open_session(&d, to, source(100 + n + i, PER_SOURCE), config.clone()).await {
                    return Some((t0.elapsed(), conn));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        }));
    }
    let mut times = Vec::new();
    let mut held = Vec::new();
    for t in tasks {
        if let Some((d, conn)) = t.await? {
            times.push(d);
            held.push(conn);
        }
    }
    let all_back_seconds = start.elapsed().as_secs_f64();
    times.sort_unstable();
    Ok(Storm {
        clients: n,
        reconnected: times.len(),
        all_back_seconds,
        reconnect_ms_p50: percentile(&times, 0.5).as_secs_f64() * 1e3,
        reconnect_ms_p99: percentile(&times, 0.99).as_secs_f64() * 1e3,
    })
}
