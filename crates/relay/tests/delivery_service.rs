//! The relay store's Delivery Service rules, on a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use tamizdat_relay::store::{Outcome, Store, Write};
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

async fn store() -> (tempfile::TempDir, Store, tamizdat_relay::store::WriterTask) {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open_sqlite(&dir.path().join("relay.db")).await.unwrap();
    (dir, store, writer)
}

#[tokio::test]
async fn one_commit_per_epoch_and_consecutive_sequence_numbers() {
    let (_dir, store, _w) = store().await;
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
    // Application messages of the current and past epochs are relayed; future ones are not.
    assert_eq!(
        store.write(append(&log, 3, 1, ContentType::Application)).await.unwrap(),
        Outcome::Stored { seq: 2, epoch: 1, duplicate: false }
    );
    assert_eq!(
        store.write(append(&log, 4, 0, ContentType::Application)).await.unwrap(),
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
    let (entries, more) = store.read_log(&log, 0, 100).await.unwrap();
    assert!(!more);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(store.write(append(&[9; 16], 8, 0, ContentType::Commit)).await.unwrap(), Outcome::NotFound);
}

#[tokio::test]
async fn concurrent_commits_for_one_epoch_one_wins() {
    let (_dir, store, _w) = store().await;
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

#[tokio::test]
async fn entries_go_once_every_cursor_passed_them_or_retention_ends() {
    let (_dir, store, _w) = store().await;
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
    assert_eq!(store.read_log(&log, 0, 100).await.unwrap().0.len(), 4, "b has not read them yet");
    store.write(Write::AckLog { log_id: log.clone(), cursor_id: b.clone(), up_to: 2 }).await.unwrap();
    assert_eq!(store.read_log(&log, 0, 100).await.unwrap().0.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    // Cursors never move back.
    store.write(Write::AckLog { log_id: log.clone(), cursor_id: b.clone(), up_to: 1 }).await.unwrap();
    assert_eq!(store.read_log(&log, 0, 100).await.unwrap().0.len(), 2);
    // Retention: entries that arrived before the cut-off hour go regardless.
    store.write(Write::Expire { before_hour: 2 }).await.unwrap();
    assert!(store.read_log(&log, 0, 100).await.unwrap().0.is_empty());
}

#[tokio::test]
async fn queues_dedup_ack_and_quota() {
    let (_dir, store, _w) = store().await;
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
    assert!(store.read_queue(&send_id, 0, 10).await.unwrap().0.is_empty());
    assert_eq!(store.read_queue(&read_id, 0, 10).await.unwrap().0.len(), 2);
    store.write(Write::AckQueue { read_id: read_id.clone(), up_to: 1 }).await.unwrap();
    assert_eq!(store.read_queue(&read_id, 0, 10).await.unwrap().0.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    let unknown = Write::SendToQueue { send_id: vec![3; 16], dedup_id: vec![1; 16], payload: vec![1], hour: 5 };
    assert_eq!(store.write(unknown).await.unwrap(), Outcome::NotFound);
}

#[tokio::test]
async fn acknowledged_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let log = vec![4u8; 16];
    {
        let (store, writer) = Store::open_sqlite(&path).await.unwrap();
        store.write(Write::CreateLog { log_id: log.clone(), log_key: vec![1; 32] }).await.unwrap();
        for i in 0..10u8 {
            store.write(append(&log, i, 0, ContentType::Application)).await.unwrap();
        }
        drop(store);
        writer.finished().await;
    }
    let (store, _w) = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(store.read_log(&log, 0, 100).await.unwrap().0.len(), 10);
}
