//! The demo in a real terminal: tmux runs it, `send-keys` types, `capture-pane` reads the
//! screen. This covers what the test backend cannot: raw mode, crossterm's key parsing, the
//! `select!` loop with a worker, and the terminal put back on quit. Needs tmux, so it runs
//! only when asked: `cargo test -p tamizdat-tui -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    socket_path: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let mut tmux = Tmux { socket: format!("tamizdat-tui-test-{}", std::process::id()), socket_path: String::new() };
        tmux.run(&["new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command]);
        tmux.socket_path = tmux.run(&["display-message", "-p", "#{socket_path}"]).trim().to_owned();
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", "-t", "t", k]);
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    fn text(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Waits up to 10 s for the screen to show what `ready` wants.
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "waited for {what}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").output();
        // tmux leaves the socket file behind.
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

#[test]
#[ignore = "drives the demo in tmux: cargo test -p tamizdat-tui -- --ignored"]
fn open_read_send_switch_and_quit_in_a_real_terminal() {
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
