//! `tamizdat chat` in a real terminal (tmux), against a real relay and people using the CLI:
//! open a conversation, read it (the sender sees it read), send, receive while open, switch
//! conversations, quit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tamizdat_tui::tmux::{Tmux, available};

#[test]
fn open_read_send_receive_and_switch_in_a_real_terminal() {
    if !available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let carol = Person::init(root.path(), "carol", "Carol", &relay);
    let invite = alice.ok(&["invite"]).lines().next().unwrap().to_string();
    carol.ok(&["accept", &invite]);
    alice.ok(&["sync"]);
    carol.ok(&["sync"]);
    carol.ok(&["send", "Alice", "hi from carol"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    bob.ok(&["send", "Alice", "hello from bob"]);

    let tmux = Tmux::start_sized(
        &format!(
            "TAMIZDAT_PASSPHRASE='{PASSPHRASE}' TERM=xterm-256color {BIN} --home {} chat; echo EXITED $?; sleep 30",
            alice.home.display()
        ),
        120,
        35,
    );
    // The worker syncs at start: both conversations, unread, the newest first, and the route.
    let list = tmux.wait_for("the conversation list", |s| s.contains("2 unread") && s.contains("DIRECT"));
    let (bob_at, carol_at) = (list.find("Bob").unwrap(), list.find("Carol").unwrap());
    assert!(bob_at < carol_at, "the newest conversation comes first:\n{list}");

    // Open Bob's: his message shows, and reading it tells him.
    tmux.keys(&["Down"]);
    tmux.wait_for("Bob's message", |s| s.contains("hello from bob") && s.contains("1 unread"));
    bob.ok(&["sync"]);
    let bobs = bob.json(&["messages", "Alice"]);
    assert_eq!(bobs[0]["state"], "read", "{bobs}");

    // Send from the compose box; Bob gets it.
    tmux.keys(&["Enter"]);
    tmux.text("hi bob, from the terminal");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the sent message", |s| s.contains("hi bob, from the terminal") && s.contains('✓'));
    bob.ok(&["sync"]);
    assert!(bob.texts("Alice").contains(&"hi bob, from the terminal".to_string()));

    // Bob answers while the conversation is open: it appears without a key pressed.
    bob.ok(&["send", "Alice", "got it"]);
    tmux.wait_for("Bob's answer", |s| s.contains("got it"));

    // Switch to Carol's conversation.
    tmux.keys(&["Escape", "M-Down"]);
    let carols = tmux.wait_for("Carol's conversation", |s| s.contains("hi from carol") && !s.contains("1 unread"));
    assert!(carols.contains("┌ Carol ─"), "{carols}");
    // Bob's answer is now only the list's preview of his conversation.
    assert_eq!(carols.matches("got it").count(), 1, "{carols}");

    tmux.keys(&["C-q"]);
    tmux.wait_for("the exit", |s| s.contains("EXITED 0"));
}
