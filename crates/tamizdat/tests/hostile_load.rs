//! Hundreds of hostile connections (garbage, slowloris, connection floods, oversized and
//! malformed frames, replays, request floods) while two honest people keep chatting. The relay
//! stays up, its memory stays bounded, honest latency stays within a stated factor, and its
//! log and metrics name no id and no client address.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use prost::Message;
use tamizdat_client::Client;
use tamizdat_wire::{
    frame,
    proto::{ClientFrame, Command, Hello, Op, ReadQueue, RelayDescriptor},
};
use tokio::io::AsyncWriteExt;

/// Honest latency under attack may be at most this many times the quiet median (plus 50 ms
/// of scheduling slack on a 2-core machine that also runs the attackers).
const FACTOR: u32 = 5;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One honest round trip: Alice sends, Bob syncs until he has it.
async fn round_trips(alice: &mut Client, bob: &mut Client, n: usize, tag: &str) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..n {
        let text = format!("{tag} {i}");
        let start = Instant::now();
        alice.send("Bob", &text).await.unwrap();
        loop {
            let report = bob.sync().await.unwrap();
            if report.messages.iter().any(|m| m.text == text) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "honest message stuck");
        }
        out.push(start.elapsed());
    }
    out
}

async fn connect_from(ip: &str, to: SocketAddr) -> Option<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(format!("{ip}:0").parse().ok()?).ok()?;
    socket.connect(to).await.ok()
}

/// Raw TCP attackers from other loopback addresses, until `stop`.
fn raw_attackers(to: SocketAddr, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Slowloris: a TLS record header, then a byte now and then.
    for i in 0..300usize {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let ip = format!("127.0.0.{}", 2 + i % 4);
            let Some(mut s) = connect_from(&ip, to).await else { return };
            let _ = s.write_all(&[0x16, 0x03, 0x01]).await;
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&[0x02]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    // Garbage streams.
    for i in 0..100usize {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let chunk: Vec<u8> = (0..16_384).map(|j| (j * 7 + i) as u8).collect();
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut s) = connect_from("127.0.0.6", to).await {
                    while s.write_all(&chunk).await.is_ok() && !stop.load(Ordering::Relaxed) {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // A connection flood from one address: far past its limits.
    let flood_stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        let mut held = Vec::new();
        while !flood_stop.load(Ordering::Relaxed) && held.len() < 2000 {
            if let Some(s) = connect_from("127.0.0.7", to).await {
                held.push(s);
            }
        }
        while !flood_stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    tasks
}

/// Attackers that hold the relay link: oversized and malformed frames, replays, floods.
fn protocol_attackers(d: RelayDescriptor, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let hello = Command { op: Some(Op::Hello(Hello { min_version: 1, max_version: 1 })) }.encode_to_vec();
    (0..20usize)
        .map(|i| {
            let (d, stop, hello) = (d.clone(), stop.clone(), hello.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = tamizdat_transport::client::connect(&d).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let hello_frame =
                        frame::encode(&ClientFrame { request_id: 1, command: hello.clone(), signature: vec![] })
                            .unwrap();
                    match i % 4 {
                        0 => {
                            let _ = c.send(vec![0xAB; 300 * 1024]).await; // over the WebSocket limit
                        }
                        1 => {
                            let _ = c.send(vec![1, 2, 3]).await; // not a frame
                        }
                        2 => {
                            // A replayed, signed request from another connection.
                            let cmd = Command {
                                op: Some(Op::ReadQueue(ReadQueue {
                                    read_id: vec![9; 16],
                                    after: 0,
                                    limit: 10,
                                    max_bytes: 0,
                                })),
                            };
                            let replay = frame::encode(&ClientFrame {
                                request_id: 2,
                                command: cmd.encode_to_vec(),
                                signature: vec![5; 64],
                            })
                            .unwrap();
                            let _ = c.send(hello_frame).await;
                            for _ in 0..50 {
                                if c.send(replay.clone()).await.is_err() {
                                    break;
                                }
                            }
                        }
                        _ => {
                            // A request flood, pipelined without reading replies.
                            let cmd = Command {
                                op: Some(Op::ReadQueue(ReadQueue {
                                    read_id: vec![7; 16],
                                    after: 0,
                                    limit: 1,
                                    max_bytes: 0,
                                })),
                            };
                            let req = frame::encode(&ClientFrame {
                                request_id: 3,
                                command: cmd.encode_to_vec(),
                                signature: vec![],
                            })
                            .unwrap();
                            let _ = c.send(hello_frame).await;
                            for _ in 0..10_000 {
                                if c.send(req.clone()).await.is_err() {
                                    break;
                                }
                            }
                            // Keep reading the refusals until the relay hangs up.
                            while tokio::time::timeout(Duration::from_secs(2), c.recv()).await.is_ok_and(|r| r.is_ok())
                            {
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect()
}

#[test]
fn honest_people_keep_talking_under_attack() {
    let root = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let log = root.path().join("relay.log");
    let relay =
        RelayProc::start_logged(&root.path().join("relay"), None, &["--admin".into(), admin.to_string()], Some(&log));
    let (alice_home, bob_home) = {
        let (a, b) = pair(root.path(), &relay, "Alice", "Bob");
        (a.home, b.home)
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut alice = Client::open(&alice_home, PASSPHRASE).unwrap();
    let mut bob = Client::open(&bob_home, PASSPHRASE).unwrap();
    let pid = relay.child.id();

    let quiet = rt.block_on(round_trips(&mut alice, &mut bob, 20, "quiet"));
    let rss_quiet = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let to: SocketAddr = relay.addr.parse().unwrap();
    let d = RelayDescriptor::from_link(&relay.link).unwrap();
    let attackers: Vec<_> = {
        let _guard = rt.enter();
        raw_attackers(to, stop.clone()).into_iter().chain(protocol_attackers(d, stop.clone())).collect()
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut rss_peak = rss_kib(pid);
    let mut loud = Vec::new();
    for round in 0..4 {
        loud.extend(rt.block_on(round_trips(&mut alice, &mut bob, 5, &format!("loud {round}"))));
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for a in attackers {
            let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
        }
    });
    assert!(relay_alive(&relay), "the relay survived");
    let after = rt.block_on(round_trips(&mut alice, &mut bob, 5, "after"));

    let metrics = rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out).await.unwrap();
        out
    });
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("tamizdat_{name} ")))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (q, l) = (median(quiet), median(loud));
    eprintln!(
        "honest round trip: quiet p50 {q:?}, under attack p50 {l:?}, after p50 {:?}; relay RSS quiet {rss_quiet} KiB, peak {rss_peak} KiB; \
         connections {} (refused {}), malformed frames {}, rate-limited {}, refusals {}",
        median(after),
        counter("connections_total"),
        counter("connections_refused_total"),
        counter("malformed_frames_total"),
        counter("rate_limited_total"),
        counter("refusals_total"),
    );
    assert!(l <= q * FACTOR + Duration::from_millis(50), "honest latency {l:?} vs quiet {q:?}");
    assert!(rss_peak < 512 * 1024, "relay memory stayed bounded: {rss_peak} KiB");
    assert!(counter("connections_refused_total") > 0, "per-address limits refused the flood");
    assert!(counter("malformed_frames_total") > 0);
    assert!(counter("rate_limited_total") > 0, "the request flood hit the rate limit");

    // Nothing in the log or the metrics names a client address or an id.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.lines().count() > 3, "the relay logged at debug level");
    assert_no_ids_or_addresses("log", &log_text);
    assert_no_ids_or_addresses("metrics", &metrics);
}

fn relay_alive(relay: &RelayProc) -> bool {
    std::net::TcpStream::connect(&relay.addr).is_ok()
        && std::path::Path::new(&format!("/proc/{}", relay.child.id())).exists()
}
