//! Group benchmark: what MLS groups cost in Tamizdat, with the encrypted store (SQLCipher) and
//! the relay round trip (TLS + WebSocket on loopback) included.
//!
//! For each ciphersuite and group size it prints: time to create the group with everyone (in
//! commits of as many additions as fit a relay entry, each stored by the relay), time to add one member, time for a
//! member to process that commit, the Welcome's size, time to encrypt and to decrypt one
//! application message, bytes of overhead per text message, and how many incoming messages a
//! member decrypts and stores per second. Then it measures `sync` of real clients.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use ed25519_dalek::SigningKey;
use openmls::prelude::{Ciphersuite, KeyPackage};
use openmls_rust_crypto::OpenMlsRustCrypto;
use tamizdat_client::{
    Client,
    relay::RelayClient,
    store::{self, Provider},
};
use tamizdat_e2e::{
    CLASSIC_SUITE, Conversation, DEFAULT_SUITE, Identity, Incoming,
    content::{Body, Content, Text},
    key_packages, max_adds_per_commit,
};
use tamizdat_relay::{Relay, RelayConfig};
use tamizdat_wire::proto::{Append, CreateLog, Op, RelayDescriptor, Reply};

/// A 33-byte text, as in the baseline.
const TEXT: &str = "See you at the station at eight.!";

#[derive(Parser)]
struct Args {
    /// Group sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100, 1000, 5000])]
    sizes: Vec<usize>,
    /// Ciphersuites: pq (X25519+ML-KEM-768 hybrid) and/or classic (X25519).
    #[arg(long, value_delimiter = ',', default_values_t = ["pq".to_string(), "classic".to_string()])]
    suites: Vec<String>,
    /// Application messages per decrypt-rate measurement.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Messages for the real-client `sync` measurement (0 skips it).
    #[arg(long, default_value_t = 5000)]
    sync_messages: usize,
    /// Only the real-client `sync` measurement.
    #[arg(long)]
    only_sync: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    suite: String,
    members: usize,
    create_ms: f64,
    add_one_ms: f64,
    process_add_ms: f64,
    welcome_bytes: usize,
    commit_bytes: usize,
    remove_ms: f64,
    remove_commit_bytes: usize,
    remove_fits_relay_entry: bool,
    encrypt_us: f64,
    decrypt_us: f64,
    overhead_bytes: usize,
    decrypt_and_store_per_sec: f64,
}

struct Log {
    relay: RelayClient,
    id: Vec<u8>,
    key: SigningKey,
    n: u64,
}

impl Log {
    async fn new(link: &str) -> anyhow::Result<Self> {
        let mut relay = RelayClient::connect(&RelayDescriptor::from_link(link)?).await?;
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let reply = relay
            .call(Op::CreateLog(CreateLog { log_key: key.verifying_key().to_bytes().to_vec() }), Some(&key))
            .await?;
        let Reply::LogCreated(created) = reply else { bail!("expected LogCreated") };
        Ok(Self { relay, id: created.log_id, key, n: 0 })
    }

    /// Appends and waits for the relay's acknowledgement (stored and committed).
    async fn append(&mut self, payload: Vec<u8>) -> anyhow::Result<()> {
        self.n += 1;
        let mut dedup = self.n.to_be_bytes().to_vec();
        dedup.resize(16, 0);
        let op = Op::Append(Append { log_id: self.id.clone(), dedup_id: dedup, payload });
        match self.relay.call(op, Some(&self.key)).await? {
            Reply::Appended(_) => Ok(()),
            other => bail!("unexpected reply {other:?}"),
        }
    }
}

async fn start_relay(dir: &Path) -> anyhow::Result<String> {
    let config = RelayConfig {
        data: dir.join("relay"),
        listen: "127.0.0.1:0".parse()?,
        public: vec![],
        retention: Duration::from_secs(86_400),
        store: None,
        limits: tamizdat_relay::Limits { requests_per_second: 1e6, requests_burst: 1e6, ..Default::default() },
        durability: Default::default(),
        admin: None,
        shards: 1,
    };
    let relay = Relay::bind(config).await?;
    let mut d = RelayDescriptor::from_link(&relay.link())?;
    d.endpoints = vec![relay.local_addr().context("no address")?.to_string()];
    tokio::spawn(relay.run(std::future::pending()));
    Ok(d.to_link())
}

fn text(i: usize) -> Content {
    let mut message_id = (i as u64).to_be_bytes().to_vec();
    message_id.resize(16, 7);
    Content {
        message_id,
        sent_at_ms: 0,
        body: Some(Body::Text(Text { text: TEXT.into(), reply_to: Vec::new() })),
        expire_secs: 0,
    }
}

/// Runs one step in one transaction of the encrypted store (one fsync), as the client does.
fn in_tx<T>(
    db: &rusqlite::Connection,
    step: impl FnOnce(&Provider<'_>) -> Result<T, tamizdat_e2e::E2eError>,
) -> anyhow::Result<T> {
    let tx = db.unchecked_transaction()?;
    let value = step(&Provider::new(&tx))?;
    tx.commit()?;
    Ok(value)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn measure(suite: Ciphersuite, label: &str, members: usize, args: &Args) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let link = start_relay(dir.path()).await?;
    let mut log = Log::new(&link).await?;
    let creator_db = store::create(&dir.path().join("creator"), "bench")?;
    let member_db = store::create(&dir.path().join("member"), "bench")?;
    let creator_p = Provider::new(&creator_db);
    let member_p = Provider::new(&member_db);
    let creator = Identity::create(&creator_p, suite)?;
    let member = Identity::create(&member_p, suite)?;

    // Everyone else's KeyPackages (their private keys stay in memory: they only need to exist).
    let others = OpenMlsRustCrypto::default();
    let mut kps: Vec<KeyPackage> = Vec::with_capacity(members);
    let own = key_packages::generate(&member_p, &member, suite, false)?;
    kps.push(key_packages::validate(&member_p, &own.bytes, member.public_key())?);
    for _ in 2..members {
        let id = Identity::create(&others, suite)?;
        let kp = key_packages::generate(&others, &id, suite, false)?;
        kps.push(key_packages::validate(&others, &kp.bytes, id.public_key())?);
    }

    // Create with everyone: commits as large as fit a relay entry, each stored by the relay,
    // then merged; every step in one transaction, as the client does it.
    let started = Instant::now();
    let mut group = Conversation::create(&creator_p, &creator, suite)?;
    let mut member_group = None;
    let mut catch_up = Vec::new();
    for batch in kps.chunks(max_adds_per_commit(suite)) {
        let out = in_tx(&creator_db, |p| group.add(p, &creator, batch))?;
        log.append(out.commit.clone()).await?;
        in_tx(&creator_db, |p| group.confirm_commit(p))?;
        match &member_group {
            None => member_group = Some(Conversation::join(&member_p, &out.welcome.context("no welcome")?)?),
            Some(_) => catch_up.push(out.commit),
        }
    }
    let create_ms = ms(started.elapsed());
    let mut member_group = member_group.context("member never joined")?;
    for commit in catch_up {
        in_tx(&member_db, |p| member_group.process(p, &commit))?;
    }

    // Add one more member: commit, relay round trip, merge.
    let newcomer = Identity::create(&others, suite)?;
    let kp = key_packages::generate(&others, &newcomer, suite, false)?;
    let kp = key_packages::validate(&others, &kp.bytes, newcomer.public_key())?;
    let started = Instant::now();
    let out = in_tx(&creator_db, |p| group.add(p, &creator, std::slice::from_ref(&kp)))?;
    log.append(out.commit.clone()).await?;
    in_tx(&creator_db, |p| group.confirm_commit(p))?;
    let add_one_ms = ms(started.elapsed());
    let welcome_bytes = out.welcome.as_ref().map_or(0, Vec::len);
    let commit_bytes = out.commit.len();

    let started = Instant::now();
    let processed = in_tx(&member_db, |p| member_group.process(p, &out.commit))?;
    let process_add_ms = ms(started.elapsed());
    if !matches!(processed, Incoming::Commit(_)) {
        bail!("the member did not see a commit");
    }
    if member_group.epoch() != group.epoch() {
        bail!("the member is in another epoch");
    }

    // Remove one member: the first commit with an update path since the group was built; its
    // path is encrypted to every member not yet merged into the tree, which is its worst case.
    let (remove_ms, remove_bytes, remove_stored) = {
        let started = Instant::now();
        let victim = vec![newcomer.public_key().to_vec()];
        let out = in_tx(&creator_db, |p| group.remove(p, &creator, &victim))?.context("nobody to remove")?;
        let built = started.elapsed();
        let stored = log.append(out.commit.clone()).await.is_ok();
        if stored {
            in_tx(&creator_db, |p| group.confirm_commit(p))?;
            in_tx(&member_db, |p| member_group.process(p, &out.commit))?;
        } else {
            in_tx(&creator_db, |p| group.abort_commit(p))?;
        }
        (ms(built), out.commit.len(), stored)
    };

    // Application messages: encrypt on one side, decrypt on the other (storage included).
    let mut ciphertexts = Vec::with_capacity(args.messages);
    // One transaction per message, as `send` does (one fsync each).
    let started = Instant::now();
    for i in 0..args.messages {
        let tx = creator_db.unchecked_transaction()?;
        ciphertexts.push(group.encrypt(&Provider::new(&tx), &creator, &text(i))?);
        tx.commit()?;
    }
    let encrypt_us = started.elapsed().as_secs_f64() * 1e6 / args.messages as f64;
    let overhead_bytes = ciphertexts[0].len() - TEXT.len();
    let started = Instant::now();
    for c in &ciphertexts[..args.messages / 2] {
        let tx = member_db.unchecked_transaction()?;
        member_group.process(&Provider::new(&tx), c)?;
        tx.commit()?;
    }
    let decrypt_us = started.elapsed().as_secs_f64() * 1e6 / (args.messages / 2) as f64;
    // The rest as sync does it: a batch of 256 per transaction, each message stored.
    member_db.execute_batch("CREATE TABLE IF NOT EXISTS bench_messages (id INTEGER PRIMARY KEY, body BLOB)")?;
    let rest = &ciphertexts[args.messages / 2..];
    let started = Instant::now();
    for batch in rest.chunks(256) {
        let tx = member_db.unchecked_transaction()?;
        let provider = Provider::new(&tx);
        for c in batch {
            if let Incoming::Content { content, .. } = member_group.process(&provider, c)? {
                tx.execute("INSERT INTO bench_messages (body) VALUES (?1)", [content.to_bytes()])?;
            }
        }
        tx.commit()?;
    }
    let decrypt_and_store_per_sec = rest.len() as f64 / started.elapsed().as_secs_f64();

    Ok(Row {
        suite: label.into(),
        members,
        create_ms,
        add_one_ms,
        process_add_ms,
        welcome_bytes,
        commit_bytes,
        remove_ms,
        remove_commit_bytes: remove_bytes,
        remove_fits_relay_entry: remove_stored,
        encrypt_us,
        decrypt_us,
        overhead_bytes,
        decrypt_and_store_per_sec,
    })
}

/// Real clients: Alice sends `n` messages to a group of three while Bob is offline; then Bob's
/// `sync` is timed (reads, decrypts, stores, acknowledges).
async fn real_sync(n: usize, suite: Ciphersuite) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let link = start_relay(dir.path()).await?;
    let mut alice = Client::init(&dir.path().join("alice"), "bench", "Alice", &link).await?;
    let mut bob = Client::init(&dir.path().join("bob"), "bench", "Bob", &link).await?;
    let mut carol = Client::init(&dir.path().join("carol"), "bench", "Carol", &link).await?;
    for other in [&mut bob, &mut carol] {
        let invite = alice.invite(3600)?;
        other.accept(&invite, None).await?;
        alice.sync().await?;
        other.sync().await?;
    }
    alice.set_setting("update-after-messages", &(n + 1).to_string())?;
    alice.group_create("Bench", suite).await?;
    alice.group_add("Bench", &["Bob".into(), "Carol".into()]).await?;
    bob.sync().await?;
    let started = Instant::now();
    for i in 0..n {
        alice.send("Bench", &format!("{TEXT} {i}")).await?;
    }
    let send_rate = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = bob.sync().await?;
    let elapsed = started.elapsed();
    if report.messages.len() != n {
        bail!("bob received {} of {n}", report.messages.len());
    }
    Ok((n as f64 / elapsed.as_secs_f64(), send_rate))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.json {
        println!(
            "| suite | members | create with everyone | add one | member processes the add | Welcome | add commit | remove one (build) | remove commit | encrypt | decrypt | overhead per text | decrypt+store |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for label in &args.suites {
        let suite = match label.as_str() {
            "pq" => DEFAULT_SUITE,
            "classic" => CLASSIC_SUITE,
            other => bail!("unknown suite {other}; use pq or classic"),
        };
        for &members in args.sizes.iter().filter(|_| !args.only_sync) {
            let row = measure(suite, label, members, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                println!(
                    "| {} | {} | {:.2} s | {:.1} ms | {:.1} ms | {:.1} KB | {:.1} KB | {:.1} ms | {:.1} KB{} | {:.0} µs | {:.0} µs | {} B | {:.0}/s |",
                    row.suite,
                    row.members,
                    row.create_ms / 1e3,
                    row.add_one_ms,
                    row.process_add_ms,
                    row.welcome_bytes as f64 / 1e3,
                    row.commit_bytes as f64 / 1e3,
                    row.remove_ms,
                    row.remove_commit_bytes as f64 / 1e3,
                    if row.remove_fits_relay_entry { "" } else { " (over the relay's entry limit)" },
                    row.encrypt_us,
                    row.decrypt_us,
                    row.overhead_bytes,
                    row.decrypt_and_store_per_sec
                );
            }
        }
    }
    if args.sync_messages > 0 {
        for label in &args.suites {
            let suite = if label == "pq" { DEFAULT_SUITE } else { CLASSIC_SUITE };
            let (rate, send_rate) = real_sync(args.sync_messages, suite).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "suite": label, "sync_messages_per_sec": rate, "send_per_sec": send_rate })
                );
            } else {
                println!(
                    "real clients, {label}: `sync` took in {} messages at {rate:.0}/s (the sender's `send` ran at {send_rate:.0}/s)",
                    args.sync_messages
                );
            }
        }
    }
    Ok(())
}
