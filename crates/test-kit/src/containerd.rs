//! A private containerd for tests and benchmarks: Debian's `containerd`
//! and `runc` (`tests/containerd/prepare.sh packages` installs them), on a
//! socket, root and state of its own under one base directory, with the
//! busybox-static image that `prepare.sh image` builds locally (no
//! registry). Containers are run with `ctr` in a cgroup parent of the
//! run's own.
//!
//! runc and the shims keep some state in `/run/containerd` whatever the
//! configuration says; what a run puts there is found through its task
//! state and removed with it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest as _, Sha256};

use crate::{cgroup, cleanup, io_error, process, repo_root, Error, Result};

/// The reference of the image `prepare.sh image` builds.
pub const TEST_IMAGE: &str = "docker.io/contain-test/busybox:latest";

const TOOLS: [&str; 4] = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"];
const RUN_CONTAINERD: &str = "/run/containerd";

fn prepare_script() -> PathBuf {
    repo_root().join("tests/containerd/prepare.sh")
}

/// Installs containerd and runc with `prepare.sh packages` when one is
/// missing.
pub fn install_packages() -> Result<()> {
    if TOOLS.iter().all(|t| process::installed(t)) {
        return Ok(());
    }
    process::run(&prepare_script().to_string_lossy(), &["packages"])?;
    match TOOLS.iter().find(|t| !process::installed(t)) {
        Some(tool) => Err(Error::Setup(format!(
            "`{tool}` not found even after `{} packages`",
            prepare_script().display()
        ))),
        None => Ok(()),
    }
}

/// A running private containerd, stopped and removed (its containers,
/// mounts, cgroups and state) on drop.
pub struct Containerd {
    base: PathBuf,
    socket: PathBuf,
    cgroup_parent: String,
    child: Option<Child>,
    /// Namespaces containers may have been run in (cleaned on drop).
    namespaces: Vec<String>,
}

/// A paused containerd; resumed when dropped (also when a test fails).
pub struct Paused(nix::unistd::Pid);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

impl Containerd {
    /// Starts containerd with its state under `base` (on a real filesystem:
    /// overlay snapshots do not work on tmpfs) and imports the test image
    /// into each of `namespaces`. Containers go into the cgroup
    /// `/<cgroup_parent>/<id>` of every hierarchy.
    pub fn start(base: &Path, cgroup_parent: &str, namespaces: &[&str]) -> Result<Containerd> {
        install_packages()?;
        remove_state(base);
        let state = base.join("state");
        std::fs::create_dir_all(&state).map_err(io_error("creating", &state))?;
        // Shims and containers run as root; others may only pass through.
        nix::sys::stat::fchmodat(
            None,
            base,
            nix::sys::stat::Mode::from_bits_truncate(0o711),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| io_error("setting the mode of", base)(e.into()))?;
        if !Path::new(RUN_CONTAINERD).exists() {
            let marker = base.join("created-run-containerd");
            std::fs::write(&marker, b"").map_err(io_error("writing", &marker))?;
        }
        let socket = state.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{b}/root"
state = "{b}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{s}"
[ttrpc]
  address = "{s}.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"
"#,
            b = base.display(),
            s = socket.display()
        );
        let config_path = base.join("config.toml");
        std::fs::write(&config_path, config).map_err(io_error("writing", &config_path))?;
        let mut containerd = Containerd {
            base: base.to_path_buf(),
            socket,
            cgroup_parent: cgroup_parent.trim_matches('/').to_string(),
            child: None,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        };
        containerd.start_daemon()?;
        let tarball = base.join("busybox.tar");
        let tarball = tarball.to_string_lossy();
        let reference = process::run(&prepare_script().to_string_lossy(), &["image", &tarball])?;
        if reference.trim() != TEST_IMAGE {
            return Err(Error::Setup(format!(
                "prepare.sh built {}, not {TEST_IMAGE}",
                reference.trim()
            )));
        }
        for ns in namespaces {
            containerd.ctr(ns, &["images", "import", &tarball])?;
        }
        Ok(containerd)
    }

    /// containerd's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Starts (or restarts, after [`Containerd::stop_daemon`]) the daemon
    /// and waits until it answers.
    pub fn start_daemon(&mut self) -> Result<()> {
        let log_path = self.base.join("containerd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("opening", &log_path))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(self.base.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: "containerd".into(),
            source,
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let socket = self.socket.to_string_lossy().into_owned();
        while !process::run_quiet("ctr", &["--address", &socket, "version"]) {
            if Instant::now() > deadline {
                return Err(Error::Setup(format!(
                    "containerd did not come up within 20 s; its log:\n{}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the daemon (SIGTERM); containers and shims keep running.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop(&mut child);
        }
    }

    /// Stops the daemon in its tracks (SIGSTOP) until the guard is dropped
    /// (SIGCONT): its connections stay open and nothing answers, as from a
    /// containerd too busy to answer in time.
    pub fn pause(&self) -> Result<Paused> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| Error::Setup("containerd is not running: nothing to pause".into()))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)
            .map_err(|e| Error::Setup(format!("SIGSTOP to containerd (pid {pid}): {e}")))?;
        Ok(Paused(pid))
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The last 60 lines of containerd's log.
    pub fn log_tail(&self) -> String {
        tail(&self.base.join("containerd.log"), 60)
    }

    /// `ctr` in namespace `ns`; its stdout.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Result<String> {
        let socket = self.socket.to_string_lossy();
        let mut all = vec!["--address", &socket, "-n", ns];
        all.extend_from_slice(args);
        process::run("ctr", &all)
    }

    /// The `--cgroup` of container `id`: `/<cgroup_parent>/<id>`.
    pub fn cgroup_of(&self, id: &str) -> String {
        format!("/{}/{id}", self.cgroup_parent)
    }

    /// `ctr run -d` of `cmd` (`sleep 600` when empty) from the test image,
    /// with extra `flags`; the task's pid.
    pub fn run_container(
        &self,
        ns: &str,
        id: &str,
        flags: &[&str],
        cmd: &[&str],
    ) -> Result<Option<u32>> {
        let cgroup = self.cgroup_of(id);
        let mut args = vec!["run", "-d", "--cgroup", &cgroup];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[TEST_IMAGE, id]);
        if cmd.is_empty() {
            args.extend_from_slice(&["sleep", "600"]);
        } else {
            args.extend_from_slice(cmd);
        }
        self.ctr(ns, &args)?;
        Ok(self.task_pid(ns, id))
    }

    /// The pid of container `id`'s task, as `ctr task ls` lists it.
    pub fn task_pid(&self, ns: &str, id: &str) -> Option<u32> {
        self.ctr(ns, &["task", "ls"]).ok()?.lines().find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next() == Some(id))
                .then(|| fields.next()?.parse().ok())
                .flatten()
        })
    }

    /// Kills container `id`'s task and removes it and the container;
    /// best effort (it may be gone already).
    pub fn remove_container(&self, ns: &str, id: &str) {
        let _ = self.ctr(ns, &["task", "kill", "-s", "KILL", id]);
        // `task rm -f` fails while the task is still being killed.
        for _ in 0..50 {
            if self.ctr(ns, &["task", "rm", "-f", id]).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.ctr(ns, &["container", "rm", id]);
    }

    /// Follows containerd's events (`ctr events`) from now on.
    pub fn events(&self) -> Result<Events> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            command: "ctr events".into(),
            source,
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Setup("ctr events has no stdout".into()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::io::Result::ok)
            {
                if let Some(event) = Event::parse(&line) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        // `ctr events` subscribes after it starts: give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Events { child, rx })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.running() {
            for ns in &self.namespaces {
                for id in self
                    .ctr(ns, &["container", "ls", "-q"])
                    .unwrap_or_default()
                    .lines()
                {
                    self.remove_container(ns, id.trim());
                }
            }
        }
        self.stop_daemon();
        for hierarchy in cgroup::all_hierarchies().unwrap_or_default() {
            cgroup::remove_tree(&hierarchy.join(&self.cgroup_parent));
        }
        remove_state(&self.base);
    }
}

/// Removes everything a private containerd with state under `base` left:
/// its daemon and shims (their command lines name `base`), runc's state,
/// shim sockets and stdio fifos of its tasks in /run/containerd, mounts,
/// and `base` itself. Its containers' cgroups are the caller's (by their
/// parent's name). For a run that died as for one that ends.
pub fn remove_state(base: &Path) {
    if !base.exists() {
        return;
    }
    let needle = base.to_string_lossy().into_owned();
    for p in procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
    {
        let named = p
            .cmdline()
            .is_ok_and(|c| c.iter().any(|a| a.contains(&needle)));
        if named && p.pid as u32 != std::process::id() {
            process::signal(p.pid as u32, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let run = Path::new(RUN_CONTAINERD);
    // Shim sockets are named sha256("<containerd address>/<namespace>/<id>").
    let address = base.join("state/containerd.sock");
    let tasks = base.join("state/io.containerd.runtime.v2.task");
    for ns in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        for task in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let (ns, id) = (ns.file_name(), task.file_name());
            let key = address.join(&ns).join(&id);
            let hash = Sha256::digest(key.as_os_str().as_encoded_bytes());
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            let _ = std::fs::remove_file(run.join("s").join(hex));
            cleanup::remove_any(&run.join("runc").join(&ns).join(&id));
            remove_fifos_of(&id.to_string_lossy());
        }
    }
    cleanup::unmount_under(base);
    if base.join("created-run-containerd").exists() {
        cleanup::remove_empty_dirs(run);
    }
    let _ = std::fs::remove_dir_all(base);
}

/// ctr's stdio fifos of container `id` (`/run/containerd/fifo/<random>/<id>-stdout`...).
fn remove_fifos_of(id: &str) {
    let fifo = Path::new(RUN_CONTAINERD).join("fifo");
    for dir in std::fs::read_dir(fifo).into_iter().flatten().flatten() {
        let ours = std::fs::read_dir(dir.path()).is_ok_and(|files| {
            files.flatten().any(|f| {
                f.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{id}-"))
            })
        });
        if ours {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Nanoseconds since the epoch now, on the clock containerd stamps its
/// events with.
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// One line of `ctr events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// containerd's timestamp, nanoseconds since the epoch.
    pub ns_epoch: i128,
    /// `/tasks/create`, `/tasks/start`, ...
    pub topic: String,
    pub line: String,
}

impl Event {
    /// `2025-11-21 17:41:38.123456789 +0000 UTC default /tasks/create {...}`
    pub fn parse(line: &str) -> Option<Event> {
        let mut f = line.split_whitespace();
        let (date, time, offset) = (f.next()?, f.next()?, f.next()?);
        let _zone = f.next()?;
        let _namespace = f.next()?;
        let topic = f.next()?.to_string();
        let mut d = date.split('-').map(|x| x.parse::<i64>());
        let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let mut t = hms.split(':').map(|x| x.parse::<i64>());
        let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
        let frac_ns: i64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let off = offset.trim_start_matches(['+', '-']);
        let off_s = sign
            * (off.get(0..2)?.parse::<i64>().ok()? * 3600
                + off.get(2..4)?.parse::<i64>().ok()? * 60);
        let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss - off_s;
        Some(Event {
            ns_epoch: i128::from(secs) * 1_000_000_000 + i128::from(frac_ns),
            topic,
            line: line.to_string(),
        })
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// containerd's events as `ctr events` prints them; stops following on
/// drop.
pub struct Events {
    child: Child,
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The time of the next event `topic` about container `id`, waiting
    /// up to ten seconds.
    pub fn wait(&self, id: &str, topic: &str) -> Result<i128> {
        let quoted = format!("\"{id}\"");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .rx
                .recv_timeout(left)
                .map_err(|_| Error::Setup(format!("no {topic} event for container {id}")))?;
            if event.topic == topic && event.line.contains(&quoted) {
                return Ok(event.ns_epoch);
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_event_lines_are_parsed_with_their_time() {
        let e = Event::parse(
            "2024-03-01 12:00:01.5 +0000 UTC default /tasks/create {\"container_id\":\"x\"}",
        )
        .expect("parsed");
        assert_eq!(e.topic, "/tasks/create");
        assert_eq!(e.ns_epoch, 1_709_294_401_500_000_000);
    }

    #[test]
    fn event_times_honour_the_offset() {
        let e = Event::parse("2024-03-01 13:00:01.5 +0100 UTC default /tasks/start {}")
            .expect("parsed");
        assert_eq!(e.ns_epoch, 1_709_294_401_500_000_000);
    }
}
