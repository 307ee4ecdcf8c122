//! Processes, cgroups and network namespaces: the plumbing every phase
//! shares. Everything the suite creates is named `cbench-<pid>…`, removed
//! on drop, and swept on the next run if a run died.

use std::{
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

pub const PREFIX: &str = "cbench";

/// `cbench-<pid>`: the name of everything this run creates.
pub fn run_name() -> String {
    format!("{PREFIX}-{}", std::process::id())
}

/// Runs a program, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a shell script (`set -e`).
pub fn sh(script: &str) -> Result<String> {
    run("sh", &["-ec", script])
}

/// Runs a program with `stdin` fed from `input`.
pub fn run_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    {
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cgroup_root() -> Result<PathBuf> {
    Ok(bpf_loader::fs::cgroup2_mount()?)
}

/// The cgroup this process started in (absolute path).
pub fn own_cgroup() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 entry in /proc/self/cgroup")?;
    Ok(cgroup_root()?.join(rel.trim_start_matches('/')))
}

pub fn cgroup_id(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cgroup {}", path.display()))?
        .ino())
}

/// Moves this whole process into `cgroup`.
pub fn enter_cgroup(cgroup: &Path) -> Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("moving into {}", cgroup.display()))
}

/// Removes a cgroup tree depth-first, killing what runs in it.
pub fn remove_cgroup_tree(path: &Path) {
    if !path.is_dir() {
        return;
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("contain-bench: could not remove cgroup {}", path.display());
}

/// Removes a bpffs tree (unlinking pinned links detaches them).
pub fn remove_pin_tree(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The owner pid of a name `cbench-<pid>…`.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Removes what a dead run left: namespaces, cgroups, pins, scratch dirs.
pub fn sweep_leftovers() {
    let dead = |name: &str| owner(name).is_some_and(|pid| !pid_alive(pid));
    if let Ok(out) = run("ip", &["netns", "list"]) {
        for line in out.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if dead(name) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(root) = cgroup_root() {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for dir in ["/sys/fs/bpf", "/tmp", "/var/lib"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                unmount_under(&e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Lazily unmounts everything mounted under `dir` (a private containerd's
/// snapshots and shm mounts), deepest first.
pub fn unmount_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = run("umount", &["-l", p]);
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        join_netns(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a measurement thread panicked"))?
}

pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Moves the calling thread into a network namespace.
pub fn join_netns(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid namespace fd; affects the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs `f` on the calling thread inside network namespace `ns`, then
/// moves the thread back to the namespace it was in (for what must happen
/// on this thread: a test run needs its device in the thread's namespace,
/// a tc attachment resolves its device there).
pub fn with_netns<T>(ns: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net")
        .context("opening this thread's network namespace")?;
    join_netns(&netns_path(ns))?;
    let out = f();
    // SAFETY: a valid namespace fd; affects the calling thread only.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "returning from network namespace {ns}: {}",
            std::io::Error::last_os_error()
        );
    }
    out
}

/// Spawns `cmd` inside network namespace `ns` and, if given, `cgroup`
/// (joined in the child between fork and exec, so its first instruction
/// already runs there).
pub fn spawn_in(mut cmd: Command, ns: Option<&str>, cgroup: Option<&Path>) -> Result<Child> {
    let netns = ns.map(|ns| File::open(netns_path(ns))).transpose()?;
    let procs = cgroup
        .map(|c| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
        })
        .transpose()?;
    let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure only makes async-signal-safe syscalls on fds that
    // stay open until the child has exec'd (they are dropped after spawn).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd {
                // "0": the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = netns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawning a measurement process")?;
    drop(netns);
    drop(procs);
    Ok(child)
}

/// Stops a child this run started (SIGTERM, then SIGKILL).
pub fn stop(child: &mut Child) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
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
