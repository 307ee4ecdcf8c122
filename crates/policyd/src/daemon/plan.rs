//! The daemon's pure core: from the loaded policy, the container inventory
//! and the loader's state, what the maps should hold and the one diff that
//! gets them there. No I/O: `reload --dry-run` is a plan not applied.
//!
//! A plan borrows the compiled rules: a container start or stop only
//! re-assigns containers to policies, it never recompiles a rule.

use std::collections::BTreeMap;

use kernel_model::{
    diff::MapDiff,
    state::{CgroupEntry, KernelState, ProcessKey, ProcessMatch},
};
use proto::loader::StateSnapshot;

use crate::{
    compile::{self, Assigned, CompileError, CompiledRules},
    diagnostic::Diagnostic,
    inventory::Inventory,
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
    pub desired: KernelState,
    pub diff: MapDiff,
    /// What matching the policy against the containers found (overlapping
    /// selectors, shared cgroup ids, executables not resolved).
    pub warnings: Vec<Diagnostic>,
}

/// The state `loaded` calls for on the containers of `inventory`.
pub fn desired(loaded: &Loaded, inventory: &Inventory) -> Result<Plan, CompileError> {
    let Assigned {
        cgroups,
        veths,
        files,
        warnings,
        ..
    } = compile::assign(&loaded.policies, &loaded.rules, inventory)?;
    let desired = compile::assemble(&loaded.policies, &loaded.rules, cgroups, veths, files);
    Ok(Plan {
        desired,
        diff: MapDiff::default(),
        warnings,
    })
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
    let mut plan = match inventory {
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
                kernel.state.veths.clone(),
                files,
            );
            Plan {
                desired,
                diff: MapDiff::default(),
                warnings: Vec::new(),
            }
        }
    };
    plan.diff = MapDiff::between(kernel.generation, &kernel.state, &plan.desired);
    Ok(plan)
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
            state: plan.desired.clone(),
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
        assert_eq!(held.desired.cgroups.len(), 3);
    }

    /// A switch from audit to enforce reaches the containers whose entries
    /// are carried over while no inventory has arrived.
    #[test]
    fn without_an_inventory_a_carried_entry_takes_its_policys_new_mode() {
        let enforcing = loaded(20);
        let mut auditing = enforcing.clone();
        auditing.policies.policies[0].mode = Mode::Audit;
        let running = plan(&auditing, Some(&inventory(3)), &empty()).unwrap();
        assert!(running.desired.cgroups.values().all(|e| e.audit));
        let held = plan(&enforcing, None, &applied(&running)).unwrap();
        assert!(
            held.desired
                .cgroups
                .values()
                .all(|e| !e.audit && !e.unrestricted),
            "{:?}",
            held.desired.cgroups
        );
        assert_eq!(OpCounts::of(&held.diff.ops).total(), 3, "{:?}", held.diff);
    }
}
