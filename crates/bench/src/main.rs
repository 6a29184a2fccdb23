#![doc = include_str!("../README.md")]

mod conns;
mod idle;
mod jetstream;
mod load;
mod machine;
mod relay_proc;
mod stats;

use std::{io::Write as _, path::PathBuf, time::Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::{load::Spec, relay_proc::RelayProcess, stats::Throughput};

/// Load generator and benchmark suite for a Tamizdat relay, with NATS JetStream as the
/// reference in the same run.
#[derive(Parser)]
struct Cli {
    /// The tamizdat binary that runs the relay (default: next to this one).
    #[arg(long, global = true)]
    tamizdat: Option<PathBuf>,
    /// The JetStream server to compare with.
    #[arg(long, global = true, default_value = "127.0.0.1:4222")]
    nats: String,
    /// Worker threads of the load generator. Default: 1 for runs as fast as possible (the
    /// other core is the servers'), 2 for paced runs, where one thread serving every client's
    /// connection would add its own queueing to the latency it measures.
    #[arg(long, global = true)]
    client_threads: Option<usize>,
    /// Also write every result as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole suite and its table (the default): about 2 minutes; `--long` for the big
    /// connection counts.
    Suite {
        /// 100,000 idle connections, a storm of up to 20,000 clients, longer runs, PostgreSQL.
        #[arg(long)]
        long: bool,
    },
    /// One throughput run, against the relay or JetStream.
    Load {
        #[command(flatten)]
        load: LoadArgs,
        /// Drive JetStream instead of a relay.
        #[arg(long)]
        jetstream: bool,
        /// Relay store: the embedded SQLite, or postgres://…
        #[arg(long)]
        store: Option<String>,
        /// When the relay counts a write as stored: fsync or os-buffered.
        #[arg(long, default_value = "fsync")]
        durability: String,
    },
    /// Idle sessions held by one relay, and the relay memory each costs. Past what one
    /// process may open, the relay serves them from several connection shards.
    Idle {
        /// Sessions to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Relay store: the embedded SQLite, or postgres://…
        #[arg(long)]
        store: Option<String>,
        /// Sessions one process holds (default: its open-file limit less 1,000); more take
        /// more relay shards and holders.
        #[arg(long)]
        per_process: Option<usize>,
    },
    /// (Used by `idle`.) Opens sessions, prints how many it holds, and holds them until its
    /// input closes.
    #[command(hide = true)]
    Hold {
        /// The relay's link.
        #[arg(long)]
        link: String,
        /// The relay's address.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Index of the first session (which source address it uses).
        #[arg(long)]
        first: usize,
        /// Sessions to open.
        #[arg(long)]
        count: usize,
    },
    /// Full and resumed TLS handshakes per second.
    Handshakes {
        /// Seconds for each kind.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
    },
    /// Every client reconnecting at once.
    Storm {
        /// Clients.
        #[arg(long, default_value_t = 2_000)]
        clients: usize,
    },
}

#[derive(clap::Args, Clone)]
struct LoadArgs {
    /// Conversations, one writer each.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// Members per conversation (2 is one-to-one; the others read what the writer sends).
    #[arg(long, default_value_t = 2)]
    group_size: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Messages in flight per writer.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Target messages per second over all writers; 0 is as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Readers do not ask for entries inside notices, so every message costs a read (the
    /// way clients on freezing networks run).
    #[arg(long)]
    no_pushed_entries: bool,
}

impl LoadArgs {
    fn spec(&self) -> Spec {
        Spec {
            conversations: self.conversations,
            group_size: self.group_size,
            payload: self.payload,
            window: self.window,
            rate: self.rate,
            seconds: self.seconds,
            pushed_entries: !self.no_pushed_entries,
        }
    }
}

struct Bench {
    tamizdat: PathBuf,
    nats: String,
    client_threads: Option<usize>,
    results: serde_json::Map<String, serde_json::Value>,
    /// Throughput runs in the order they ran, for the table.
    runs: Vec<(String, Throughput)>,
}

impl Bench {
    fn relay(&self, store: Option<&str>, durability: &str) -> anyhow::Result<RelayProcess> {
        RelayProcess::start(&self.tamizdat, store, 1_000_000, durability)
    }

    /// Runs `work` on a runtime of its own with `threads` workers.
    fn on_threads<T>(threads: usize, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?.block_on(work)
    }

    /// The load generator's threads for a run of `spec` (see `--client-threads`).
    fn threads_for(&self, spec: &Spec) -> usize {
        self.client_threads.unwrap_or(if spec.rate > 0 { 2 } else { 1 })
    }

    /// Threads for the connection measurements.
    fn threads(&self) -> usize {
        self.client_threads.unwrap_or(1)
    }

    fn tamizdat(
        &mut self,
        label: &str,
        spec: &Spec,
        store: Option<&str>,
        durability: &str,
    ) -> anyhow::Result<Throughput> {
        let relay = self.relay(store, durability)?;
        self.measure(label, spec, "Tamizdat", relay.pid(), load::run(&relay, spec))
    }

    fn jetstream(&mut self, label: &str, spec: &Spec) -> anyhow::Result<Throughput> {
        let port = self.nats.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(4222);
        let pid = jetstream::server_pid(port).context("no nats-server process found for the JetStream address")?;
        let nats = self.nats.clone();
        self.measure(label, spec, "JetStream", pid, jetstream::run(&nats, pid, spec))
    }

    /// Runs one throughput measurement and records it with the threads it ran on, how fast a
    /// core was just before, the CPU time stolen meanwhile, the cores' stalls, and the CPU
    /// everything but the bench and the server process `server_pid` took. Dirty pages are
    /// written out first, so the run does not pay for writeback it did not cause.
    fn measure(
        &mut self,
        label: &str,
        spec: &Spec,
        server: &str,
        server_pid: u32,
        run: impl Future<Output = anyhow::Result<Throughput>>,
    ) -> anyhow::Result<Throughput> {
        let threads = self.threads_for(spec);
        let dirty_mib_flushed_before = machine::flush_dirty_pages();
        let cpu_probe_ms = machine::cpu_probe_ms();
        let ticks = machine::cpu_ticks();
        let (meter, others) = (machine::StallMeter::start(), machine::OthersMeter::start(server_pid));
        let run = Self::on_threads(threads, run);
        let (stalls, samples) = (meter.stop(), others.stop());
        let mut t = run.with_context(|| format!("{label}: {server} run"))?;
        t.tail = t.tail.with_stalls(&stalls).with_others(&samples);
        t.steal_percent = machine::steal_percent(ticks, machine::cpu_ticks());
        t.cpu_probe_ms = cpu_probe_ms;
        t.dirty_mib_flushed_before = dirty_mib_flushed_before;
        t.client_threads = threads;
        self.record(label, &t);
        self.runs.push((label.to_string(), t.clone()));
        Ok(t)
    }

    fn record(&mut self, label: &str, value: &impl serde::Serialize) {
        eprintln!("  done: {label}");
        self.results.insert(label.to_string(), serde_json::to_value(value).unwrap_or_default());
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    relay_proc::raise_fd_limit(std::process::id());
    let tamizdat = match &cli.tamizdat {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("tamizdat"),
    };
    let mut bench = Bench {
        tamizdat,
        nats: cli.nats.clone(),
        client_threads: cli.client_threads,
        results: serde_json::Map::new(),
        runs: Vec::new(),
    };
    let started = Instant::now();
    let table = match cli.command.unwrap_or(Cmd::Suite { long: false }) {
        // A holder's output is its one line of report, nothing else.
        Cmd::Hold { link, to, first, count } => {
            return Bench::on_threads(bench.threads(), idle::hold(&link, to, first, count));
        }
        Cmd::Suite { long } => suite(&mut bench, long)?,
        Cmd::Load { load, jetstream, store, durability } => {
            let spec = load.spec();
            if jetstream {
                bench.jetstream("load", &spec)?;
            } else {
                bench.tamizdat("load", &spec, store.as_deref(), &durability)?;
            }
            throughput_table(&bench.runs)
        }
        Cmd::Idle { connections, store, per_process } => {
            let idle = idle::idle(&bench.tamizdat, connections, store.as_deref(), per_process)?;
            bench.record("idle", &idle);
            format!("{idle:#?}\n")
        }
        Cmd::Handshakes { seconds, parallel } => {
            let relay = bench.relay(None, "fsync")?;
            let h = Bench::on_threads(bench.threads(), conns::handshakes(&relay, seconds, parallel))?;
            bench.record("handshakes", &h);
            format!("{h:#?}\n")
        }
        Cmd::Storm { clients } => {
            let relay = bench.relay(None, "fsync")?;
            let s = Bench::on_threads(bench.threads(), conns::storm(&relay, clients))?;
            bench.record("storm", &s);
            format!("{s:#?}\n")
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{table}")?;
    writeln!(out, "({:.0} s in all)", started.elapsed().as_secs_f64())?;
    if let Some(path) = cli.json {
        bench.results.insert("seconds_in_all".into(), json!(started.elapsed().as_secs_f64()));
        std::fs::write(&path, serde_json::to_string_pretty(&bench.results)?)?;
    }
    Ok(())
}

/// Where the long suite measures the PostgreSQL store: this machine's database.
const POSTGRES_STORE: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The suite: throughput and latency against JetStream, then the connection figures.
fn suite(bench: &mut Bench, long: bool) -> anyhow::Result<String> {
    let seconds = if long { 30.0 } else { 10.0 };
    let one_to_one =
        Spec { conversations: 64, group_size: 2, payload: 256, window: 32, rate: 0, seconds, pushed_entries: true };
    let paced = Spec { rate: 20_000, ..one_to_one.clone() };
    let groups = Spec { conversations: 16, group_size: 8, ..one_to_one.clone() };
    let t_fsync = bench.tamizdat("tamizdat 1:1 max, fsync", &one_to_one, None, "fsync")?;
    let t_os = bench.tamizdat("tamizdat 1:1 max, os-buffered", &one_to_one, None, "os-buffered")?;
    let j = bench.jetstream("jetstream 1:1 max (acked before fsync)", &one_to_one)?;
    let t_paced = bench.tamizdat("tamizdat 1:1 at 20k/s, fsync", &paced, None, "fsync")?;
    let j_paced = bench.jetstream("jetstream 1:1 at 20k/s", &paced)?;
    let t_groups = bench.tamizdat("tamizdat groups of 8, fsync", &groups, None, "fsync")?;
    let j_groups = bench.jetstream("jetstream groups of 8", &groups)?;
    if long {
        bench.tamizdat("tamizdat 1:1 max, PostgreSQL", &one_to_one, Some(POSTGRES_STORE), "fsync")?;
    }
    let mut out = throughput_table(&bench.runs);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    out += &format!(
        "\nTamizdat / JetStream at the same durability (os-buffered vs JetStream's default): throughput {:.2}x, p99 {:.2}x\n",
        ratio(t_os.delivered_per_second, j.delivered_per_second),
        ratio(t_os.latency_ms_p99, j.latency_ms_p99),
    );
    out += &format!(
        "Tamizdat fsync on every commit / JetStream without: throughput {:.2}x, p99 {:.2}x\n",
        ratio(t_fsync.delivered_per_second, j.delivered_per_second),
        ratio(t_fsync.latency_ms_p99, j.latency_ms_p99),
    );
    out += &format!(
        "At 20,000 msg/s: p99 {:.2} ms (Tamizdat) vs {:.2} ms (JetStream); groups of 8: {:.2}x the deliveries\n",
        t_paced.latency_ms_p99,
        j_paced.latency_ms_p99,
        ratio(t_groups.delivered_per_second, j_groups.delivered_per_second),
    );
    let idle_n = if long { 100_000 } else { 10_000 };
    // Every client of a storm is in this process, and so are its sessions on the relay.
    let storm_n = if long { idle::what_one_process_may_hold().min(20_000) } else { 2_000 };
    let idle = idle::idle(&bench.tamizdat, idle_n, None, None)?;
    bench.record("idle", &idle);
    let relay = bench.relay(None, "fsync")?;
    let hs = Bench::on_threads(bench.threads(), conns::handshakes(&relay, if long { 10.0 } else { 5.0 }, 32))?;
    drop(relay);
    bench.record("handshakes", &hs);
    let relay = bench.relay(None, "fsync")?;
    let storm = Bench::on_threads(bench.threads(), conns::storm(&relay, storm_n))?;
    drop(relay);
    bench.record("storm", &storm);
    out += &format!(
        "\n| connections | result |\n|---|---|\n\
         | idle sessions held | {} of {} in {:.1} s by one relay process ({} shard(s)); relay {:.0} → {:.0} MiB, {:.1} KiB each |\n\
         | TLS handshakes, full | {:.0}/s at {:.0}% relay CPU |\n\
         | TLS handshakes, resumed | {:.0}/s at {:.0}% relay CPU ({:.0}% did resume) |\n\
         | reconnect storm | {} of {} back in {:.1} s; p50 {:.0} ms, p99 {:.0} ms |\n",
        idle.held,
        idle.wanted,
        idle.open_seconds,
        idle.shards,
        idle.rss_before_mib,
        idle.rss_after_mib,
        idle.kib_per_connection,
        hs.full_per_second,
        hs.full_relay_cpu_percent,
        hs.resumed_per_second,
        hs.resumed_relay_cpu_percent,
        hs.resumed_share * 100.0,
        storm.reconnected,
        storm.clients,
        storm.all_back_seconds,
        storm.reconnect_ms_p50,
        storm.reconnect_ms_p99,
    );
    Ok(out)
}

/// A quantile read off a histogram: at most the bucket's upper bound.
fn bucket_bound(ms: Option<f64>) -> String {
    match ms {
        // Above every finite bucket: longer than the largest bound.
        Some(ms) if ms.is_infinite() => {
            format!("> {}", tamizdat_relay::metrics::BUCKET_BOUNDS.last().map_or(0.0, |s| s * 1e3))
        }
        Some(ms) => format!("≤ {}", (ms * 100.0).round() / 100.0),
        None => "–".into(),
    }
}

/// The stall meter's figures for a run, marked when its threads could not run at real-time
/// priority (their stalls then include waiting behind the run's own threads).
fn stalls_cell(tail: &stats::Tail) -> String {
    let Some(m) = &tail.meter else { return "–".into() };
    let mark = if m.stall_meter_realtime { "" } else { " (not real-time)" };
    format!(
        "{}, {:.1}, {:.1}, {:.1}{mark}",
        m.stalls, m.stall_ms_max, m.stall_ms_in_worst_half_second, m.all_cores_stalled_ms_in_worst_half_second
    )
}

/// The CPU everything but the run's processes took, over the run and in its worst half second.
fn others_cell(tail: &stats::Tail) -> String {
    let percent = |p: Option<f64>| p.map_or_else(|| "–".into(), |p| format!("{p:.0}"));
    format!("{}, {}", percent(tail.others_cpu_percent), percent(tail.others_cpu_percent_in_worst_half_second))
}

/// A Markdown table of throughput runs.
fn throughput_table(rows: &[(String, Throughput)]) -> String {
    let mut out = String::from(
        "| run | sent/s | delivered/s | p50 ms | p99 ms | p99.9 ms | server CPU % | server RSS MiB | wire B/msg | writes/commit | relay write p99 ms | relay notice p99 ms | relay commit max ms | relay checkpoint max ms | stolen % | cpu probe ms | load threads | late > 10 ms % | of them in worst 0.5 s % | core stalls ≥ 1 ms: count, longest ms, longest in worst 0.5 s, all cores at once in it | others' CPU %: run, worst 0.5 s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (label, t) in rows {
        out += &format!(
            "| {label} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.2} | {:.0} | {} | {} |\n",
            t.sent_per_second,
            t.delivered_per_second,
            t.latency_ms_p50,
            t.latency_ms_p99,
            t.latency_ms_p999,
            t.server_cpu_percent,
            t.server_rss_mib,
            t.wire_bytes_per_message,
            t.writes_per_commit.map(|w| format!("{w:.0}")).unwrap_or_else(|| "–".into()),
            bucket_bound(t.relay.write_ms_p99),
            bucket_bound(t.relay.notice_ms_p99),
            bucket_bound(t.relay.commit_ms_max),
            bucket_bound(t.relay.checkpoint_ms_max),
            t.steal_percent,
            t.cpu_probe_ms,
            t.client_threads,
            t.tail.late_percent,
            t.tail.late_in_worst_half_second_percent,
            stalls_cell(&t.tail),
            others_cell(&t.tail),
        );
    }
    out
}
