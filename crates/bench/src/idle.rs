//! Idle sessions held by one relay, and the relay memory each costs.
//!
//! A process may open only so many files, and some machines give no right to raise that (one
//! of ours stops at 20,000). When more sessions are asked for than one process can hold, the
//! relay runs as it scales out: several nodes with one identity (the same keys and
//! certificate) on one PostgreSQL store, each on its own port. The sessions are opened and
//! held by child processes of this tool ("holders"), spread over the nodes. The table says
//! how many nodes there were (and as many holders).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use tamizdat_wire::proto::RelayDescriptor;

use crate::{
    conns::{PER_SOURCE, client_config, open_session, source, target},
    relay_proc::{self, RelayProcess},
};

/// Files a relay node or a holder keeps open for other things than sessions (listeners, the
/// store, the runtime), with room to spare.
const SPARE_FILES: usize = 1_000;

/// Where several nodes of one relay keep their data, and where the long suite measures the
/// PostgreSQL store: this machine's database.
pub const SHARED_STORE: &str = "postgres://postgres@127.0.0.1:5432/test";

/// More processes than this means the open-file limit is far too low for the count asked;
/// better to say so than to start hundreds of relays.
const MAX_NODES: usize = 16;

/// How long one session may take to open before it counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle sessions held by one relay.
#[derive(Debug, Serialize)]
pub struct Idle {
    /// Sessions asked for.
    pub wanted: usize,
    /// Sessions opened and greeted, as the holders count them (the nodes' own count at the
    /// end is `sessions_per_node`).
    pub held: usize,
    /// Seconds to open them all.
    pub open_seconds: f64,
    /// Relay processes (nodes of one relay) that held them: one unless a process may not
    /// open enough files. As many processes of this tool opened and held them, since the
    /// same limit binds both.
    pub nodes: usize,
    /// Sessions each node counted open at the end (its `sessions_open` gauge).
    pub sessions_per_node: Vec<u64>,
    /// Relay resident memory before, over all nodes (MiB).
    pub rss_before_mib: f64,
    /// And with every session held.
    pub rss_after_mib: f64,
    /// Relay memory per held session (KiB).
    pub kib_per_connection: f64,
}

/// What one holder reports once its sessions are open.
#[derive(Debug, Serialize, Deserialize)]
struct Held {
    held: usize,
    failed: usize,
    first_error: Option<String>,
}

/// Sessions one process can hold here: its open-file limit, less the spare.
pub fn what_one_process_may_hold() -> usize {
    let (soft, _) = relay_proc::open_file_limits(std::process::id()).unwrap_or((1_024, 1_024));
    soft.saturating_sub(SPARE_FILES).max(1)
}

/// Opens `n` sessions to a relay started from `tamizdat` (its embedded SQLite unless `store`
/// says otherwise, or unless it takes several nodes) and holds them while the relay's memory
/// is read. At most `per_process` sessions go to one node or one holder (default: what the
/// open-file limit allows).
pub fn idle(tamizdat: &Path, n: usize, store: Option<&str>, per_process: Option<usize>) -> anyhow::Result<Idle> {
    let per_process = per_process.unwrap_or_else(what_one_process_may_hold).max(1);
    let nodes = n.div_ceil(per_process).max(1);
    if nodes > MAX_NODES {
        bail!(
            "{n} sessions at {per_process} a process would take {nodes} relay nodes; raise the open-file limit \
             (ulimit -n) or ask for fewer"
        );
    }
    let store = match store {
        Some(s) => Some(s),
        None if nodes > 1 => Some(SHARED_STORE),
        None => None,
    };
    if nodes > 1 && !store.is_some_and(|s| s.starts_with("postgres")) {
        bail!("{n} sessions take {nodes} relay nodes here, and nodes share only a PostgreSQL store");
    }
    let mut relays = vec![RelayProcess::start(tamizdat, store, 1_000_000, "fsync")?];
    for _ in 1..nodes {
        let node = RelayProcess::start_node(tamizdat, store, 1_000_000, "fsync", Some(&relays[0]))?;
        relays.push(node);
    }
    let addresses: Vec<SocketAddr> = relays.iter().map(|r| target(r).map(|(_, a)| a)).collect::<Result<_, _>>()?;
    let to = addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let rss_before: u64 = relays.iter().map(|r| r.usage().rss_kib).sum();

    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut children = Vec::new();
    // One holder per node; holder h opens its share of sessions round all the nodes.
    for h in 0..nodes {
        let (first, end) = (h * n / nodes, (h + 1) * n / nodes);
        let child = Command::new(&exe)
            .args(["hold", "--link", &relays[0].link, "--to", &to])
            .args(["--first", &first.to_string(), "--count", &(end - first).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a holder")?;
        children.push(Holder(child));
    }
    let reports = children.iter_mut().map(Holder::report).collect::<Vec<_>>();
    let open_seconds = start.elapsed().as_secs_f64();
    let mut held = 0;
    for report in reports {
        let report = report?;
        held += report.held;
        if let Some(e) = report.first_error {
            eprintln!("  note: {} sessions of a holder failed to open; the first: {e}", report.failed);
        }
    }
    // Let allocations settle (handshake buffers freed) before reading.
    std::thread::sleep(Duration::from_secs(2));
    let rss_after: u64 = relays.iter().map(|r| r.usage().rss_kib).sum();
    let sessions_per_node =
        relays.iter().map(|r| r.counters().get("sessions_open").copied().unwrap_or(0.0) as u64).collect();
    drop(children);
    Ok(Idle {
        wanted: n,
        held,
        open_seconds,
        nodes,
        sessions_per_node,
        rss_before_mib: rss_before as f64 / 1024.0,
        rss_after_mib: rss_after as f64 / 1024.0,
        kib_per_connection: rss_after.saturating_sub(rss_before) as f64 / held.max(1) as f64,
    })
}

/// A holder process, stopped when dropped (on every path, so none is left holding sessions).
struct Holder(Child);

impl Holder {
    /// Waits for its one line of report.
    fn report(&mut self) -> anyhow::Result<Held> {
        let out = self.0.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("a holder reported {line:?}"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The holder's side: opens sessions `first..first + count` (256 at a time) over the relay
/// nodes at `to`, prints what it holds as one JSON line, and holds them until its input
/// closes.
pub async fn hold(link: &str, to: &[SocketAddr], first: usize, count: usize) -> anyhow::Result<()> {
    if to.is_empty() {
        bail!("no relay address to hold sessions on");
    }
    let d = RelayDescriptor::from_link(link)?;
    let config = client_config(&d, true)?;
    let (d, config) = (&d, &config);
    let opened: Vec<_> = stream::iter(first..first + count)
        .map(|i| async move {
            let open = open_session(d, to[i % to.len()], source(i, PER_SOURCE), config.clone());
            tokio::time::timeout(OPEN_TIMEOUT, open)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no session within {OPEN_TIMEOUT:?}")))
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let (held, failed): (Vec<_>, Vec<_>) = opened.into_iter().partition(Result::is_ok);
    let report = Held {
        held: held.len(),
        failed: failed.len(),
        first_error: failed.into_iter().find_map(Result::err).map(|e| format!("{e:#}")),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    out.flush()?;
    drop(out);
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    drop(held);
    Ok(())
}
