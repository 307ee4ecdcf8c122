//! The map transaction against maps that are not what the loader last wrote
//! (an undo that could not write everything back, or a hand-edited pin):
//! deleting an entry that is already gone is done, so the loader keeps
//! converging instead of refusing every diff after it.

mod common;

use aya::maps::{HashMap, Map, MapData};
use bpf_loader::kernel::Kernel;
use common::{maps_pin_dir, require_root};
use contain_common::{map_names, CgroupPolicy};
use kernel_model::{
    diff::MapDiff,
    state::{CgroupEntry, Entry},
};
use test_kit::cleanup::RemoveOnDrop;

/// A cgroup id no real cgroup has in this test's maps.
const CGROUP: u64 = 0x00c0_ffee_0000_0001;

#[test]
fn a_delete_of_an_entry_already_gone_is_done() {
    let Some(()) = require_root("a_delete_of_an_entry_already_gone_is_done") else {
        return;
    };
    let pins = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/contain-t-{}-transaction",
        std::process::id()
    )));
    let (mut kernel, _rings) = Kernel::load(&pins.0).expect("loading the eBPF object");
    let empty = kernel.state().clone();
    let mut desired = empty.clone();
    desired.upsert(Entry::Cgroup {
        id: CGROUP,
        value: CgroupEntry {
            policy_id: 1,
            audit: false,
            unrestricted: false,
            forwarded_dns: false,
        },
    });
    let install = MapDiff::between(kernel.generation(), kernel.state(), &desired);
    kernel.apply(&install).expect("installing the entry");

    // Behind the loader's back, the entry goes from the pinned map.
    let data =
        MapData::from_pin(maps_pin_dir(&pins.0).join(map_names::CGROUPS)).expect("the pinned map");
    let mut cgroups: HashMap<_, u64, CgroupPolicy> =
        HashMap::try_from(Map::HashMap(data)).expect("CGROUPS as a hash map");
    cgroups.remove(&CGROUP).expect("removing the entry by hand");

    // The loader's view still has it: the diff that removes it must apply.
    let generation = kernel.generation();
    let remove = MapDiff::between(generation, kernel.state(), &empty);
    assert_eq!(remove.ops.len(), 1, "one delete: {:?}", remove.ops);
    let applied = kernel
        .apply(&remove)
        .expect("deleting an entry that is already gone is done");
    assert_eq!(applied, generation + 1);
    assert_eq!(kernel.read_state().expect("reading the maps back"), empty);
    assert_eq!(kernel.state(), &empty);
}
