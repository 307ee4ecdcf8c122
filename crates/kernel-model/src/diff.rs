//! The minimal change from the kernel state there is to the one wanted,
//! and the order it reaches the kernel in.
//!
//! `apply(diff(a, b), a) == b` for all states (property-tested). Operations
//! come in the order [`apply_order`] prescribes, so a packet racing the
//! update never meets a pointer to a missing table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{Entry, EntryKey, KernelState, MapOp, Verdict};

/// A transactional change: applied only if the loader is still at
/// `from_generation`, all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDiff {
    pub from_generation: u64,
    /// New global verdict for unknown cgroups, if it changes.
    pub unknown_verdict: Option<Verdict>,
    pub ops: Vec<MapOp>,
}

impl MapDiff {
    /// The diff that turns `current` (the loader's state at
    /// `from_generation`) into `desired`.
    pub fn between(from_generation: u64, current: &KernelState, desired: &KernelState) -> Self {
        MapDiff {
            from_generation,
            unknown_verdict: diff_verdict(current, desired),
            ops: diff_ops(current, desired),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.unknown_verdict.is_none() && self.ops.is_empty()
    }
}

/// Upserts for keys that are new or changed, deletes for keys that are gone.
fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    entry: impl Fn(K, V) -> Entry,
    key: impl Fn(K) -> EntryKey,
    ops: &mut Vec<MapOp>,
) {
    let mut cur = current.iter().peekable();
    let mut want = desired.iter().peekable();
    loop {
        match (cur.peek(), want.peek()) {
            (None, None) => break,
            (Some(&(&k, _)), None) => {
                ops.push(MapOp::Delete { key: key(k) });
                cur.next();
            }
            (None, Some(&(&k, &v))) => {
                ops.push(MapOp::Upsert { entry: entry(k, v) });
                want.next();
            }
            (Some(&(&ck, &cv)), Some(&(&wk, &wv))) => match ck.cmp(&wk) {
                std::cmp::Ordering::Less => {
                    ops.push(MapOp::Delete { key: key(ck) });
                    cur.next();
                }
                std::cmp::Ordering::Greater => {
                    ops.push(MapOp::Upsert {
                        entry: entry(wk, wv),
                    });
                    want.next();
                }
                std::cmp::Ordering::Equal => {
                    if cv != wv {
                        ops.push(MapOp::Upsert {
                            entry: entry(wk, wv),
                        });
                    }
                    cur.next();
                    want.next();
                }
            },
        }
    }
}

/// The map operations turning `current` into `desired`, in apply order.
pub fn diff_ops(current: &KernelState, desired: &KernelState) -> Vec<MapOp> {
    let mut ops = Vec::new();
    diff_map(
        &current.cgroups,
        &desired.cgroups,
        |id, value| Entry::Cgroup { id, value },
        |id| EntryKey::Cgroup { id },
        &mut ops,
    );
    diff_map(
        &current.processes,
        &desired.processes,
        |key, class| Entry::Process { key, class },
        |key| EntryKey::Process { key },
        &mut ops,
    );
    diff_map(
        &current.dests,
        &desired.dests,
        |key, ruleset| Entry::Dest { key, ruleset },
        |key| EntryKey::Dest { key },
        &mut ops,
    );
    diff_map(
        &current.ports,
        &desired.ports,
        |key, rule_id| Entry::Port { key, rule_id },
        |key| EntryKey::Port { key },
        &mut ops,
    );
    diff_map(
        &current.veths,
        &desired.veths,
        |ifindex, cgroup_id| Entry::Veth { ifindex, cgroup_id },
        |ifindex| EntryKey::Veth { ifindex },
        &mut ops,
    );
    // Stable: within one class of operation, keys stay in map order.
    ops.sort_by_key(apply_order);
    ops
}

/// The global verdict change, if any.
pub fn diff_verdict(current: &KernelState, desired: &KernelState) -> Option<Verdict> {
    (current.unknown_verdict != desired.unknown_verdict).then_some(desired.unknown_verdict)
}

/// Applies ops and a verdict change to a state: what the loader does.
pub fn apply(state: &mut KernelState, unknown_verdict: Option<Verdict>, ops: &[MapOp]) {
    if let Some(v) = unknown_verdict {
        state.unknown_verdict = v;
    }
    state.apply_ops(ops);
}

/// The order in which a diff's operations reach the kernel, so that a packet
/// racing the update never sees a rule whose target is missing: first the
/// rule tables a new policy points to, then the cgroup pointers, and only
/// then the removal of what nothing points to any more. A veth points to a
/// cgroup entry: it comes after it and goes before it.
pub fn apply_order(op: &MapOp) -> u8 {
    match op {
        MapOp::Upsert {
            entry: Entry::Port { .. },
        } => 0,
        MapOp::Upsert {
            entry: Entry::Dest { .. },
        } => 1,
        MapOp::Upsert {
            entry: Entry::Process { .. },
        } => 2,
        MapOp::Upsert {
            entry: Entry::Cgroup { .. },
        } => 3,
        MapOp::Upsert {
            entry: Entry::Veth { .. },
        }
        | MapOp::Delete {
            key: EntryKey::Veth { .. },
        } => 4,
        MapOp::Delete {
            key: EntryKey::Cgroup { .. },
        } => 5,
        MapOp::Delete {
            key: EntryKey::Process { .. },
        } => 6,
        MapOp::Delete {
            key: EntryKey::Dest { .. },
        } => 7,
        MapOp::Delete {
            key: EntryKey::Port { .. },
        } => 8,
    }
}

/// How many operations touch each map, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub upserts: usize,
    pub deletes: usize,
    pub cgroups: usize,
    pub processes: usize,
    pub dests: usize,
    pub ports: usize,
    #[serde(default)]
    pub veths: usize,
}

impl OpCounts {
    pub fn of(ops: &[MapOp]) -> Self {
        let mut c = OpCounts::default();
        for op in ops {
            let key = match op {
                MapOp::Upsert { entry } => {
                    c.upserts += 1;
                    entry.key()
                }
                MapOp::Delete { key } => {
                    c.deletes += 1;
                    *key
                }
            };
            match key {
                EntryKey::Cgroup { .. } => c.cgroups += 1,
                EntryKey::Process { .. } => c.processes += 1,
                EntryKey::Dest { .. } => c.dests += 1,
                EntryKey::Port { .. } => c.ports += 1,
                EntryKey::Veth { .. } => c.veths += 1,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.upserts + self.deletes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CgroupEntry, DestPrefix, FileId, PortPrefix, ProcessKey, ProcessMatch};
    use proptest::prelude::*;

    fn arb_state() -> impl Strategy<Value = KernelState> {
        // Small key spaces so states overlap and values collide often.
        let cgroups = prop::collection::btree_map(
            0u64..20,
            (0u32..4, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(policy_id, audit, unrestricted, forwarded_dns)| CgroupEntry {
                    policy_id,
                    audit,
                    unrestricted,
                    forwarded_dns,
                },
            ),
            0..10,
        );
        let veths = prop::collection::btree_map(0u32..8, 0u64..20, 0..6);
        let processes = prop::collection::btree_map(
            (0u32..3, any::<bool>(), 0u64..4).prop_map(|(policy_id, exe, h)| ProcessKey {
                policy_id,
                process: if exe {
                    ProcessMatch::File(FileId {
                        dev: 52,
                        ino: h,
                        ctime_sec: 1,
                        ctime_nsec: 0,
                    })
                } else {
                    ProcessMatch::Comm(h)
                },
            }),
            0u32..3,
            0..6,
        );
        let dests = prop::collection::btree_map(
            (0u32..3, 0u32..2, 0u8..4, 0u8..129).prop_map(|(policy_id, class, b, prefix_len)| {
                let mut addr = [0u8; 16];
                addr[15] = b;
                DestPrefix {
                    policy_id,
                    class,
                    addr,
                    prefix_len,
                }
            }),
            0u32..5,
            0..12,
        );
        let ports = prop::collection::btree_map(
            (
                0u32..5,
                prop::sample::select(vec![0u8, 1, 6, 17]),
                0u16..4,
                0u8..17,
            )
                .prop_map(|(ruleset, proto, port, port_bits)| PortPrefix {
                    ruleset,
                    proto,
                    port,
                    port_bits,
                }),
            0u32..4,
            0..12,
        );
        let verdict = prop::sample::select(vec![Verdict::Deny, Verdict::Allow, Verdict::Audit]);
        (verdict, cgroups, processes, dests, ports, veths).prop_map(
            |(unknown_verdict, cgroups, processes, dests, ports, veths)| KernelState {
                unknown_verdict,
                cgroups,
                processes,
                dests,
                ports,
                veths,
            },
        )
    }

    proptest! {
        #[test]
        fn applying_the_diff_reaches_the_target(a in arb_state(), b in arb_state()) {
            let ops = diff_ops(&a, &b);
            let mut applied = a.clone();
            apply(&mut applied, diff_verdict(&a, &b), &ops);
            prop_assert_eq!(&applied, &b);
            // Minimal: no op is a no-op, and each key is touched once.
            let keys: std::collections::HashSet<_> = ops.iter().map(|op| match op {
                MapOp::Upsert { entry } => entry.key(),
                MapOp::Delete { key } => *key,
            }).collect();
            prop_assert_eq!(keys.len(), ops.len());
            for op in &ops {
                if let MapOp::Upsert { entry } = op {
                    prop_assert_ne!(a.get(&entry.key()), Some(*entry));
                }
            }
        }

        #[test]
        fn ops_are_in_apply_order(a in arb_state(), b in arb_state()) {
            let ops = diff_ops(&a, &b);
            prop_assert!(ops.windows(2).all(|w| apply_order(&w[0]) <= apply_order(&w[1])));
        }
    }

    #[test]
    fn apply_order_puts_targets_before_pointers() {
        let port = MapOp::Upsert {
            entry: Entry::Port {
                key: PortPrefix {
                    ruleset: 7,
                    proto: 6,
                    port: 443,
                    port_bits: 16,
                },
                rule_id: 3,
            },
        };
        let cgroup = MapOp::Upsert {
            entry: Entry::Cgroup {
                id: 42,
                value: CgroupEntry {
                    policy_id: 1,
                    audit: false,
                    unrestricted: false,
                    forwarded_dns: false,
                },
            },
        };
        let veth = MapOp::Upsert {
            entry: Entry::Veth {
                ifindex: 5,
                cgroup_id: 42,
            },
        };
        let del_cgroup = MapOp::Delete {
            key: EntryKey::Cgroup { id: 42 },
        };
        let del_port = MapOp::Delete {
            key: EntryKey::Port {
                key: PortPrefix {
                    ruleset: 7,
                    proto: 6,
                    port: 443,
                    port_bits: 16,
                },
            },
        };
        let order: Vec<u8> = [&port, &cgroup, &veth, &del_cgroup, &del_port]
            .into_iter()
            .map(apply_order)
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn identical_states_need_nothing() {
        let s = KernelState::default();
        assert!(diff_ops(&s, &s).is_empty());
        assert_eq!(diff_verdict(&s, &s), None);
    }
}
