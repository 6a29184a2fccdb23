//! A subscribed client takes new messages from the relay's notices, without reading the log;
//! a client that was not listening reads them as before.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use tamizdat_client::Client;
use tamizdat_relay::testing::spawn_relay;

const PASS: &str = "correct horse battery staple";

fn texts(report: &tamizdat_client::SyncReport) -> Vec<String> {
    report.messages.iter().filter(|m| m.kind == "text").map(|m| m.text.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_inside_notices_and_are_read_when_missed() {
    let dir = tempfile::tempdir().unwrap();
    let link = spawn_relay(dir.path()).await.0.to_link();
    let mut alice = Client::init(&dir.path().join("alice"), PASS, "alice", &link).await.unwrap();
    let mut bob = Client::init(&dir.path().join("bob"), PASS, "bob", &link).await.unwrap();
    let invite = alice.invite(3600).unwrap();
    bob.accept(&invite, None).await.unwrap();
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();

    // Bob listens; Alice sends three messages.
    bob.subscribe_all().await.unwrap();
    for i in 0..3 {
        alice.send("bob", &format!("hello {i}")).await.unwrap();
    }
    let (mut received, mut from_notices) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.len() < 3 && Instant::now() < deadline {
        bob.wait_for_notice(Duration::from_secs(2)).await;
        let report = bob.sync().await.unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        from_notices += report.from_notices;
        received.extend(texts(&report));
    }
    assert_eq!(received, ["hello 0", "hello 1", "hello 2"]);
    assert!(from_notices >= 3, "each message came inside its notice ({from_notices} entries did)");

    // Bob stops listening (a new process would have no connection); what he missed is read.
    drop(bob);
    alice.send("bob", "while you were away").await.unwrap();
    let mut bob = Client::open(&dir.path().join("bob"), PASS).unwrap();
    let report = bob.sync().await.unwrap();
    assert_eq!(texts(&report), ["while you were away"]);
    assert_eq!(report.from_notices, 0, "nothing was pushed to a client that was not listening");
}
