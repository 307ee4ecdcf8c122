//! cgroup v2: where the unified hierarchy is mounted, which v2 cgroup a
//! process is in, and the cgroup id (the inode of the cgroup directory).
//!
//! The parsers are pure; the few functions that touch the filesystem say so.

use std::path::{Component, Path, PathBuf};

use procfs::FromRead;
use proto::mounts;

use crate::error::{Error, Result};

/// The cgroup2 mount the resolver resolves paths against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Where it is mounted, e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy is mounted there (`/` normally; a
    /// sub-path inside a cgroup namespace or a bind mount).
    pub root: String,
}

impl Cgroup2Mount {
    /// A mount given on the command line (`--cgroup-root`): its root is the
    /// hierarchy's root.
    pub fn at(mount_point: impl Into<PathBuf>) -> Self {
        Cgroup2Mount {
            mount_point: mount_point.into(),
            root: "/".to_string(),
        }
    }

    /// The directory of the cgroup at `path` (as `/proc/<pid>/cgroup` shows
    /// it), or `None` if it is outside this mount or not a plain absolute
    /// path (e.g. `/../x` as seen from another cgroup namespace).
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let path = Path::new(path);
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return None;
        }
        let rel = path.strip_prefix(&self.root).ok()?;
        Some(if rel.as_os_str().is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rel)
        })
    }
}

/// Finds the cgroup2 mount in the text of `/proc/self/mountinfo`. When there
/// are several, the first that mounts the hierarchy's root wins (a bind mount
/// of a sub-cgroup is only used if there is nothing else).
pub fn parse_mountinfo(text: &str) -> Option<Cgroup2Mount> {
    cgroup2_of(&mounts::parse_mountinfo(text))
}

fn cgroup2_of(all: &[mounts::Mount]) -> Option<Cgroup2Mount> {
    mounts::cgroup2(all).map(|m| Cgroup2Mount {
        mount_point: m.mount_point.clone(),
        root: m.root.clone(),
    })
}

/// The v2 entry of `/proc/<pid>/cgroup` (`0::/path`, read by the `procfs`
/// crate), on a pure v2 host and on a hybrid one (where the v1 controllers
/// come first). A cgroup removed while the process is still in it reads
/// `/path (deleted)`; the suffix is dropped.
pub fn parse_proc_cgroup(text: &[u8]) -> Option<String> {
    let cgroups = procfs::ProcessCGroups::from_read(text).ok()?;
    cgroups.0.into_iter().find_map(|c| {
        if c.hierarchy != 0 || !c.controllers.is_empty() {
            return None;
        }
        let path = c.pathname.strip_suffix(" (deleted)").unwrap_or(&c.pathname);
        path.starts_with('/').then(|| path.to_string())
    })
}

/// The cgroup2 mount of this process's mount namespace (I/O).
pub fn find_mount() -> Result<Cgroup2Mount> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let all = mounts::read().map_err(|e| Error::io(mountinfo, e))?;
    cgroup2_of(&all).ok_or_else(|| Error::NoCgroup2Mount(mountinfo.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const PURE_V2_MOUNTINFO: &str = "\
22 27 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_cgroup2_on_hybrid_host() {
        let m = parse_mountinfo(HYBRID_MOUNTINFO).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.root, "/");
    }

    #[test]
    fn finds_cgroup2_on_pure_v2_host_with_optional_fields() {
        let m = parse_mountinfo(PURE_V2_MOUNTINFO).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        let v1_only = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_mountinfo(v1_only), None);
        assert_eq!(parse_mountinfo(""), None);
        assert_eq!(parse_mountinfo("garbage\n- cgroup2\n1 2 3 - cgroup2"), None);
    }

    #[test]
    fn prefers_the_hierarchy_root_over_a_bind_mount() {
        let text = "\
50 40 0:38 /kubepods /host/cg rw - cgroup2 cgroup2 rw
51 40 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(text).unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup")
        );
        let only_bind = "50 40 0:38 /kubepods /host/cg rw - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(only_bind).unwrap();
        assert_eq!(m.root, "/kubepods");
        assert_eq!(
            m.dir_of("/kubepods/pod1/c1"),
            Some(PathBuf::from("/host/cg/pod1/c1"))
        );
        assert_eq!(m.dir_of("/system.slice/x"), None);
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        let text = "41 31 0:38 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text).unwrap().mount_point,
            PathBuf::from("/mnt/my cgroup")
        );
    }

    #[test]
    fn v2_entry_on_pure_v2_host() {
        assert_eq!(
            parse_proc_cgroup(b"0::/system.slice/docker-0123abcd.scope\n"),
            Some("/system.slice/docker-0123abcd.scope".to_string())
        );
    }

    #[test]
    fn v2_entry_on_hybrid_host_after_v1_lines() {
        let text = "\
12:pids:/docker/0123
4:memory:/docker/0123
1:name=systemd:/docker/0123
0::/docker/0123
";
        assert_eq!(
            parse_proc_cgroup(text.as_bytes()),
            Some("/docker/0123".to_string())
        );
    }

    #[test]
    fn v1_only_or_garbage_has_no_v2_entry() {
        assert_eq!(parse_proc_cgroup(b"4:memory:/docker/0123\n"), None);
        assert_eq!(parse_proc_cgroup(b""), None);
        assert_eq!(parse_proc_cgroup(b"0::relative\n"), None);
        assert_eq!(parse_proc_cgroup(b"\x00\x010::"), None);
    }

    #[test]
    fn deleted_cgroup_suffix_is_dropped() {
        assert_eq!(
            parse_proc_cgroup(b"0::/gone (deleted)\n"),
            Some("/gone".to_string())
        );
    }

    #[test]
    fn dir_of_joins_under_the_mount() {
        let m = Cgroup2Mount::at("/sys/fs/cgroup/unified");
        assert_eq!(m.dir_of("/"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.dir_of("/default/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/default/c1"))
        );
        assert_eq!(m.dir_of("/../../etc"), None);
        assert_eq!(m.dir_of("relative"), None);
    }
}
