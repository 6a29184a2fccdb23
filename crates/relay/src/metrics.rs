//! Counters, gauges and latency histograms for operators, exported in Prometheus text
//! format on a separate admin listener. They count events, open connections and how long
//! writes take, nothing else: no queue or log id, no address, no label that could link people.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::RelayError;

macro_rules! metrics {
    (
        counters { $($name:ident: $kind:literal, $help:literal;)* }
        histograms { $($hist:ident: $hist_help:literal;)* }
    ) => {
        /// The relay's counters and histograms.
        #[derive(Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
            $(#[doc = $hist_help] pub $hist: Histogram,)*
            /// Connections open on each connection shard, when the relay runs several (sized
            /// by the first relay in the process to start shards).
            pub shard_connections_open: std::sync::OnceLock<Box<[AtomicU64]>>,
        }

        impl Metrics {
            /// Prometheus text exposition of every metric.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    out.push_str(concat!("# HELP tamizdat_", stringify!($name), " ", $help, "\n"));
                    out.push_str(concat!("# TYPE tamizdat_", stringify!($name), " ", $kind, "\n"));
                    out.push_str(&format!(concat!("tamizdat_", stringify!($name), " {}\n"), self.$name.load(Relaxed)));
                )*
                $(
                    out.push_str(concat!("# HELP tamizdat_", stringify!($hist), " ", $hist_help, "\n"));
                    out.push_str(concat!("# TYPE tamizdat_", stringify!($hist), " histogram\n"));
                    self.$hist.render(concat!("tamizdat_", stringify!($hist)), &mut out);
                )*
                if let Some(shards) = self.shard_connections_open.get() {
                    out.push_str("# HELP tamizdat_shard_connections_open TCP connections open now on each connection shard.\n");
                    out.push_str("# TYPE tamizdat_shard_connections_open gauge\n");
                    for (i, open) in shards.iter().enumerate() {
                        out.push_str(&format!("tamizdat_shard_connections_open{{shard=\"{i}\"}} {}\n", open.load(Relaxed)));
                    }
                }
                out
            }
        }
    };
}

metrics! {
    counters {
        connections_total: "counter", "TCP connections accepted.";
        connections_refused_total: "counter", "TCP connections dropped by per-address limits.";
        connections_open: "gauge", "TCP connections open now.";
        sessions_total: "counter", "Protocol sessions opened through the door.";
        sessions_open: "gauge", "Protocol sessions open now.";
        cover_connections_total: "counter", "Connections that saw only the cover site.";
        requests_total: "counter", "Protocol requests handled.";
        refusals_total: "counter", "Protocol requests refused (any error code).";
        rate_limited_total: "counter", "Requests refused for exceeding a connection's request rate.";
        malformed_frames_total: "counter", "Connections closed for a malformed frame.";
        appends_total: "counter", "Log entries stored.";
        queue_messages_total: "counter", "Queue messages stored.";
        stale_commits_total: "counter", "Commits refused because their epoch was taken.";
        notices_pushed_total: "counter", "Notices pushed to subscribed clients.";
        write_batches_total: "counter", "Group-commit transactions.";
        write_batch_items_total: "counter", "Writes committed in those transactions.";
        blobs_created_total: "counter", "Blobs created.";
        blob_bytes_received_total: "counter", "Blob bytes received in PutBlob requests (retries included).";
        blob_bytes_served_total: "counter", "Blob bytes sent in GetBlob replies.";
    }
    histograms {
        write_seconds: "Time from a write's hand-off to the writer until it is durable: queueing, the group commit and its fsync.";
        notice_seconds: "Time from a write's hand-off to the writer until its notice is encoded for a subscriber's connection (embedded store): the write, then the session's wake-up.";
        commit_seconds: "Time the embedded store's COMMIT of one group-commit batch took: writing its log frames, and with durability fsync the fsync. Long ones while the cores are idle point at the disk.";
        checkpoint_seconds: "Time a checkpoint of the embedded store's log took (copying its pages into the database file, and the fsyncs); the writer runs one after answering a batch once the log holds 1,000 pages, and the next batch waits for it.";
    }
}

/// Upper bounds of the histogram buckets, in seconds: fine around the milliseconds a
/// group commit takes, coarse beyond.
pub const BUCKET_BOUNDS: [f64; 18] = [
    0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A Prometheus histogram with fixed buckets ([`BUCKET_BOUNDS`] and one above them all);
/// observing is a few relaxed atomic additions, cheap enough for every write.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKET_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKET_BOUNDS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKET_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Appends the cumulative `_bucket`, `_sum` and `_count` lines.
    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = BUCKET_BOUNDS.get(i).map_or_else(|| "+Inf".to_string(), ToString::to_string);
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n"));
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum {sum}\n{name}_count {cumulative}\n"));
    }
}

impl Metrics {
    /// Adds one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Adds one to a gauge until the returned hold is dropped, however that happens (a task
    /// aborted at shutdown included).
    pub fn hold(gauge: &'static AtomicU64) -> GaugeHold {
        gauge.fetch_add(1, Relaxed);
        GaugeHold(gauge)
    }
}

/// One unit of a gauge, given back when dropped.
pub struct GaugeHold(&'static AtomicU64);

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The process-wide counters.
pub fn global() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Serves `GET /metrics` on the admin address (keep it on loopback or a private network).
pub async fn serve_admin(addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>, RelayError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| RelayError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /metrics ") {
                    ("200 OK", global().render())
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let h = Histogram::default();
        for ms in [0.1, 0.9, 1.0, 4.0, 4000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let mut out = String::new();
        h.render("t", &mut out);
        let value = |key: &str| -> u64 {
            let line = out.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in {out}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert_eq!(value("t_bucket{le=\"0.00025\"}"), 1);
        assert_eq!(value("t_bucket{le=\"0.001\"}"), 3, "a bound includes its own value");
        assert_eq!(value("t_bucket{le=\"0.005\"}"), 4);
        assert_eq!(value("t_bucket{le=\"1\"}"), 4);
        assert_eq!(value("t_bucket{le=\"+Inf\"}"), 5);
        assert_eq!(value("t_count"), 5);
        assert!(out.contains("t_sum 4.006"), "{out}");
    }

    #[test]
    fn every_histogram_is_exported() {
        let m = Metrics::default();
        m.write_seconds.observe(Duration::from_millis(2));
        m.notice_seconds.observe(Duration::from_millis(7));
        m.commit_seconds.observe(Duration::from_millis(40));
        m.checkpoint_seconds.observe(Duration::from_millis(90));
        let text = m.render();
        for (name, le) in [
            ("write_seconds", "0.002"),
            ("notice_seconds", "0.008"),
            ("commit_seconds", "0.05"),
            ("checkpoint_seconds", "0.1"),
        ] {
            assert!(text.contains(&format!("# TYPE tamizdat_{name} histogram")), "{text}");
            assert!(text.contains(&format!("tamizdat_{name}_bucket{{le=\"{le}\"}} 1")), "{text}");
            assert!(text.contains(&format!("tamizdat_{name}_count 1")), "{text}");
        }
    }
}
