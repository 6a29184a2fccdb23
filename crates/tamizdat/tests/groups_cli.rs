//! The group commands as scripts use them: JSON output, exit codes, events in `messages`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;

#[test]
fn group_commands_follow_the_contract() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");

    let created = alice.json(&["group", "create", "Team"]);
    assert_eq!(created["group"], "Team");
    let added = alice.json(&["group", "add", "Team", "Bob"]);
    assert_eq!(added["added"], serde_json::json!(["Bob"]));
    let sync = bob.json(&["sync"]);
    assert_eq!(sync["new_groups"], serde_json::json!(["Team"]));
    assert!(bob.ok(&["sync"]).contains("nothing new"));

    bob.ok(&["send", "Team", "hello team"]);
    let out = alice.ok(&["sync"]);
    assert!(out.contains("[Team] Bob: hello team"), "{out}");

    let groups = alice.json(&["groups"]);
    assert_eq!(groups[0]["name"], "Team");
    assert_eq!(groups[0]["members"], 2);
    assert_eq!(groups[0]["state"], "active");
    let members = bob.json(&["group", "members", "Team"]);
    let names: Vec<&str> = members.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Alice", "Bob"]);
    assert_eq!(members[1]["you"], true);

    let messages = bob.json(&["messages", "Team"]);
    let kinds: Vec<(&str, &str)> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["kind"].as_str().unwrap(), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("event", "Alice added you"), ("text", "hello team")]);

    // Bad usage is exit 2; a wrong name is exit 1 with one line.
    assert_eq!(alice.run(&["group", "add", "Team"]).status.code(), Some(2));
    assert_eq!(alice.run(&["group", "frobnicate"]).status.code(), Some(2));
    let err = one_line_failure(&alice.run(&["group", "add", "Nope", "Bob"]));
    assert!(err.contains("Nope"), "{err}");
    let err = one_line_failure(&alice.run(&["group", "add", "Team", "Bob"]));
    assert!(err.contains("already in Team"), "{err}");
    let err = one_line_failure(&alice.run(&["group", "create", "Bob"]));
    assert!(err.contains("already have"), "{err}");

    let config = alice.json(&["config", "update-after-messages", "25"]);
    assert_eq!(config["update-after-messages"], 25);
    assert_eq!(alice.run(&["config", "update-after-messages", "soon"]).status.code(), Some(1));

    bob.ok(&["group", "leave", "Team"]);
    assert_eq!(bob.json(&["groups"])[0]["state"], "left");
    one_line_failure(&bob.run(&["send", "Team", "still here?"]));
    alice.ok(&["sync"]);
    let names: Vec<String> = alice
        .json(&["group", "members", "Team"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Alice"]);
    assert!(alice.texts("Team").contains(&"Bob left".to_string()));
}
