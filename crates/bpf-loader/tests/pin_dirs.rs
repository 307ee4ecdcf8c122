//! The pin directories are root's alone: a user who may write one can
//! delete the pins in it, and deleting a link's pin detaches its program.
//! On a bpffs systemd did not mount (mode 1777, as on this host) any user
//! may make contain's directory first; the loader takes it back.

mod common;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use bpf_loader::kernel::Kernel;
use common::require_root;
use test_kit::cleanup::RemoveOnDrop;

#[test]
fn the_loader_takes_back_pin_directories_another_user_made() {
    let Some(()) = require_root("the_loader_takes_back_pin_directories_another_user_made") else {
        return;
    };
    let pins = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/contain-t-{}-pin-dirs",
        std::process::id()
    )));
    // Made first by nobody, open to all, with a group-writable links
    // directory of group 65534 as an older loader (umask 0007, its unit's
    // group) left it.
    let nobody = nix::unistd::Uid::from_raw(65534);
    let links = pins.0.join("links");
    std::fs::create_dir_all(&links).expect("making the directories as another user would");
    nix::unistd::chown(pins.0.as_path(), Some(nobody), None).expect("chown to nobody");
    nix::unistd::chown(
        links.as_path(),
        None,
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .expect("chgrp");
    std::fs::set_permissions(&pins.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&links, std::fs::Permissions::from_mode(0o770)).unwrap();

    let (mut kernel, _rings) = Kernel::load(&pins.0).expect("loading the eBPF object");
    kernel
        .attach_tracepoints()
        .expect("attaching the tracepoints");

    let mut dirs = Vec::new();
    walk(&pins.0, &mut dirs);
    assert!(
        dirs.len() >= 4,
        "the pin dir, maps, links, tracepoints: {dirs:?}"
    );
    for (dir, uid, mode) in &dirs {
        assert_eq!(
            (*uid, mode & 0o7777),
            (0, 0o700),
            "{}: owned by {uid}, mode {mode:o}: another user could delete the pins in it",
            dir.display()
        );
    }
}

/// Where no bpffs is mounted, the loader mounts one itself, root's alone
/// (mode 0700, as systemd mounts it), not with the kernel's default of
/// 1777 under which any user may make contain's directory first; and pins
/// its maps there.
#[test]
fn the_loader_mounts_bpffs_for_root_alone_where_none_is() {
    let Some(()) = require_root("the_loader_mounts_bpffs_for_root_alone_where_none_is") else {
        return;
    };
    // In $TMPDIR, which the suite keeps root's: a path another user could
    // make first would have root mount bpffs wherever a link there points.
    let scratch =
        Unmounted(std::env::temp_dir().join(format!("contain-t-{}-bpffs", std::process::id())));
    let bpffs = scratch.0.join("bpf");
    std::fs::create_dir_all(&bpffs).expect("making the mount point");
    std::fs::set_permissions(&bpffs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mounted = |path: &Path| {
        proto::mounts::read()
            .expect("reading the mount table")
            .into_iter()
            .any(|m| m.fs_type == "bpf" && m.mount_point == path)
    };
    assert!(!mounted(&bpffs), "a bpffs is mounted there before the test");

    let (kernel, _rings) = Kernel::load(&bpffs.join("contain")).expect("loading the eBPF object");
    assert!(
        mounted(&bpffs),
        "the loader mounted no bpffs at {}",
        bpffs.display()
    );
    // The kernel sets the sticky bit on every bpffs root; the permissions
    // are the mount's.
    let meta = std::fs::metadata(&bpffs).expect("the bpffs root");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o700),
        "the bpffs the loader mounted: owned by {}, mode {:o}",
        meta.uid(),
        meta.mode() & 0o7777
    );
    let maps = common::maps_pin_dir(&bpffs.join("contain"));
    assert!(
        std::fs::read_dir(&maps)
            .expect("the maps' pin directory")
            .count()
            > 0,
        "no map is pinned in {}",
        maps.display()
    );
    drop(kernel);
}

/// A scratch directory whose mounts are taken down, and then it, when the
/// test ends.
struct Unmounted(std::path::PathBuf);

impl Drop for Unmounted {
    fn drop(&mut self) {
        test_kit::cleanup::unmount_under(&self.0);
        test_kit::cleanup::remove_any(&self.0);
    }
}

fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, u32)>) {
    let meta = std::fs::symlink_metadata(dir).expect("a pin directory");
    out.push((dir.to_owned(), meta.uid(), meta.mode()));
    for entry in std::fs::read_dir(dir).expect("listing it").flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), out);
        }
    }
}
