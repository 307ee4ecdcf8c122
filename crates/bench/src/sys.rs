//! What only the bench needs of the host: its run's name, resident sets,
//! sample statistics and CPU pinning. The plumbing it shares with the tests
//! (processes, cgroups, namespaces, cleanup) is test-kit's.

/// Everything this run creates is named `cbench-<pid>…` (test-kit's
/// naming: a dead run's leftovers are swept by the next).
pub const RUN_PREFIX: &str = "cbench-";

/// `cbench-<pid>`: the name of everything this run creates.
pub fn run_name() -> String {
    format!("{RUN_PREFIX}{}", std::process::id())
}

/// Resident set of a process, kB (VmRSS).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Median of a sample (sorted copy).
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Nearest-rank quantile of a sample.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The CPU the latency phase pins its threads to (client and server on
/// one CPU: a same-CPU round trip every time, instead of a mix of same-
/// and cross-CPU wake-ups that depends on the scheduler's mood).
pub fn measuring_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// Pins the calling thread to one CPU (best effort).
pub fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity
    // only touch it and the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
