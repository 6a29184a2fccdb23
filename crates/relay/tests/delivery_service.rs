//! The relay store's Delivery Service rules: one conformance suite, run against SQLite and
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use tamizdat_relay::store::{Outcome, Write};
use tamizdat_relay::testing::{Kind, TestDb};
use tamizdat_wire::mls::{ContentType, MlsHeader};

fn header(epoch: u64, content_type: ContentType) -> MlsHeader {
    MlsHeader { group_id: b"group-1".to_vec(), epoch, content_type }
}

fn append(log: &[u8], dedup: u8, epoch: u64, ct: ContentType) -> Write {
    Write::Append {
        log_id: log.to_vec(),
        dedup_id: vec![dedup; 16],
        payload: vec![dedup; 40],
        header: header(epoch, ct),
        hour: 1,
    }
}

async fn one_commit_per_epoch_and_consecutive_sequence_numbers(db: &TestDb) {
    let (store, _w) = db.open().await;
    let log = vec![7u8; 16];
    assert_eq!(
        store.write(Write::CreateLog { log_id: log.clone(), log_key: vec![1; 32] }).await.unwrap(),
        Outcome::Done
    );

    let first = store.write(append(&log, 1, 0, ContentType::Commit)).await.unwrap();
    assert_eq!(first, Outcome::Stored { seq: 1, epoch: 1, duplicate: false });
    // A second commit for epoch 0 lost the race.
    assert_eq!(store.write(append(&log, 2, 0, ContentType::Commit)).await.unwrap(), Outcome::StaleEpoch { current: 1 });
    // A commit from an epoch the log has not reached is no race: it is refused.
    let future = store.write(append(&log, 9, 5, ContentType::Commit)).await.unwrap();
    assert!(matches!(future, Outcome::Refused(_)), "{future:?}");
    // Application messages of the current epoch are relayed; past and future ones are not.
    assert_eq!(
        store.write(append(&log, 3, 1, ContentType::Application)).await.unwrap(),
        Outcome::Stored { seq: 2, epoch: 1, duplicate: false }
    );
    assert_eq!(
        store.write(append(&log, 4, 0, ContentType::Application)).await.unwrap(),
        Outcome::StaleEpoch { current: 1 }
    );
    assert_eq!(
        store.write(append(&log, 10, 1, ContentType::Application)).await.unwrap(),
        Outcome::Stored { seq: 3, epoch: 1, duplicate: false }
    );
    assert!(matches!(store.write(append(&log, 5, 9, ContentType::Application)).await.unwrap(), Outcome::Refused(_)));
    // A retry with the same dedup id gets the original answer and writes nothing.
    assert_eq!(
        store.write(append(&log, 3, 1, ContentType::Application)).await.unwrap(),
        Outcome::Stored { seq: 2, epoch: 1, duplicate: true }
    );
    // Another group's message does not belong in this log.
    let other = Write::Append {
        log_id: log.clone(),
        dedup_id: vec![6; 16],
        payload: vec![6],
        header: MlsHeader { group_id: b"other".to_vec(), epoch: 1, content_type: ContentType::Application },
        hour: 1,
    };
    assert!(matches!(store.write(other).await.unwrap(), Outcome::Refused(_)));
    let (entries, more) = store.read_log(&log, 0, 100, 0).await.unwrap();
    assert!(!more);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(store.write(append(&[9; 16], 8, 0, ContentType::Commit)).await.unwrap(), Outcome::NotFound);
}

async fn concurrent_commits_for_one_epoch_one_wins(db: &TestDb) {
    let (store, _w) = db.open().await;
    let log = vec![3u8; 16];
    store.write(Write::CreateLog { log_id: log.clone(), log_key: vec![1; 32] }).await.unwrap();
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let (store, log) = (store.clone(), log.clone());
            tokio::spawn(async move { store.write(append(&log, 100 + i, 0, ContentType::Commit)).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Stored { epoch: 1, .. } => won += 1,
            Outcome::StaleEpoch { current: 1 } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn entries_go_once_every_cursor_passed_them_or_retention_ends(db: &TestDb) {
    let (store, _w) = db.open().await;
    let log = vec![5u8; 16];
    store.write(Write::CreateLog { log_id: log.clone(), log_key: vec![1; 32] }).await.unwrap();
    let (a, b) = (vec![0xa; 16], vec![0xb; 16]);
    for c in [&a, &b] {
        store.write(Write::AckLog { log_id: log.clone(), cursor_id: c.clone(), up_to: 0 }).await.unwrap();
    }
    for i in 0..4u8 {
        store.write(append(&log, i, 0, ContentType::Application)).await.unwrap();
    }
    store.write(Write::AckLog { log_id: log.clone(), cursor_id: a.clone(), up_to: 4 }).await.unwrap();
    assert_eq!(store.read_log(&log, 0, 100, 0).await.unwrap().0.len(), 4, "b has not read them yet");
    store.write(Write::AckLog { log_id: log.clone(), cursor_id: b.clone(), up_to: 2 }).await.unwrap();
    assert_eq!(store.read_log(&log, 0, 100, 0).await.unwrap().0.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    // Cursors never move back.
    store.write(Write::AckLog { log_id: log.clone(), cursor_id: b.clone(), up_to: 1 }).await.unwrap();
    assert_eq!(store.read_log(&log, 0, 100, 0).await.unwrap().0.len(), 2);
    // Retention: entries that arrived before the cut-off hour go regardless.
    store.write(Write::Expire { before_hour: 2 }).await.unwrap();
    assert!(store.read_log(&log, 0, 100, 0).await.unwrap().0.is_empty());
}

async fn queues_dedup_ack_and_quota(db: &TestDb) {
    let (store, _w) = db.open().await;
    let (read_id, send_id) = (vec![1u8; 16], vec![2u8; 16]);
    store
        .write(Write::CreateQueue { read_id: read_id.clone(), send_id: send_id.clone(), read_key: vec![9; 32] })
        .await
        .unwrap();
    let send =
        |d: u8| Write::SendToQueue { send_id: send_id.clone(), dedup_id: vec![d; 16], payload: vec![d; 10], hour: 5 };
    assert_eq!(store.write(send(1)).await.unwrap(), Outcome::Stored { seq: 1, epoch: 0, duplicate: false });
    assert_eq!(store.write(send(1)).await.unwrap(), Outcome::Stored { seq: 1, epoch: 0, duplicate: true });
    assert_eq!(store.write(send(2)).await.unwrap(), Outcome::Stored { seq: 2, epoch: 0, duplicate: false });
    // The send id does not read: reads go by read id only.
    assert!(store.read_queue(&send_id, 0, 10, 0).await.unwrap().0.is_empty());
    assert_eq!(store.read_queue(&read_id, 0, 10, 0).await.unwrap().0.len(), 2);
    store.write(Write::AckQueue { read_id: read_id.clone(), up_to: 1 }).await.unwrap();
    assert_eq!(
        store.read_queue(&read_id, 0, 10, 0).await.unwrap().0.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2]
    );
    let unknown = Write::SendToQueue { send_id: vec![3; 16], dedup_id: vec![1; 16], payload: vec![1], hour: 5 };
    assert_eq!(store.write(unknown).await.unwrap(), Outcome::NotFound);
}

/// Reopening finds everything and runs no migration twice. (That acknowledgements come only
/// after commit, even across SIGKILL, is `crates/tamizdat/tests/crash.rs`.)
async fn writes_survive_a_clean_close_and_reopening(db: &TestDb) {
    let log = vec![4u8; 16];
    {
        let (store, writer) = db.open().await;
        store.write(Write::CreateLog { log_id: log.clone(), log_key: vec![1; 32] }).await.unwrap();
        for i in 0..10u8 {
            store.write(append(&log, i, 0, ContentType::Application)).await.unwrap();
        }
        drop(store);
        writer.finished().await;
    }
    let (store, _w) = db.open().await;
    assert_eq!(store.read_log(&log, 0, 100, 0).await.unwrap().0.len(), 10);
}

/// Several relay nodes on one database: commits for one epoch race from different nodes,
/// exactly one wins, and sequence numbers stay consecutive.
async fn nodes_sharing_a_database_agree(db: &TestDb) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(db.open().await);
    }
    let log = vec![6u8; 16];
    nodes[0].0.write(Write::CreateLog { log_id: log.clone(), log_key: vec![1; 32] }).await.unwrap();
    for epoch in 0..5u64 {
        let mut tasks = Vec::new();
        for (n, (store, _)) in nodes.iter().enumerate() {
            for k in 0..4u8 {
                let (store, log) = (store.clone(), log.clone());
                let dedup = (epoch as u8) * 16 + (n as u8) * 4 + k;
                tasks.push(tokio::spawn(
                    async move { store.write(append(&log, dedup, epoch, ContentType::Commit)).await },
                ));
            }
        }
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                Outcome::Stored { epoch: e, .. } => {
                    assert_eq!(e, epoch + 1);
                    won += 1;
                }
                Outcome::StaleEpoch { current } => assert_eq!(current, epoch + 1),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1, "epoch {epoch}");
    }
    let (entries, _) = nodes[1].0.read_log(&log, 0, 100, 0).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
}

/// Several nodes writing to the same logs in different orders at once: batches on different
/// nodes lock rows in one global order, so none fails (no deadlock surfaces as an error).
async fn nodes_writing_many_logs_at_once_never_fail(db: &TestDb) {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(db.open().await);
    }
    let logs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![0x40 + i; 16]).collect();
    for log in &logs {
        nodes[0].0.write(Write::CreateLog { log_id: log.clone(), log_key: vec![1; 32] }).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (n, (store, _)) in nodes.iter().enumerate() {
        for k in 0..60u32 {
            let store = store.clone();
            // Node 0 walks the logs forwards, node 1 backwards.
            let i = if n == 0 { k as usize % logs.len() } else { logs.len() - 1 - k as usize % logs.len() };
            let log = logs[i].clone();
            tasks.push(tokio::spawn(async move {
                let mut dedup = vec![n as u8; 16];
                dedup[..4].copy_from_slice(&k.to_be_bytes());
                let w = Write::Append {
                    log_id: log,
                    dedup_id: dedup,
                    payload: vec![1; 40],
                    header: header(0, ContentType::Application),
                    hour: 1,
                };
                store.write(w).await
            }));
        }
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap().unwrap(), Outcome::Stored { duplicate: false, .. }));
    }
    let mut total = 0;
    for log in &logs {
        let (entries, _) = nodes[0].0.read_log(log, 0, 256, 0).await.unwrap();
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "consecutive");
        total += seqs.len();
    }
    assert_eq!(total, 120);
}

fn create_blob(id: u8, size: u64, hour: i64) -> Write {
    Write::CreateBlob { blob_id: vec![id; 16], write_key: vec![1; 32], size, hour }
}

fn put(id: u8, offset: u64, data: &[u8]) -> Write {
    Write::PutBlob { blob_id: vec![id; 16], offset, data: data.to_vec() }
}

/// A blob is written in order, once: a piece at the stored length is stored, a piece already
/// stored is answered with the length, gaps and overruns are refused; reads cut across pieces.
async fn blobs_are_written_in_order_and_read_in_any_range(db: &TestDb) {
    let (store, _w) = db.open().await;
    let data: Vec<u8> = (0..100u8).collect();
    assert_eq!(store.write(create_blob(1, 100, 5)).await.unwrap(), Outcome::Done);
    assert_eq!(store.blob_status(&[1; 16]).await.unwrap(), Some((0, 100)));
    assert_eq!(store.write(put(1, 0, &data[..30])).await.unwrap(), Outcome::Blob { length: 30, size: 100 });
    // The same piece again (a lost reply), or one overlapping what is stored: nothing changes.
    assert_eq!(store.write(put(1, 0, &data[..30])).await.unwrap(), Outcome::Blob { length: 30, size: 100 });
    assert_eq!(store.write(put(1, 10, &[9; 40])).await.unwrap(), Outcome::Blob { length: 30, size: 100 });
    // A gap, or a piece past the size, is refused.
    assert!(matches!(store.write(put(1, 31, &data[31..40])).await.unwrap(), Outcome::Refused(_)));
    assert!(matches!(store.write(put(1, 30, &[0; 71])).await.unwrap(), Outcome::Refused(_)));
    assert_eq!(store.write(put(1, 30, &data[30..45])).await.unwrap(), Outcome::Blob { length: 45, size: 100 });
    assert_eq!(store.write(put(1, 45, &data[45..])).await.unwrap(), Outcome::Blob { length: 100, size: 100 });
    assert!(matches!(store.write(put(1, 100, &[1])).await.unwrap(), Outcome::Refused(_)));
    assert_eq!(store.blob_status(&[1; 16]).await.unwrap(), Some((100, 100)));
    // Any range, across piece boundaries; never past the stored length.
    for (offset, max) in [(0, 100), (0, 1000), (5, 20), (29, 2), (30, 15), (44, 56), (99, 10), (10, 1)] {
        let (got, length, size) = store.read_blob(&[1; 16], offset, max).await.unwrap().unwrap();
        let end = (offset as usize + max).min(100);
        assert_eq!(got, data[offset as usize..end], "offset {offset}, max {max}");
        assert_eq!((length, size), (100, 100));
    }
    assert!(store.read_blob(&[1; 16], 100, 10).await.unwrap().unwrap().0.is_empty());
    assert!(store.read_blob(&[1; 16], u64::MAX, 10).await.unwrap().unwrap().0.is_empty());
    // Unknown blobs.
    assert_eq!(store.write(put(2, 0, &[1])).await.unwrap(), Outcome::NotFound);
    assert_eq!(store.blob_status(&[2; 16]).await.unwrap(), None);
    assert_eq!(store.read_blob(&[2; 16], 0, 10).await.unwrap(), None);
    assert_eq!(store.blob_key(&[1; 16]).await.unwrap(), Some(vec![1; 32]));
}

/// Blobs go when retention ends, counted from their creation; younger ones stay.
async fn blobs_expire_with_retention(db: &TestDb) {
    let (store, _w) = db.open().await;
    store.write(create_blob(1, 10, 5)).await.unwrap();
    store.write(create_blob(2, 10, 7)).await.unwrap();
    for id in [1, 2] {
        store.write(put(id, 0, &[id; 10])).await.unwrap();
    }
    store.write(Write::Expire { before_hour: 6 }).await.unwrap();
    assert_eq!(store.blob_status(&[1; 16]).await.unwrap(), None);
    assert_eq!(store.read_blob(&[1; 16], 0, 10).await.unwrap(), None);
    assert_eq!(store.write(put(1, 10, &[1])).await.unwrap(), Outcome::NotFound);
    assert_eq!(store.read_blob(&[2; 16], 0, 10).await.unwrap().unwrap().0, vec![2; 10]);
}

/// Two relay nodes storing the same pieces of one blob at once: each piece is stored once, the
/// blob comes out whole.
async fn nodes_uploading_one_blob_agree(db: &TestDb) {
    let nodes = [db.open().await, db.open().await];
    let data: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    nodes[0].0.write(create_blob(3, data.len() as u64, 1)).await.unwrap();
    let mut tasks = Vec::new();
    for (store, _) in &nodes {
        let (store, data) = (store.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let mut offset = 0u64;
            while offset < data.len() as u64 {
                let end = (offset as usize + 100).min(data.len());
                match store.write(put(3, offset, &data[offset as usize..end])).await.unwrap() {
                    Outcome::Blob { length, .. } => offset = length,
                    other => panic!("{other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (got, length, _) = nodes[1].0.read_blob(&[3; 16], 0, 10_000).await.unwrap().unwrap();
    assert_eq!(length, 4000);
    assert_eq!(got, data);
}

macro_rules! conformance {
    ($kind:ident, $modname:ident: $($name:ident),* $(,)?) => {
        mod $modname {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::new(super::Kind::$kind).await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

conformance!(Sqlite, sqlite:
    one_commit_per_epoch_and_consecutive_sequence_numbers,
    concurrent_commits_for_one_epoch_one_wins,
    entries_go_once_every_cursor_passed_them_or_retention_ends,
    queues_dedup_ack_and_quota,
    writes_survive_a_clean_close_and_reopening,
    blobs_are_written_in_order_and_read_in_any_range,
    blobs_expire_with_retention,
);

conformance!(Postgres, postgres:
    one_commit_per_epoch_and_consecutive_sequence_numbers,
    concurrent_commits_for_one_epoch_one_wins,
    entries_go_once_every_cursor_passed_them_or_retention_ends,
    queues_dedup_ack_and_quota,
    writes_survive_a_clean_close_and_reopening,
    nodes_sharing_a_database_agree,
    nodes_writing_many_logs_at_once_never_fail,
    blobs_are_written_in_order_and_read_in_any_range,
    blobs_expire_with_retention,
    nodes_uploading_one_blob_agree,
);
