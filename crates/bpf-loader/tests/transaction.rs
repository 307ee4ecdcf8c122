//! The map transaction: a diff the kernel refuses midway is undone, and
//! against maps that are not what the loader last wrote (an undo that could
//! not write everything back, or a hand-edited pin) deleting an entry that
//! is already gone is done, so the loader keeps converging instead of
//! refusing every diff after it.

mod common;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use bpf_loader::kernel::Kernel;
use common::{maps_pin_dir, require_root, Allow, Rules};
use contain_common::{capacity, map_names, CgroupPolicy, Config, PolicyCounters};
use kernel_model::{
    diff::MapDiff,
    state::{CgroupEntry, Entry, Verdict},
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

/// A diff the kernel refuses midway (one cgroup more than `CGROUPS` holds:
/// its last insert fails with E2BIG after the ports, destinations and the
/// other cgroups are written; its deletes, which come after every upsert,
/// are never reached) leaves the maps exactly as they were: the writes done
/// (new entries, and a changed one) are undone, the generation stays, and
/// a diff planned from that generation applies next.
#[test]
fn a_diff_the_kernel_refuses_midway_leaves_the_maps_as_they_were() {
    let Some(()) = require_root("a_diff_the_kernel_refuses_midway_leaves_the_maps_as_they_were")
    else {
        return;
    };
    let pins = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/contain-t-{}-undo",
        std::process::id()
    )));
    let (mut kernel, _rings) = Kernel::load(&pins.0).expect("loading the eBPF object");
    let allow = |policy, addr, proto, port| Allow {
        policy,
        class: 0,
        addr,
        proto,
        port: Some(port),
        icmp_type: false,
    };
    let mut before = Rules::default();
    before
        .cgroup(CGROUP, 1, false)
        .allow(allow(1, "198.18.0.1", 6, 443))
        .allow(allow(1, "198.18.0.2", 17, 53));
    before.state.unknown_verdict = Verdict::Allow;
    kernel
        .apply(&MapDiff::between(
            kernel.generation(),
            kernel.state(),
            &before.state,
        ))
        .expect("installing the first state");
    let generation = kernel.generation();

    // A changed cgroup, new destinations and ports, removed ones, and one
    // cgroup too many.
    let mut after = Rules::default();
    after
        .cgroup(CGROUP, 2, false)
        .allow(allow(2, "198.18.0.1", 6, 443))
        .allow(allow(2, "198.18.0.3", 6, 80));
    let fits = after.state.clone();
    for i in 1..=u64::from(capacity::CGROUPS) {
        after.cgroup(CGROUP + i, 2, false);
    }
    // A stricter verdict for unknown cgroups, which goes in before the
    // maps: taken back with them.
    after.state.unknown_verdict = Verdict::Deny;
    let too_big = MapDiff::between(generation, kernel.state(), &after.state);
    assert_eq!(too_big.unknown_verdict, Some(Verdict::Deny));
    let refused = kernel
        .apply(&too_big)
        .expect_err("one cgroup more than the map holds");
    assert_eq!(
        pinned_config(&pins.0).unknown_verdict,
        kernel_model::repr::verdict(Verdict::Allow) as u8,
        "the verdict for unknown cgroups stayed the refused diff's"
    );
    assert!(
        refused.to_string().contains(map_names::CGROUPS),
        "the error does not name the map that refused: {refused}"
    );
    assert_eq!(kernel.generation(), generation, "the generation moved");
    assert_eq!(kernel.state(), &before.state, "the loader's view changed");
    assert_eq!(
        kernel.read_state().expect("reading the maps back"),
        before.state,
        "the maps are not as they were before the refused diff"
    );

    let applied = kernel
        .apply(&MapDiff::between(generation, kernel.state(), &fits))
        .expect("a diff planned from the same generation");
    assert_eq!(applied, generation + 1);
    assert_eq!(kernel.read_state().expect("reading the maps back"), fits);
}

/// A loader killed between its last map write and its closing epoch bump
/// leaves the maps ahead of the epochs; the loader that adopts them moves
/// both, so no verdict cached before it is taken again.
#[test]
fn a_loader_that_adopts_the_pinned_maps_moves_the_epochs() {
    let Some(()) = require_root("a_loader_that_adopts_the_pinned_maps_moves_the_epochs") else {
        return;
    };
    let pins = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/contain-t-{}-adopt-epochs",
        std::process::id()
    )));
    drop(Kernel::load(&pins.0).expect("loading the eBPF object"));
    let before = pinned_config(&pins.0);
    drop(Kernel::load(&pins.0).expect("adopting the pinned maps"));
    let after = pinned_config(&pins.0);
    assert!(
        after.rules_epoch > before.rules_epoch && after.cgroup_epoch > before.cgroup_epoch,
        "epochs before {:?}, after {:?}: a verdict cached under the predecessor's rules would be taken",
        (before.rules_epoch, before.cgroup_epoch),
        (after.rules_epoch, after.cgroup_epoch),
    );
    assert_eq!(
        after.generation, before.generation,
        "the generation is policyd's, not moved"
    );
}

/// A policy id the maps do not use yet starts its counters at zero (its
/// slot holds what a policy that had the id before counted); one in use
/// keeps counting.
#[test]
fn a_policy_id_new_to_the_maps_starts_its_counters_at_zero() {
    let Some(()) = require_root("a_policy_id_new_to_the_maps_starts_its_counters_at_zero") else {
        return;
    };
    let pins = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/contain-t-{}-counters",
        std::process::id()
    )));
    let (mut kernel, _rings) = Kernel::load(&pins.0).expect("loading the eBPF object");
    const POLICY: u32 = 5;
    let stale = |denied| {
        let data = MapData::from_pin(maps_pin_dir(&pins.0).join(map_names::COUNTERS))
            .expect("the pinned counters");
        let mut counters: PerCpuArray<_, PolicyCounters> =
            PerCpuArray::try_from(Map::PerCpuArray(data)).expect("the counters");
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let values = vec![
            PolicyCounters {
                allowed: 0,
                denied,
                audited: 0,
            };
            cpus
        ];
        counters
            .set(POLICY, PerCpuValues::try_from(values).unwrap(), 0)
            .expect("writing the counters");
    };
    let denied = |kernel: &Kernel| {
        kernel
            .counters()
            .expect("the counters")
            .policies
            .iter()
            .find(|p| p.policy_id == POLICY)
            .map_or(0, |p| p.denied)
    };
    stale(7);
    assert!(denied(&kernel) > 0);
    let mut rules = Rules::default();
    rules.cgroup(CGROUP, POLICY, false);
    kernel
        .apply(&MapDiff::between(
            kernel.generation(),
            kernel.state(),
            &rules.state,
        ))
        .expect("a cgroup under the new policy id");
    assert_eq!(denied(&kernel), 0, "the id's old counts stayed");
    // In use now: a diff that changes its rules leaves its counts alone.
    stale(3);
    rules.cgroup(CGROUP + 1, POLICY, false);
    kernel
        .apply(&MapDiff::between(
            kernel.generation(),
            kernel.state(),
            &rules.state,
        ))
        .expect("another cgroup under the same policy id");
    assert!(
        denied(&kernel) > 0,
        "the counts of a policy id in use were reset"
    );
}

/// The pinned config map under `pin_dir`.
fn pinned_config(pin_dir: &std::path::Path) -> Config {
    let data = MapData::from_pin(maps_pin_dir(pin_dir).join(map_names::CONFIG))
        .expect("the pinned config");
    let config: Array<_, Config> =
        Array::try_from(Map::Array(data)).expect("the config as an array");
    config.get(&0, 0).expect("reading the config")
}
