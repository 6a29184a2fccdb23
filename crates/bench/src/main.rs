#![doc = include_str!("../README.md")]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use tamizdat_client::relay::RelayClient;
use tamizdat_wire::{
    auth_payload, frame,
    proto::{
        Append, ClientFrame, Command as WireCommand, CreateLog, Op, RelayDescriptor, Reply, ServerFrame, Subscribe,
    },
};

/// Load generator for a Tamizdat relay.
#[derive(Parser, Clone)]
struct Args {
    /// The tamizdat binary that runs the relay (default: next to this one).
    #[arg(long)]
    tamizdat: Option<PathBuf>,
    /// Writer connections; as many reader connections are opened, one per writer's log.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to measure.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload bytes per message (an MLS-shaped application message of this size).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Requests in flight per writer connection.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Target total messages per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Relay store: default the embedded SQLite, or postgres://…
    #[arg(long)]
    store: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

struct RelayProcess {
    child: Child,
    link: String,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(args: &Args) -> anyhow::Result<RelayProcess> {
    let bin = match &args.tamizdat {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("tamizdat"),
    };
    let dir = tempfile::tempdir()?;
    // Limits sized for a benchmark: every connection comes from 127.0.0.1.
    let config = dir.path().join("bench.toml");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    std::fs::write(
        &config,
        format!("admin = \"{admin}\"\n")
            + "[limits]\nconnections_per_address = 1000000\nnew_connections_per_second = 1000000.0\nnew_connections_burst = 1000000.0\nrequests_per_second = 1000000000.0\nrequests_burst = 1000000000.0\n",
    )?;
    let mut cmd = Command::new(&bin);
    cmd.args(["relay", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("relay"))
        .arg("--config")
        .arg(&config)
        .env("TAMIZDAT_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(store) = &args.store {
        cmd.args(["--store", store]);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("relay stdout")?).read_line(&mut line)?;
    let link = line.trim().to_string();
    if !link.starts_with("tamizdat:relay/") {
        bail!("the relay printed {link:?} instead of its link");
    }
    Ok(RelayProcess { child, link, admin, _dir: dir })
}

/// CPU seconds (user + system) and resident KiB of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

/// One counter from the relay's admin endpoint.
fn counters(admin: std::net::SocketAddr) -> HashMap<String, f64> {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(admin) {
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.read_to_string(&mut text);
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.trim_start_matches("tamizdat_").to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// An MLS PrivateMessage-shaped application message of `size` bytes for the relay to peek at.
fn mls_payload(size: usize, filler: u8) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, 16];
    m.extend_from_slice(&[7; 16]);
    m.extend_from_slice(&0u64.to_be_bytes());
    m.push(1);
    m.resize(size.max(m.len()), filler);
    m
}

struct WriterResult {
    sent_at: HashMap<u64, Instant>,
    request_bytes: usize,
    reply_bytes: usize,
}

async fn writer(
    d: RelayDescriptor,
    key: SigningKey,
    log_id: Vec<u8>,
    args: Args,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<WriterResult> {
    let rc = RelayClient::connect(&d).await?;
    let (mut conn, nonce, mut next_id) = rc.into_parts();
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut sent_at = HashMap::new();
    let (mut request_bytes, mut reply_bytes) = (0, 0);
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
    let mut next_send = start;
    let mut counter = 0u64;
    loop {
        let now = Instant::now();
        let open = now < deadline;
        while open && in_flight.len() < args.window && interval.is_none_or(|_| Instant::now() >= next_send) {
            counter += 1;
            let mut dedup = counter.to_be_bytes().to_vec();
            dedup.extend_from_slice(&rand::random::<u64>().to_be_bytes());
            let command = WireCommand {
                op: Some(Op::Append(Append {
                    log_id: log_id.clone(),
                    dedup_id: dedup,
                    payload: mls_payload(args.payload, counter as u8),
                })),
            }
            .encode_to_vec();
            let signature = key.sign(&auth_payload(&nonce, next_id, &command)).to_bytes().to_vec();
            let bytes = frame::encode(&ClientFrame { request_id: next_id, command, signature })?;
            request_bytes = bytes.len();
            in_flight.insert(next_id, Instant::now());
            next_id += 1;
            conn.send(bytes).await?;
            if let Some(i) = interval {
                next_send += i;
            }
        }
        if in_flight.is_empty() {
            if !open {
                break;
            }
            tokio::time::sleep_until(next_send.into()).await;
            continue;
        }
        let reply = conn.recv().await?;
        reply_bytes = reply.len();
        let f: ServerFrame = frame::decode(&reply)?;
        let Some(t0) = in_flight.remove(&f.request_id) else { continue };
        match f.reply {
            Some(Reply::Appended(a)) => {
                sent_at.insert(a.seq, t0);
            }
            other => bail!("append refused: {other:?}"),
        }
    }
    Ok(WriterResult { sent_at, request_bytes, reply_bytes })
}

async fn reader(mut rc: RelayClient, until: Instant) -> (HashMap<u64, Instant>, usize) {
    let mut seen = HashMap::new();
    while let Ok(Ok(n)) = tokio::time::timeout_at(until.into(), rc.next_notice()).await {
        seen.insert(n.seq, Instant::now());
    }
    let notice_bytes = frame::encode(&ServerFrame {
        request_id: 0,
        reply: Some(Reply::Notify(tamizdat_wire::proto::Notify { id: vec![0; 16], seq: 1 })),
    })
    .map(|b| b.len())
    .unwrap_or(0);
    (seen, notice_bytes)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let relay = start_relay(&args)?;
    let pid = relay.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let d = RelayDescriptor::from_link(&relay.link)?;
    let result = rt.block_on(async {
        // Logs and subscribed readers first.
        let mut setups = Vec::new();
        for _ in 0..args.connections {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let mut admin = RelayClient::connect(&d).await?;
            let Reply::LogCreated(l) = admin
                .call(Op::CreateLog(CreateLog { log_key: key.verifying_key().to_bytes().to_vec() }), Some(&key))
                .await?
            else {
                bail!("no log");
            };
            admin.subscribe(Subscribe { log_id: l.log_id.clone(), read_id: vec![] }, &key).await?;
            setups.push((key, l.log_id, admin));
        }
        let (cpu0, _) = usage(pid);
        let before = counters(relay.admin);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(args.seconds);
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (key, log_id, rc) in setups {
            readers.push(tokio::spawn(reader(rc, deadline + Duration::from_secs(3))));
            writers.push(tokio::spawn(writer(d.clone(), key, log_id, args.clone(), start, deadline)));
        }
        let mut peak_rss = 0;
        let mut write_results = Vec::new();
        for w in writers {
            write_results.push(w.await??);
            peak_rss = peak_rss.max(usage(pid).1);
        }
        let elapsed = start.elapsed();
        let (cpu1, rss) = usage(pid);
        let mut latencies = Vec::new();
        let mut delivered = 0usize;
        let mut notice_bytes = 0;
        for (w, r) in write_results.iter().zip(readers) {
            let (seen, nb) = r.await?;
            notice_bytes = nb;
            for (seq, t0) in &w.sent_at {
                if let Some(t1) = seen.get(seq) {
                    delivered += 1;
                    latencies.push(t1.saturating_duration_since(*t0));
                }
            }
        }
        latencies.sort();
        let after = counters(relay.admin);
        let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        let batches = delta("write_batches_total");
        let acked: usize = write_results.iter().map(|w| w.sent_at.len()).sum();
        let wire = write_results.first().map(|w| w.request_bytes + w.reply_bytes).unwrap_or(0) + notice_bytes;
        Ok(serde_json::json!({
            "connections": args.connections,
            "window": args.window,
            "payload_bytes": args.payload,
            "target_rate": args.rate,
            "store": args.store.as_deref().map(|s| if s.starts_with("postgres") { "postgres" } else { "sqlite" }).unwrap_or("sqlite"),
            "seconds": elapsed.as_secs_f64(),
            "acknowledged": acked,
            "delivered": delivered,
            "delivered_per_second": delivered as f64 / elapsed.as_secs_f64(),
            "latency_ms_p50": percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            "latency_ms_p99": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            "latency_ms_p999": percentile(&latencies, 0.999).as_secs_f64() * 1e3,
            "relay_cpu_percent": (cpu1 - cpu0) / elapsed.as_secs_f64() * 100.0,
            "relay_rss_mib": rss.max(peak_rss) as f64 / 1024.0,
            "websocket_bytes_per_message": wire,
            "relay_commit_batches_per_second": batches / elapsed.as_secs_f64(),
            "relay_writes_per_batch": if batches > 0.0 { delta("write_batch_items_total") / batches } else { 0.0 },
        }))
    })?;
    if args.json {
        println!("{result}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "relay load: {} connections, window {}, {} B payloads, {}",
            args.connections,
            args.window,
            args.payload,
            if args.rate == 0 { "as fast as possible".to_string() } else { format!("{} msg/s target", args.rate) }
        )?;
        for (k, v) in result.as_object().into_iter().flatten() {
            writeln!(out, "  {k:<28} {v}")?;
        }
    }
    Ok(())
}
