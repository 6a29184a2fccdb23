//! Idle sessions held by one relay, and the relay memory each costs.
//!
//! A process may open only so many files, and some machines give no right to raise that (one
//! of ours stops at 20,000). When more sessions are asked for than one descriptor table can
//! hold, the relay serves them from several connection shards (`relay serve --shards`):
//! threads of the one relay process, each with a table of its own. The sessions are opened
//! and held by child processes of this tool ("holders"), since the same limit binds this
//! side too. The table says how many shards there were (and as many holders).

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

/// Files a relay shard or a holder keeps open for other things than sessions (listeners, the
/// store, the runtime), with room to spare.
const SPARE_FILES: usize = 1_000;

/// More shards than this means the open-file limit is far too low for the count asked;
/// better to say so than to start hundreds of threads and holders.
const MAX_SHARDS: usize = 16;

/// How long one session may take to open before it counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle sessions held by one relay.
#[derive(Debug, Serialize)]
pub struct Idle {
    /// Sessions asked for.
    pub wanted: usize,
    /// Sessions opened and greeted, as the holders count them.
    pub held: usize,
    /// Seconds to open them all.
    pub open_seconds: f64,
    /// Sessions the relay counted open at the end (its `sessions_open` gauge).
    pub relay_sessions_open: u64,
    /// Connection shards of the one relay process that held them: one unless a descriptor
    /// table may not hold them all. As many processes of this tool opened and held them,
    /// since the same limit binds this side.
    pub shards: usize,
    /// Connections each shard counted open at the end (empty with one shard).
    pub connections_per_shard: Vec<u64>,
    /// Relay resident memory before (MiB).
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
/// says otherwise) and holds them while the relay's memory is read. At most `per_process`
/// sessions go to one relay shard or one holder (default: what the open-file limit allows).
pub fn idle(tamizdat: &Path, n: usize, store: Option<&str>, per_process: Option<usize>) -> anyhow::Result<Idle> {
    let per_process = per_process.unwrap_or_else(what_one_process_may_hold).max(1);
    let shards = n.div_ceil(per_process).max(1);
    if shards > MAX_SHARDS {
        bail!(
            "{n} sessions at {per_process} a process would take {shards} relay shards and holders; raise the \
             open-file limit (ulimit -n) or ask for fewer"
        );
    }
    let relay = RelayProcess::start_sharded(tamizdat, store, 1_000_000, "fsync", shards)?;
    let to = target(&relay)?.1.to_string();
    let rss_before = relay.usage().rss_kib;

    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut children = Vec::new();
    // One holder per shard, since each may open as many files as one shard.
    for h in 0..shards {
        let (first, end) = (h * n / shards, (h + 1) * n / shards);
        let child = Command::new(&exe)
            .args(["hold", "--link", &relay.link, "--to", &to])
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
    let rss_after = relay.usage().rss_kib;
    let counters = relay.counters();
    let connections_per_shard = (0..shards)
        .map_while(|i| counters.get(&format!("shard_connections_open{{shard=\"{i}\"}}")).map(|&open| open as u64))
        .collect();
    drop(children);
    Ok(Idle {
        wanted: n,
        held,
        open_seconds,
        relay_sessions_open: counters.get("sessions_open").copied().unwrap_or(0.0) as u64,
        shards,
        connections_per_shard,
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

/// The holder's side: opens sessions `first..first + count` (256 at a time) to the relay
/// at `to`, prints what it holds as one JSON line, and holds them until its input closes.
pub async fn hold(link: &str, to: SocketAddr, first: usize, count: usize) -> anyhow::Result<()> {
    let d = RelayDescriptor::from_link(link)?;
    let config = client_config(&d, true)?;
    let (d, config) = (&d, &config);
    let opened: Vec<_> = stream::iter(first..first + count)
        .map(|i| async move {
            let open = open_session(d, to, source(i, PER_SOURCE), config.clone());
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
