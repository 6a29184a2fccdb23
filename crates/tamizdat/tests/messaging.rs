//! People talking through a real relay process, over loopback TLS + WebSocket.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;

#[test]
fn invite_accept_and_talk_both_ways() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alisa Zoryana", "Bohdan Quokka");

    // Both know each other by the name the other chose.
    let names = |p: &Person| -> Vec<String> {
        p.json(&["contacts"]).as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&alice), vec!["Bohdan Quokka"]);
    assert_eq!(names(&bob), vec!["Alisa Zoryana"]);

    alice.ok(&["send", "Bohdan Quokka", "Привет! 你好 🌍 — ok?"]);
    let sync = bob.json(&["sync"]);
    assert_eq!(sync["messages"][0]["text"], "Привет! 你好 🌍 — ok?");
    bob.ok(&["send", "Alisa Zoryana", "hello back"]);
    alice.ok(&["sync"]);

    let msgs = alice.json(&["messages", "Bohdan Quokka"]);
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["text"], "Привет! 你好 🌍 — ok?");
    assert_eq!(msgs[0]["outgoing"], true);
    assert_eq!(msgs[0]["sender"], "Alisa Zoryana");
    assert_eq!(msgs[1]["text"], "hello back");
    assert_eq!(msgs[1]["outgoing"], false);
    assert_eq!(msgs[1]["sender"], "Bohdan Quokka");
    for m in msgs {
        assert!(m["id"].as_str().unwrap().len() == 32 && m["sent_at"].as_u64().unwrap() > 0);
    }
    // The same message has the same id on both sides.
    let bobs = bob.json(&["messages", "Alisa Zoryana"]);
    assert_eq!(bobs[0]["id"], msgs[0]["id"]);
    assert_eq!(bobs[1]["id"], msgs[1]["id"]);
}

#[test]
fn sixty_kib_from_stdin() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let mut big = String::new();
    for c in "Съешь же ещё этих мягких французских булок. ".chars().cycle() {
        if big.len() + c.len_utf8() > 60 * 1024 {
            break;
        }
        big.push(c);
    }
    assert!(big.len() > 60 * 1024 - 4);
    let big = big.as_str();
    let out = alice.run_with(&["send", "Bob", "-"], PASSPHRASE, Some(big.as_bytes()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Alice"), vec![big.to_string()]);
}

#[test]
fn offline_recipient_gets_fifty_in_order_once() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let sent: Vec<String> = (1..=50).map(|i| format!("message {i:02}")).collect();
    for text in &sent {
        alice.ok(&["send", "Bob", text]);
    }
    let report = bob.json(&["sync"]);
    assert_eq!(report["messages"].as_array().unwrap().len(), 50);
    assert_eq!(bob.texts("Alice"), sent);
    // Syncing again shows nothing new and duplicates nothing.
    let again = bob.json(&["sync"]);
    assert!(again["messages"].as_array().unwrap().is_empty());
    assert_eq!(bob.texts("Alice"), sent);
}

#[test]
fn relay_killed_after_ack_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let mut sent = Vec::new();
    for round in 0..3 {
        for i in 0..5 {
            let text = format!("round {round} message {i}");
            alice.ok(&["send", "Bob", &text]); // exit 0: the relay acknowledged it
            sent.push(text);
        }
        relay.kill();
        // While the relay is down: a clear error, and the message is kept.
        let text = format!("round {round} while down");
        let err = one_line_failure(&alice.run(&["send", "Bob", &text]));
        assert!(err.contains("not delivered") && err.contains("sync"), "{err}");
        sent.push(text);
        relay.restart();
        alice.ok(&["sync"]); // delivers the outbox
    }
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Alice"), sent);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Alice"), sent, "no duplicates on repeated sync");
    let states: Vec<String> = alice
        .json(&["messages", "Bob"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect();
    assert!(states.iter().all(|s| s == "sent"), "{states:?}");
}

#[test]
fn follow_shows_messages_as_they_arrive() {
    use std::io::BufRead;
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let mut follower = std::process::Command::new(BIN)
        .arg("--home")
        .arg(&alice.home)
        .args(["sync", "--follow", "--for", "30s", "--json"])
        .env("TAMIZDAT_PASSPHRASE", PASSPHRASE)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(1500)); // let it subscribe
    for text in ["first ping", "second ping"] {
        let sent = std::time::Instant::now();
        bob.ok(&["send", "Alice", text]);
        let line = lines.recv_timeout(std::time::Duration::from_secs(10)).expect("the follower printed the message");
        let report: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(report["messages"][0]["text"], text);
        // Well under the one-minute resync: it was pushed.
        assert!(sent.elapsed() < std::time::Duration::from_secs(5), "{:?}", sent.elapsed());
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
}
