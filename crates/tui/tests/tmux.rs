//! The demo in a real terminal: tmux runs it, `send-keys` types, `capture-pane` reads the
//! screen. This covers what the test backend cannot: raw mode, crossterm's key parsing, the
//! `select!` loop with a worker, and the terminal put back on quit. Needs tmux: without it the
//! test says so and passes, except under CI, where it must run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use tamizdat_tui::tmux::Tmux;

#[test]
fn open_read_send_switch_and_quit_in_a_real_terminal() {
    if !tamizdat_tui::tmux::available() {
        return;
    }
    let demo = env!("CARGO_BIN_EXE_tamizdat-tui-demo");
    let tmux = Tmux::start(&format!("TERM=xterm-256color {demo}; echo EXITED $?; sleep 30"));
    let start = tmux.wait_for("the list", |s| s.contains("Chats · 3 unread") && s.contains(" DIRECT "));
    assert!(start.contains("No conversation open"));

    // Open: the badge goes, the messages come from the worker.
    tmux.keys(&["Down"]);
    let open =
        tmux.wait_for("Alice's messages", |s| s.contains("Perfect, thanks for the menu") && s.contains("▎ You:"));
    assert!(open.contains("Chats · 2 unread"), "{open}");

    // Send two lines: the message walks through its states to read, and Alice answers.
    tmux.keys(&["Enter"]);
    tmux.text("Hello from tmux");
    tmux.keys(&["M-Enter"]);
    tmux.text("second line");
    tmux.wait_for("the draft", |s| s.contains("│ second line"));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the message sent", |s| s.contains("Hello from tmux") && s.contains("✓"));
    let answered = tmux.wait_for("Alice's answer", |s| s.contains("You said: Hello from tmux"));
    assert!(answered.contains("✓✓"), "{answered}");
    assert!(answered.contains("Write a message"), "the box was cleared: {answered}");

    // Switch to the group with Alt-Down: its event and disappearing messages show.
    tmux.keys(&["M-Down"]);
    let group = tmux.wait_for("the group", |s| s.contains("Chapter 4 tonight?"));
    assert!(group.contains("Dana set disappearing messages to 1 day"), "{group}");
    assert!(group.contains("Book club ◷ 1d"));

    // Help, then quit: the terminal is the shell's again.
    tmux.keys(&["F1"]);
    tmux.wait_for("the help", |s| s.contains("┌ Keys"));
    tmux.keys(&["Escape", "C-q"]);
    let after = tmux.wait_for("the exit", |s| s.contains("EXITED 0"));
    assert!(!after.contains("Chats"), "the alternate screen was left: {after}");
}
