//! Living in a conversation: replies, edits, deletion for everyone, reactions, receipts,
//! disappearing messages and safety numbers, between two real processes through a relay.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use tamizdat_client::Client;

fn by_text<'a>(messages: &'a serde_json::Value, text: &str) -> &'a serde_json::Value {
    messages
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["text"] == text)
        .unwrap_or_else(|| panic!("no {text:?} in {messages}"))
}

#[test]
fn replies_edits_deletes_reactions_and_receipts_reach_the_other_side() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");

    let first = alice.json(&["send", "Bob", "lunch at noon?"]);
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["state"], "sent");
    bob.ok(&["sync"]);

    // Bob's copy is unread until he reads it; reading tells Alice.
    let convs = bob.json(&["conversations"]);
    assert_eq!(convs[0]["name"], "Alice");
    assert_eq!(convs[0]["unread"], 1);
    assert_eq!(convs[0]["last"]["text"], "lunch at noon?");
    // Bob's sync sent a delivery receipt.
    alice.ok(&["sync"]);
    assert_eq!(by_text(&alice.json(&["messages", "Bob"]), "lunch at noon?")["state"], "delivered");
    assert_eq!(bob.json(&["read", "Alice"])["marked_read"], 1);
    assert_eq!(bob.json(&["conversations"])[0]["unread"], 0);
    let synced = alice.json(&["sync"]);
    assert_eq!(synced["changed"][0]["state"], "read", "{synced}");
    assert_eq!(by_text(&alice.json(&["messages", "Bob"]), "lunch at noon?")["state"], "read");

    // A reply names what it answers on both sides.
    bob.ok(&["send", "Alice", "yes!", "--reply-to", &id]);
    alice.ok(&["sync"]);
    let reply = by_text(&alice.json(&["messages", "Bob"]), "yes!").clone();
    assert_eq!(reply["reply_to"]["id"], id.as_str());
    assert_eq!(reply["reply_to"]["text"], "lunch at noon?");
    assert_eq!(reply["reply_to"]["sender"], "Alice");

    // Edit and delete for everyone; only the sender may.
    alice.ok(&["edit", "Bob", &id, "lunch at one?"]);
    bob.ok(&["sync"]);
    let edited = by_text(&bob.json(&["messages", "Alice"]), "lunch at one?").clone();
    assert_eq!(edited["edited"], true);
    assert_eq!(edited["id"], id.as_str());
    let refused = bob.run(&["edit", "Alice", &id, "not yours"]);
    assert!(one_line_failure(&refused).contains("not a message of yours"));

    // Reactions, and taking one back.
    bob.ok(&["react", "Alice", &id, "👍"]);
    alice.ok(&["sync"]);
    let reacted = by_text(&alice.json(&["messages", "Bob"]), "lunch at one?").clone();
    assert_eq!(reacted["reactions"][0]["emoji"], "👍");
    assert_eq!(reacted["reactions"][0]["by"][0], "Bob");
    bob.ok(&["react", "Alice", &id, "--remove"]);
    alice.ok(&["sync"]);
    assert_eq!(by_text(&alice.json(&["messages", "Bob"]), "lunch at one?")["reactions"], serde_json::json!([]));

    alice.ok(&["delete", "Bob", &id]);
    bob.ok(&["sync"]);
    let gone = bob.json(&["messages", "Alice"]);
    let gone = gone.as_array().unwrap().iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert_eq!(gone["deleted"], true);
    assert_eq!(gone["text"], "");

    // With read receipts off, reading tells nobody.
    alice.ok(&["send", "Bob", "quiet"]);
    bob.ok(&["config", "read-receipts", "off"]);
    bob.ok(&["sync"]);
    bob.ok(&["read", "Alice"]);
    alice.ok(&["sync"]);
    assert_eq!(by_text(&alice.json(&["messages", "Bob"]), "quiet")["state"], "delivered");
}

#[test]
fn disappearing_messages_are_gone_from_both_stores() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    alice.ok(&["send", "Bob", "stays"]);
    let set = alice.json(&["expire", "Bob", "3s"]);
    assert!(set["text"].as_str().unwrap().contains("disappearing messages to 3s"), "{set}");
    alice.ok(&["send", "Bob", "vanishes"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.json(&["conversations"])[0]["expire_secs"], 3);
    assert!(bob.texts("Alice").contains(&"vanishes".to_string()));
    // Bob's answer carries the timer too: it was set for the conversation.
    bob.ok(&["send", "Alice", "me too"]);
    alice.ok(&["sync"]);
    // Each side's copy has its deadline; the message sent before the timer has none.
    for (p, other, text) in [(&alice, "Bob", "vanishes"), (&bob, "Alice", "vanishes"), (&alice, "Bob", "me too")] {
        assert!(by_text(&p.json(&["messages", other]), text)["expires_at"].as_u64().is_some());
    }
    assert!(by_text(&bob.json(&["messages", "Alice"]), "stays")["expires_at"].is_null());
    std::thread::sleep(Duration::from_millis(3500));
    // The rows are deleted from the stores, not only hidden from listings: Alice's expired rows
    // are still there until something purges them, and Bob's sync purges his.
    let purged = Client::open(&alice.home, PASSPHRASE).unwrap().purge_expired().unwrap();
    assert!(purged >= 2, "alice purged {purged}");
    bob.ok(&["sync"]);
    assert_eq!(Client::open(&bob.home, PASSPHRASE).unwrap().purge_expired().unwrap(), 0, "bob's sync purged");
    for (p, other) in [(&alice, "Bob"), (&bob, "Alice")] {
        let texts = p.texts(other);
        assert!(texts.contains(&"stays".to_string()), "{texts:?}");
        assert!(!texts.contains(&"vanishes".to_string()) && !texts.contains(&"me too".to_string()), "{texts:?}");
    }
    alice.ok(&["expire", "Bob", "off"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.json(&["conversations"])[0]["expire_secs"], 0);
}

#[test]
fn both_sides_see_one_safety_number_and_a_changed_key_is_loud() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let a = alice.json(&["verify", "Bob"]);
    let b = bob.json(&["verify", "Alice"]);
    assert_eq!(a["safety_number"], b["safety_number"]);
    assert_eq!(a["safety_number"].as_str().unwrap().len(), 60);
    let text = alice.ok(&["verify", "Bob"]);
    let digits: String = text.lines().skip(2).take(3).collect::<Vec<_>>().join(" ");
    assert_eq!(digits.replace(' ', ""), a["safety_number"].as_str().unwrap(), "{text}");
    assert_eq!(bob.json(&["verify", "Alice", "--mark"])["verified"], true);

    // Alice loses her device and starts again with a new identity; Bob accepts her new invite
    // as the same contact.
    let alice2 = Person::init(root.path(), "alice-new", "Alice", &relay);
    let invite = alice2.ok(&["invite"]).lines().next().unwrap().to_string();
    let accepted = bob.run(&["accept", &invite, "--as", "Alice"]);
    assert!(accepted.status.success());
    assert!(String::from_utf8_lossy(&accepted.stderr).contains("WARNING"), "{accepted:?}");
    let v = bob.json(&["verify", "Alice"]);
    assert_eq!(v["verified"], false);
    assert!(v["key_changed_at"].as_u64().is_some());
    assert_ne!(v["safety_number"], a["safety_number"]);
    // The next message waits for Bob to acknowledge: a loud, one-line refusal.
    let refused = bob.run(&["send", "Alice", "is that you?"]);
    assert!(one_line_failure(&refused).contains("safety number changed"));
    assert!(bob.json(&["conversations"]).as_array().unwrap().iter().any(|c| c["key_changed"] == true));
    // The new number is what the new Alice sees.
    alice2.ok(&["sync"]);
    assert_eq!(alice2.json(&["verify", "Bob"])["safety_number"], v["safety_number"]);
    bob.ok(&["verify", "Alice", "--mark"]);
    bob.ok(&["send", "Alice", "is that you?"]);
    alice2.ok(&["sync"]);
    assert!(alice2.texts("Bob").contains(&"is that you?".to_string()));
}

#[test]
fn an_invite_code_fits_a_qr_code_and_works_like_the_link() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let alice = Person::init(root.path(), "alice", "Alice", &relay);
    let bob = Person::init(root.path(), "bob", "Bob", &relay);
    let made = alice.json(&["invite", "--code"]);
    let (link, code) = (made["link"].as_str().unwrap(), made["code"].as_str().unwrap());
    // A post-quantum invite is too long for any QR code (2,953 bytes at most); its code is not.
    assert!(link.len() > 2953, "{}", link.len());
    assert!(code.starts_with("tamizdat:code/") && code.len() < 400, "{code}");
    // A mistyped code is refused before anything else happens.
    let mut typo = code.to_string();
    let last = typo.pop().unwrap();
    typo.push(if last == 'A' { 'B' } else { 'A' });
    assert!(one_line_failure(&bob.run(&["accept", &typo])).contains("not usable"));
    bob.ok(&["accept", code]);
    alice.ok(&["sync"]);
    alice.ok(&["send", "Bob", "through a code"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Alice"), vec!["through a code"]);
    // The code stands for a one-time invite: used once, like the link.
    let carol = Person::init(root.path(), "carol", "Carol", &relay);
    carol.ok(&["accept", code]);
    alice.ok(&["sync"]);
    let contacts = alice.json(&["contacts"]);
    assert_eq!(contacts.as_array().unwrap().len(), 1, "{contacts}");
}
