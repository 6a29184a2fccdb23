//! One relay process holding more sessions than its open-file limit allows one descriptor
//! table, by serving them from shards (`relay serve --shards N`): every session works, what
//! one shard's session writes is pushed at once to subscribers on the others, and the relay
//! still stops cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use ed25519_dalek::SigningKey;
use tamizdat_client::relay::RelayClient;
use tamizdat_relay::testing::mls_message;
use tamizdat_wire::proto::{Append, CreateLog, Op, RelayDescriptor, Reply, Subscribe};

/// The relay's open-file limit: far fewer than the sessions it is asked to hold.
const OPEN_FILES: u32 = 128;
const SHARDS: usize = 6;
const SESSIONS: usize = 250;

fn metrics(admin: SocketAddr) -> HashMap<String, f64> {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("tamizdat_"))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.trim_start_matches("tamizdat_").to_string(), v.parse().unwrap()))
        .collect()
}

fn open_file_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string()
}

#[test]
fn one_process_holds_more_sessions_than_its_open_file_limit() {
    let root = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = root.path().join("relay.toml");
    // Every session comes from 127.0.0.1: lift the per-address limits.
    std::fs::write(
        &config,
        "[limits]\nconnections_per_address = 100000\nnew_connections_per_second = 100000.0\n\
         new_connections_burst = 100000.0\n",
    )
    .unwrap();
    let log = root.path().join("relay.log");
    let extra: Vec<String> =
        ["--shards", &SHARDS.to_string(), "--admin", &admin.to_string(), "--config", config.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut relay = RelayProc::start_limited(&root.path().join("relay"), &extra, OPEN_FILES, &log);
    let limit = open_file_limit(relay.child.id());
    assert!(limit.split_whitespace().filter(|w| *w == OPEN_FILES.to_string()).count() == 2, "{limit}");
    let mut d = RelayDescriptor::from_link(&relay.link).unwrap();
    d.endpoints = vec![relay.addr.clone()];

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        // Opened one after another: each is a TLS + WebSocket session that answered hello.
        let mut clients = Vec::new();
        for i in 0..SESSIONS {
            let c = tokio::time::timeout(Duration::from_secs(10), RelayClient::connect(&d))
                .await
                .map_err(|_| "no answer in 10 s".to_string())
                .and_then(|c| c.map_err(|e| e.to_string()))
                .unwrap_or_else(|e| {
                    panic!("session {i} of {SESSIONS}: {e}; relay log: {}", std::fs::read_to_string(&log).unwrap())
                });
            clients.push(c);
        }
        let m = metrics(admin);
        assert_eq!(m["sessions_open"], SESSIONS as f64, "{m:?}");
        let per_shard: Vec<f64> = (0..SHARDS).map(|i| m[&format!("shard_connections_open{{shard=\"{i}\"}}")]).collect();
        assert_eq!(per_shard.iter().sum::<f64>(), SESSIONS as f64, "{per_shard:?}");
        assert!(per_shard.iter().all(|&n| n < f64::from(OPEN_FILES)), "each shard within the limit: {per_shard:?}");

        // A log written from the last session, watched from sessions spread over the rest
        // (and so over the shards, which fill as connections arrive).
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let mut writer = clients.pop().unwrap();
        let Reply::LogCreated(created) = writer
            .call(Op::CreateLog(CreateLog { log_key: key.verifying_key().to_bytes().to_vec() }), Some(&key))
            .await
            .unwrap()
        else {
            panic!("no log")
        };
        let log_id = created.log_id;
        let (mut readers, mut _idle) = (Vec::new(), Vec::new());
        for (i, c) in clients.into_iter().enumerate() {
            if i % 20 == 0 { readers.push(c) } else { _idle.push(c) }
        }
        for r in &mut readers {
            r.subscribe(Subscribe { log_id: log_id.clone(), read_id: vec![], entries: true }, &key).await.unwrap();
        }
        for round in 0..3u8 {
            let op = Op::Append(Append {
                log_id: log_id.clone(),
                dedup_id: vec![round; 16],
                payload: mls_message(0, 1, round),
            });
            let Reply::Appended(a) = writer.call(op, Some(&key)).await.unwrap() else { panic!("not appended") };
            for (n, r) in readers.iter_mut().enumerate() {
                let notice = tokio::time::timeout(Duration::from_secs(5), r.next_notice())
                    .await
                    .unwrap_or_else(|_| panic!("reader {n} was not told of entry {} in time", a.seq))
                    .unwrap();
                assert_eq!((notice.id.as_slice(), notice.seq), (log_id.as_slice(), a.seq));
            }
        }
    });
    drop(runtime);

    // SIGTERM: the shards stop, and the writer finishes.
    let started = Instant::now();
    assert!(std::process::Command::new("kill").arg(relay.child.id().to_string()).status().unwrap().success());
    let status = relay.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap());
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("all acknowledged writes are on disk"), "{log}");
}
