//! Several relay nodes on one PostgreSQL database: what one node stores is pushed in real
//! time to clients on another, and commit ordering holds across nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tamizdat_client::{ClientError, relay::RelayClient};
use tamizdat_relay::{
    Relay, RelayConfig,
    testing::{Kind, TestDb, mls_message as mls},
};
use tamizdat_wire::proto::{Append, CreateLog, ErrorCode, Op, RelayDescriptor, Reply, Subscribe};

/// Starts `n` relay nodes sharing one identity (certificate and door) and one database.
async fn nodes(
    db: &TestDb,
    n: usize,
) -> (tempfile::TempDir, Vec<RelayDescriptor>, Vec<tokio::sync::oneshot::Sender<()>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut descriptors = Vec::new();
    let mut stops = Vec::new();
    for i in 0..n {
        let data = dir.path().join(format!("node{i}"));
        if i > 0 {
            // The same relay identity on every node: copy the first node's keys.
            std::fs::create_dir_all(&data).unwrap();
            for f in ["relay.json", "tls-cert.der", "tls-key.der"] {
                std::fs::copy(dir.path().join("node0").join(f), data.join(f)).unwrap();
            }
        }
        let config = RelayConfig {
            data,
            listen: "127.0.0.1:0".parse().unwrap(),
            public: vec![],
            retention: Duration::from_secs(86_400),
            store: Some(db.location.clone()),
            limits: Default::default(),
            durability: Default::default(),
            admin: None,
            shards: 1,
        };
        let relay = Relay::bind(config).await.unwrap();
        let mut d = RelayDescriptor::from_link(&relay.link()).unwrap();
        d.endpoints = vec![relay.local_addr().unwrap().to_string()];
        descriptors.push(d);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(relay.run(async move {
            let _ = stopped.await;
        }));
        stops.push(stop);
    }
    (dir, descriptors, stops)
}

async fn new_log(c: &mut RelayClient, key: &SigningKey) -> Vec<u8> {
    let op = Op::CreateLog(CreateLog { log_key: key.verifying_key().to_bytes().to_vec() });
    let Reply::LogCreated(l) = c.call(op, Some(key)).await.unwrap() else { panic!() };
    l.log_id
}

async fn pushed_across(kind: Kind, node_count: usize) -> Vec<Duration> {
    let db = TestDb::new(kind).await;
    let (_dir, d, _stops) = nodes(&db, node_count).await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut writer = RelayClient::connect(&d[node_count - 1]).await.unwrap();
    let mut reader = RelayClient::connect(&d[0]).await.unwrap();
    let log_id = new_log(&mut writer, &key).await;
    reader.subscribe(Subscribe { log_id: log_id.clone(), read_id: vec![], entries: true }, &key).await.unwrap();
    let mut latencies = Vec::new();
    for i in 0..30u8 {
        let sent = Instant::now();
        let op = Op::Append(Append { log_id: log_id.clone(), dedup_id: vec![i; 16], payload: mls(0, 1, i) });
        let Reply::Appended(a) = writer.call(op, Some(&key)).await.unwrap() else { panic!() };
        let notice =
            tokio::time::timeout(Duration::from_secs(5), reader.next_notice()).await.expect("pushed in time").unwrap();
        latencies.push(sent.elapsed());
        assert_eq!((notice.id.as_slice(), notice.seq), (log_id.as_slice(), a.seq));
        // The node that stored the entry pushes it; another node announces only its id.
        let (pushed, complete) = reader.take_pushed(&log_id, a.seq - 1);
        if node_count == 1 {
            assert_eq!(pushed.len(), 1);
            assert_eq!((pushed[0].seq, &pushed[0].payload, &pushed[0].dedup_id), (a.seq, &mls(0, 1, i), &vec![i; 16]));
            assert!(complete);
        } else {
            assert!(pushed.is_empty() && !complete, "NOTIFY carries ids only");
        }
    }
    db.finish().await;
    latencies.sort();
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_on_one_node_pushed_by_another() {
    let l = pushed_across(Kind::Postgres, 2).await;
    eprintln!(
        "PostgreSQL, 2 nodes: append on node 2 to notice on node 1: p50 {:?}, max {:?}",
        l[l.len() / 2],
        l[l.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_and_pushed_on_one_sqlite_node() {
    let l = pushed_across(Kind::Sqlite, 1).await;
    eprintln!("SQLite, 1 node: append to notice: p50 {:?}, max {:?}", l[l.len() / 2], l[l.len() - 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_on_different_nodes_one_wins_per_epoch() {
    let db = TestDb::new(Kind::Postgres).await;
    let (_dir, d, _stops) = nodes(&db, 2).await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(RelayClient::connect(&d[i % 2]).await.unwrap());
    }
    let log_id = new_log(&mut clients[0], &key).await;
    for epoch in 0..8u64 {
        let tasks: Vec<_> = clients
            .drain(..)
            .enumerate()
            .map(|(i, mut c)| {
                let (log_id, key) = (log_id.clone(), key.clone());
                tokio::spawn(async move {
                    let dedup = vec![(epoch as u8) * 8 + i as u8; 16];
                    let op = Op::Append(Append { log_id, dedup_id: dedup, payload: mls(epoch, 3, i as u8) });
                    let r = c.call(op, Some(&key)).await;
                    (c, r)
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            let (c, r) = t.await.unwrap();
            clients.push(c);
            match r {
                Ok(Reply::Appended(a)) => {
                    assert_eq!(a.epoch, epoch + 1);
                    won += 1;
                }
                Err(ClientError::Relay { code: ErrorCode::StaleEpoch, current_epoch, .. }) => {
                    assert_eq!(current_epoch, epoch + 1)
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1, "exactly one commit for epoch {epoch}");
    }
    db.finish().await;
}
