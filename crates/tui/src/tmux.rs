//! Driving a terminal program in tmux, for tests: `send-keys` types, `capture-pane` reads the
//! screen. What a test backend cannot cover (raw mode, key parsing, the terminal put back on
//! exit) is covered this way.

// Test support: a failing tmux command is a failed test, so it panics with what tmux said.
#![allow(clippy::expect_used)]

use std::{
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// Tells apart the tmux servers of one test process.
static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// Whether tmux can be run. Under CI (`CI` set) it must: a missing tmux fails there instead of
/// skipping the terminal tests.
pub fn available() -> bool {
    let found = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").is_err(), "tmux is missing, and CI must run the terminal tests");
        eprintln!("tmux is not installed: skipping the terminal test");
    }
    found
}

/// A tmux server of our own (its own socket), killed on drop.
#[derive(Debug)]
pub struct Tmux {
    socket: String,
    socket_path: String,
}

impl Tmux {
    /// Runs `command` (through the shell) in a new 100×30 terminal.
    pub fn start(command: &str) -> Tmux {
        Self::start_sized(command, 100, 30)
    }

    /// Runs `command` (through the shell) in a new terminal of this size.
    pub fn start_sized(command: &str, width: u16, height: u16) -> Tmux {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let socket = format!("tamizdat-tui-test-{}-{n}", std::process::id());
        let mut tmux = Tmux { socket, socket_path: String::new() };
        let (w, h) = (width.to_string(), height.to_string());
        tmux.run(&["new-session", "-d", "-s", "t", "-x", &w, "-y", &h, command]);
        tmux.socket_path = tmux.run(&["display-message", "-p", "#{socket_path}"]).trim().to_owned();
        tmux
    }

    /// Runs a tmux command on this server; returns its output.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Presses keys, named as `send-keys` names them (`Enter`, `M-Down`, `C-q`).
    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", "-t", "t", k]);
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    /// Types text literally.
    pub fn text(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Waits up to 30 s for the screen to show what `ready` wants; returns that screen.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "waited for {what}; the screen:\n{screen}");
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
