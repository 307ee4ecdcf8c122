//! The pseudo-filesystems the loader needs: cgroup v2 (found, never
//! assumed at /sys/fs/cgroup: hybrid hosts mount it elsewhere), bpffs for
//! pins and tracefs for tracepoints (mounted when missing).

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FsError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); contain needs cgroup v2 (a unified or hybrid hierarchy)")]
    NoCgroup2,
    #[error("cgroup path {path}: {reason}")]
    BadCgroupPath { path: String, reason: &'static str },
    #[error("{what} at {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses /proc/self/mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            // Optional fields end at a lone "-", then fs type.
            let fs_type = fields.skip_while(|f| *f != "-").nth(1)?;
            Some(Mount {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Result<Vec<Mount>, FsError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| FsError::Io {
        what: "reading mount table",
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_mount() -> Result<PathBuf, FsError> {
    mounts()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(FsError::NoCgroup2)
}

/// Resolves a cgroup given absolute (under the mount) or relative to it;
/// refuses `..` so a request cannot escape the hierarchy.
pub fn resolve_cgroup(mount: &Path, cgroup: &str) -> Result<PathBuf, FsError> {
    let bad = |reason| FsError::BadCgroupPath {
        path: cgroup.to_string(),
        reason,
    };
    let given = Path::new(cgroup);
    if given
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(bad("must not contain '..'"));
    }
    let full = if given.is_absolute() {
        if !given.starts_with(mount) {
            return Err(bad("is not under the cgroup2 mount"));
        }
        given.to_path_buf()
    } else {
        mount.join(given)
    };
    Ok(full)
}

/// A cgroup v2 id is the inode number of its directory.
pub fn cgroup_id(path: &Path) -> Result<u64, FsError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| FsError::Io {
            what: "reading cgroup",
            path: path.to_owned(),
            source,
        })
}

/// The cgroup v2 id of the calling process (the id of the cgroup sockets it
/// creates belong to).
pub fn own_cgroup_id() -> Result<u64, FsError> {
    let proc_cgroup = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(proc_cgroup).map_err(|source| FsError::Io {
        what: "reading own cgroup",
        path: proc_cgroup.to_owned(),
        source,
    })?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(FsError::NoCgroup2)?;
    cgroup_id(&cgroup2_mount()?.join(relative.trim_start_matches('/')))
}

/// Mounts `fs_type` at `target` unless a filesystem of that type is
/// already mounted there.
pub fn ensure_mounted(fs_type: &str, target: &Path) -> Result<(), FsError> {
    if mounts()?
        .iter()
        .any(|m| m.fs_type == fs_type && m.mount_point == target)
    {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|source| FsError::Io {
        what: "creating mount point",
        path: target.to_owned(),
        source,
    })?;
    nix::mount::mount(
        Some(fs_type),
        target,
        Some(fs_type),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| FsError::Io {
        what: "mounting",
        path: target.to_owned(),
        source: e.into(),
    })
}

/// The tracefs root, mounting it when nothing provides it.
pub fn tracefs() -> Result<PathBuf, FsError> {
    let all = mounts()?;
    if let Some(m) = all.iter().find(|m| m.fs_type == "tracefs") {
        return Ok(m.mount_point.clone());
    }
    let target = PathBuf::from("/sys/kernel/tracing");
    ensure_mounted("tracefs", &target)?;
    Ok(target)
}

/// A bpffs name for a cgroup path: bpffs names cannot hold '/', and bpffs
/// refuses '.' in names ("reserved"), which every systemd slice has.
pub fn pin_name_for(cgroup_relative: &str) -> String {
    let mut out = String::with_capacity(cgroup_relative.len());
    for ch in cgroup_relative.trim_matches('/').chars() {
        match ch {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '.' => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        out.push_str("%2F");
    }
    out
}

/// Inverse of [`pin_name_for`].
pub fn cgroup_for_pin_name(name: &str) -> String {
    if name == "%2F" {
        return String::new();
    }
    name.replace("%2F", "/")
        .replace("%2E", ".")
        .replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,name=systemd
40 24 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_on_hybrid_host() {
        let mounts = parse_mountinfo(HYBRID);
        let cg2: Vec<_> = mounts.iter().filter(|m| m.fs_type == "cgroup2").collect();
        assert_eq!(cg2.len(), 1);
        assert_eq!(cg2[0].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert!(mounts
            .iter()
            .any(|m| m.fs_type == "bpf" && m.mount_point == Path::new("/sys/fs/bpf")));
    }

    #[test]
    fn skips_garbage_and_unescapes() {
        let mounts = parse_mountinfo("garbage\n1 2 0:3 / /mnt/a\\040b rw - ext4 /dev/x rw\n");
        assert_eq!(
            mounts,
            vec![Mount {
                mount_point: PathBuf::from("/mnt/a b"),
                fs_type: "ext4".into()
            }]
        );
    }

    #[test]
    fn resolves_relative_and_absolute_cgroups() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            resolve_cgroup(mount, "contain.slice").unwrap(),
            Path::new("/sys/fs/cgroup/contain.slice")
        );
        assert_eq!(
            resolve_cgroup(mount, "/sys/fs/cgroup/a/b").unwrap(),
            Path::new("/sys/fs/cgroup/a/b")
        );
        assert!(resolve_cgroup(mount, "/etc").is_err());
        assert!(resolve_cgroup(mount, "a/../../etc").is_err());
    }

    #[test]
    fn pin_names_round_trip() {
        for path in [
            "contain.slice",
            "a/b/c",
            "odd%name/x",
            "system.slice/docker-1.scope",
            "",
        ] {
            assert_eq!(cgroup_for_pin_name(&pin_name_for(path)), path);
            assert!(!pin_name_for(path).contains('/'));
            assert!(!pin_name_for(path).contains('.'));
        }
    }
}
