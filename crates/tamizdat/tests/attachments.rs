//! Files through a real relay process: a 200 MB file whose upload and download are each killed
//! half-way and resumed, arriving whole with bounded memory on both sides; tampered and cut
//! files refused; kinds, captions, paths and usage errors.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;
/// Resident memory either side may reach while moving a 200 MB file. Opening the store alone
/// takes 64 MiB (Argon2id); the transfer itself must stay in the low megabytes.
const MEMORY_BOUND: u64 = 150 * MIB;

/// The bytes a file of `size` takes on the relay: 16 bytes of tag per 256 KiB chunk.
fn encrypted_size(size: u64) -> u64 {
    size + size.div_ceil(256 * 1024).max(1) * 16
}

/// Writes `size` pseudo-random bytes to `path`; returns their SHA-256 (hex).
fn random_file(path: &Path, size: u64, seed: u64) -> String {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut state = seed.wrapping_mul(2) | 1; // odd, and distinct for distinct seeds
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        for word in buf[..n].chunks_mut(8) {
            // xorshift64: fast enough unoptimised, and incompressible.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        out.write_all(&buf[..n]).unwrap();
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    out.flush().unwrap();
    hex(hasher.finalize().as_slice())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(hasher.finalize().as_slice())
}

/// A memory figure of a running process from /proc (`VmHWM`: its peak so far, `VmRSS`: now),
/// in bytes.
fn memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// What a watched run of the binary did.
struct Run {
    success: bool,
    killed: bool,
    stdout: String,
    stderr: Vec<String>,
    /// `done` of the first and the last progress line.
    first: Option<u64>,
    last: Option<u64>,
    total: Option<u64>,
    /// Peak resident memory of the whole run (VmHWM).
    peak: u64,
    /// Highest resident memory seen while bytes moved, after the first progress line: the
    /// store's key derivation (64 MiB, freed at once) sets the peak before that.
    moving: u64,
    elapsed: Duration,
}

/// Runs `tamizdat --json ARGS` as `person`, reading its progress lines from stderr and its peak
/// memory from /proc while it runs; SIGKILLs it once a progress line reaches `kill_at` of the
/// total.
fn watch(person: &Person, args: &[&str], kill_at: Option<f64>) -> Run {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("--home")
        .arg(&person.home)
        .arg("--json")
        .args(args)
        .env("TAMIZDAT_PASSPHRASE", PASSPHRASE)
        .env_remove("TAMIZDAT_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let mut run = Run {
        success: false,
        killed: false,
        stdout: String::new(),
        stderr: Vec::new(),
        first: None,
        last: None,
        total: None,
        peak: 0,
        moving: 0,
        elapsed: Duration::ZERO,
    };
    let seen = |line: String, run: &mut Run| -> bool {
        let progress = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| Some((v.get("done")?.as_u64()?, v.get("total")?.as_u64()?)));
        run.stderr.push(line);
        let Some((done, total)) = progress else { return false };
        run.first.get_or_insert(done);
        run.last = Some(done);
        run.total = Some(total);
        kill_at.is_some_and(|f| done as f64 >= f * total as f64 && done < total)
    };
    let status = loop {
        if let Some(p) = memory(pid, "VmHWM:") {
            run.peak = run.peak.max(p);
        }
        if run.first.is_some()
            && let Some(now) = memory(pid, "VmRSS:")
        {
            run.moving = run.moving.max(now);
        }
        match lines.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => {
                if seen(line, &mut run) && !run.killed {
                    child.kill().unwrap();
                    run.killed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "tamizdat {args:?} did not finish");
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
        seen(line, &mut run);
    }
    run.success = status.success();
    run.stdout = out.join().unwrap();
    run.elapsed = started.elapsed();
    run
}

fn metric(admin: &str, name: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let prefix = format!("tamizdat_{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {name} in {text}")).parse().unwrap()
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// The definition of done: a 200 MB attachment interrupted half-way resumes and
/// arrives with the right hash, while resident memory stays bounded. The download is
/// interrupted and resumed too.
#[test]
fn two_hundred_mb_interrupted_half_way_resume_and_arrive_whole() {
    const SIZE: u64 = 200_000_000;
    let root = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let relay = RelayProc::start_with(&root.path().join("relay"), None, &["--admin".into(), admin.clone()]);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let file = root.path().join("big.bin");
    let started = Instant::now();
    let sha256 = random_file(&file, SIZE, 0x7a31_5eed);
    eprintln!("made {SIZE} random bytes in {:?}", started.elapsed());
    let file_arg = file.to_str().unwrap();

    // The upload, killed once half of it is stored.
    let first = watch(&alice, &["send", "Bob", "--file", file_arg, "a big one"], Some(0.5));
    assert!(first.killed, "the upload ended before half-way: {:?}", first.stderr);
    let killed_at = first.last.unwrap();
    assert_eq!(first.first, Some(0), "a new upload starts at 0");
    assert!((SIZE / 2..SIZE).contains(&killed_at), "{killed_at}");
    let before = metric(&admin, "blob_bytes_received_total");
    // Nothing arrived for Bob yet: the message goes only once the file is all there.
    assert!(bob.json(&["sync"])["messages"].as_array().unwrap().is_empty());

    // The same command again goes on from where the relay stopped.
    let second = watch(&alice, &["send", "Bob", "--file", file_arg, "a big one"], None);
    assert!(second.success, "{:?}", second.stderr);
    let resumed_from = second.first.unwrap();
    assert!(resumed_from >= killed_at, "resumed from {resumed_from}, but {killed_at} was stored");
    assert_eq!(second.last, Some(SIZE));
    let view: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
    assert_eq!(view["kind"], "file");
    assert_eq!(view["state"], "sent");
    assert_eq!(view["text"], "a big one");
    assert_eq!(view["attachment"]["sha256"], sha256.as_str());
    assert_eq!(view["attachment"]["uploaded"], SIZE);
    let received = metric(&admin, "blob_bytes_received_total");
    let encrypted = encrypted_size(SIZE);
    assert!(received >= encrypted, "{received}");
    assert!(received < encrypted * 3 / 2, "the relay received {received} bytes for {encrypted}: it started over");
    assert_eq!(metric(&admin, "blobs_created_total"), 1, "the resumed upload kept its blob");

    // Bob learns of the file and saves it; the download is killed half-way and resumed too.
    let sync = bob.json(&["sync"]);
    let messages = sync["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    let id = messages[0]["id"].as_str().unwrap().to_string();
    assert_eq!(messages[0]["kind"], "file");
    assert_eq!(messages[0]["attachment"]["name"], "big.bin");
    assert_eq!(messages[0]["attachment"]["size"], SIZE);
    let target = root.path().join("saved.bin");
    let target_arg = target.to_str().unwrap();
    let cut = watch(&bob, &["save", &id, target_arg], Some(0.5));
    assert!(cut.killed, "the download ended before half-way: {:?}", cut.stderr);
    let cut_at = cut.last.unwrap();
    assert!(!target.exists(), "nothing is saved under its name before it is checked");
    let save = watch(&bob, &["save", &id, target_arg], None);
    assert!(save.success, "{:?}", save.stderr);
    assert!(save.first.unwrap() >= cut_at, "the download resumed from {:?}, {cut_at} were saved", save.first);
    let saved: serde_json::Value = serde_json::from_str(&save.stdout).unwrap();
    assert_eq!(saved["sha256"], sha256.as_str());
    assert_eq!(saved["size"], SIZE);
    assert_eq!(PathBuf::from(saved["path"].as_str().unwrap()), target);
    assert_eq!(sha256_of(&target), sha256, "the saved file is the file sent");
    assert!(!root.path().join("saved.bin.part").exists());
    let served = metric(&admin, "blob_bytes_served_total");
    assert!(served < encrypted * 3 / 2, "the relay served {served} bytes for {encrypted}: the download started over");
    let listed = bob.json(&["messages", "Alice"]);
    assert_eq!(listed[0]["attachment"]["saved_path"], target_arg);

    let upload = SIZE - resumed_from;
    let download = SIZE - save.first.unwrap();
    eprintln!(
        "upload: killed at {killed_at} after {:?} ({:.1} MB/s), resumed at {resumed_from}, rest in {:?} ({:.1} MB/s); relay received {received} of {encrypted} bytes ({before} before the resume)",
        first.elapsed,
        mb_per_s(killed_at, first.elapsed),
        second.elapsed,
        mb_per_s(upload, second.elapsed),
    );
    eprintln!(
        "download: killed at {cut_at} after {:?} ({:.1} MB/s), rest in {:?} ({:.1} MB/s); relay served {served} bytes",
        cut.elapsed,
        mb_per_s(cut_at, cut.elapsed),
        save.elapsed,
        mb_per_s(download, save.elapsed),
    );
    // What opening the store alone costs, for comparison.
    let baseline = watch(&bob, &["contacts"], None).peak;
    let runs = [("sender", &first), ("resumed sender", &second), ("receiver", &cut), ("resumed receiver", &save)];
    for (what, run) in runs {
        eprintln!(
            "{what}: peak RSS {} MiB (`contacts` alone: {} MiB), at most {} MiB resident while moving bytes",
            run.peak / MIB,
            baseline / MIB,
            run.moving / MIB
        );
    }
    for (what, run) in runs {
        assert!(run.peak > 0 && run.moving > 0, "the {what}'s memory was never read");
        assert!(run.peak < MEMORY_BOUND, "the {what} peaked at {} MiB", run.peak / MIB);
        assert!(run.moving < 48 * MIB, "the {what} held {} MiB while moving bytes", run.moving / MIB);
    }
}

/// Runs the binary in `dir` (for the default save path) and returns its output.
fn run_in(person: &Person, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("--home")
        .arg(&person.home)
        .args(args)
        .env("TAMIZDAT_PASSPHRASE", PASSPHRASE)
        .env_remove("TAMIZDAT_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn relay_db(relay: &RelayProc) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(relay.data.join("relay.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db
}

/// A file whose copy on the relay was changed or cut is refused, with nothing saved; kinds are
/// guessed or given, captions shown, existing files never replaced, and bad usage is exit 2.
#[test]
fn tampered_or_cut_files_are_refused_and_the_rest_works() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let photo = root.path().join("photo.png");
    let sha256 = random_file(&photo, 600_000, 42);
    let notes = root.path().join("notes.txt");
    std::fs::write(&notes, "three words here").unwrap();

    let sent = alice.json(&["send", "Bob", "--file", photo.to_str().unwrap(), "holiday"]);
    assert_eq!(sent["attachment"]["kind"], "image", "guessed from the extension");
    assert_eq!(sent["attachment"]["mime"], "image/png");
    assert_eq!(sent["text"], "holiday");
    let voice = alice.json(&["send", "Bob", "--file", notes.to_str().unwrap(), "--kind", "voice"]);
    assert_eq!(voice["attachment"]["kind"], "voice", "a given kind wins");
    assert_eq!(voice["text"], "notes.txt", "without a caption the text is the name");
    let plain = alice.ok(&["send", "Bob", "--file", notes.to_str().unwrap()]);
    assert!(plain.starts_with("sent notes.txt to Bob (16 bytes)"), "{plain}");

    // Bad usage is exit 2; a file that is not there is a one-line failure.
    for args in [
        vec!["send", "Bob"],
        vec!["send", "Bob", "--kind", "image", "hi"],
        vec!["send", "Bob", "--file", photo.to_str().unwrap(), "--kind", "movie"],
    ] {
        assert_eq!(alice.run(&args).status.code(), Some(2), "{args:?}");
    }
    let missing = one_line_failure(&alice.run(&["send", "Bob", "--file", "/nonexistent/file.pdf"]));
    assert!(missing.contains("/nonexistent/file.pdf"), "{missing}");

    bob.ok(&["sync"]);
    let listed = bob.ok(&["messages", "Alice"]);
    assert!(listed.contains("Alice: [image photo.png, 600.0 kB] holiday"), "{listed}");
    assert!(listed.contains("Alice: [voice notes.txt, 16 bytes]"), "{listed}");
    let messages = bob.json(&["messages", "Alice"]);
    let id = messages[0]["id"].as_str().unwrap().to_string();
    assert_eq!(messages[0]["attachment"]["sha256"], sha256.as_str());

    // One byte changed on the relay: the chunk does not decrypt, nothing is saved.
    let db = relay_db(&relay);
    let encrypted = encrypted_size(600_000) as i64;
    let (blob_id, original): (Vec<u8>, Vec<u8>) = db
        .query_row(
            "SELECT p.blob_id, p.data FROM blob_pieces p JOIN blobs b ON b.blob_id = p.blob_id WHERE b.size = ?1 AND p.pos = 0",
            [encrypted],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(original.len() as i64, encrypted, "one piece holds the whole file");
    let mut tampered = original.clone();
    tampered[300_000] ^= 0x20;
    let set_piece = |data: &[u8]| {
        db.execute("UPDATE blob_pieces SET data = ?1 WHERE blob_id = ?2 AND pos = 0", rusqlite::params![data, blob_id])
            .unwrap();
    };
    set_piece(&tampered);
    let out_dir = root.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("p.png");
    let err = one_line_failure(&bob.run(&["save", &id, target.to_str().unwrap()]));
    assert!(err.contains("changed or damaged on the relay"), "{err}");
    assert!(!target.exists());

    // Cut short: the relay's copy is shorter than the file needs.
    set_piece(&original[..original.len() - 1000]);
    let set_size = |size: i64| {
        db.execute("UPDATE blobs SET size = ?1, length = ?1 WHERE blob_id = ?2", rusqlite::params![size, blob_id])
            .unwrap();
    };
    set_size(encrypted - 1000);
    let err = one_line_failure(&bob.run(&["save", &id, target.to_str().unwrap()]));
    assert!(err.contains("should have"), "{err}");
    assert!(!target.exists());
    // The same length as expected, but the end is missing: the relay claims the upload is
    // unfinished.
    db.execute("UPDATE blobs SET size = ?1 WHERE blob_id = ?2", rusqlite::params![encrypted, blob_id]).unwrap();
    let err = one_line_failure(&bob.run(&["save", &id, target.to_str().unwrap()]));
    assert!(err.contains("holds only"), "{err}");

    // Repaired, it saves: into a directory under the sender's name, then by default into the
    // current directory; an existing file is never replaced.
    set_piece(&original);
    set_size(encrypted);
    let saved = bob.json(&["save", &id, out_dir.to_str().unwrap()]);
    assert_eq!(saved["sha256"], sha256.as_str());
    assert_eq!(sha256_of(&out_dir.join("photo.png")), sha256);
    let again = one_line_failure(&bob.run(&["save", &id, out_dir.to_str().unwrap()]));
    assert!(again.contains("exists already"), "{again}");
    let here = root.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let out = run_in(&bob, &here, &["save", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sha256_of(&here.join("photo.png")), sha256);
    let listed = bob.ok(&["messages", "Alice"]);
    assert!(listed.contains("(saved to "), "{listed}");
    // A message without a file, and an id that is none.
    let err = one_line_failure(&bob.run(&["save", "00112233445566778899aabbccddeeff"]));
    assert!(err.contains("no file"), "{err}");
    let err = one_line_failure(&bob.run(&["save", "photo.png"]));
    assert!(err.contains("not a message id"), "{err}");
}

/// An upload cut short is finished by `sync` as well; one whose file changed meanwhile is
/// dropped (its key belongs to the file as it was) and sending again starts afresh.
#[test]
fn sync_finishes_a_cut_upload_and_a_changed_file_starts_over() {
    const SIZE: u64 = 12_000_000;
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Alice", "Bob");
    let (one, two) = (root.path().join("one.bin"), root.path().join("two.bin"));
    let sha_one = random_file(&one, SIZE, 1);
    random_file(&two, SIZE, 2);

    let cut = watch(&alice, &["send", "Bob", "--file", one.to_str().unwrap()], Some(0.3));
    assert!(cut.killed, "{:?}", cut.stderr);
    let mine = alice.json(&["messages", "Bob"]);
    assert_eq!(mine[0]["state"], "uploading");
    let uploaded = mine[0]["attachment"]["uploaded"].as_u64().unwrap();
    assert!(uploaded >= cut.last.unwrap() && uploaded < SIZE, "{uploaded}");
    let err = one_line_failure(&alice.run(&["save", mine[0]["id"].as_str().unwrap()]));
    assert!(err.contains("has not finished uploading"), "{err}");
    alice.ok(&["sync"]);
    assert_eq!(alice.json(&["messages", "Bob"])[0]["state"], "sent");

    let cut = watch(&alice, &["send", "Bob", "--file", two.to_str().unwrap()], Some(0.3));
    assert!(cut.killed, "{:?}", cut.stderr);
    let sha_two = random_file(&two, SIZE, 4);
    let err = one_line_failure(&alice.run(&["send", "Bob", "--file", two.to_str().unwrap()]));
    assert!(err.contains("changed or went away") && err.contains("send the file again"), "{err}");
    assert_eq!(alice.json(&["messages", "Bob"])[1]["state"], "failed");
    alice.ok(&["sync"]); // does not take the dropped upload up again
    let again = watch(&alice, &["send", "Bob", "--file", two.to_str().unwrap()], None);
    assert!(again.success, "{:?}", again.stderr);
    assert_eq!(again.first, Some(0), "a new upload");

    let report = bob.json(&["sync"]);
    let got: Vec<(String, String)> = report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m["attachment"]["sha256"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got.iter().map(|(_, sha)| sha.clone()).collect::<Vec<_>>(), vec![sha_one.clone(), sha_two.clone()]);
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for ((id, sha), name) in got.iter().zip(["one.bin", "two.bin"]) {
        assert_eq!(bob.json(&["save", id, out.to_str().unwrap()])["sha256"], sha.as_str());
        assert_eq!(&sha256_of(&out.join(name)), sha);
    }
}
