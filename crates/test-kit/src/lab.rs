//! Network namespaces, links and the processes that run in them: the
//! building blocks of the labs (the loader's "containers" with their
//! bridge, the resolver's veth → netns → cgroup scenes, the bench's
//! configurations).

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command},
};

use crate::{io_error, process, Error, Result};

/// A network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name`, replacing a stale one of that name.
    pub fn new(name: &str) -> Result<Netns> {
        process::run_quiet("ip", &["netns", "del", name]);
        process::run("ip", &["netns", "add", name])?;
        Ok(Netns { name: name.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        process::run_quiet("ip", &["netns", "del", &self.name]);
    }
}

/// The bind mount `ip netns` keeps for namespace `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// One link of a namespace, as `ip -j link` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    /// The MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// Reads link `dev` inside namespace `ns` (ifindexes are per namespace).
pub fn link_in(ns: &str, dev: &str) -> Result<Link> {
    let out = process::run("ip", &["-n", ns, "-j", "link", "show", "dev", dev])?;
    let bad = |why: String| Error::Setup(format!("ip -j link show {dev} in {ns}: {why}"));
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
    let link = &v[0];
    Ok(Link {
        name: dev.to_string(),
        ifindex: link["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(format!("no ifindex in {v}")))?,
        mac: link["address"].as_str().unwrap_or_default().to_string(),
    })
}

/// The ifindex of link `name` in this process's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let path = PathBuf::from(format!("/sys/class/net/{name}/ifindex"));
    let text = std::fs::read_to_string(&path).map_err(io_error("reading", &path))?;
    text.trim()
        .parse()
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}

/// Moves the calling thread into the network namespace at `path`.
pub fn join_netns(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(io_error("opening network namespace", path))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io_error("joining network namespace", path)(e.into()))
}

/// Runs `f` on a new thread that has joined network namespace `ns`.
pub fn in_netns<T, E>(ns: &str, f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let path = netns_path(ns);
    std::thread::spawn(move || {
        join_netns(&path)?;
        f()
    })
    .join()
    .map_err(|_| Error::Setup(format!("a thread in network namespace {ns} panicked")))?
}

/// Runs `f` on the calling thread inside network namespace `ns`, then
/// moves the thread back (for what must happen on this thread: a test run
/// needs its device in the thread's namespace, a tc attachment resolves
/// its device there).
pub fn with_netns<T, E>(ns: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<Error>,
{
    let home_path = Path::new("/proc/thread-self/ns/net");
    let home = File::open(home_path).map_err(io_error("opening", home_path))?;
    join_netns(&netns_path(ns))?;
    let out = f();
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io_error("returning to network namespace", home_path)(e.into()))?;
    out
}

/// Spawns `cmd` inside network namespace `ns` and, if given, `cgroup`
/// (joined in the child between fork and exec, so its first instruction
/// already runs there).
pub fn spawn_in(mut cmd: Command, ns: Option<&str>, cgroup: Option<&Path>) -> Result<Child> {
    let netns = ns
        .map(|ns| {
            let path = netns_path(ns);
            File::open(&path).map_err(io_error("opening network namespace", &path))
        })
        .transpose()?;
    let procs = cgroup
        .map(|c| {
            let path = c.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("opening", &path))
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
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        command: format!("{:?}", cmd.get_program()),
        source,
    })?;
    drop(netns);
    drop(procs);
    Ok(child)
}

/// A command that joins `cgroup`, then network namespace `ns`, then runs
/// `args` (through a shell and `ip netns exec`, which also mounts the
/// namespace's /sys).
pub fn in_cgroup_ns_cmd(cgroup: &Path, ns: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#)
        .arg("sh")
        .arg(cgroup)
        .arg(ns)
        .args(args);
    cmd
}
