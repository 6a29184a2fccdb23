//! What one throughput run measured, the same way for Tamizdat and for JetStream.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::relay_proc::Usage;

/// Writes the time since `start` (microseconds) into the payload's last 8 bytes.
pub fn stamp(payload: &mut [u8], start: Instant) {
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Some(tail) = payload.len().checked_sub(8).and_then(|at| payload.get_mut(at..)) {
        tail.copy_from_slice(&micros.to_be_bytes());
    }
}

/// Latency of a stamped payload received at `now`.
pub fn stamped_latency(payload: &[u8], start: Instant, now: Instant) -> Duration {
    let sent = payload
        .len()
        .checked_sub(8)
        .and_then(|at| payload.get(at..))
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    now.saturating_duration_since(start + Duration::from_micros(sent))
}

/// The result of one throughput run.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// Messages the sender had acknowledged (durable).
    pub sent: usize,
    /// Copies received by recipients (a group message counts once per recipient).
    pub delivered: usize,
    /// Wall time from the first send to the last receipt.
    pub seconds: f64,
    /// Acknowledged messages per second.
    pub sent_per_second: f64,
    /// Received copies per second.
    pub delivered_per_second: f64,
    /// Send to receipt by the recipient, milliseconds.
    pub latency_ms_p50: f64,
    /// 99th percentile.
    pub latency_ms_p99: f64,
    /// 99.9th percentile.
    pub latency_ms_p999: f64,
    /// Server CPU, percent of one core (200 is both cores of this machine).
    pub server_cpu_percent: f64,
    /// Server resident memory at the end (MiB).
    pub server_rss_mib: f64,
    /// Loopback bytes (TLS, TCP/IP headers, both directions) per delivered copy.
    pub wire_bytes_per_message: f64,
    /// Group-commit transactions per second (Tamizdat only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commits_per_second: Option<f64>,
    /// Writes per transaction (Tamizdat only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_per_commit: Option<f64>,
    /// 99th percentile of the relay's own write latency, hand-off to durable, in ms: the
    /// upper bound of the histogram bucket it falls in (Tamizdat only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_ms_p99: Option<f64>,
    /// 99th percentile of the relay's own share of a pushed notice, hand-off to encoded for
    /// the recipient's connection, in ms, the same way (Tamizdat only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_ms_p99: Option<f64>,
    /// Percent of the machine's CPU time the hypervisor stole during the run.
    pub steal_percent: f64,
    /// How long a fixed piece of work took one core just before the run (ms; see
    /// `machine::cpu_probe_ms`): larger when the host is slower.
    pub cpu_probe_ms: f64,
    /// Worker threads of the load generator.
    pub client_threads: usize,
}

impl Throughput {
    /// Summarises a run.
    pub fn new(
        sent: usize,
        mut latencies: Vec<Duration>,
        seconds: f64,
        cpu_percent: f64,
        usage: Usage,
        wire_bytes: u64,
    ) -> Self {
        latencies.sort_unstable();
        let ms = |p: f64| percentile(&latencies, p).as_secs_f64() * 1e3;
        let delivered = latencies.len();
        Self {
            sent,
            delivered,
            seconds,
            sent_per_second: sent as f64 / seconds.max(1e-9),
            delivered_per_second: delivered as f64 / seconds.max(1e-9),
            latency_ms_p50: ms(0.50),
            latency_ms_p99: ms(0.99),
            latency_ms_p999: ms(0.999),
            server_cpu_percent: cpu_percent,
            server_rss_mib: usage.rss_kib as f64 / 1024.0,
            wire_bytes_per_message: wire_bytes as f64 / delivered.max(1) as f64,
            commits_per_second: None,
            writes_per_commit: None,
            write_ms_p99: None,
            notice_ms_p99: None,
            steal_percent: 0.0,
            cpu_probe_ms: 0.0,
            client_threads: 0,
        }
    }

    /// Adds the relay's group-commit figures.
    pub fn with_batches(mut self, commits_per_second: f64, writes_per_commit: f64) -> Self {
        self.commits_per_second = Some(commits_per_second);
        self.writes_per_commit = Some(writes_per_commit);
        self
    }

    /// Adds the relay's own latency p99s (ms), when its histograms counted anything.
    pub fn with_relay_p99(mut self, write_ms_p99: Option<f64>, notice_ms_p99: Option<f64>) -> Self {
        self.write_ms_p99 = write_ms_p99;
        self.notice_ms_p99 = notice_ms_p99;
        self
    }
}

/// The upper bound (in the histogram's unit) of the bucket holding fraction `q` of what a
/// Prometheus histogram `name` counted between two readings of its counters (`name_bucket{le="…"}`
/// keys, as [`crate::relay_proc::RelayProcess::counters`] returns them). `None` without
/// observations; infinity when the quantile is above every finite bound.
pub fn histogram_quantile(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    name: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(key, count)| {
            let le = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((bound, count - before.get(key).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, cumulative)| *cumulative >= q * total).map(|(bound, _)| *bound)
}

/// The value at fraction `p` of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(counts: &[(&str, f64)]) -> HashMap<String, f64> {
        counts.iter().map(|(le, n)| (format!("w_bucket{{le=\"{le}\"}}"), *n)).collect()
    }

    #[test]
    fn quantiles_come_from_the_buckets_counted_between_readings() {
        let before = reading(&[("0.001", 50.0), ("0.01", 60.0), ("+Inf", 60.0)]);
        // 100 new observations: 90 up to 1 ms, 9 more up to 10 ms, 1 above.
        let after = reading(&[("0.001", 140.0), ("0.01", 159.0), ("+Inf", 160.0)]);
        assert_eq!(histogram_quantile(&before, &after, "w", 0.5), Some(0.001));
        assert_eq!(histogram_quantile(&before, &after, "w", 0.99), Some(0.01));
        assert_eq!(histogram_quantile(&before, &after, "w", 0.999), Some(f64::INFINITY));
        assert_eq!(
            histogram_quantile(&HashMap::new(), &after, "w", 0.95),
            Some(0.01),
            "no earlier reading: 152 of 160"
        );
        assert_eq!(histogram_quantile(&after, &after, "w", 0.99), None, "nothing new");
        assert_eq!(histogram_quantile(&before, &after, "other", 0.99), None);
    }
}
