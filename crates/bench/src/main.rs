#![doc = include_str!("../README.md")]

mod conns;
mod idle;
mod jetstream;
mod load;
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
    /// Worker threads of the load generator (the rest of the machine is the servers').
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
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
    /// process may open, the relay runs as several nodes on PostgreSQL.
    Idle {
        /// Sessions to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Relay store: the embedded SQLite (for one node), or postgres://…
        #[arg(long)]
        store: Option<String>,
        /// Sessions one process holds (default: its open-file limit less 1,000); more take
        /// more relay nodes and holders.
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
        /// The nodes' addresses, comma-separated; sessions go round them.
        #[arg(long, value_delimiter = ',')]
        to: Vec<std::net::SocketAddr>,
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
    results: serde_json::Map<String, serde_json::Value>,
    /// Throughput runs in the order they ran, for the table.
    runs: Vec<(String, Throughput)>,
}

impl Bench {
    fn relay(&self, store: Option<&str>, durability: &str) -> anyhow::Result<RelayProcess> {
        RelayProcess::start(&self.tamizdat, store, 1_000_000, durability)
    }

    async fn tamizdat(
        &mut self,
        label: &str,
        spec: &Spec,
        store: Option<&str>,
        durability: &str,
    ) -> anyhow::Result<Throughput> {
        let relay = self.relay(store, durability)?;
        let ticks = relay_proc::cpu_ticks();
        let mut t = load::run(&relay, spec).await.with_context(|| format!("{label}: Tamizdat run"))?;
        t.steal_percent = relay_proc::steal_percent(ticks, relay_proc::cpu_ticks());
        self.record(label, &t);
        self.runs.push((label.to_string(), t.clone()));
        Ok(t)
    }

    async fn jetstream(&mut self, label: &str, spec: &Spec) -> anyhow::Result<Throughput> {
        let port = self.nats.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(4222);
        let pid = jetstream::server_pid(port).context("no nats-server process found for the JetStream address")?;
        let ticks = relay_proc::cpu_ticks();
        let mut t = jetstream::run(&self.nats, pid, spec).await.with_context(|| format!("{label}: JetStream run"))?;
        t.steal_percent = relay_proc::steal_percent(ticks, relay_proc::cpu_ticks());
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
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.client_threads.max(1)).enable_all().build()?;
    let mut bench = Bench { tamizdat, nats: cli.nats.clone(), results: serde_json::Map::new(), runs: Vec::new() };
    let started = Instant::now();
    let command = cli.command.unwrap_or(Cmd::Suite { long: false });
    if let Cmd::Hold { link, to, first, count } = &command {
        return rt.block_on(idle::hold(link, to, *first, *count));
    }
    let table = rt.block_on(async {
        match command {
            Cmd::Suite { long } => suite(&mut bench, long).await,
            Cmd::Load { load, jetstream, store, durability } => {
                let spec = load.spec();
                if jetstream {
                    bench.jetstream("load", &spec).await?;
                } else {
                    bench.tamizdat("load", &spec, store.as_deref(), &durability).await?;
                }
                Ok(throughput_table(&bench.runs))
            }
            Cmd::Idle { connections, store, per_process } => {
                let idle = idle::idle(&bench.tamizdat, connections, store.as_deref(), per_process)?;
                bench.record("idle", &idle);
                Ok(format!("{idle:#?}\n"))
            }
            Cmd::Hold { .. } => unreachable!("handled above"),
            Cmd::Handshakes { seconds, parallel } => {
                let relay = bench.relay(None, "fsync")?;
                let h = conns::handshakes(&relay, seconds, parallel).await?;
                bench.record("handshakes", &h);
                Ok(format!("{h:#?}\n"))
            }
            Cmd::Storm { clients } => {
                let relay = bench.relay(None, "fsync")?;
                let s = conns::storm(&relay, clients).await?;
                bench.record("storm", &s);
                Ok(format!("{s:#?}\n"))
            }
        }
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{table}")?;
    writeln!(out, "({:.0} s in all)", started.elapsed().as_secs_f64())?;
    if let Some(path) = cli.json {
        bench.results.insert("seconds_in_all".into(), json!(started.elapsed().as_secs_f64()));
        std::fs::write(&path, serde_json::to_string_pretty(&bench.results)?)?;
    }
    Ok(())
}

/// The suite: throughput and latency against JetStream, then the connection figures.
async fn suite(bench: &mut Bench, long: bool) -> anyhow::Result<String> {
    let seconds = if long { 30.0 } else { 10.0 };
    let one_to_one =
        Spec { conversations: 64, group_size: 2, payload: 256, window: 32, rate: 0, seconds, pushed_entries: true };
    let paced = Spec { rate: 20_000, ..one_to_one.clone() };
    let groups = Spec { conversations: 16, group_size: 8, ..one_to_one.clone() };
    let t_fsync = bench.tamizdat("tamizdat 1:1 max, fsync", &one_to_one, None, "fsync").await?;
    let t_os = bench.tamizdat("tamizdat 1:1 max, os-buffered", &one_to_one, None, "os-buffered").await?;
    let j = bench.jetstream("jetstream 1:1 max (acked before fsync)", &one_to_one).await?;
    let t_paced = bench.tamizdat("tamizdat 1:1 at 20k/s, fsync", &paced, None, "fsync").await?;
    let j_paced = bench.jetstream("jetstream 1:1 at 20k/s", &paced).await?;
    let t_groups = bench.tamizdat("tamizdat groups of 8, fsync", &groups, None, "fsync").await?;
    let j_groups = bench.jetstream("jetstream groups of 8", &groups).await?;
    if long {
        let pg = "postgres://postgres@127.0.0.1:5432/test";
        bench.tamizdat("tamizdat 1:1 max, PostgreSQL", &one_to_one, Some(pg), "fsync").await?;
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
    let hs = conns::handshakes(&relay, if long { 10.0 } else { 5.0 }, 32).await?;
    drop(relay);
    bench.record("handshakes", &hs);
    let relay = bench.relay(None, "fsync")?;
    let storm = conns::storm(&relay, storm_n).await?;
    drop(relay);
    bench.record("storm", &storm);
    out += &format!(
        "\n| connections | result |\n|---|---|\n\
         | idle sessions held | {} of {} in {:.1} s by {} relay node(s); relay {:.0} → {:.0} MiB, {:.1} KiB each |\n\
         | TLS handshakes, full | {:.0}/s at {:.0}% relay CPU |\n\
         | TLS handshakes, resumed | {:.0}/s at {:.0}% relay CPU ({:.0}% did resume) |\n\
         | reconnect storm | {} of {} back in {:.1} s; p50 {:.0} ms, p99 {:.0} ms |\n",
        idle.held,
        idle.wanted,
        idle.open_seconds,
        idle.nodes,
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

/// A Markdown table of throughput runs.
fn throughput_table(rows: &[(String, Throughput)]) -> String {
    let mut out = String::from(
        "| run | sent/s | delivered/s | p50 ms | p99 ms | p99.9 ms | server CPU % | server RSS MiB | wire B/msg | writes/commit | stolen % |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (label, t) in rows {
        out += &format!(
            "| {label} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {} | {:.1} |\n",
            t.sent_per_second,
            t.delivered_per_second,
            t.latency_ms_p50,
            t.latency_ms_p99,
            t.latency_ms_p999,
            t.server_cpu_percent,
            t.server_rss_mib,
            t.wire_bytes_per_message,
            t.writes_per_commit.map(|w| format!("{w:.0}")).unwrap_or_else(|| "–".into()),
            t.steal_percent,
        );
    }
    out
}
