//! The mount table as the daemons read it: where cgroup v2, bpffs and
//! tracefs are. Lines are read by the `procfs` crate; the kernel's octal
//! escapes in paths (`\040` for a space), which it leaves, are undone here.

use std::path::PathBuf;

/// One mount, the fields the daemons use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// Which directory of the filesystem is mounted there (`/`, or a
    /// sub-path for a bind mount or inside a cgroup namespace).
    pub root: String,
    pub fs_type: String,
}

/// The mounts in the text of a `mountinfo` file; a line that cannot be
/// read is skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| procfs::process::MountInfo::from_line(line).ok())
        .map(|m| Mount {
            mount_point: PathBuf::from(unescape(&m.mount_point.to_string_lossy())),
            root: unescape(&m.root),
            fs_type: m.fs_type,
        })
        .collect()
}

/// The mounts of this process's mount namespace (`/proc/self/mountinfo`).
pub fn read() -> std::io::Result<Vec<Mount>> {
    let path = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {path}: {e}")))?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup v2 mount: the first that mounts the hierarchy's root, else
/// the first at all (a bind mount of a sub-cgroup).
pub fn cgroup2(mounts: &[Mount]) -> Option<&Mount> {
    let mut cgroup2 = mounts.iter().filter(|m| m.fs_type == "cgroup2");
    let first = cgroup2.clone().next();
    cgroup2.find(|m| m.root == "/").or(first)
}

/// Undoes the kernel's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                u8::try_from(d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'))).ok()
            });
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 31 0:27 /contain.slice /srv/cg rw,relatime - cgroup2 cgroup2 rw
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,name=systemd
40 24 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_the_cgroup2_root_on_a_hybrid_host() {
        let mounts = parse_mountinfo(HYBRID);
        let cg2 = cgroup2(&mounts).unwrap();
        assert_eq!(cg2.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert!(mounts
            .iter()
            .any(|m| m.fs_type == "bpf" && m.mount_point == std::path::Path::new("/sys/fs/bpf")));
        // Only a bind mount of a sub-cgroup: it is used.
        let bind_only = parse_mountinfo(HYBRID.lines().nth(2).unwrap());
        assert_eq!(cgroup2(&bind_only).unwrap().root, "/contain.slice");
        assert!(cgroup2(&parse_mountinfo("")).is_none());
    }

    #[test]
    fn skips_garbage_and_unescapes() {
        let mounts =
            parse_mountinfo("garbage\n1 2 0:3 /a\\134b /mnt/a\\040b rw - ext4 /dev/x rw\n");
        assert_eq!(
            mounts,
            vec![Mount {
                mount_point: PathBuf::from("/mnt/a b"),
                root: "/a\\b".into(),
                fs_type: "ext4".into()
            }]
        );
        assert_eq!(unescape("\\40x\\"), "\\40x\\");
        assert_eq!(unescape("\\777"), "\\777");
    }
}
