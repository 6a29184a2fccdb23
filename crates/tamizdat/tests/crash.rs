//! The relay is killed with SIGKILL and restarted 20 times while clients send and sync
//! continuously. Afterwards every message a sender created (every acknowledged one, and
//! every one that waited in an outbox) reached its recipient exactly once, in order.
//! Runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use tamizdat_client::{Client, ClientError};
use tamizdat_relay::testing::{Kind, TestDb};

const PAIRS: usize = 3;
const CYCLES: usize = 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Sends until told to stop; returns every text it created, and which were acknowledged.
fn sender(home: &Path, to: String, index: usize, stop: Arc<AtomicBool>) -> (Vec<String>, Vec<String>) {
    let rt = runtime();
    let mut client = Client::open(home, PASSPHRASE).unwrap();
    let (mut created, mut acked) = (Vec::new(), Vec::new());
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let text = format!("pair {index} message {n}");
        n += 1;
        match rt.block_on(client.send(&to, &text)) {
            Ok(view) => {
                assert_eq!(view.state, "sent");
                acked.push(text.clone());
            }
            Err(ClientError::Undelivered { .. }) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("send failed in an unexpected way: {e}"),
        }
        created.push(text);
    }
    (created, acked)
}

/// Syncs now and then while the relay comes and goes; errors from a dead relay are expected.
fn receiver(home: &Path, stop: Arc<AtomicBool>) {
    let rt = runtime();
    let mut client = Client::open(home, PASSPHRASE).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match rt.block_on(client.sync()) {
            Ok(_) | Err(ClientError::Transport(_) | ClientError::Undelivered { .. }) => {}
            Err(e) => panic!("sync failed in an unexpected way: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn crash_cycles(kind: Kind) {
    let rt = runtime();
    let db = rt.block_on(TestDb::new(kind));
    let root = tempfile::tempdir().unwrap();
    let extra = match kind {
        Kind::Postgres => vec!["--store".to_string(), db.store_arg()],
        Kind::Sqlite => vec![],
    };
    let log = root.path().join("relay.log");
    let mut relay = RelayProc::start_logged(&root.path().join("relay"), None, &extra, Some(&log));

    // Pairs of people who know each other.
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let (s_home, r_home) = (root.path().join(format!("s{i}")), root.path().join(format!("r{i}")));
        let mut s = rt.block_on(Client::init(&s_home, PASSPHRASE, &format!("Sender {i}"), &relay.link)).unwrap();
        let mut r = rt.block_on(Client::init(&r_home, PASSPHRASE, &format!("Receiver {i}"), &relay.link)).unwrap();
        let invite = s.invite(3600).unwrap();
        rt.block_on(r.accept(&invite, Some("sender"))).unwrap();
        rt.block_on(s.sync()).unwrap();
        assert_eq!(s.contacts().unwrap()[0].name, format!("Receiver {i}"));
        pairs.push((s_home, r_home, format!("Receiver {i}")));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, (s_home, r_home, to)) in pairs.iter().cloned().enumerate() {
        let flag = stop.clone();
        senders.push(std::thread::spawn(move || sender(&s_home, to, i, flag)));
        let flag = stop.clone();
        receivers.push(std::thread::spawn(move || receiver(&r_home, flag)));
    }
    let started = Instant::now();
    for cycle in 0..CYCLES {
        std::thread::sleep(Duration::from_millis(150 + (cycle as u64 * 37) % 200));
        relay.kill();
        std::thread::sleep(Duration::from_millis(30));
        relay.restart();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    for h in receivers {
        h.join().unwrap();
    }
    eprintln!("{CYCLES} SIGKILL cycles in {:?}", started.elapsed());

    for ((s_home, r_home, to), (created, acked)) in pairs.iter().zip(results) {
        // Whatever still waits in the sender's outbox goes now.
        let mut s = Client::open(s_home, PASSPHRASE).unwrap();
        rt.block_on(s.sync()).unwrap();
        // Past the relay: sent, or already confirmed by the receiver's delivery receipt.
        assert!(s.messages(to).unwrap().iter().all(|m| matches!(m.state.as_str(), "sent" | "delivered" | "read")));
        let mut r = Client::open(r_home, PASSPHRASE).unwrap();
        rt.block_on(r.sync()).unwrap();
        rt.block_on(r.sync()).unwrap();
        let received: Vec<String> = r.messages("sender").unwrap().into_iter().map(|m| m.text).collect();
        eprintln!("{to}: {} created, {} acknowledged at once, {} received", created.len(), acked.len(), received.len());
        assert!(acked.len() >= 10, "the senders made progress between crashes");
        assert_eq!(received, created, "every message exactly once, in order");
    }
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.lines().count() > CYCLES, "the relay logged every start at debug level");
    assert_no_ids_or_addresses("relay log", &log_text);
    rt.block_on(db.finish());
}

#[test]
fn sigkill_under_load_sqlite() {
    crash_cycles(Kind::Sqlite);
}

#[test]
fn sigkill_under_load_postgres() {
    crash_cycles(Kind::Postgres);
}

/// SIGTERM: the relay stops accepting, finishes what it was doing and exits cleanly; what
/// it acknowledged is there after a restart.
#[test]
fn sigterm_shuts_down_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("relay.log");
    let mut relay = RelayProc::start_logged(&root.path().join("relay"), None, &[], Some(&log));
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    alice.ok(&["send", "Bob", "before the stop"]);
    let exit = relay.terminate(Duration::from_secs(15));
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("all acknowledged writes are on disk"));
    relay.restart();
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Alice"), vec!["before the stop"]);
}
