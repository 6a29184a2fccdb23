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

/// One copy a recipient received.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// When it was sent, since the run's start.
    pub sent: Duration,
    /// From sent to received.
    pub latency: Duration,
}

/// A stamped payload received at `now`.
pub fn received(payload: &[u8], start: Instant, now: Instant) -> Received {
    let sent = payload
        .len()
        .checked_sub(8)
        .and_then(|at| payload.get(at..))
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let sent = Duration::from_micros(sent);
    Received { sent, latency: now.saturating_duration_since(start + sent) }
}

/// The latency goal at 20,000 messages a second: a copy later than this is late.
pub const LATE: Duration = Duration::from_millis(10);

/// Late copies are counted by when they were sent, in windows this long.
const WINDOW: Duration = Duration::from_millis(100);

/// How many of the windows holding the most late copies [`Tail`] looks at: half a second.
const WORST: usize = 5;

/// When a run's late copies were sent, and whether a core stalled then. Late copies bunched
/// into a moment when a core was taken from the machine point at the host; spread out, or
/// without stalls, at the run's own queueing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tail {
    /// Copies later than [`LATE`], percent of all: the p99 goal holds while this is under 1.
    pub late_percent: f64,
    /// Percent of the late copies sent in the run's worst half second: the five 100 ms
    /// windows that sent the most of them.
    pub late_in_worst_half_second_percent: f64,
    /// Stalls of 1 ms or more on any core during the run (see `machine::StallMeter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalls: Option<usize>,
    /// The longest, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ms_max: Option<f64>,
    /// The longest that overlapped the worst half second (or up to 10 ms after a window,
    /// when copies sent in it were still on their way), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ms_in_worst_half_second: Option<f64>,
    /// How many cores those stalls were on: all of them means the whole machine was held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_cores_in_worst_half_second: Option<usize>,
    /// Whether the meter's threads had real-time priority (see `machine::Stalls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_meter_realtime: Option<bool>,
    /// The worst windows: (start, end) of when their copies were sent.
    #[serde(skip)]
    worst: Vec<(Instant, Instant)>,
}

impl Tail {
    fn of(received: &[Received], start: Instant) -> Self {
        let late: Vec<Duration> = received.iter().filter(|r| r.latency > LATE).map(|r| r.sent).collect();
        let mut windows: Vec<(u128, usize)> = Vec::new();
        for sent in &late {
            let w = sent.as_millis() / WINDOW.as_millis();
            match windows.iter_mut().find(|(at, _)| *at == w) {
                Some((_, n)) => *n += 1,
                None => windows.push((w, 1)),
            }
        }
        windows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        windows.truncate(WORST);
        let in_worst: usize = windows.iter().map(|(_, n)| n).sum();
        let worst = windows
            .iter()
            .map(|(w, _)| {
                let from = start + WINDOW * u32::try_from(*w).unwrap_or(u32::MAX);
                (from, from + WINDOW)
            })
            .collect();
        Self {
            late_percent: late.len() as f64 * 100.0 / received.len().max(1) as f64,
            late_in_worst_half_second_percent: if late.is_empty() {
                0.0
            } else {
                in_worst as f64 * 100.0 / late.len() as f64
            },
            worst,
            ..Self::default()
        }
    }

    /// Adds what a stall meter saw during the run.
    pub fn with_stalls(mut self, seen: &crate::machine::Stalls) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let overlaps = |s: &crate::machine::Stall| {
            let began = s.at.checked_sub(s.late).unwrap_or(s.at);
            self.worst.iter().any(|(from, to)| began < *to + LATE && s.at > *from)
        };
        self.stalls = Some(seen.stalls.len());
        self.stall_ms_max = Some(seen.stalls.iter().map(|s| ms(s.late)).fold(0.0, f64::max));
        let in_worst: Vec<_> = seen.stalls.iter().filter(|s| overlaps(s)).collect();
        self.stall_ms_in_worst_half_second = Some(in_worst.iter().map(|s| ms(s.late)).fold(0.0, f64::max));
        let mut cores: Vec<usize> = in_worst.iter().map(|s| s.cpu).collect();
        cores.sort_unstable();
        cores.dedup();
        self.stalled_cores_in_worst_half_second = Some(cores.len());
        self.stall_meter_realtime = Some(seen.realtime);
        self
    }
}

/// What the relay's own histograms counted during a run, in ms (bucket upper bounds).
pub struct RelayLatency {
    pub write_p99: Option<f64>,
    pub notice_p99: Option<f64>,
    pub commit_max: Option<f64>,
    pub checkpoint_max: Option<f64>,
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
    /// The longest COMMIT of a group-commit batch in the relay (its log frames and fsync), in
    /// ms, as the upper bound of its histogram bucket (Tamizdat with the embedded store only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_ms_max: Option<f64>,
    /// The longest checkpoint of the relay's log, the same way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_ms_max: Option<f64>,
    /// Percent of the machine's CPU time the hypervisor stole during the run.
    pub steal_percent: f64,
    /// How long a fixed piece of work took one core just before the run (ms; see
    /// `machine::cpu_probe_ms`): larger when the host is slower.
    pub cpu_probe_ms: f64,
    /// Worker threads of the load generator.
    pub client_threads: usize,
    /// When the late copies were sent, and the cores' stalls.
    pub tail: Tail,
}

impl Throughput {
    /// Summarises a run.
    pub fn new(
        sent: usize,
        received: &[Received],
        start: Instant,
        seconds: f64,
        cpu_percent: f64,
        usage: Usage,
        wire_bytes: u64,
    ) -> Self {
        let mut latencies: Vec<Duration> = received.iter().map(|r| r.latency).collect();
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
            commit_ms_max: None,
            checkpoint_ms_max: None,
            steal_percent: 0.0,
            cpu_probe_ms: 0.0,
            client_threads: 0,
            tail: Tail::of(received, start),
        }
    }

    /// Adds the relay's group-commit figures.
    pub fn with_batches(mut self, commits_per_second: f64, writes_per_commit: f64) -> Self {
        self.commits_per_second = Some(commits_per_second);
        self.writes_per_commit = Some(writes_per_commit);
        self
    }

    /// Adds the relay's own latency p99s and its longest commit and checkpoint (ms), when
    /// its histograms counted anything.
    pub fn with_relay_latency(mut self, relay: RelayLatency) -> Self {
        self.write_ms_p99 = relay.write_p99;
        self.notice_ms_p99 = relay.notice_p99;
        self.commit_ms_max = relay.commit_max;
        self.checkpoint_ms_max = relay.checkpoint_max;
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

    fn copy(sent_ms: u64, latency_ms: u64) -> Received {
        Received { sent: Duration::from_millis(sent_ms), latency: Duration::from_millis(latency_ms) }
    }

    #[test]
    fn the_tail_finds_when_late_copies_were_sent_and_the_stalls_then() {
        let start = Instant::now();
        // 1,000 copies over 1 s, 2 ms each; 8 late ones sent around 330 ms, 2 at 810 ms.
        let mut copies: Vec<Received> = (0..1_000).map(|i| copy(i, 2)).collect();
        for i in 0..8 {
            copies[330 + i] = copy(330 + i as u64, 25);
        }
        copies[810] = copy(810, 11);
        copies[811] = copy(811, 10);
        let tail = Tail::of(&copies, start);
        assert!((tail.late_percent - 0.9).abs() < 1e-9, "exactly 10 ms is not late: {}", tail.late_percent);
        assert_eq!(tail.late_in_worst_half_second_percent, 100.0, "two windows hold all nine");
        let at = |ms: u64| start + Duration::from_millis(ms);
        let stall =
            |ms: u64, late: u64| crate::machine::Stall { at: at(ms), late: Duration::from_millis(late), cpu: 0 };
        let mut seen =
            crate::machine::Stalls { stalls: vec![stall(352, 20), stall(640, 30), stall(2, 1)], realtime: true };
        seen.stalls.push(crate::machine::Stall { cpu: 1, ..stall(815, 4) });
        seen.stalls.push(crate::machine::Stall { cpu: 1, ..stall(905, 2) });
        let tail = tail.with_stalls(&seen);
        assert_eq!(tail.stalls, Some(5));
        assert_eq!(tail.stall_ms_max, Some(30.0));
        assert_eq!(tail.stall_ms_in_worst_half_second, Some(20.0), "the 30 ms stall was outside the late windows");
        assert_eq!(tail.stalled_cores_in_worst_half_second, Some(2), "core 1 stalled at 815 and 905 ms");

        let on_time = Tail::of(&copies[..300], start).with_stalls(&seen);
        assert_eq!((on_time.late_percent, on_time.late_in_worst_half_second_percent), (0.0, 0.0));
        assert_eq!(on_time.stall_ms_in_worst_half_second, Some(0.0), "no late windows, no stall in them");
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
