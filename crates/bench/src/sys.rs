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

/// Kernel memory of the BPF maps a process holds open, kB: the sum of
/// each map's `memlock` in its fdinfo (what the kernel charges for it),
/// each map once.
pub fn map_memory_kb(pid: u32) -> Option<u64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = 0u64;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let is_map = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))?
                .trim()
                .parse()
                .ok()
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                bytes += memlock;
            }
        }
    }
    (!seen.is_empty()).then_some(bytes / 1024)
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

/// An interval of a sample's order statistics that holds the median of
/// its population with probability `coverage` or more, whatever the
/// distribution (the sign test's interval).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MedianInterval {
    pub low: f64,
    pub high: f64,
    /// The interval's exact confidence.
    pub coverage: f64,
}

/// The narrowest order-statistic interval `[x(k), x(n+1-k)]` with at least
/// `coverage` confidence, `None` when the sample is too small for it.
pub fn median_interval(v: &[f64], coverage: f64) -> Option<MedianInterval> {
    let n = v.len();
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    // P(Binomial(n, ½) ≤ i) for i = 0.., accumulated.
    let mut below = 0.0;
    let mut choose = 1.0f64;
    let half_n = 0.5f64.powi(n as i32);
    let mut best = None;
    for k in 1..=n.div_ceil(2) {
        // Coverage of [x(k), x(n+1-k)]: 1 - 2 P(X ≤ k-1).
        below += choose * half_n;
        let c = 1.0 - 2.0 * below;
        if c < coverage {
            break;
        }
        best = Some(MedianInterval {
            low: s[k - 1],
            high: s[n - k],
            coverage: c,
        });
        choose = choose * (n - k + 1) as f64 / k as f64;
    }
    best
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

/// The `bpf(2)` system call, for the commands aya does not offer on a
/// bare descriptor; `attr` is a zero-padded `bpf_attr`.
pub fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes, the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<[u64; 16]>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_interval_of_eight_is_the_second_and_seventh() {
        let v = [8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0];
        let i = median_interval(&v, 0.9).unwrap();
        assert_eq!((i.low, i.high), (2.0, 7.0));
        // 1 - 2 (1 + 8) / 256
        assert!((i.coverage - (1.0 - 18.0 / 256.0)).abs() < 1e-12);
    }

    #[test]
    fn median_interval_needs_enough_pairs() {
        // Four values: the widest interval, [min, max], holds 87.5 %.
        assert_eq!(median_interval(&[1.0, 2.0, 3.0, 4.0], 0.9), None);
        let i = median_interval(&[1.0, 2.0, 3.0, 4.0], 0.8).unwrap();
        assert_eq!((i.low, i.high), (1.0, 4.0));
        assert_eq!(median_interval(&[], 0.9), None);
    }

    #[test]
    fn median_interval_narrows_with_more_samples() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let i = median_interval(&v, 0.9).unwrap();
        // n = 20: [x(6), x(15)] holds 95.9 %, [x(7), x(14)] 88.5 %.
        assert_eq!((i.low, i.high), (6.0, 15.0));
    }
}
