//! Names that say which run made them, and the sweep of what dead runs
//! left behind.
//!
//! Everything a run creates on the host (network namespaces, links,
//! cgroups, pins, directories) is named `<prefix><pid>…`, where the prefix
//! says which suite made it and the pid is the run's. A run removes its
//! own on drop; a run that was killed cannot, so every run first sweeps
//! the names of its prefix whose pid is gone.

use std::path::{Path, PathBuf};

use crate::{cgroup, containerd, lab, process};

/// The pid of the run that made `name` (`<prefix><pid>…`), if that run is
/// dead: its leftovers are safe to remove. Never this process.
pub fn dead_owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let pid: u32 = digits.parse().ok()?;
    (pid != std::process::id() && !process::pid_alive(pid)).then_some(pid)
}

/// Removes what dead runs of `prefix` left in every place the kit makes
/// things: network namespaces, links of this namespace, cgroups at the
/// top of the v2 hierarchy, pins under /sys/fs/bpf, files and directories
/// in the temporary directory, and directories in /var/lib (a private
/// containerd's, with what runs and is mounted there).
pub fn sweep_dead_runs(prefix: &str) {
    let dead = |name: &str| dead_owner(name, prefix).is_some();
    if let Ok(list) = process::run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(name) {
                process::run_quiet("ip", &["netns", "del", name]);
            }
        }
    }
    for name in names_in(Path::new("/sys/class/net")) {
        if dead(&name) {
            // A veth may go with its namespace, deleted above, meanwhile.
            let _ = lab::delete_link(&name);
        }
    }
    if let Ok(root) = cgroup::cgroup2_mount() {
        for name in names_in(&root) {
            if dead(&name) {
                cgroup::remove_tree(&root.join(name));
            }
        }
    }
    for dir in [Path::new("/sys/fs/bpf"), &std::env::temp_dir()] {
        for name in names_in(dir) {
            if dead(&name) {
                remove_any(&dir.join(name));
            }
        }
    }
    // A private containerd's home: its shims may outlive the run.
    for name in names_in(Path::new("/var/lib")) {
        if dead(&name) {
            containerd::remove_state(&Path::new("/var/lib").join(name));
        }
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A file or directory tree the run made (a pin directory, a scratch
/// file), removed with [`remove_any`] when dropped.
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        remove_any(&self.0);
    }
}

/// Removes a file or a whole directory tree (a bpffs tree too: unlinking a
/// pinned link detaches it).
pub fn remove_any(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Lazily unmounts everything mounted under `dir` (a private containerd's
/// snapshots and shm mounts), deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = procfs::process::Process::myself().and_then(|p| p.mountinfo()) else {
        return;
    };
    let mut points: Vec<_> = mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes the empty directories of a tree, deepest first; never anything
/// else (what is left is someone else's).
pub fn remove_empty_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_dead_runs_are_found_and_this_runs_are_not() {
        // Pids above the kernel's pid_max (2^22) belong to no process.
        assert_eq!(
            dead_owner("cbench-4194305-peer", "cbench-"),
            Some(4_194_305)
        );
        assert_eq!(dead_owner("crv4194305a1", "crv"), Some(4_194_305));
        let own = format!("cbench-{}-peer", std::process::id());
        assert_eq!(dead_owner(&own, "cbench-"), None);
        assert_eq!(dead_owner("cbench-peer", "cbench-"), None);
        assert_eq!(dead_owner("other-4194305", "cbench-"), None);
    }
}
