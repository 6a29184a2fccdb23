//! One relay process holding more sessions than its open-file limit allows one descriptor
//! table, by serving them from shards (`relay serve --shards N`), on either store: every
//! session works, concurrent reads from every shard work, what one shard's session writes is
//! pushed at once to subscribers on the others, no shard's table ever holds the store's
//! files or database connections, and the relay still stops cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io::{Read, Write},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use common::*;
use ed25519_dalek::SigningKey;
use tamizdat_client::relay::RelayClient;
use tamizdat_relay::testing::{Kind, TestDb, mls_message};
use tamizdat_wire::proto::{Append, CreateLog, Op, ReadLog, RelayDescriptor, Reply, Subscribe};

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

fn per_shard(m: &HashMap<String, f64>) -> Vec<f64> {
    (0..SHARDS).map(|i| m[&format!("shard_connections_open{{shard=\"{i}\"}}")]).collect()
}

fn open_file_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string()
}

/// Socket inodes of TCP sockets whose `field` (1 local, 2 remote address) has `port`, in
/// TCP state `state` if given (`0A` is listening).
fn tcp_sockets(field: usize, port: u16, state: Option<&str>) -> HashSet<String> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9
                && fields[field].ends_with(&format!(":{port:04X}"))
                && state.is_none_or(|s| fields[3] == s)
            {
                inodes.insert(fields[9].to_string());
            }
        }
    }
    inodes
}

/// Each thread's name and what its descriptor table holds, for the relay's main thread and
/// its shards.
fn tables(pid: u32) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let main = task.file_name().unwrap().to_string_lossy() == pid.to_string();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default().trim().to_string();
        if !main && !comm.starts_with("shard-") {
            continue;
        }
        let links = std::fs::read_dir(task.join("fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .map(|l| l.to_string_lossy().to_string())
            .collect();
        out.push((if main { "main".to_string() } else { comm }, links));
    }
    out
}

fn socket_in(link: &str, inodes: &HashSet<String>) -> bool {
    link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')).is_some_and(|i| inodes.contains(i))
}

/// What the shards' descriptor tables hold of the store (files of `db`, or sockets to
/// PostgreSQL), and how many copies of the listening socket each table holds. The store
/// must live in the main table only, and each shard's table holds the one listener it
/// accepts from.
fn survey(pid: u32, db: &Path, listen_port: u16) -> (Vec<String>, Vec<(String, usize)>) {
    let pg_port = tamizdat_relay::testing::postgres_admin_url()
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .unwrap_or(5432);
    let (pg, listening) = (tcp_sockets(2, pg_port, None), tcp_sockets(1, listen_port, Some("0A")));
    let db = db.to_string_lossy().to_string();
    let (mut store, mut listeners) = (Vec::new(), Vec::new());
    for (name, links) in tables(pid) {
        if name != "main" {
            store.extend(
                links.iter().filter(|l| l.starts_with(&db) || socket_in(l, &pg)).map(|l| format!("{name}: {l}")),
            );
        }
        listeners.push((name, links.iter().filter(|l| socket_in(l, &listening)).count()));
    }
    listeners.sort();
    (store, listeners)
}

async fn connect(d: &RelayDescriptor, wait: Duration) -> Result<RelayClient, String> {
    tokio::time::timeout(wait, RelayClient::connect(d))
        .await
        .map_err(|_| format!("no answer in {wait:?}"))
        .and_then(|c| c.map_err(|e| e.to_string()))
}

/// A relay limited to [`OPEN_FILES`], with `shards`, on `store` (default SQLite in its data
/// directory); returns it, its descriptor and its admin address.
fn limited_relay(root: &Path, shards: usize, store: Option<&str>) -> (RelayProc, RelayDescriptor, SocketAddr) {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = root.join("relay.toml");
    // Every session comes from 127.0.0.1: lift the per-address limits.
    std::fs::write(
        &config,
        "[limits]\nconnections_per_address = 100000\nnew_connections_per_second = 100000.0\n\
         new_connections_burst = 100000.0\n",
    )
    .unwrap();
    let mut extra: Vec<String> =
        ["--shards", &shards.to_string(), "--admin", &admin.to_string(), "--config", config.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    if let Some(store) = store {
        extra.extend(["--store".to_string(), store.to_string()]);
    }
    let relay = RelayProc::start_limited(&root.join("relay"), &extra, OPEN_FILES, &root.join("relay.log"));
    let limit = open_file_limit(relay.child.id());
    assert_eq!(limit.split_whitespace().filter(|w| *w == OPEN_FILES.to_string()).count(), 2, "{limit}");
    // The admin listener opens once the store has.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "no metrics: {}", std::fs::read_to_string(root.join("relay.log")).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut d = RelayDescriptor::from_link(&relay.link).unwrap();
    d.endpoints = vec![relay.addr.clone()];
    (relay, d, admin)
}

fn holds_more_sessions_than_its_open_file_limit(kind: Kind) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = tempfile::tempdir().unwrap();
    // As the relay's descriptors name it, symbolic links resolved.
    let root_path = root.path().canonicalize().unwrap();
    let db = runtime.block_on(TestDb::new(kind));
    let store = matches!(kind, Kind::Postgres).then(|| db.store_arg());
    let (mut relay, d, admin) = limited_relay(&root_path, SHARDS, store.as_deref());
    let log = root_path.join("relay.log");
    let relay_log = || std::fs::read_to_string(&log).unwrap();
    let db_file = root_path.join("relay").join("relay.db");
    let listen_port: u16 = relay.addr.rsplit_once(':').unwrap().1.parse().unwrap();

    runtime.block_on(async {
        // Opened one after another: each is a TLS + WebSocket session that answered hello,
        // and the gauges say which shard took it.
        let mut clients = Vec::new();
        let mut before = per_shard(&metrics(admin));
        for i in 0..SESSIONS {
            let c = connect(&d, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("session {i} of {SESSIONS}: {e}; relay log: {}", relay_log()));
            let after = per_shard(&metrics(admin));
            let shard = (0..SHARDS).find(|&s| after[s] == before[s] + 1.0).expect("one shard took it");
            clients.push((shard, c));
            before = after;
        }
        let m = metrics(admin);
        assert_eq!(m["sessions_open"], SESSIONS as f64, "{m:?}");
        let used: BTreeSet<usize> = clients.iter().map(|(s, _)| *s).collect();
        assert!(used.len() >= 3, "{SESSIONS} sessions cannot fit fewer tables of {OPEN_FILES}: {:?}", per_shard(&m));

        // A log written from the last session, watched from one session on every shard.
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let (writer_shard, mut writer) = clients.pop().unwrap();
        let op = Op::CreateLog(CreateLog { log_key: key.verifying_key().to_bytes().to_vec() });
        let Reply::LogCreated(created) = writer.call(op, Some(&key)).await.unwrap() else { panic!("no log") };
        let log_id = created.log_id;
        let mut readers = Vec::new();
        let mut others = Vec::new();
        for (shard, c) in clients {
            if readers.iter().all(|(s, _)| *s != shard) { readers.push((shard, c)) } else { others.push(c) }
        }
        assert!(readers.iter().filter(|(s, _)| *s != writer_shard).count() >= 2, "readers on other shards");
        for (_, r) in &mut readers {
            r.subscribe(Subscribe { log_id: log_id.clone(), read_id: vec![], entries: true }, &key).await.unwrap();
        }
        for round in 0..3u8 {
            let payload = mls_message(0, 1, round);
            let op = Op::Append(Append { log_id: log_id.clone(), dedup_id: vec![round; 16], payload });
            let Reply::Appended(a) = writer.call(op, Some(&key)).await.unwrap() else { panic!("not appended") };
            for (shard, r) in &mut readers {
                let notice = tokio::time::timeout(Duration::from_secs(5), r.next_notice())
                    .await
                    .unwrap_or_else(|_| panic!("the reader on shard {shard} was not told of entry {} in time", a.seq))
                    .unwrap();
                assert_eq!((notice.id.as_slice(), notice.seq), (log_id.as_slice(), a.seq));
            }
        }

        // Every other session reads the log at once: the store's pool grows past one
        // connection, whichever shards the reads come from.
        let reads = others.iter_mut().map(|c| {
            let op = Op::ReadLog(ReadLog { log_id: log_id.clone(), after: 0, limit: 10, max_bytes: 0 });
            c.call(op, Some(&key))
        });
        for reply in futures_util::future::join_all(reads).await {
            let Reply::Entries(e) = reply.unwrap() else { panic!("not entries") };
            assert_eq!(e.entries.len(), 3);
        }
        let (store_on_shards, listeners) = survey(relay.child.id(), &db_file, listen_port);
        assert!(store_on_shards.is_empty(), "the store's descriptors in shard tables: {store_on_shards:?}");
        let mut want: Vec<(String, usize)> = (0..SHARDS).map(|i| (format!("shard-{i}"), 1)).collect();
        want.push(("main".to_string(), 0));
        want.sort();
        assert_eq!(listeners, want, "copies of the listening socket in each table");
        drop((readers, others, writer));
    });

    // SIGTERM: the shards stop, and the writer finishes.
    let status = relay.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", relay_log());
    let text = relay_log();
    assert!(text.contains("all acknowledged writes are on disk"), "{text}");
    assert!(!text.contains("accept failed"), "no shard ran out of descriptors: {text}");
    runtime.block_on(db.finish());
}

#[test]
fn on_sqlite_one_process_holds_more_sessions_than_its_open_file_limit() {
    holds_more_sessions_than_its_open_file_limit(Kind::Sqlite);
}

#[test]
fn on_postgres_one_process_holds_more_sessions_than_its_open_file_limit() {
    holds_more_sessions_than_its_open_file_limit(Kind::Postgres);
}

/// Without shards the same limit holds fewer than [`OPEN_FILES`] sessions: the test above
/// measures what shards add.
#[test]
fn one_table_holds_fewer_than_its_open_file_limit() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, d, _admin) = limited_relay(root.path(), 1, None);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let held = runtime.block_on(async {
        let mut clients = Vec::new();
        while let Ok(c) = connect(&d, Duration::from_secs(2)).await {
            clients.push(c);
            assert!(clients.len() < SESSIONS, "one table held {SESSIONS} sessions under a limit of {OPEN_FILES}");
        }
        clients.len()
    });
    assert!(held > 50 && held < OPEN_FILES as usize, "held {held}");
    let log = std::fs::read_to_string(root.path().join("relay.log")).unwrap();
    assert!(log.contains("accept failed"), "it stopped for want of descriptors: {log}");
}

/// Shards that cannot have room under the limit are refused with a clear error when the relay
/// starts, never a panic or a relay that accepts nothing.
#[test]
fn shards_without_room_are_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let out = limited(48)
        .args(["relay", "serve", "--listen", "127.0.0.1:0", "--shards", "6", "--data"])
        .arg(root.path().join("relay"))
        .output()
        .unwrap();
    let err = one_line_failure(&out);
    assert!(err.contains("connection shards: shard 0 has no room for connections"), "{err}");
    assert!(out.stdout.is_empty(), "no link for a relay that cannot serve");
}
