//! The machine a run measures on: how much of its CPU the host took, and how fast one of its
//! cores is right now. Both go beside every throughput run, so that a slow host shows in the
//! table instead of passing for a slow relay.

use std::time::Instant;

use sha2::{Digest, Sha256};

/// The machine's CPU time so far, in clock ticks: `(stolen by the hypervisor, all)`, from
/// the first line of `/proc/stat`. On a virtual machine, stolen time is time this machine's
/// cores wanted to run and the host ran something else: runs with much of it are noisy.
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|rest| rest.split_whitespace().filter_map(|f| f.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let all = fields.iter().take(8).sum();
    (fields.get(7).copied().unwrap_or(0), all)
}

/// Percent of the CPU time between two [`cpu_ticks`] readings that the host stole.
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 { 0.0 } else { after.0.saturating_sub(before.0) as f64 * 100.0 / all as f64 }
}

/// Milliseconds one core takes for a fixed piece of work (SHA-256 over 8 MiB; the median of
/// five tries), taken just before a run. It moves with the host: the same machine gives a
/// larger figure when its cores are slower, whatever the relay does.
pub fn cpu_probe_ms() -> f64 {
    hashing_ms(8)
}

/// The median of five timings of SHA-256 over `mib` MiB, in milliseconds.
fn hashing_ms(mib: usize) -> f64 {
    let block = vec![0x5a_u8; 1 << 20];
    let mut tries: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut hash = Sha256::new();
            for _ in 0..mib {
                hash.update(&block);
            }
            std::hint::black_box(hash.finalize());
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    tries.sort_by(f64::total_cmp);
    tries[tries.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_a_share_of_the_time_between_readings() {
        assert_eq!(steal_percent((10, 1_000), (30, 1_200)), 10.0);
        assert_eq!(steal_percent((10, 1_000), (10, 1_000)), 0.0);
    }

    #[test]
    fn the_probe_times_real_work() {
        // Work the compiler had dropped, or a clock read in the wrong place, would not grow
        // with the amount hashed; 16 times the bytes must take several times as long.
        let (one, sixteen) = (hashing_ms(1), hashing_ms(16));
        assert!(one > 0.0 && sixteen > 4.0 * one, "1 MiB {one} ms, 16 MiB {sixteen} ms");
        assert!(cpu_probe_ms() > one, "the probe hashes more than 1 MiB");
    }
}
