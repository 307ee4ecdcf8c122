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

fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, u32)>) {
    let meta = std::fs::symlink_metadata(dir).expect("a pin directory");
    out.push((dir.to_owned(), meta.uid(), meta.mode()));
    for entry in std::fs::read_dir(dir).expect("listing it").flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), out);
        }
    }
}
