//! A small policy change must be a small kernel change: stable ids make a
//! one-rule edit, a container start and a reload of the same file cost O(1)
//! map operations, independent of the policy's size.

use kernel_model::{
    diff::{apply, diff_ops, diff_verdict, OpCounts},
    state::KernelState,
};
use policyd::{compile::compile, ids::IdTables, inventory::Inventory, policy};
use test_kit::synthetic::{self, rule_line};

const RULES: usize = 5_000;

fn compile_text(text: &str, inventory: &Inventory, ids: &mut IdTables) -> KernelState {
    let set = policy::parse("p.toml", text).unwrap_or_else(|e| panic!("{e}"));
    compile(&set, inventory, ids).unwrap().state
}

fn ops_between(before: &str, after: &str) -> OpCounts {
    let inventory = synthetic::inventory(8);
    let mut ids = IdTables::default();
    let a = compile_text(before, &inventory, &mut ids);
    let b = compile_text(after, &inventory, &mut ids);
    let ops = diff_ops(&a, &b);
    let mut applied = a.clone();
    apply(&mut applied, diff_verdict(&a, &b), &ops);
    assert_eq!(applied, b, "the diff must reach the target");
    OpCounts::of(&ops)
}

#[test]
fn reloading_the_same_file_changes_nothing() {
    let text = synthetic::policy_text(RULES, 4);
    assert_eq!(ops_between(&text, &text).total(), 0);
}

#[test]
fn changing_one_rules_ports_is_a_few_ops() {
    let text = synthetic::policy_text(RULES, 4);
    // Rule 2500 is a /32 with tcp/443; give it tcp/8443 instead.
    let old = rule_line(2500);
    assert!(old.contains("ports = [443]"), "{old}");
    let edited = text.replacen(&old, &old.replace("[443]", "[8443]"), 1);
    let counts = ops_between(&text, &edited);
    // One DESTS entry per process class the container-wide rule is folded
    // into (class 0 and the policy's two process entries), one new PORTS
    // entry for the new ruleset (tcp/8443); the old ruleset is shared.
    assert_eq!(counts.dests, 3, "{counts:?}");
    assert!(counts.total() <= 6, "{counts:?}");
}

#[test]
fn adding_and_removing_a_rule_is_a_few_ops() {
    let text = synthetic::policy_text(RULES, 4);
    let anchor = rule_line(100);
    let added = text.replacen(
        &anchor,
        &format!("{anchor}  {{ to = \"203.0.113.7\", proto = \"udp\", ports = [123] }},\n"),
        1,
    );
    let counts = ops_between(&text, &added);
    assert!(counts.total() <= 4, "add: {counts:?}");
    let removed = text.replacen(&rule_line(1234), "", 1);
    let counts = ops_between(&text, &removed);
    assert!(counts.total() <= 3, "remove: {counts:?}");
}

#[test]
fn inserting_a_rule_at_the_top_renumbers_nothing() {
    let text = synthetic::policy_text(RULES, 4);
    let first = rule_line(0);
    let inserted = text.replacen(
        &first,
        &format!("  {{ to = \"198.51.100.0/24\", proto = \"tcp\", ports = [22] }},\n{first}"),
        1,
    );
    let counts = ops_between(&text, &inserted);
    assert!(counts.total() <= 4, "{counts:?}");
}

/// Its cgroup, its veth, and the two files its policy's exe paths name in
/// it: nothing of the policy's rules.
#[test]
fn a_container_start_is_its_cgroup_veth_and_executable_entries() {
    let text = synthetic::policy_text(RULES, 4);
    let set = policy::parse("p.toml", &text).unwrap();
    let mut ids = IdTables::default();
    let before = compile(&set, &synthetic::inventory(3), &mut ids)
        .unwrap()
        .state;
    let after = compile(&set, &synthetic::inventory(4), &mut ids)
        .unwrap()
        .state;
    let counts = OpCounts::of(&diff_ops(&before, &after));
    assert_eq!(
        (
            counts.total(),
            counts.cgroups,
            counts.veths,
            counts.processes
        ),
        (4, 1, 1, 2),
        "{counts:?}"
    );
}

#[test]
fn a_restarted_daemon_converges_with_no_ops() {
    let text = synthetic::policy_text(RULES, 4);
    let set = policy::parse("p.toml", &text).unwrap();
    let inventory = synthetic::inventory(4);
    let mut ids = IdTables::default();
    // History: an edit, so this daemon's ids are not what a fresh start
    // would pick on its own.
    let edited = text.replacen(&rule_line(10), "", 1);
    compile(
        &policy::parse("p.toml", &edited).unwrap(),
        &inventory,
        &mut ids,
    )
    .unwrap();
    let running = compile(&set, &inventory, &mut ids).unwrap().state;

    let mut fresh = IdTables::default();
    fresh.seed_from_state(&running);
    fresh.seed_policies(&running, &set, &inventory);
    let restarted = compile(&set, &inventory, &mut fresh).unwrap().state;
    assert_eq!(diff_ops(&running, &restarted).len(), 0);
}
