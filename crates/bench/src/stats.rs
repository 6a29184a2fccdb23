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
const LATE: Duration = Duration::from_millis(10);

/// The stretch of a run [`Tail`] looks at: the one in which the most late copies were sent.
const WORST: Duration = Duration::from_millis(500);

/// When a run's late copies were sent, and whether the cores stalled then. Late copies
/// bunched into a moment when every core stalled point at the machine; spread out, or
/// without stalls, at the run's own queueing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tail {
    /// Copies later than 10 ms, percent of all: the p99 goal holds while this is under 1.
    pub late_percent: f64,
    /// Percent of the late copies sent in the run's worst half second: the 500 ms in which
    /// the most of them were sent. With a handful of late copies this is 100 by itself; spread
    /// evenly over a 10 s run it would be 5.
    pub late_in_worst_half_second_percent: f64,
    /// When the worst half second began, seconds after the run's start (none without late
    /// copies): near 0 it is the fresh relay's start, not the steady state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_half_second_at_s: Option<f64>,
    /// The same moment on CLOCK_MONOTONIC, seconds: where to look in a trace of the run taken
    /// with `perf record -k CLOCK_MONOTONIC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_half_second_clock_s: Option<f64>,
    /// CPU taken by everything but the run's own processes (other programs, the kernel's
    /// threads) while the run was measured (its setup and teardown included), percent of one
    /// core; once it is added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others_cpu_percent: Option<f64>,
    /// The same in the worst half second (and the 10 ms after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others_cpu_percent_in_worst_half_second: Option<f64>,
    /// What the stall meter saw, once it is added.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub meter: Option<MeterFigures>,
    /// When the worst half second began, for matching stalls to it.
    #[serde(skip)]
    worst_from: Option<Instant>,
}

/// A stall meter's figures for one run (see `machine::StallMeter`).
#[derive(Clone, Debug, Serialize)]
pub struct MeterFigures {
    /// Stalls of 1 ms or more on any core while the run was measured (its setup and teardown
    /// included).
    pub stalls: usize,
    /// The longest, ms.
    pub stall_ms_max: f64,
    /// The longest that overlapped the worst half second (or the 10 ms after it, when copies
    /// sent in it were still on their way), ms.
    pub stall_ms_in_worst_half_second: f64,
    /// The longest time every core was stalled at once in that stretch, ms: the machine paused.
    pub all_cores_stalled_ms_in_worst_half_second: f64,
    /// Whether the meter's threads had real-time priority (see `machine::Stalls`).
    pub stall_meter_realtime: bool,
}

impl Tail {
    fn of(received: &[Received], start: Instant) -> Self {
        let mut late: Vec<Duration> = received.iter().filter(|r| r.latency > LATE).map(|r| r.sent).collect();
        late.sort_unstable();
        // The half second holding the most: a window sliding over the sorted send times.
        let (mut most, mut from, mut first) = (0, Duration::ZERO, 0);
        for (last, sent) in late.iter().enumerate() {
            while *sent - late[first] >= WORST {
                first += 1;
            }
            if last + 1 - first > most {
                (most, from) = (last + 1 - first, late[first]);
            }
        }
        let any_late = !late.is_empty();
        Self {
            late_percent: late.len() as f64 * 100.0 / received.len().max(1) as f64,
            late_in_worst_half_second_percent: most as f64 * 100.0 / late.len().max(1) as f64,
            worst_half_second_at_s: any_late.then_some(from.as_secs_f64()),
            worst_half_second_clock_s: if any_late { monotonic_clock_s(start + from) } else { None },
            worst_from: any_late.then_some(start + from),
            ..Self::default()
        }
    }

    /// The worst half second and the 10 ms after it, when copies sent in it were still on
    /// their way: the stretch the stalls and others' CPU are matched to.
    fn worst_stretch(&self) -> Option<(Instant, Instant)> {
        self.worst_from.map(|from| (from, from + WORST + LATE))
    }

    /// Adds the CPU everything else took, from an `OthersMeter`'s samples.
    pub fn with_others(mut self, samples: &[crate::machine::CpuSample]) -> Self {
        use crate::machine::others_cpu_percent;
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return self };
        self.others_cpu_percent = others_cpu_percent(samples, first.at, last.at);
        // A worst half second at the very end runs past the last sample, taken as the run ended.
        self.others_cpu_percent_in_worst_half_second =
            self.worst_stretch().and_then(|(from, to)| others_cpu_percent(samples, from, to.min(last.at)));
        self
    }

    /// Adds what a stall meter saw during the run.
    pub fn with_stalls(mut self, seen: &crate::machine::Stalls) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // Each stall as (began, ended, core), and those that overlap the worst half second.
        let spans = seen.stalls.iter().map(|s| (s.at.checked_sub(s.late).unwrap_or(s.at), s.at, s.cpu));
        let in_worst: Vec<_> = match self.worst_stretch() {
            Some((from, to)) => spans.filter(|(began, ended, _)| *began < to && *ended > from).collect(),
            None => Vec::new(),
        };
        self.meter = Some(MeterFigures {
            stalls: seen.stalls.len(),
            stall_ms_max: seen.stalls.iter().map(|s| ms(s.late)).fold(0.0, f64::max),
            stall_ms_in_worst_half_second: in_worst.iter().map(|(b, e, _)| ms(*e - *b)).fold(0.0, f64::max),
            all_cores_stalled_ms_in_worst_half_second: ms(all_stalled_at_once(&in_worst, seen.cores)),
            stall_meter_realtime: seen.realtime,
        });
        self
    }
}

/// Where `at` falls on CLOCK_MONOTONIC (the clock `Instant` reads on Linux), in seconds.
fn monotonic_clock_s(at: Instant) -> Option<f64> {
    let now = Instant::now();
    let clock = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let from_now = match now.checked_duration_since(at) {
        Some(past) => -past.as_secs_f64(),
        None => (at - now).as_secs_f64(),
    };
    Some(Duration::from(clock).as_secs_f64() + from_now)
}

/// The longest time all `cores` were inside one of `stalls` (began, ended, core) at once.
fn all_stalled_at_once(stalls: &[(Instant, Instant, usize)], cores: usize) -> Duration {
    let mut edges: Vec<(Instant, bool, usize)> =
        stalls.iter().flat_map(|&(b, e, core)| [(b, true, core), (e, false, core)]).collect();
    // At the same instant an end comes first: touching stalls do not overlap.
    edges.sort_by_key(|&(at, begins, _)| (at, begins));
    // Stalls open on each core; a core counts as stalled while it has any.
    let mut open: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let (mut since, mut longest) = (None, Duration::ZERO);
    for (at, begins, core) in edges {
        let n = open.entry(core).or_default();
        *n = if begins { *n + 1 } else { n.saturating_sub(1) };
        let stalled = open.values().filter(|&&n| n > 0).count();
        match (stalled == cores && cores > 0, since) {
            (true, None) => since = Some(at),
            (false, Some(t)) => {
                longest = longest.max(at - t);
                since = None;
            }
            _ => {}
        }
    }
    longest
}

/// What the relay's own histograms counted during a run, in ms, each the upper bound of the
/// bucket it falls in (Tamizdat only; the commit and checkpoint with the embedded store only).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RelayLatency {
    /// 99th percentile of a write, hand-off to durable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_ms_p99: Option<f64>,
    /// 99th percentile of the relay's share of a pushed notice, hand-off to encoded for the
    /// recipient's connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_ms_p99: Option<f64>,
    /// The longest COMMIT of a group-commit batch (its log frames and fsync).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_ms_max: Option<f64>,
    /// The longest checkpoint of the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_ms_max: Option<f64>,
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
    /// The relay's own view of the run.
    #[serde(flatten)]
    pub relay: RelayLatency,
    /// Percent of the machine's CPU time the hypervisor stole during the run.
    pub steal_percent: f64,
    /// How long a fixed piece of work took one core just before the run (ms; see
    /// `machine::cpu_probe_ms`): larger when the host is slower.
    pub cpu_probe_ms: f64,
    /// Dirty page cache written to disk just before the run, MiB (see
    /// `machine::flush_dirty_pages`): the run starts without anyone else's writeback pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_mib_flushed_before: Option<f64>,
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
            relay: RelayLatency::default(),
            steal_percent: 0.0,
            cpu_probe_ms: 0.0,
            dirty_mib_flushed_before: None,
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

    /// Adds what the relay's own histograms counted.
    pub fn with_relay_latency(mut self, relay: RelayLatency) -> Self {
        self.relay = relay;
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
        // A run that started 2 s ago, so that its worst half second is in the past.
        let start = Instant::now().checked_sub(Duration::from_secs(2)).unwrap();
        // 1,000 copies over 1 s, 2 ms each; 8 late ones sent from 330 ms, one at 910 ms, and
        // one at exactly the goal, which is not late.
        let mut copies: Vec<Received> = (0..1_000).map(|i| copy(i, 2)).collect();
        for i in 0..8 {
            copies[330 + i] = copy(330 + i as u64, 25);
        }
        copies[910] = copy(910, 11);
        copies[911] = copy(911, 10);
        let tail = Tail::of(&copies, start);
        assert!((tail.late_percent - 0.9).abs() < 1e-9, "{}", tail.late_percent);
        let share = tail.late_in_worst_half_second_percent;
        assert!((share - 800.0 / 9.0).abs() < 1e-9, "910 ms is more than 500 ms after 330: {share}");
        assert_eq!(tail.worst_half_second_at_s, Some(0.33));
        let clock = Duration::from(nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap());
        let clock_then = clock.as_secs_f64() - start.elapsed().as_secs_f64() + 0.33;
        let got = tail.worst_half_second_clock_s.unwrap();
        assert!((got - clock_then).abs() < 0.01, "{got} against {clock_then}");
        let at = |ms: u64| start + Duration::from_millis(ms);
        let stall = |ms: u64, late: u64, cpu: usize| crate::machine::Stall {
            at: at(ms),
            late: Duration::from_millis(late),
            cpu,
        };
        let stalls = vec![
            stall(352, 20, 0), // 332–352 on core 0 ...
            stall(350, 25, 1), // ... and 325–350 on core 1: both stalled for 18 ms
            stall(835, 4, 1),  // within 10 ms after the worst half second (330–830 ms)
            stall(900, 30, 0), // after it
            stall(2, 1, 0),
        ];
        let seen = crate::machine::Stalls { stalls, cores: 2, realtime: true };
        let figures = |tail: Tail| tail.meter.unwrap();
        let close = |got: f64, want: f64| (got - want).abs() < 1e-6;
        let seen_in = figures(tail.with_stalls(&seen));
        assert_eq!(seen_in.stalls, 5);
        assert!(close(seen_in.stall_ms_max, 30.0), "{seen_in:?}");
        assert!(close(seen_in.stall_ms_in_worst_half_second, 25.0), "{seen_in:?}");
        assert!(close(seen_in.all_cores_stalled_ms_in_worst_half_second, 18.0), "{seen_in:?}");
        let three_cores =
            figures(Tail::of(&copies, start).with_stalls(&crate::machine::Stalls { cores: 3, ..seen.clone() }));
        assert!(close(three_cores.all_cores_stalled_ms_in_worst_half_second, 0.0), "a third core never stalled");
        let one_core = crate::machine::Stalls { stalls: vec![stall(352, 20, 0), stall(350, 25, 0)], ..seen.clone() };
        let one_core = figures(Tail::of(&copies, start).with_stalls(&one_core));
        assert!(
            close(one_core.all_cores_stalled_ms_in_worst_half_second, 0.0),
            "two stalls on core 0 are not two cores"
        );

        let on_time = Tail::of(&copies[..300], start);
        assert_eq!((on_time.late_percent, on_time.late_in_worst_half_second_percent), (0.0, 0.0));
        assert_eq!((on_time.worst_half_second_at_s, on_time.worst_half_second_clock_s), (None, None));
        let on_time = figures(on_time.with_stalls(&seen));
        assert!(close(on_time.stall_ms_in_worst_half_second, 0.0), "no late copies, no worst half second");
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
