//! The machine a run measures on: how much of its CPU the host took, and how fast one of its
//! cores is right now. Both go beside every throughput run, so that a slow host shows in the
//! table instead of passing for a slow relay.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::{Pid, gettid},
};
use sha2::{Digest, Sha256};

/// The machine's CPU time so far, in clock ticks: `(stolen by the hypervisor, all)`, from
/// the first line of `/proc/stat`. On a virtual machine, stolen time is time this machine's
/// cores wanted to run and the host ran something else: runs with much of it are noisy.
pub fn cpu_ticks() -> (u64, u64) {
    let fields = machine_cpu_fields();
    let all = fields.iter().take(8).sum();
    (fields.get(7).copied().unwrap_or(0), all)
}

/// The first line of `/proc/stat`, every core's time in ticks: user nice system idle iowait
/// irq softirq steal (guest time is counted in user); empty if it could not be read.
fn machine_cpu_fields() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|rest| rest.split_whitespace().filter_map(|f| f.parse().ok()).collect())
        .unwrap_or_default()
}

/// Percent of the CPU time between two [`cpu_ticks`] readings that the host stole.
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 { 0.0 } else { after.0.saturating_sub(before.0) as f64 * 100.0 / all as f64 }
}

/// Writes every dirty page on the machine to disk, and returns how many MiB were dirty (none
/// if `/proc/meminfo` could not be read).
///
/// Taken just before a run, so that the run does not pay for data written before it: the
/// kernel writes dirty data back in the background once it is 30 s old
/// (`vm.dirty_expire_centisecs`), and on one disk the relay's fsyncs were traced taking
/// 15–48 ms while that writeback was under way.
pub fn flush_dirty_pages() -> Option<f64> {
    let dirty_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| proc_kib(&m, "Dirty:"));
    nix::unistd::sync();
    dirty_kib.map(|kib| kib as f64 / 1024.0)
}

/// The number after `key` (such as `Dirty:` or `VmRSS:`) in a `/proc` file of
/// `key value kB` lines: KiB.
pub fn proc_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
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

/// How long a meter thread sleeps between looks at the clock.
const TICK: Duration = Duration::from_millis(1);

/// A wake-up at least this late is a stall.
const STALL: Duration = Duration::from_millis(1);

/// A moment a core could not run a meter thread that was due.
#[derive(Clone, Copy, Debug)]
pub struct Stall {
    /// When the thread finally ran.
    pub at: Instant,
    /// How late it was.
    pub late: Duration,
    /// The core it is pinned to.
    pub cpu: usize,
}

/// One thread pinned to each core, at real-time priority, sleeping 1 ms at a time and noting
/// every wake-up that came 1 ms or more late. A thread that preempts every ordinary thread on
/// its core is that late only when the core was taken from it by something above the run's
/// threads: the hypervisor, or the kernel (interrupts and softirqs, which may be doing the
/// run's own network or disk work, and paths that cannot be preempted). Every core stalled at
/// once, for tens of milliseconds, is the machine pausing; late copies with no stall queued
/// among the run's threads.
pub struct StallMeter(UntilStopped<(Vec<Stall>, bool)>);

/// What a [`StallMeter`] saw.
#[derive(Clone, Debug, Default)]
pub struct Stalls {
    pub stalls: Vec<Stall>,
    /// Cores it watched.
    pub cores: usize,
    /// Every meter thread ran at real-time priority. Without it (no `chrt`, or not allowed)
    /// a late wake-up also counts waiting behind ordinary threads, and means less.
    pub realtime: bool,
}

impl StallMeter {
    /// Starts a meter thread on each core this process may run on.
    pub fn start() -> Self {
        Self(UntilStopped::start(
            allowed_cpus()
                .into_iter()
                .map(|cpu| (format!("stall-meter-{cpu}"), move |stop: &AtomicBool| meter(cpu, stop))),
        ))
    }

    /// Stops the threads and returns the stalls they saw, in no particular order.
    pub fn stop(self) -> Stalls {
        let per_core = self.0.stop();
        let mut seen = Stalls { stalls: Vec::new(), cores: per_core.len(), realtime: !per_core.is_empty() };
        for (stalls, realtime) in per_core {
            seen.stalls.extend(stalls);
            seen.realtime &= realtime;
        }
        seen
    }
}

/// Threads that run until told to stop and then hand back what they gathered: what the
/// meters have in common.
struct UntilStopped<T> {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<T>>,
}

impl<T: Default + Send + 'static> UntilStopped<T> {
    /// Starts one thread for each named job, which runs until the flag it is given is set.
    fn start<F>(jobs: impl IntoIterator<Item = (String, F)>) -> Self
    where
        F: FnOnce(&AtomicBool) -> T + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = jobs
            .into_iter()
            .filter_map(|(name, job)| {
                let stop = stop.clone();
                std::thread::Builder::new().name(name).spawn(move || job(&stop)).ok()
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the threads and returns what each gathered (nothing from one that panicked).
    fn stop(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads).into_iter().map(|t| t.join().unwrap_or_default()).collect()
    }
}

impl<T> Drop for UntilStopped<T> {
    /// Threads dropped without `stop` (a run that failed) still end.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `/proc` counts CPU time in ticks of 1/100 s (`USER_HZ`, the same on every Linux the bench
/// runs on).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// How often [`OthersMeter`] reads the counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The machine's CPU time and the run's own, in ticks, at one moment.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub at: Instant,
    /// Every core's busy time (`user nice system irq softirq` of `/proc/stat`; not idle,
    /// I/O wait or stolen).
    pub machine: u64,
    /// The run's processes' (this one and the server): `utime + stime` of each.
    pub ours: u64,
}

/// Reads the machine's busy time and the run's own processes' every 50 ms, so that a run can
/// say how much CPU everything else took (other programs, the kernel's threads) when its tail
/// was made. The stall meter sees only what runs above ordinary threads; an ordinary program
/// competing for the cores shows here instead. Softirq work counts as the task it interrupted
/// on this kernel (no `CONFIG_IRQ_TIME_ACCOUNTING`); done in `ksoftirqd` or on an idle core,
/// even the run's own network work counts as others'.
pub struct OthersMeter(UntilStopped<Vec<CpuSample>>);

impl OthersMeter {
    /// Starts reading; `server` is the server process the run drives (relay or JetStream).
    pub fn start(server: u32) -> Self {
        Self(UntilStopped::start([("others-meter".to_string(), move |stop: &AtomicBool| sample(server, stop))]))
    }

    /// Stops reading and returns the samples, oldest first.
    pub fn stop(self) -> Vec<CpuSample> {
        self.0.stop().into_iter().flatten().collect()
    }
}

/// The others' meter's thread: a reading every 50 ms until told to stop, and one as it stops.
fn sample(server: u32, stop: &AtomicBool) -> Vec<CpuSample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        samples.extend(cpu_sample(server));
        std::thread::sleep(SAMPLE_EVERY);
    }
    samples.extend(cpu_sample(server));
    samples
}

/// CPU taken by everything but the run's processes between `from` and `to`, percent of one
/// core (200 is the whole of two cores), from the samples nearest outside that stretch (so
/// up to 50 ms more on each side); none when the samples do not cover it.
pub fn others_cpu_percent(samples: &[CpuSample], from: Instant, to: Instant) -> Option<f64> {
    let first = samples.iter().rev().find(|s| s.at <= from)?;
    let last = samples.iter().find(|s| s.at >= to)?;
    let seconds = last.at.duration_since(first.at).as_secs_f64();
    let machine = last.machine.saturating_sub(first.machine);
    let ours = last.ours.saturating_sub(first.ours);
    (seconds > 0.0).then(|| machine.saturating_sub(ours) as f64 * 100.0 / TICKS_PER_SECOND / seconds)
}

/// One reading; none when the machine's counters or either process's cannot be read (a
/// server missing from some readings would pass its whole CPU time for others').
fn cpu_sample(server: u32) -> Option<CpuSample> {
    let fields = machine_cpu_fields();
    let machine = [0, 1, 2, 5, 6].iter().map(|&i| fields.get(i)).sum::<Option<u64>>()?;
    let ours = process_ticks("self")? + process_ticks(&server.to_string())?;
    Some(CpuSample { at: Instant::now(), machine, ours })
}

/// `utime + stime` of the process `pid` (or `self`), in ticks.
pub fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where field 3 (the state) comes first, so utime (14) and stime (15) are 11 and 12.
    let mut after_name = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = after_name.next()?.parse().ok()?;
    let stime: u64 = after_name.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The cores this process may run on.
fn allowed_cpus() -> Vec<usize> {
    sched_getaffinity(Pid::from_raw(0))
        .map(|set| (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
        .unwrap_or_default()
}

/// One meter thread: pins itself to `cpu`, asks for real-time priority, and times its sleeps
/// until told to stop. Returns its stalls and whether it got the priority.
fn meter(cpu: usize, stop: &AtomicBool) -> (Vec<Stall>, bool) {
    let realtime = pin_at_realtime_priority(cpu, 10);
    let mut stalls = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let asleep = Instant::now();
        std::thread::sleep(TICK);
        let at = Instant::now();
        let late = at.duration_since(asleep).saturating_sub(TICK);
        if late >= STALL {
            stalls.push(Stall { at, late, cpu });
        }
    }
    (stalls, realtime)
}

/// Pins the calling thread to `cpu` and gives it real-time (FIFO) `priority`; says whether
/// both worked.
fn pin_at_realtime_priority(cpu: usize, priority: u8) -> bool {
    let mut only = CpuSet::new();
    let pinned = only.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &only).is_ok();
    // `chrt` changes one thread's policy given its id; the standard library has no call for it.
    pinned
        && std::process::Command::new("chrt")
            .args(["--fifo", "--pid", &priority.to_string(), &gettid().to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_kib_reads_one_key_of_a_proc_file() {
        let meminfo = "MemTotal:       24576000 kB\nDirty:              76776 kB\nWriteback:             0 kB\n";
        assert_eq!(proc_kib(meminfo, "Dirty:"), Some(76_776));
        assert_eq!(proc_kib(meminfo, "Writeback:"), Some(0));
        assert_eq!(proc_kib(meminfo, "VmRSS:"), None);
        assert_eq!(proc_kib("Dirty:   some kB\n", "Dirty:"), None);
    }

    #[test]
    fn the_flush_writes_out_what_was_dirty() {
        let _alone = MACHINE.lock();
        // 64 MiB left in the page cache: the flush must count it and leave it written.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dirty"), vec![7u8; 64 << 20]).unwrap();
        let flushed = flush_dirty_pages().unwrap();
        assert!(flushed >= 48.0, "{flushed} MiB dirty after writing 64 MiB");
        let left = flush_dirty_pages().unwrap();
        assert!(left < flushed - 32.0, "{left} MiB still dirty after flushing {flushed}");
    }

    #[test]
    fn steal_is_a_share_of_the_time_between_readings() {
        assert_eq!(steal_percent((10, 1_000), (30, 1_200)), 10.0);
        assert_eq!(steal_percent((10, 1_000), (10, 1_000)), 0.0);
    }

    #[test]
    fn the_meter_sees_a_core_taken_from_it() {
        let _alone = MACHINE.lock();
        // A busy loop at a higher real-time priority, pinned to the meter's first core, holds
        // that core for 30 ms: the longest stall the meter thread there sees must be about
        // that long (20–200 ms, for a busy host).
        // Without the priority (not root) the test has nothing to take the core with.
        let meter = StallMeter::start();
        std::thread::sleep(Duration::from_millis(50));
        let cpu = allowed_cpus()[0];
        let hog = std::thread::spawn(move || {
            let realtime = pin_at_realtime_priority(cpu, 20);
            let until = Instant::now() + Duration::from_millis(30);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            realtime
        });
        let hogged = hog.join().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let seen = meter.stop();
        if !(seen.realtime && hogged) {
            assert!(std::env::var("CI").is_err(), "CI runs as root, where real-time priority must be allowed");
            eprintln!("no real-time priority here: nothing to measure");
            return;
        }
        let longest = seen.stalls.iter().filter(|s| s.cpu == cpu).map(|s| s.late).max().unwrap_or_default();
        assert!(
            longest >= Duration::from_millis(20) && longest < Duration::from_millis(200),
            "longest stall on cpu {cpu}: {longest:?} ({:?})",
            seen.stalls
        );
    }

    /// Tests that load the cores or the disk, one at a time, so that none skews another's
    /// measurement.
    static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn others_cpu_counts_other_processes_not_ours() {
        let _alone = MACHINE.lock();
        // Two busy loops in two other processes, one after the other, each about 100 % of a
        // core: the first is the run's server, so only the second is others' CPU.
        let busy = || std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let mut server = busy();
        let meter = OthersMeter::start(server.id());
        let during = |for_ms: u64| {
            let from = Instant::now();
            std::thread::sleep(Duration::from_millis(for_ms));
            (from, Instant::now())
        };
        std::thread::sleep(Duration::from_millis(60));
        let ours = during(400);
        // Past the stretch, so that a reading comes after it while the server still runs.
        std::thread::sleep(Duration::from_millis(120));
        server.kill().unwrap();
        server.wait().unwrap();
        let mut other = busy();
        let theirs = during(400);
        other.kill().unwrap();
        other.wait().unwrap();
        std::thread::sleep(Duration::from_millis(120));
        let samples = meter.stop();
        let during_ours = others_cpu_percent(&samples, ours.0, ours.1);
        let during_theirs = others_cpu_percent(&samples, theirs.0, theirs.1);
        // Once the server has exited it cannot be read: the meter stops counting rather than
        // pass its CPU time for others'.
        assert!(during_ours.is_some_and(|p| p < 40.0), "the server's busy loop counted as others' {during_ours:?} %");
        assert_eq!(during_theirs, None, "readings went on without the server");
        let before_exit = samples.last().unwrap().at;
        assert!(before_exit < theirs.0 + Duration::from_millis(60), "the last reading came after the server exited");
    }

    #[test]
    fn others_cpu_counts_another_process() {
        let _alone = MACHINE.lock();
        let mut other = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let meter = OthersMeter::start(std::process::id());
        std::thread::sleep(Duration::from_millis(60));
        let from = Instant::now();
        std::thread::sleep(Duration::from_millis(400));
        let to = Instant::now();
        other.kill().unwrap();
        other.wait().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let samples = meter.stop();
        let theirs = others_cpu_percent(&samples, from, to);
        assert!(theirs.is_some_and(|p| p > 60.0), "another process's busy loop counted as {theirs:?} % of a core");
        assert_eq!(others_cpu_percent(&samples, from, to + Duration::from_secs(5)), None, "past the last reading");
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
