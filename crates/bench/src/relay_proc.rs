//! A relay process started for a measurement, and what the kernel says about it.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A relay on loopback with limits opened up for load (every client is local), killed on drop.
pub struct RelayProcess {
    child: Child,
    /// Its link.
    pub link: String,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProcess {
    /// Starts `tamizdat relay serve` from `bin` with `store` (default: its embedded SQLite).
    /// `durability` is `fsync` or `os-buffered` (see the relay's configuration).
    pub fn start(bin: &Path, store: Option<&str>, max_connections: usize, durability: &str) -> anyhow::Result<Self> {
        Self::start_sharded(bin, store, max_connections, durability, 1)
    }

    /// As [`RelayProcess::start`], serving connections from `shards` threads with their own
    /// descriptor tables (`relay serve --shards`): one process then holds nearly `shards`
    /// times its open-file limit.
    pub fn start_sharded(
        bin: &Path,
        store: Option<&str>,
        max_connections: usize,
        durability: &str,
        shards: usize,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("relay");
        let config = dir.path().join("bench.toml");
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        // Named only when asked for, so that relays from before shards (`--tamizdat`) still run.
        let shards = if shards > 1 { format!("shards = {shards}\n") } else { String::new() };
        std::fs::write(
            &config,
            format!(
                "admin = \"{admin}\"\ndurability = \"{durability}\"\n{shards}[limits]\nconnections_per_address = 1000000\n\
                 new_connections_per_second = 1000000.0\nnew_connections_burst = 1000000.0\nrequests_per_second = 1000000000.0\n\
                 requests_burst = 1000000000.0\nmax_connections = {max_connections}\n"
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.args(["relay", "serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .env("TAMIZDAT_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("relay.log"))?);
        if let Some(store) = store {
            cmd.args(["--store", store]);
        }
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release -p tamizdat`, or pass --tamizdat)",
                bin.display()
            )
        })?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("relay stdout")?).read_line(&mut line)?;
        let link = line.trim().to_string();
        let mut relay = Self { child, link, admin, dir };
        if !relay.link.starts_with("tamizdat:relay/") {
            bail!("the relay printed {:?} instead of its link; it said: {}", relay.link, relay.log());
        }
        raise_fd_limit(relay.pid());
        relay.wait_until_serving()?;
        Ok(relay)
    }

    /// The link is printed before the store opens; the admin listener starts after it.
    fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(self.admin).is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!("the relay exited ({status}); it said: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("the relay did not open its store within 60 s; it said: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// What it wrote to its log (errors only).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default().trim().to_string()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) and resident KiB.
    pub fn usage(&self) -> Usage {
        Usage::of(self.pid())
    }

    /// The relay's Prometheus counters, without the `tamizdat_` prefix.
    pub fn counters(&self) -> HashMap<String, f64> {
        let mut text = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(self.admin) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let _ = s.read_to_string(&mut text);
        }
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.trim_start_matches("tamizdat_").to_string(), v.trim().parse().ok()?)))
            .collect()
    }
}

/// A process's CPU time and resident memory at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Resident KiB.
    pub rss_kib: u64,
}

impl Usage {
    /// Reads `/proc/PID/stat` and `/proc/PID/status`.
    pub fn of(pid: u32) -> Self {
        use crate::machine::{TICKS_PER_SECOND, proc_kib, process_ticks};
        let ticks = process_ticks(&pid.to_string()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = proc_kib(&status, "VmRSS:").unwrap_or(0);
        Self { cpu: ticks as f64 / TICKS_PER_SECOND, rss_kib }
    }

    /// CPU use between two readings over `seconds`, in percent of one core.
    pub fn cpu_percent(self, later: Usage, seconds: f64) -> f64 {
        (later.cpu - self.cpu) / seconds.max(1e-9) * 100.0
    }
}

/// Bytes that crossed the loopback interface so far (IP packets, headers included): with
/// nothing else busy on it, the cost of a run on the wire.
pub fn loopback_bytes() -> u64 {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|b| b.parse().ok())
        .unwrap_or(0)
}

/// How many files a process may open, `(soft, hard)`, from `/proc/PID/limits`.
pub fn open_file_limits(pid: u32) -> Option<(usize, usize)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line.trim_start_matches("Max open files").split_whitespace().map(|v| match v {
        "unlimited" => Some(usize::MAX),
        v => v.parse().ok(),
    });
    Some((values.next()??, values.next()??))
}

/// Lets a process hold many sockets: both open-file limits go up to 1,048,576 when the
/// kernel allows it (root with `CAP_SYS_RESOURCE`); otherwise the soft limit goes up to the
/// hard one, which needs no privilege. Best effort; `prlimit` is part of util-linux.
pub fn raise_fd_limit(pid: u32) {
    let set = |value: &str| {
        Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={value}:{value}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !set("1048576")
        && let Some((soft, hard)) = open_file_limits(pid)
        && soft < hard
    {
        set(&if hard == usize::MAX { "unlimited".to_string() } else { hard.to_string() });
    }
}
