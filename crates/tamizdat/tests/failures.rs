//! Bad input, bad passphrases, unreachable relays, hostile bytes: clear errors, nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{io::Write, time::Duration};

use common::*;

#[test]
fn wrong_passphrase_says_so_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, _bob) = pair(root.path(), &relay, "Alice", "Bob");
    alice.ok(&["send", "Bob", "before"]);
    let err = one_line_failure(&alice.run_with(&["messages", "Bob"], "not the passphrase", None));
    assert!(err.contains("wrong passphrase"), "{err}");
    let err = one_line_failure(&alice.run_with(&["send", "Bob", "x"], "not the passphrase", None));
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(alice.texts("Bob"), vec!["before"]);
}

#[test]
fn tampered_expired_and_reused_invites_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let alice = Person::init(root.path(), "alice", "Alice", &relay);
    let bob = Person::init(root.path(), "bob", "Bob", &relay);
    let invite = alice.ok(&["invite"]).lines().next().unwrap().to_string();

    // Every kind of damage: a changed character, a cut link, a relay link given as invite.
    let mut chars: Vec<char> = invite.chars().collect();
    let i = chars.len() / 3;
    chars[i] = if chars[i] == 'Q' { 'R' } else { 'Q' };
    let changed: String = chars.into_iter().collect();
    for bad in [changed.as_str(), &invite[..invite.len() - 10], relay.link.as_str(), "hello"] {
        let err = one_line_failure(&bob.run(&["accept", bad]));
        assert!(err.contains("link") || err.contains("invite"), "{err}");
    }
    assert!(bob.json(&["contacts"]).as_array().unwrap().is_empty());

    let short = alice.ok(&["invite", "--expires", "1s"]).lines().next().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let err = one_line_failure(&bob.run(&["accept", &short]));
    assert!(err.contains("expired"), "{err}");

    bob.ok(&["accept", &invite, "--as", "Ally"]);
    let err = one_line_failure(&bob.run(&["accept", &invite]));
    assert!(err.contains("already accepted"), "{err}");
    // A second person using the same one-time invite does not become a contact.
    let carol = Person::new(root.path(), "carol");
    carol.ok(&["init", "--name", "Carol", "--relay", &relay.link]);
    carol.ok(&["accept", &invite]);
    alice.ok(&["sync"]);
    let names: Vec<String> =
        alice.json(&["contacts"]).as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().into()).collect();
    assert_eq!(names, vec!["Bob"]);
    // The alias sticks even after Alice's profile arrives.
    bob.ok(&["sync"]);
    assert_eq!(bob.json(&["contacts"])[0]["name"], "Ally");
}

#[test]
fn unknown_contact_unreachable_relay_and_bad_usage() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, _bob) = pair(root.path(), &relay, "Alice", "Bob");
    let err = one_line_failure(&alice.run(&["send", "Nobody", "hi"]));
    assert!(err.contains("no contact or group named"), "{err}");
    let err = one_line_failure(&alice.run(&["messages", "Nobody"]));
    assert!(err.contains("contacts"), "{err}");

    // A relay link to a port nobody listens on: init fails and creates nothing.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let data = root.path().join("dead-relay");
    let dead_link = std::process::Command::new(BIN)
        .args(["relay", "init", "--data"])
        .arg(&data)
        .args(["--public", &closed.to_string()])
        .output()
        .unwrap();
    let dead_link = String::from_utf8(dead_link.stdout).unwrap().trim().to_string();
    let dave = Person::new(root.path(), "dave");
    let err = one_line_failure(&dave.run(&["init", "--name", "Dave", "--relay", &dead_link]));
    assert!(err.contains("unreachable"), "{err}");
    assert!(!dave.home.join("keyfile.json").exists());
    let err = one_line_failure(&dave.run(&["contacts"]));
    assert!(err.contains("tamizdat init"), "{err}");

    let usage = alice.run(&["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = alice.run(&["send"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn garbage_on_the_relay_port_hurts_nobody_else() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let mut garbage = Vec::new();
    for i in 0..40u8 {
        let mut s = std::net::TcpStream::connect(&relay.addr).unwrap();
        let payload: Vec<u8> = match i % 4 {
            0 => (0..4096).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i)).collect(),
            1 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            2 => [0x16, 0x03, 0x01, 0xff, 0xff].iter().copied().chain(std::iter::repeat_n(0x41, 2000)).collect(),
            _ => vec![],
        };
        let _ = s.write_all(&payload);
        garbage.push(s); // keep some connections open while others chat
    }
    alice.ok(&["send", "Bob", "still here"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Alice"), vec!["still here"]);
    drop(garbage);
    bob.ok(&["send", "Alice", "and me"]);
    alice.ok(&["sync"]);
    assert_eq!(alice.texts("Bob"), vec!["still here", "and me"]);
}

#[test]
fn damaged_files_on_disk_get_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let alice = Person::new(root.path(), "alice");
    alice.ok(&["init", "--name", "Alice", "--relay", &relay.link]);
    drop(relay);
    // A damaged key file: the store cannot be opened, and the error says what is wrong.
    let keyfile = alice.home.join("keyfile.json");
    let good = std::fs::read(&keyfile).unwrap();
    std::fs::write(&keyfile, &good[..good.len() / 2]).unwrap();
    let err = one_line_failure(&alice.run(&["contacts"]));
    assert!(err.contains("keyfile.json"), "{err}");
    std::fs::write(&keyfile, &good).unwrap();
    alice.ok(&["contacts"]);
    // A damaged relay data directory: the relay refuses to start and says which file.
    let meta = root.path().join("relay").join("relay.json");
    std::fs::write(&meta, b"{ not json").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["relay", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(root.path().join("relay"))
        .output()
        .unwrap();
    let err = one_line_failure(&out);
    assert!(err.contains("relay.json"), "{err}");
}

/// Carol talks to Alice through relay A and to Bob through relay B. With B down, her messages
/// to Alice still go and she still receives Alice's; what waits for B goes once B is back.
#[test]
fn one_unreachable_relay_holds_up_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let relay_a = RelayProc::start(&root.path().join("relay-a"), None);
    let mut relay_b = RelayProc::start(&root.path().join("relay-b"), None);
    let alice = Person::new(root.path(), "alice");
    let bob = Person::new(root.path(), "bob");
    let carol = Person::new(root.path(), "carol");
    alice.ok(&["init", "--name", "Alice", "--relay", &relay_a.link]);
    bob.ok(&["init", "--name", "Bob", "--relay", &relay_b.link]);
    carol.ok(&["init", "--name", "Carol", "--relay", &relay_a.link]);
    let from_alice = alice.ok(&["invite"]).lines().next().unwrap().to_string();
    let from_bob = bob.ok(&["invite"]).lines().next().unwrap().to_string();
    carol.ok(&["accept", &from_alice, "--as", "Alice"]);
    carol.ok(&["accept", &from_bob, "--as", "Bob"]);
    alice.ok(&["sync"]);
    bob.ok(&["sync"]);

    relay_b.kill();
    let err = one_line_failure(&carol.run(&["send", "Bob", "waits for B"]));
    assert!(err.contains("not delivered"), "{err}");
    carol.ok(&["send", "Alice", "goes through A"]); // the older entry for B does not block it
    alice.ok(&["sync"]);
    assert_eq!(alice.texts("Carol"), vec!["goes through A"]);
    alice.ok(&["send", "Carol", "reply via A"]);
    // Carol's sync fails for B, says so in one line, and still brings Alice's reply.
    let out = carol.run(&["sync"]);
    let err = one_line_failure(&out);
    assert!(err.contains("unreachable") || err.contains("not delivered"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("reply via A"));
    assert_eq!(carol.texts("Alice"), vec!["goes through A", "reply via A"]);

    relay_b.restart();
    carol.ok(&["sync"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Carol"), vec!["waits for B"]);
}
