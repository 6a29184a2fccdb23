//! Ways through, in memory: racing past a dead endpoint, a bridge, and a connection that
//! freezes after 16 KB like the censors' "16 KB freeze".
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tamizdat_client::{Client, doctor_link, relay::RelayClient};
use tamizdat_relay::testing::spawn_relay;
use tamizdat_transport::{
    bridge,
    diagnose::{self, Verdict},
    dial::Dialer,
    dns::Resolver,
};
use tamizdat_wire::{endpoint::Endpoint, proto::RelayDescriptor};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const PASS: &str = "correct horse battery staple";

fn with_endpoints(d: &RelayDescriptor, endpoints: &[String]) -> RelayDescriptor {
    RelayDescriptor { endpoints: endpoints.to_vec(), ..d.clone() }
}

/// A port that accepts TCP (the kernel completes the handshake) but never answers: what a
/// censor that drops packets after the SYN looks like.
async fn silent_port() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[tokio::test]
async fn a_dead_first_endpoint_costs_a_stagger_not_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = spawn_relay(dir.path()).await;
    let (_silent, dead) = silent_port().await;
    let d = with_endpoints(&d, &[dead.to_string(), addr.to_string()]);
    let started = Instant::now();
    let rc = RelayClient::connect(&d).await.unwrap();
    assert_eq!(rc.endpoint(), addr.to_string());
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_bridge_forwards_to_the_relay_and_its_link_lists_it_first() {
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = spawn_relay(dir.path()).await;
    let d = with_endpoints(&d, &[addr.to_string()]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bridge_addr = listener.local_addr().unwrap();
    let dialer = Arc::new(Dialer::from_env(dir.path().join("pt")).unwrap());
    tokio::spawn(bridge::serve(listener, d.clone(), dialer));
    let link = bridge::bridge_link(&d, &bridge_addr.to_string()).unwrap();
    let via = RelayDescriptor::from_link(&link).unwrap();
    assert_eq!(via.endpoints, vec![bridge_addr.to_string(), addr.to_string()]);
    // Only the bridge: the connection can only go through it.
    let only_bridge = with_endpoints(&d, &[bridge_addr.to_string()]);
    let rc = RelayClient::connect(&only_bridge).await.unwrap();
    assert_eq!(rc.endpoint(), bridge_addr.to_string());
}

/// Forwards to `upstream`, but passes only the first `limit` bytes from server to client on
/// each connection; after that the connection stays open and silent.
async fn freezing_proxy(upstream: SocketAddr, limit: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (client, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut passed = 0;
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let allowed = n.min(limit - passed);
                    if allowed > 0 && cw.write_all(&buf[..allowed]).await.is_err() {
                        break;
                    }
                    passed += allowed;
                    if passed == limit {
                        // Frozen: hold the connection until the client gives up on it.
                        let _ = up.await;
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncing_through_a_16_kb_freeze_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = spawn_relay(dir.path()).await;
    let frozen = freezing_proxy(addr, 16_000).await;
    let link = with_endpoints(&d, &[frozen.to_string()]).to_link();
    let mut alice = Client::init(&dir.path().join("alice"), PASS, "Alice", &link).await.unwrap();
    let mut bob = Client::init(&dir.path().join("bob"), PASS, "Bob", &link).await.unwrap();
    let invite = alice.invite(3600).unwrap();
    bob.accept(&invite, None).await.unwrap();
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    let count = 100;
    for i in 0..count {
        alice.send("Bob", &format!("message {i} with some words to make it longer than a few bytes")).await.unwrap();
    }
    let started = Instant::now();
    let report = bob.sync().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let got = bob.messages("Alice").unwrap().into_iter().filter(|m| m.kind == "text").count();
    assert_eq!(got, count, "every message crossed the freeze");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

/// An address where nothing listens: connections are refused, like a censor's reset.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_names_each_kind_of_trouble() {
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = spawn_relay(&dir.path().join("a")).await;
    let (_, impostor) = spawn_relay(&dir.path().join("b")).await;
    let frozen = freezing_proxy(addr, 16_000).await;
    let refused = closed_port().await;
    let endpoints = [addr, frozen, refused, impostor].map(|a| a.to_string());
    let report = doctor_link(&with_endpoints(&d, &endpoints).to_link(), None).await.unwrap();
    let verdicts: Vec<Verdict> = report.endpoints.iter().map(|e| e.verdict).collect();
    assert_eq!(
        verdicts,
        [Verdict::Ok, Verdict::Freeze, Verdict::IpBlocking, Verdict::TlsBlocking],
        "{:#?}",
        report.endpoints
    );
    assert_eq!(report.endpoints[3].detail, "the certificate is not the relay's");
    assert_eq!(report.working, endpoints[..2].to_vec(), "a frozen path still carries messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_way_that_worked_is_tried_first_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = spawn_relay(dir.path()).await;
    let refused = closed_port().await;
    let link = with_endpoints(&d, &[refused.to_string(), addr.to_string()]).to_link();
    let mut alice = Client::init(&dir.path().join("alice"), PASS, "Alice", &link).await.unwrap();
    assert_eq!(alice.relay_endpoints().unwrap()[0].endpoint, refused.to_string(), "nothing remembered yet");
    let report = alice.sync().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let known = alice.relay_endpoints().unwrap();
    assert_eq!(known[0].endpoint, addr.to_string());
    assert!(known[0].last_ok.is_some());
    assert_eq!(known[1].last_ok, None);
}

/// A DNS-over-TCP server that answers every question with one A record: `ip`.
async fn dns_over_tcp(ip: Ipv4Addr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let len = s.read_u16().await.unwrap();
                let mut answer = vec![0; usize::from(len)];
                s.read_exact(&mut answer).await.unwrap();
                answer[2] |= 0x80; // a response, keeping the query's id and question
                answer[6..8].copy_from_slice(&1u16.to_be_bytes());
                // The name points back at the question; type A, class IN, TTL 60, 4 bytes.
                answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                answer.extend_from_slice(&ip.octets());
                let mut msg = u16::try_from(answer.len()).unwrap().to_be_bytes().to_vec();
                msg.extend_from_slice(&answer);
                s.write_all(&msg).await.unwrap();
            });
        }
    });
    addr
}

/// A censor in front of `upstream` that reads each connection's first TLS record (the
/// ClientHello, however many packets it spans) and closes connections whose hello carries
/// `name`, after letting the first `let_through` such connections pass.
async fn name_cutting_proxy(upstream: SocketAddr, name: &'static str, let_through: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let named = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (mut client, _) = l.accept().await.unwrap();
            let named = named.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 5];
                if client.read_exact(&mut head).await.is_err() {
                    return;
                }
                let mut hello = head.to_vec();
                hello.resize(5 + usize::from(u16::from_be_bytes([head[3], head[4]])), 0);
                if client.read_exact(&mut hello[5..]).await.is_err() {
                    return;
                }
                let names_it = hello.windows(name.len()).any(|w| w == name.as_bytes());
                if names_it && named.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= let_through {
                    return; // dropping the socket cuts the handshake
                }
                let mut server = TcpStream::connect(upstream).await.unwrap();
                if server.write_all(&hello).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// A censor that matches the relay's name in single packets misses a ClientHello that splits
/// it, so a check can see one handshake pass and the next be cut. Both that and a censor
/// that cuts every named handshake are SNI blocking; the same path without a censor is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_tells_sni_blocking_even_when_only_some_handshakes_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = spawn_relay(dir.path()).await;
    let dns = dns_over_tcp(Ipv4Addr::LOCALHOST).await;
    let dialer = Dialer {
        resolver: Resolver::new(&[], &[dns.to_string()], None).unwrap(),
        ..Dialer::from_env(dir.path().join("pt")).unwrap()
    };
    for (let_through, verdict, step) in [
        (usize::MAX, Verdict::Ok, None),
        (0, Verdict::SniBlocking, Some("tls")),
        (1, Verdict::SniBlocking, Some("throughput")),
    ] {
        let proxy = name_cutting_proxy(addr, "localhost", let_through).await;
        let endpoint = Endpoint::Domain { host: "localhost".into(), port: proxy.port() };
        let report = diagnose::check(&dialer, &d, &endpoint).await;
        assert_eq!(report.verdict, verdict, "letting {let_through} through: {report:#?}");
        let failed = report.steps.iter().find(|s| !s.ok).map(|s| s.step);
        assert_eq!(failed, step, "letting {let_through} through: {report:#?}");
    }
}
