//! The daemon's pure core: from the loaded policy, the container inventory
//! and the loader's state, what the maps should hold and the one diff that
//! gets them there. No I/O: `reload --dry-run` is a plan not applied.
//!
//! A plan borrows the compiled rules: a container start or stop only
//! re-assigns containers to policies, it never recompiles a rule. And when
//! only containers changed since the loader's state was planned, the plan
//! looks at their entries alone ([`plan_since`]): a start on a host of
//! many containers and many rules costs what that one container does.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kernel_model::{
    diff::{apply_order, fits_on_the_way, rewrites_seen_by_moving_cgroups, MapDiff},
    state::{
        CgroupEntry, Entry, EntryKey, KernelState, MapOp, ProcessKey, ProcessMatch, VethSource,
    },
};
use proto::loader::StateSnapshot;

use crate::{
    compile::{self, Assigned, CompileError, CompiledRules},
    diagnostic::Diagnostic,
    ids::IdTables,
    inventory::{Container, Inventory},
    policy::{Mode, PolicySet},
};

/// A policy that passed validation and compiled.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub policies: PolicySet,
    pub rules: CompiledRules,
}

/// What the loader should hold and how to get there from its state.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The whole state, when the plan built it; `None` when only some
    /// containers' entries were planned: the desired state is then the
    /// loader's with `diff` applied.
    pub desired: Option<KernelState>,
    pub diff: MapDiff,
    /// What matching the policy against the containers found (overlapping
    /// selectors, shared cgroup ids, executables not resolved).
    pub warnings: Vec<Diagnostic>,
}

/// The state `loaded` calls for on the containers of `inventory`, and what
/// matching the policy against them found.
pub fn desired(
    loaded: &Loaded,
    inventory: &Inventory,
) -> Result<(KernelState, Vec<Diagnostic>), CompileError> {
    let Assigned {
        cgroups,
        veths,
        veth_sources,
        files,
        warnings,
        ..
    } = compile::assign(&loaded.policies, &loaded.rules, inventory)?;
    let desired = compile::assemble(
        &loaded.policies,
        &loaded.rules,
        cgroups,
        (veths, veth_sources),
        files,
    );
    Ok((desired, warnings))
}

/// Plans the change from `kernel` to what `loaded` calls for. With no
/// inventory yet (`None`), the loader's cgroup, veth and executable
/// entries are carried over (dropping them would turn every running
/// container "unknown"), each cgroup under the policy it had, with that
/// policy's mode and DNS allowance as the loaded file says them now.
pub fn plan(
    loaded: &Loaded,
    inventory: Option<&Inventory>,
    kernel: &StateSnapshot,
) -> Result<Plan, CompileError> {
    let (desired, warnings) = match inventory {
        Some(inventory) => desired(loaded, inventory)?,
        None => {
            let files: BTreeMap<ProcessKey, u32> = kernel
                .state
                .processes
                .iter()
                .filter(|(k, _)| matches!(k.process, ProcessMatch::File(_)))
                .map(|(k, &class)| (*k, class))
                .collect();
            let cgroups = kernel
                .state
                .cgroups
                .iter()
                .map(|(&id, &entry)| (id, carried(loaded, entry)))
                .collect();
            let desired = compile::assemble(
                &loaded.policies,
                &loaded.rules,
                cgroups,
                (
                    kernel.state.veths.clone(),
                    kernel.state.veth_sources.clone(),
                ),
                files,
            );
            (desired, Vec::new())
        }
    };
    Ok(Plan {
        diff: MapDiff::between(kernel.generation, &kernel.state, &desired),
        desired: Some(desired),
        warnings,
    })
}

/// A plan, and what it is for: the loaded policy and, if policies moved to
/// fresh ids, the id tables that hold them (the caller's own until the
/// plan is applied).
pub struct SafePlan {
    pub loaded: Arc<Loaded>,
    pub moved_ids: Option<IdTables>,
    pub plan: Plan,
}

/// [`plan_since`], and should its diff rewrite a policy's tables where a
/// container changing policy in the same diff would see it (the policy it
/// leaves gains entries while it still points there, or the one it joins
/// loses entries after it does: [`rewrites_seen_by_moving_cgroups`]), the
/// plan again with each such policy moved to an id the loader's state does
/// not use. Its tables are then written whole before any container points
/// there, and the old ones deleted after none does, so every container is
/// judged by its old policy or its new one throughout. Should both copies
/// of the tables not fit in the kernel's maps at once, the policy is
/// rewritten in place, with a warning saying what that means.
pub fn plan_moving_safely(
    loaded: &Arc<Loaded>,
    ids: &IdTables,
    inventory: Option<&Inventory>,
    kernel: &StateSnapshot,
    since: Since<'_>,
) -> Result<SafePlan, CompileError> {
    let first = plan_since(loaded, inventory, kernel, since)?;
    let named = rewrites_seen_by_moving_cgroups(&kernel.state, &first.diff.ops);
    let in_place = |mut plan: Plan, warning: Option<Diagnostic>| {
        plan.warnings.extend(warning);
        SafePlan {
            loaded: loaded.clone(),
            moved_ids: None,
            plan,
        }
    };
    if named.is_empty() {
        return Ok(in_place(first, None));
    }
    let mut in_use = kernel.state.policy_ids_in_use();
    in_use.extend(&loaded.rules.policy_ids);
    let mut moved_ids = ids.clone();
    let mut names = Vec::new();
    for (index, policy) in loaded.policies.policies.iter().enumerate() {
        if named.contains(&loaded.rules.policy_ids[index]) {
            moved_ids
                .policies
                .move_to_fresh(&policy.name, |id| in_use.contains(&id))?;
            names.push(format!("\"{}\"", policy.name));
        }
    }
    let moved = Arc::new(Loaded {
        policies: loaded.policies.clone(),
        rules: compile::compile_rules(&loaded.policies, &mut moved_ids)?,
    });
    let moved_plan = plan(&moved, inventory, kernel)?;
    if !fits_on_the_way(&kernel.state, &moved_plan.diff.ops) {
        let warning = Diagnostic::warning(
            None,
            format!(
                "policies {} change while containers move onto or off them, and their tables do not fit twice in the kernel's maps: rewritten in place, so until the change is applied such a container may be judged by a mix of its old and new policy",
                names.join(", ")
            ),
        );
        return Ok(in_place(first, Some(warning)));
    }
    Ok(SafePlan {
        loaded: moved,
        moved_ids: Some(moved_ids),
        plan: moved_plan,
    })
}

/// One container as the inventory had it before a change and has it after
/// (`None`: absent).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerChange {
    pub before: Option<Container>,
    pub after: Option<Container>,
}

/// What changed since the loader's state was planned.
#[derive(Clone, Copy, Debug)]
pub enum Since<'a> {
    /// Anything may have: the policy, the whole inventory, the loader's
    /// state behind policyd's back.
    Anything,
    /// Only these containers: the loader holds exactly what the same
    /// `Loaded` called for on the inventory before them.
    Containers(&'a [ContainerChange]),
}

/// [`plan`], told what changed since the loader's state was planned: after
/// a change of containers alone, only their entries are looked at, and the
/// whole state is not built, unless the change reaches further than their
/// own entries (see [`containers_only`]), when the whole plan decides.
pub fn plan_since(
    loaded: &Loaded,
    inventory: Option<&Inventory>,
    kernel: &StateSnapshot,
    since: Since<'_>,
) -> Result<Plan, CompileError> {
    if let (Some(inventory), Since::Containers(changes)) = (inventory, since) {
        if let Some(plan) = containers_only(loaded, inventory, kernel, changes)? {
            return Ok(plan);
        }
    }
    plan(loaded, inventory, kernel)
}

/// The diff of the changed containers' own entries, equal to the whole
/// plan's as long as nothing ties them to other containers: `None` (the
/// whole plan must decide) if a policy names executables (their entries
/// are shared by the containers that hold the same file), or a changed
/// container's cgroup id or veths are also another container's (the first
/// in the inventory, or the veth's owner, keeps them), or the `CGROUPS`
/// map would overflow.
fn containers_only(
    loaded: &Loaded,
    inventory: &Inventory,
    kernel: &StateSnapshot,
    changes: &[ContainerChange],
) -> Result<Option<Plan>, CompileError> {
    if loaded
        .policies
        .policies
        .iter()
        .any(|p| !p.processes.is_empty())
    {
        return Ok(None);
    }
    let versions = || {
        changes
            .iter()
            .flat_map(|c| c.before.iter().chain(c.after.iter()))
    };
    let cgroup_ids: BTreeSet<u64> = versions().filter_map(|c| c.cgroup_id).collect();
    let ifindexes: BTreeSet<u32> = versions()
        .flat_map(|c| c.host_veths.iter().copied())
        .collect();
    let changed: BTreeSet<(&str, &str)> = versions()
        .map(|c| (c.namespace.as_str(), c.id.as_str()))
        .collect();
    // What ties a change to other containers; integers are compared
    // first, a container's name only when they match.
    let tied = inventory.containers.iter().any(|c| {
        (c.cgroup_id.is_some_and(|id| cgroup_ids.contains(&id))
            || c.host_veths.iter().any(|v| ifindexes.contains(v)))
            && !changed.contains(&(c.namespace.as_str(), c.id.as_str()))
    });
    // Two changed containers sharing a cgroup id or a veth, before or
    // after: the whole plan orders them.
    let shared = |version: fn(&ContainerChange) -> Option<&Container>| {
        let all: Vec<&Container> = changes.iter().filter_map(version).collect();
        all.iter()
            .enumerate()
            .any(|(i, a)| all[i + 1..].iter().any(|b| overlap(a, b)))
    };
    if tied || shared(|c| c.before.as_ref()) || shared(|c| c.after.as_ref()) {
        return Ok(None);
    }
    let after = Inventory {
        containers: changes.iter().filter_map(|c| c.after.clone()).collect(),
    };
    let Assigned {
        cgroups,
        veths,
        veth_sources,
        warnings,
        ..
    } = compile::assign(&loaded.policies, &loaded.rules, &after)?;
    let mut ops = Vec::new();
    for &id in &cgroup_ids {
        let key = EntryKey::Cgroup { id };
        let entry = cgroups.get(&id).map(|&value| Entry::Cgroup { id, value });
        push_op(&kernel.state, key, entry, &mut ops);
    }
    for &ifindex in &ifindexes {
        let key = EntryKey::Veth { ifindex };
        let entry = veths
            .get(&ifindex)
            .map(|&cgroup_id| Entry::Veth { ifindex, cgroup_id });
        push_op(&kernel.state, key, entry, &mut ops);
        // Sources are ordered by ifindex first: this veth's are one range.
        let on_veth = VethSource {
            ifindex,
            addr: [0; 16],
        }..=VethSource {
            ifindex,
            addr: [0xff; 16],
        };
        let keys: BTreeSet<VethSource> = kernel
            .state
            .veth_sources
            .range(on_veth.clone())
            .chain(veth_sources.range(on_veth))
            .copied()
            .collect();
        for key in keys {
            let entry = veth_sources
                .contains(&key)
                .then_some(Entry::VethSource { key });
            push_op(&kernel.state, EntryKey::VethSource { key }, entry, &mut ops);
        }
    }
    let added = ops
        .iter()
        .filter(|op| {
            matches!(op, MapOp::Upsert { entry: Entry::Cgroup { id, .. } } if !kernel.state.cgroups.contains_key(id))
        })
        .count();
    if kernel.state.cgroups.len() + added > contain_common::capacity::CGROUPS as usize {
        return Ok(None);
    }
    // The whole diff's order: by kind of operation, keys in map order.
    ops.sort_by_key(apply_order);
    Ok(Some(Plan {
        desired: None,
        diff: MapDiff {
            from_generation: kernel.generation,
            unknown_verdict: None,
            ops,
        },
        warnings,
    }))
}

/// Whether two containers share a cgroup id or a veth.
fn overlap(a: &Container, b: &Container) -> bool {
    (a.cgroup_id.is_some() && a.cgroup_id == b.cgroup_id)
        || a.host_veths.iter().any(|v| b.host_veths.contains(v))
}

/// The operation that makes `key` hold `desired` in `state`, if any.
fn push_op(state: &KernelState, key: EntryKey, desired: Option<Entry>, ops: &mut Vec<MapOp>) {
    match (state.get(&key), desired) {
        (Some(held), Some(entry)) if held == entry => {}
        (_, Some(entry)) => ops.push(MapOp::Upsert { entry }),
        (Some(_), None) => ops.push(MapOp::Delete { key }),
        (None, None) => {}
    }
}

/// A cgroup entry kept without an inventory: a switch from audit to enforce,
/// or `allow_docker_dns` turned off, applies to it at once. A policy the
/// file no longer has enforces (its rules are gone: everything is denied).
fn carried(loaded: &Loaded, entry: CgroupEntry) -> CgroupEntry {
    if entry.unrestricted {
        return entry;
    }
    let policy = loaded
        .rules
        .catalog
        .policies
        .get(&entry.policy_id)
        .map(|info| &loaded.policies.policies[info.index]);
    CgroupEntry {
        audit: policy.is_some_and(|p| p.mode == Mode::Audit),
        forwarded_dns: policy.is_some_and(|p| p.allow_docker_dns),
        ..entry
    }
}

#[cfg(test)]
mod tests {
    use kernel_model::{
        diff::OpCounts,
        state::{EntryKey, MapOp},
    };

    use super::*;
    use crate::{ids::IdTables, inventory::Container, policy};

    /// A policy of `rules` container-wide rules for every `app:*` container.
    fn loaded(rules: usize) -> Loaded {
        let mut text = String::from(
            "mode = \"enforce\"\n[[policy]]\nname = \"apps\"\nselect = { image = \"app:*\" }\nallow = [\n",
        );
        for i in 0..rules {
            text.push_str(&format!(
                "  {{ to = \"10.{}.{}.0/24\", proto = \"tcp\", ports = [{}] }},\n",
                i / 256 % 256,
                i % 256,
                1000 + i % 7
            ));
        }
        text.push_str("]\n");
        let policies = policy::parse("p.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let rules = compile::compile_rules(&policies, &mut IdTables::default()).unwrap();
        Loaded { policies, rules }
    }

    fn inventory(containers: u64) -> Inventory {
        Inventory {
            containers: (0..containers)
                .map(|i| Container {
                    id: format!("id-{i}"),
                    name: format!("app-{i}"),
                    image: "app:1".into(),
                    cgroup_id: Some(1000 + i),
                    cgroup_path: Some(format!("/contain.slice/app-{i}.scope")),
                    ..Container::default()
                })
                .collect(),
        }
    }

    /// The loader's state after `plan` was applied at generation 1.
    fn applied(plan: &Plan) -> StateSnapshot {
        StateSnapshot {
            generation: 1,
            state: plan.desired.clone().expect("a whole plan"),
        }
    }

    fn empty() -> StateSnapshot {
        StateSnapshot {
            generation: 0,
            state: KernelState::default(),
        }
    }

    fn start_one_more(rules: usize, running: u64) -> MapDiff {
        let loaded = loaded(rules);
        let before = plan(&loaded, Some(&inventory(running)), &empty()).unwrap();
        plan(&loaded, Some(&inventory(running + 1)), &applied(&before))
            .unwrap()
            .diff
    }

    #[test]
    fn a_container_start_touches_its_own_entry_whatever_the_rule_count() {
        for rules in [10, 1_000] {
            let diff = start_one_more(rules, 200);
            let new_cgroup = 1000 + 200;
            assert_eq!(
                OpCounts::of(&diff.ops).total(),
                1,
                "{rules} rules: {diff:?}"
            );
            assert!(
                matches!(&diff.ops[0], MapOp::Upsert { entry } if entry.key() == EntryKey::Cgroup { id: new_cgroup }),
                "{diff:?}"
            );
        }
    }

    #[test]
    fn a_container_stop_deletes_its_own_entry_only() {
        let loaded = loaded(500);
        let before = plan(&loaded, Some(&inventory(50)), &empty()).unwrap();
        let diff = plan(&loaded, Some(&inventory(49)), &applied(&before))
            .unwrap()
            .diff;
        assert_eq!(
            diff.ops,
            vec![MapOp::Delete {
                key: EntryKey::Cgroup { id: 1049 }
            }]
        );
    }

    #[test]
    fn planning_what_the_loader_holds_is_an_empty_diff() {
        let loaded = loaded(100);
        let first = plan(&loaded, Some(&inventory(5)), &empty()).unwrap();
        assert!(!first.diff.is_empty());
        let again = plan(&loaded, Some(&inventory(5)), &applied(&first)).unwrap();
        assert!(again.diff.is_empty(), "{:?}", again.diff);
        assert_eq!(again.diff.from_generation, 1);
    }

    #[test]
    fn without_an_inventory_the_loaders_container_entries_are_kept() {
        let loaded = loaded(20);
        let running = plan(&loaded, Some(&inventory(3)), &empty()).unwrap();
        let held = plan(&loaded, None, &applied(&running)).unwrap();
        assert!(held.diff.is_empty(), "{:?}", held.diff);
        assert_eq!(held.desired.expect("a whole plan").cgroups.len(), 3);
    }

    /// A switch from audit to enforce reaches the containers whose entries
    /// are carried over while no inventory has arrived.
    #[test]
    fn without_an_inventory_a_carried_entry_takes_its_policys_new_mode() {
        let enforcing = loaded(20);
        let mut auditing = enforcing.clone();
        auditing.policies.policies[0].mode = Mode::Audit;
        let running = plan(&auditing, Some(&inventory(3)), &empty()).unwrap();
        assert!(applied(&running).state.cgroups.values().all(|e| e.audit));
        let held = plan(&enforcing, None, &applied(&running)).unwrap();
        assert!(
            applied(&held)
                .state
                .cgroups
                .values()
                .all(|e| !e.audit && !e.unrestricted),
            "{:?}",
            held.desired
        );
        assert_eq!(OpCounts::of(&held.diff.ops).total(), 3, "{:?}", held.diff);
    }

    /// `inventory(running)` planned and applied, then the change to
    /// `after`: the plan told only containers changed, and the whole one.
    fn both_plans(
        loaded: &Loaded,
        running: u64,
        after: &Inventory,
        changes: &[ContainerChange],
    ) -> (Plan, Plan) {
        let before = applied(&plan(loaded, Some(&inventory(running)), &empty()).unwrap());
        let told = plan_since(loaded, Some(after), &before, Since::Containers(changes)).unwrap();
        let whole = plan(loaded, Some(after), &before).unwrap();
        (told, whole)
    }

    #[test]
    fn a_start_on_a_host_of_many_containers_is_one_op_without_building_the_state() {
        let loaded = loaded(1_000);
        let after = inventory(501);
        let started = ContainerChange {
            before: None,
            after: Some(after.containers[500].clone()),
        };
        let (told, whole) = both_plans(&loaded, 500, &after, &[started]);
        assert!(
            told.desired.is_none(),
            "the whole state (1 000 rules, 501 containers) was built"
        );
        assert_eq!(OpCounts::of(&told.diff.ops).total(), 1, "{:?}", told.diff);
        assert_eq!(told.diff, whole.diff);
    }

    #[test]
    fn a_stop_a_relabel_and_new_veths_plan_as_the_whole_plan_does() {
        let loaded = loaded(50);
        let running = inventory(20);
        // Container 3 stops; container 5 leaves the policy (another
        // image) and gets a veth; container 7 gets a veth.
        let mut after = running.clone();
        let mut relabelled = after.containers[5].clone();
        relabelled.image = "other:1".into();
        relabelled.host_veths = vec![40];
        let mut veth = after.containers[7].clone();
        veth.host_veths = vec![41, 42];
        after.containers[5] = relabelled.clone();
        after.containers[7] = veth.clone();
        let stopped = after.containers.remove(3);
        let changes = [
            ContainerChange {
                before: Some(stopped),
                after: None,
            },
            ContainerChange {
                before: Some(running.containers[5].clone()),
                after: Some(relabelled),
            },
            ContainerChange {
                before: Some(running.containers[7].clone()),
                after: Some(veth),
            },
        ];
        let (told, whole) = both_plans(&loaded, 20, &after, &changes);
        assert!(told.desired.is_none());
        assert_eq!(told.diff, whole.diff);
        assert_eq!(OpCounts::of(&told.diff.ops).total(), 5, "{:?}", told.diff);
    }

    #[test]
    fn a_veths_changed_address_is_added_before_the_old_one_goes() {
        let loaded = loaded(10);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let with_addresses = |addresses: &[&str]| {
            let mut inv = inventory(3);
            inv.containers[1].host_veths = vec![41];
            inv.containers[1].addresses = addresses.iter().map(|a| ip(a)).collect();
            inv
        };
        let running = with_addresses(&["172.17.0.2", "fd00::2"]);
        let after = with_addresses(&["172.17.0.9", "fd00::2"]);
        let before = applied(&plan(&loaded, Some(&running), &empty()).unwrap());
        let changes = [ContainerChange {
            before: Some(running.containers[1].clone()),
            after: Some(after.containers[1].clone()),
        }];
        let told = plan_since(&loaded, Some(&after), &before, Since::Containers(&changes)).unwrap();
        let whole = plan(&loaded, Some(&after), &before).unwrap();
        assert!(told.desired.is_none());
        assert_eq!(told.diff, whole.diff);
        let source = |a: &str| VethSource::new(41, ip(a));
        assert_eq!(
            told.diff.ops,
            [
                MapOp::Upsert {
                    entry: Entry::VethSource {
                        key: source("172.17.0.9")
                    }
                },
                MapOp::Delete {
                    key: EntryKey::VethSource {
                        key: source("172.17.0.2")
                    }
                },
            ]
        );
    }

    #[test]
    fn a_container_taking_anothers_cgroup_id_is_left_to_the_whole_plan() {
        let loaded = loaded(10);
        let mut after = inventory(5);
        let mut clash = after.containers[4].clone();
        clash.id = "id-late".into();
        clash.cgroup_id = Some(1002);
        after.containers.push(clash.clone());
        let changes = [ContainerChange {
            before: None,
            after: Some(clash),
        }];
        let (told, whole) = both_plans(&loaded, 5, &after, &changes);
        assert!(told.desired.is_some(), "the whole plan decides");
        assert_eq!(told.diff, whole.diff);
    }
}
