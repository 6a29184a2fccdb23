//! Shared helpers: a relay process and people using the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_tamizdat");
pub const PASSPHRASE: &str = "correct horse battery staple";

/// A relay process on loopback.
pub struct RelayProc {
    pub child: Child,
    pub data: PathBuf,
    pub link: String,
    pub addr: String,
    pub extra: Vec<String>,
    pub log: Option<PathBuf>,
}

impl RelayProc {
    /// Starts a relay on a free loopback port (or `addr` when restarting).
    pub fn start(data: &Path, addr: Option<&str>) -> RelayProc {
        RelayProc::start_with(data, addr, &[])
    }

    /// Starts a relay with extra `relay serve` arguments (kept for restarts).
    pub fn start_with(data: &Path, addr: Option<&str>, extra: &[String]) -> RelayProc {
        RelayProc::start_logged(data, addr, extra, None)
    }

    /// Starts a relay whose debug-level log goes to `log`.
    pub fn start_logged(data: &Path, addr: Option<&str>, extra: &[String], log: Option<&Path>) -> RelayProc {
        RelayProc::spawn(Command::new(BIN), data, addr, extra, log)
    }

    /// Starts a relay that may open at most `open_files` files (soft and hard limit, so it
    /// cannot raise them). A restart does not keep the limit.
    pub fn start_limited(data: &Path, extra: &[String], open_files: u32, log: &Path) -> RelayProc {
        RelayProc::spawn(limited(open_files), data, None, extra, Some(log))
    }

    /// Runs `relay serve` through `command` (the binary itself, or a wrapper that ends in it).
    fn spawn(mut command: Command, data: &Path, addr: Option<&str>, extra: &[String], log: Option<&Path>) -> RelayProc {
        let listen = addr.unwrap_or("127.0.0.1:0");
        let stderr = match log {
            // Appended, so restarts keep adding to one log.
            Some(path) => {
                Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file"))
            }
            None => Stdio::null(),
        };
        let mut child = command
            .args(["relay", "serve", "--data"])
            .arg(data)
            .args(["--listen", listen])
            .args(extra)
            .env("TAMIZDAT_LOG", if log.is_some() { "debug" } else { "warn" })
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("relay starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("link line");
        let link = line.trim().to_string();
        assert!(link.starts_with("tamizdat:relay/"), "relay printed {link:?}");
        let addr = relay_addr(&link);
        wait_for_port(&addr);
        RelayProc {
            child,
            data: data.to_path_buf(),
            link,
            addr,
            extra: extra.to_vec(),
            log: log.map(Path::to_path_buf),
        }
    }

    /// SIGTERM, then waits up to `within` for the relay to exit; its exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let kill = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(kill.success());
        let started = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                return exit;
            }
            assert!(started.elapsed() < within, "the relay did not stop within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// Starts again on the same address and data.
    pub fn restart(&mut self) {
        let again = RelayProc::start_logged(
            &self.data.clone(),
            Some(&self.addr.clone()),
            &self.extra.clone(),
            self.log.as_deref(),
        );
        assert_eq!(again.link, self.link, "the relay link survives restarts");
        *self = again;
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary, run by a shell that first limits it to `open_files` open files (soft and hard
/// limit, so it cannot raise them); arguments added to the command go to the binary.
pub fn limited(open_files: u32) -> Command {
    let mut shell = Command::new("sh");
    shell.args(["-c", &format!("ulimit -n {open_files} && exec \"$0\" \"$@\""), BIN]);
    shell
}

/// The first endpoint of a relay link, decoded with the project's own parser.
pub fn relay_addr(link: &str) -> String {
    let d = tamizdat_wire::proto::RelayDescriptor::from_link(link).expect("valid relay link");
    d.endpoints[0].clone()
}

fn wait_for_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("relay did not listen on {addr}");
}

/// A person: a home directory used with the binary.
pub struct Person {
    pub home: PathBuf,
}

impl Person {
    pub fn new(root: &Path, dir: &str) -> Person {
        Person { home: root.join(dir) }
    }

    /// A person with an identity named `name` on `relay`.
    #[allow(dead_code)] // not every test file makes people one by one
    pub fn init(root: &Path, dir: &str, name: &str, relay: &RelayProc) -> Person {
        let p = Person::new(root, dir);
        p.ok(&["init", "--name", name, "--relay", &relay.link]);
        p
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, PASSPHRASE, None)
    }

    pub fn run_with(&self, args: &[&str], passphrase: &str, stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(BIN)
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .env("TAMIZDAT_PASSPHRASE", passphrase)
            .env_remove("TAMIZDAT_HOME")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary runs");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
        }
        child.wait_with_output().expect("output")
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "tamizdat {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    pub fn texts(&self, contact: &str) -> Vec<String> {
        let v = self.json(&["messages", contact]);
        v.as_array().expect("array").iter().map(|m| m["text"].as_str().expect("text").to_string()).collect()
    }
}

/// Runs and insists on failure with exit code 1 and a single-line error; returns it.
pub fn one_line_failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "expected exit 1, stdout {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line, got {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    err
}

/// Two people who know each other through `relay`: alice invited, bob accepted, both synced.
pub fn pair(root: &Path, relay: &RelayProc, a: &str, b: &str) -> (Person, Person) {
    let alice = Person::new(root, "alice");
    let bob = Person::new(root, "bob");
    alice.ok(&["init", "--name", a, "--relay", &relay.link]);
    bob.ok(&["init", "--name", b, "--relay", &relay.link]);
    let invite = alice.ok(&["invite"]);
    let invite = invite.lines().next().expect("invite line").to_string();
    assert!(invite.starts_with("tamizdat:invite/"));
    bob.ok(&["accept", &invite]);
    alice.ok(&["sync"]);
    bob.ok(&["sync"]);
    (alice, bob)
}

/// Operator-visible text (logs, metrics) must name no client address and nothing id-like
/// (32 hex digits in a row: a 16-byte id). The relay's own "listening on" line is exempt.
pub fn assert_no_ids_or_addresses(what: &str, text: &str) {
    for line in text.lines().filter(|l| !l.contains("relay listening on")) {
        assert!(!line.contains("127.0.0."), "{what} names an address: {line}");
        let hexrun = line.as_bytes().windows(32).any(|w| w.iter().all(u8::is_ascii_hexdigit));
        assert!(!hexrun, "{what} carries something id-like: {line}");
    }
}
