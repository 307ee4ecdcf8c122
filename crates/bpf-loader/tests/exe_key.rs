//! The key of the kernel's executable ids (the README's "ids are keyed with
//! a per-boot secret"): drawn at random for a set of pinned maps, which
//! live until the next boot, and kept by every loader that adopts them.

mod common;

use std::path::Path;

use aya::maps::{Array, Map, MapData};
use bpf_loader::kernel::Kernel;
use common::{maps_pin_dir, require_root};
use contain_common::{map_names, Config};
use test_kit::cleanup::RemoveOnDrop;

#[test]
fn the_exe_key_is_random_and_kept_with_the_pinned_maps() {
    let Some(()) = require_root("the_exe_key_is_random_and_kept_with_the_pinned_maps") else {
        return;
    };
    let pins = |name: &str| {
        RemoveOnDrop(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/contain-t-{}-{name}",
            std::process::id()
        )))
    };
    let (first_boot, second_boot) = (pins("key-a"), pins("key-b"));
    let load = |dir: &Path| drop(Kernel::load(dir).expect("loading the eBPF object"));

    load(&first_boot.0);
    let key = pinned_exe_key(&first_boot.0);
    assert_ne!(key, [0, 0], "no key was drawn");
    load(&first_boot.0);
    assert_eq!(
        pinned_exe_key(&first_boot.0),
        key,
        "a loader that adopted the pinned maps drew another key: ids stamped before it no longer match"
    );
    load(&second_boot.0);
    let other = pinned_exe_key(&second_boot.0);
    assert_ne!(other, [0, 0], "no key was drawn");
    assert_ne!(other, key, "fresh maps (a new boot) got the same key");
}

/// The key in the pinned config map under `pin_dir`.
fn pinned_exe_key(pin_dir: &Path) -> [u64; 2] {
    let data = MapData::from_pin(maps_pin_dir(pin_dir).join(map_names::CONFIG))
        .expect("the pinned config");
    let config: Array<_, Config> =
        Array::try_from(Map::Array(data)).expect("the config as an array");
    config.get(&0, 0).expect("reading the config").exe_key
}
