//! The pseudo-filesystems the loader needs: cgroup v2 (found, never
//! assumed at /sys/fs/cgroup: hybrid hosts mount it elsewhere), bpffs for
//! pins and tracefs for tracepoints (mounted when missing).

use std::{
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use proto::mounts::{self, Mount};
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

/// An I/O error as [`FsError::Io`]: `what` was being done at `path`.
fn io_at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn mounts() -> Result<Vec<Mount>, FsError> {
    mounts::read().map_err(io_at(
        "reading mount table",
        Path::new("/proc/self/mountinfo"),
    ))
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_mount() -> Result<PathBuf, FsError> {
    mounts::cgroup2(&mounts()?)
        .map(|m| m.mount_point.clone())
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

/// A cgroup v2 id ([`proto::cgroups::cgroup_id`]).
pub fn cgroup_id(path: &Path) -> Result<u64, FsError> {
    proto::cgroups::cgroup_id(path).map_err(io_at("reading cgroup", path))
}

/// The cgroup with id `id` at or below one of `roots`, if any. A walk, for
/// the rare caller that has only a socket's cgroup id (cgroup v2 has no
/// path lookup by id without `CAP_DAC_READ_SEARCH`'s `open_by_handle_at`).
pub fn find_cgroup(roots: &[PathBuf], id: u64) -> Option<PathBuf> {
    let mut pending: Vec<PathBuf> = roots.to_vec();
    while let Some(dir) = pending.pop() {
        if cgroup_id(&dir).is_ok_and(|found| found == id) {
            return Some(dir);
        }
        pending.extend(subdirectories(&dir));
    }
    None
}

fn subdirectories(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
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
    std::fs::create_dir_all(target).map_err(io_at("creating mount point", target))?;
    // Root's alone, as systemd mounts bpffs: the kernel's default is 1777.
    nix::mount::mount(
        Some(fs_type),
        target,
        Some(fs_type),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| io_at("mounting", target)(e.into()))
}

/// Creates the directory `path` (and what is missing above it) for root
/// alone, or takes back one already there: owned by root, mode 0700 (its
/// group is the loader's, and has no access). A pin
/// directory another user may write is one whose pins that user can
/// delete, and deleting a link's pin detaches its program. On a bpffs that
/// systemd did not mount (the kernel's default mode is 1777) any user may
/// have made the directory first, or put a symlink there (removed, as root
/// may in a sticky directory).
pub fn private_dir(path: &Path) -> Result<(), FsError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(path).map_err(io_at(
            "removing a symlink in place of a pin directory",
            path,
        ))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_at("creating pin directory", path))?;
    take_back_dir(path)
}

/// Every directory at and below `root` owned by root, mode 0700 (pin
/// directories an older loader made group-writable included). Symlinks
/// are not followed.
pub fn private_tree(root: &Path) -> Result<(), FsError> {
    take_back_dir(root)?;
    let entries = std::fs::read_dir(root).map_err(io_at("listing pin directory", root))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            private_tree(&entry.path())?;
        }
    }
    Ok(())
}

fn take_back_dir(path: &Path) -> Result<(), FsError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_at("reading pin directory", path))?;
    if !meta.is_dir() {
        return Err(io_at("a pin directory", path)(io::Error::other(
            "not a directory: remove it, contain pins its programs and maps there",
        )));
    }
    // The owner, not the group: with mode 0700 the group has no access,
    // and the unit runs the loader with group contain and without
    // CAP_CHOWN, which a change of group would need.
    if meta.uid() != 0 {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), None).map_err(|e| {
            io_at(
                "taking back pin directory (made by another user: remove it)",
                path,
            )(e.into())
        })?;
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(io_at("taking back pin directory", path))?;
    }
    Ok(())
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
    match cgroup_relative.trim_matches('/') {
        "" => "%2F".into(),
        // '%' first: the escapes after it are not escaped again.
        path => path
            .replace('%', "%25")
            .replace('/', "%2F")
            .replace('.', "%2E"),
    }
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
    fn cgroups_are_found_by_id_below_the_roots() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        let deep = a.join("b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(root.path().join("x")).unwrap();
        let roots = [root.path().to_path_buf()];
        let id = |p: &Path| cgroup_id(p).unwrap();
        assert_eq!(find_cgroup(&roots, id(&deep)), Some(deep.clone()));
        assert_eq!(
            find_cgroup(&roots, id(root.path())),
            Some(root.path().into())
        );
        assert_eq!(
            find_cgroup(std::slice::from_ref(&a), id(&root.path().join("x"))),
            None
        );
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
