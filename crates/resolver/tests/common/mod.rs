//! Helpers of the privileged integration tests: commands that fail loudly,
//! a tarpc client, waiting for the inventory, and cleanup by name.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use proto::resolver::{Container, ResolverClient, Snapshot, WatchReply};

/// Whether the test applies. When not root it does not, and says so in
/// `$CONTAIN_SKIPPED_LOG` (set by scripts/test.sh, which counts it as
/// skipped, not passed).
pub fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = format!("{test}: needs root (network namespaces, veths, cgroups)");
    eprintln!("skipped: {why}");
    if let Some(log) = std::env::var_os("CONTAIN_SKIPPED_LOG") {
        use std::io::Write as _;
        // One appended line per test: tests run in parallel.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{why}\n").as_bytes()))
            .unwrap_or_else(|e| panic!("cannot record a skipped test in {log:?}: {e}"));
    }
    false
}

/// Runs a command; panics with its stderr if it cannot run or fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("prerequisite missing: cannot run `{cmd}`: {e}"));
    if !out.status.success() {
        panic!(
            "`{cmd} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (cleanup).
pub fn run_quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The cgroup2 mount, as the resolver finds it.
pub fn cgroup_mount() -> PathBuf {
    resolver::cgroup::find_mount()
        .unwrap_or_else(|e| panic!("prerequisite missing: {e}"))
        .mount_point
}

pub fn inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

pub fn ifindex(name: &str) -> u32 {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap_or_else(|e| panic!("ifindex of {name}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("ifindex of {name}: {e}"))
}

/// Kills every process of a cgroup directory tree and removes it, leaves
/// first.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for _ in 0..50 {
        let mut any = false;
        for pid in resolver::cgroup::procs_below(dir, 100_000) {
            any = true;
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        dirs.push(d);
    }
    for d in dirs.iter().rev() {
        for _ in 0..50 {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Names created by an earlier run whose process is gone: `prefix<pid>...`.
pub fn dead_run_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let pid: u32 = digits.parse().ok()?;
    (pid != std::process::id() && !pid_alive(pid)).then_some(pid)
}

/// A child killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn connect(socket: &Path) -> ResolverClient {
    // The resolver serves once containerd's first listing is in, or after
    // FIRST_LISTING_WAIT without it: wait longer than that, since a loaded
    // machine (or the resolver's own start-up) adds to it.
    let deadline = Instant::now() + resolver::FIRST_LISTING_WAIT + Duration::from_secs(20);
    loop {
        match proto::transport::connect(socket).await {
            Ok(stream) => {
                return ResolverClient::new(
                    tarpc::client::Config::default(),
                    proto::transport::client(stream, proto::transport::Service::Resolver),
                )
                .spawn();
            }
            Err(e) if Instant::now() > deadline => {
                panic!("resolver socket {}: {e}", socket.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub fn ctx() -> tarpc::context::Context {
    proto::transport::context_with_deadline(40)
}

pub async fn list(client: &ResolverClient) -> Snapshot {
    client.list(ctx()).await.expect("list over tarpc")
}

/// Polls the inventory until `check` returns `Some`, or panics after
/// `timeout` with the last inventory and `what`.
pub async fn wait_for<T>(
    client: &ResolverClient,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Snapshot) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let snap = list(client).await;
        if let Some(v) = check(&snap) {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\ninventory: {:#?}",
                snap.containers
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn find<'a>(snap: &'a Snapshot, namespace: &str, id: &str) -> Option<&'a Container> {
    snap.containers
        .iter()
        .find(|c| c.namespace == namespace && c.id == id)
}

/// A client-side copy of the inventory kept only through `watch`.
pub struct Watcher {
    pub copy: BTreeMap<String, Container>,
    pub at: u64,
    pub resyncs: u32,
    pub seen_added: std::collections::BTreeSet<String>,
}

impl Watcher {
    pub async fn new(client: &ResolverClient) -> Watcher {
        let snap = list(client).await;
        Watcher {
            copy: snap
                .containers
                .iter()
                .map(|c| (c.key(), c.clone()))
                .collect(),
            at: snap.generation,
            resyncs: 0,
            seen_added: Default::default(),
        }
    }

    /// One long poll; returns whether anything changed.
    pub async fn poll(&mut self, client: &ResolverClient, wait_ms: u32) -> bool {
        let reply = client
            .watch(ctx(), self.at, wait_ms)
            .await
            .expect("watch over tarpc");
        let changed = match &reply {
            WatchReply::Changes { changes, .. } => {
                for ch in changes {
                    if let proto::resolver::ChangeKind::Added { container } = &ch.kind {
                        self.seen_added.insert(container.key());
                    }
                }
                !changes.is_empty()
            }
            WatchReply::Resync { .. } => {
                self.resyncs += 1;
                true
            }
        };
        self.at = reply.apply_to(&mut self.copy);
        changed
    }

    /// Polls until the copy equals the server's list at the same generation.
    pub async fn converge(&mut self, client: &ResolverClient, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll(client, 200).await;
            let snap = list(client).await;
            if snap.generation == self.at {
                let server: BTreeMap<_, _> = snap
                    .containers
                    .iter()
                    .map(|c| (c.key(), c.clone()))
                    .collect();
                assert_eq!(
                    self.copy, server,
                    "a watcher's copy differs from the list at the same generation"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "watcher did not catch up with generation {}",
                snap.generation
            );
        }
    }
}
