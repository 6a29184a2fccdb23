//! The JSON-RPC daemon: a frontend sends through it and is notified of what arrives, on a
//! Unix socket and on standard input and output; bad requests get JSON-RPC errors and leave
//! the connection (and other frontends) working.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon(person: &Person, args: &[&str]) -> Daemon {
    let child = Command::new(BIN)
        .arg("--home")
        .arg(&person.home)
        .arg("daemon")
        .args(args)
        .env("TAMIZDAT_PASSPHRASE", PASSPHRASE)
        .env_remove("TAMIZDAT_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon(child)
}

/// A line-oriented JSON-RPC peer over any reader and writer.
struct Rpc<R: BufRead, W: Write> {
    read: R,
    write: W,
    next_id: u64,
    /// Notifications seen while waiting for answers.
    notes: Vec<Value>,
}

impl<R: BufRead, W: Write> Rpc<R, W> {
    fn line(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.read.read_line(&mut line).unwrap() > 0, "the daemon closed the connection");
        serde_json::from_str(&line).unwrap()
    }

    fn raw(&mut self, text: &str) -> Value {
        writeln!(self.write, "{text}").unwrap();
        self.write.flush().unwrap();
        loop {
            let v = self.line();
            if v.get("method").is_some() && v.get("id").is_none() {
                self.notes.push(v);
            } else {
                return v;
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let request = json!({ "jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params });
        let answer = self.raw(&request.to_string());
        assert_eq!(answer["id"], self.next_id, "{answer}");
        answer
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        let answer = self.call(method, params);
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Waits for a notification `method` whose params satisfy `want`.
    fn notified(&mut self, method: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.notes.iter().position(|n| n["method"] == method && want(&n["params"])) {
            return self.notes.remove(i)["params"].clone();
        }
        loop {
            let v = self.line();
            if v["method"] == method && want(&v["params"]) {
                return v["params"].clone();
            }
            self.notes.push(v);
        }
    }
}

fn connect(path: &std::path::Path) -> Rpc<BufReader<UnixStream>, UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(stream) = UnixStream::connect(path) {
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            return Rpc { read: BufReader::new(stream.try_clone().unwrap()), write: stream, next_id: 0, notes: vec![] };
        }
        assert!(Instant::now() < deadline, "the daemon did not listen on {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_frontend_sends_and_is_notified_of_replies() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let socket = root.path().join("alice.sock");
    let _d = daemon(&alice, &["--socket", socket.to_str().unwrap()]);
    let mut rpc = connect(&socket);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let contacts = rpc.ok("contacts", json!({}));
    assert_eq!(contacts[0]["name"], "Bob");
    let sent = rpc.ok("send", json!({ "to": "Bob", "text": "from a bot" }));
    assert_eq!(sent["state"], "sent");
    let id = sent["id"].as_str().unwrap().to_string();

    // A second frontend on the same daemon sees the same events.
    let mut second = connect(&socket);
    assert_eq!(second.ok("conversations", json!({}))[0]["name"], "Bob");

    bob.ok(&["sync"]);
    bob.ok(&["send", "Alice", "a reply", "--reply-to", &id]);
    // The relay announces Bob's entry; the daemon syncs and notifies without being asked.
    let m = rpc.notified("message", |p| p["text"] == "a reply");
    assert_eq!(m["reply_to"]["id"], id.as_str());
    assert_eq!(m["sender"], "Bob");
    second.notified("message", |p| p["text"] == "a reply");
    // Bob's delivery receipt arrived with it.
    rpc.notified("message.changed", |p| p["id"] == id.as_str() && p["state"] == "delivered");

    // Errors: each with its code; the connection keeps working.
    assert_eq!(rpc.raw("{not json")["error"]["code"], -32700);
    assert_eq!(rpc.call("no.such.method", json!({}))["error"]["code"], -32601);
    assert_eq!(rpc.call("send", json!({ "to": "Bob" }))["error"]["code"], -32602);
    let unknown = rpc.call("send", json!({ "to": "Nobody", "text": "x" }));
    assert_eq!(unknown["error"]["code"], -32001);
    assert_eq!(unknown["error"]["data"]["kind"], "bad_input");
    assert_eq!(rpc.raw(r#"{"jsonrpc":"1.0","id":9,"method":"contacts"}"#)["error"]["code"], -32600);
    // A batch, with a notification (no id) that gets no answer.
    let batch = rpc.raw(
        r#"[{"jsonrpc":"2.0","id":"a","method":"status"},{"jsonrpc":"2.0","method":"read","params":{"conversation":"Bob"}}]"#,
    );
    assert_eq!(batch.as_array().unwrap().len(), 1);
    assert_eq!(batch[0]["result"]["route"], "direct");
    assert_eq!(rpc.ok("messages", json!({ "conversation": "Bob" })).as_array().unwrap().len(), 2);
    // A line over 1 MiB closes that connection only; the other frontend goes on.
    let mut hostile = connect(&socket);
    // The daemon stops reading after 1 MiB, so the rest of the write may meet a closed socket.
    let _ = writeln!(hostile.write, "\"{}\"", "x".repeat(1024 * 1024 + 10));
    let oversize = hostile.line();
    assert_eq!(oversize["error"]["code"], -32600, "{oversize}");
    let mut rest = String::new();
    assert_eq!(hostile.read.read_line(&mut rest).unwrap(), 0, "the connection stays open: {rest}");
    assert_eq!(second.ok("contacts", json!({}))[0]["name"], "Bob");
    let endpoints = rpc.ok("relay.endpoints", json!({}));
    assert_eq!(endpoints[0]["kind"], "ip", "{endpoints}");
    assert_eq!(rpc.ok("config.set", json!({ "key": "typing-indicators", "value": "off" }))["typing-indicators"], "off");
    assert_eq!(rpc.ok("config.get", json!({}))["typing-indicators"], 0);
    assert_eq!(rpc.ok("typing", json!({ "conversation": "Bob", "typing": true }))["sent"], false);
}

#[test]
fn stdio_speaks_the_same_protocol() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let mut d = daemon(&alice, &["--stdio"]);
    let mut rpc = Rpc {
        read: BufReader::new(d.0.stdout.take().unwrap()),
        write: d.0.stdin.take().unwrap(),
        next_id: 0,
        notes: vec![],
    };
    let invite = rpc.ok("invite", json!({ "expires_secs": 600 }));
    assert!(invite["link"].as_str().unwrap().starts_with("tamizdat:invite/"));
    rpc.ok("send", json!({ "to": "Bob", "text": "over stdio" }));
    bob.ok(&["sync"]);
    assert!(bob.texts("Alice").contains(&"over stdio".to_string()));
    bob.ok(&["send", "Alice", "back"]);
    rpc.notified("message", |p| p["text"] == "back");
    // Closing standard input stops the daemon.
    drop(rpc);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon did not stop when its input closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
