//! A client that pipelines appends to a log it also listens to, so its replies and notices are
//! ready together and the relay sends them in shared flushes. What must hold whatever the
//! flushes: neither stream loses its order or an item, and each write's reply comes before its
//! notice. (That they share flushes is measured, not tested: `writev` calls per message in
//! docs/BENCHMARKS.md.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use ed25519_dalek::SigningKey;
use prost::Message;
use tamizdat_client::relay::RelayClient;
use tamizdat_relay::testing::{mls_message, spawn_relay};
use tamizdat_wire::{
    frame,
    proto::{Append, ClientFrame, Command, CreateLog, Op, Reply, ServerFrame, Subscribe},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_keep_request_order_and_notices_keep_sequence_order_when_they_share_a_flush() {
    const APPENDS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = spawn_relay(dir.path()).await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut client = RelayClient::connect(&d).await.unwrap();
    let op = Op::CreateLog(CreateLog { log_key: key.verifying_key().to_bytes().to_vec() });
    let Reply::LogCreated(log) = client.call(op, Some(&key)).await.unwrap() else { panic!("no log") };
    client.subscribe(Subscribe { log_id: log.log_id.clone(), read_id: vec![], entries: true }, &key).await.unwrap();

    // Every append at once, unsigned: the subscription proved the log's key for this session.
    let (mut conn, _nonce, first_id) = client.into_parts();
    for i in 0..APPENDS {
        let append = Append {
            log_id: log.log_id.clone(),
            dedup_id: [i as u8, (i >> 8) as u8].repeat(8),
            payload: mls_message(0, 1, i as u8),
        };
        let command = Command { op: Some(Op::Append(append)) }.encode_to_vec();
        let request = ClientFrame { request_id: first_id + i, command, signature: Vec::new() };
        conn.send(frame::encode(&request).unwrap()).await.unwrap();
    }

    let (mut replies, mut notices) = (Vec::new(), Vec::new());
    while replies.len() < APPENDS as usize || notices.len() < APPENDS as usize {
        let bytes = tokio::time::timeout(Duration::from_secs(20), conn.recv()).await.expect("in time").unwrap();
        let f: ServerFrame = frame::decode(&bytes).unwrap();
        match f.reply {
            Some(Reply::Appended(a)) => replies.push((f.request_id, a.seq)),
            Some(Reply::Notify(n)) => {
                assert_eq!(n.id, log.log_id);
                let entry = n.entry.expect("a small entry rides in its notice");
                assert_eq!(entry.seq, n.seq);
                // Protocol §8: on the connection that made a write, its reply comes first.
                assert!(replies.iter().any(|&(_, seq)| seq == n.seq), "notice {} before its reply", n.seq);
                notices.push(n.seq);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<(u64, u64)> = (0..APPENDS).map(|i| (first_id + i, i + 1)).collect();
    assert_eq!(replies, expected, "replies in request order, each with its sequence number");
    assert_eq!(notices, (1..=APPENDS).collect::<Vec<_>>(), "every entry announced once, in order");
}
