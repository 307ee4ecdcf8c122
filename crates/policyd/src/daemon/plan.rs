//! The daemon's pure core: from the loaded policy, the container inventory
//! and the loader's state, what the maps should hold and the one diff that
//! gets them there. No I/O: `reload --dry-run` is a plan not applied.
//!
//! A plan borrows the compiled rules: a container start or stop only
//! re-assigns containers to policies, it never recompiles a rule.

use std::collections::BTreeMap;

use kernel_model::{
    diff::MapDiff,
    state::{KernelState, ProcessKey, ProcessMatch},
};
use proto::loader::StateSnapshot;

use crate::{
    compile::{self, Assigned, CompileError, CompiledRules},
    diagnostic::Diagnostic,
    inventory::Inventory,
    policy::PolicySet,
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
/// entries are carried over unchanged: dropping them would turn every
/// running container "unknown".
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
            let desired = compile::assemble(
                &loaded.policies,
                &loaded.rules,
                kernel.state.cgroups.clone(),
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
}
