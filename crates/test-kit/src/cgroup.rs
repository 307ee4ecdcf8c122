//! cgroup v2 directories: finding the hierarchy, ids, moving in, and
//! removing a tree with everything running in it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{io_error, process, Error, Result};

/// A cgroup directory the run made, removed with everything running in it
/// when dropped.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup `path` (and its parents), replacing a stale one.
    pub fn create(path: &Path) -> Result<Cgroup> {
        remove_tree(path);
        std::fs::create_dir_all(path).map_err(io_error("creating cgroup", path))?;
        Ok(Cgroup {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_mount() -> Result<PathBuf> {
    hierarchies(&["cgroup2"])?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::Setup("no cgroup2 mount in /proc/self/mountinfo: the kit needs cgroup v2".into())
        })
}

/// Mount points of every cgroup hierarchy, v1 controllers and v2 (a
/// container runtime makes its cgroups in each).
pub fn all_hierarchies() -> Result<Vec<PathBuf>> {
    hierarchies(&["cgroup", "cgroup2"])
}

fn hierarchies(fstypes: &[&str]) -> Result<Vec<PathBuf>> {
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| Error::Setup(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(mounts
        .into_iter()
        .filter(|m| fstypes.contains(&m.fs_type.as_str()))
        .map(|m| m.mount_point)
        .collect())
}

/// A cgroup v2 directory's id ([`proto::cgroups::cgroup_id`]).
pub fn cgroup_id(path: &Path) -> Result<u64> {
    proto::cgroups::cgroup_id(path).map_err(io_error("reading the id of cgroup", path))
}

/// The id of the cgroup this process is in (the cgroup of the sockets it
/// creates, and of a test run's dummy socket).
pub fn own_cgroup_id() -> Result<u64> {
    cgroup_id(&own_cgroup()?)
}

/// The cgroup this process is in (absolute path).
pub fn own_cgroup() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(io_error("reading", Path::new("/proc/self/cgroup")))?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| Error::Setup("no cgroup v2 entry in /proc/self/cgroup".into()))?;
    Ok(cgroup2_mount()?.join(relative.trim_start_matches('/')))
}

/// Moves this whole process into `cgroup`.
pub fn enter(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(io_error("moving this process into", cgroup))
}

/// Kills every process in the cgroup tree `dir` and removes it, leaves
/// first. Works in v1 hierarchies too (no `cgroup.kill` there). Best
/// effort: what cannot be removed is said on stderr.
pub fn remove_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        dirs.push(d);
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..50 {
        let mut any = false;
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                any = true;
                process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A cgroup whose last process was just killed is busy until the
    // kernel has reaped it.
    for d in dirs.iter().rev() {
        for _ in 0..100 {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    if dir.exists() {
        eprintln!("test-kit: could not remove cgroup {}", dir.display());
    }
}
