//! The map transaction: a diff applied all or nothing, in the order the
//! model gives, with the generation check and the rules epoch.

use aya::{
    maps::{lpm_trie::Key, HashMap, MapData, MapError, PerCpuValues},
    sys::SyscallError,
};
use contain_common::{self as kern, map_names, DestValue, PortValue, VethOwner};
use std::collections::BTreeSet;

use kernel_model::{
    diff::{apply_order, undo_ops, verdict_goes_first, MapDiff},
    repr::{self, EncodeError, LpmKey},
    state::{Entry, EntryKey, KernelState, MapOp},
    validate::validate,
};

use super::{map_err, Kernel, KernelError, PolicyMaps};

impl Kernel {
    /// Applies a diff all or nothing: every operation is encoded before any
    /// is written, and on a failed write the ones already written are undone
    /// from the mirror's previous values.
    pub fn apply(&mut self, diff: &MapDiff) -> Result<u64, KernelError> {
        let current = self.generation();
        if diff.from_generation != current {
            return Err(KernelError::GenerationMismatch {
                expected: diff.from_generation,
                actual: current,
            });
        }
        let started = std::time::Instant::now();
        let mut ops = diff.ops.clone();
        ops.sort_by_key(apply_order);
        validate(&self.mirror, &ops)?;
        let writes = ops
            .iter()
            .map(|op| MapWrite::encode(op, self.exe_key))
            .collect::<Result<Vec<_>, _>>()?;
        let encoded = started.elapsed();
        let rules_changed = changes_rules(&self.mirror, diff);
        let cgroups_checked_again = rules_changed || removes_cgroups(diff);
        // A policy id the maps do not use yet starts its counters at zero:
        // what its slot holds is a policy's that had the id before.
        for policy_id in policies_new_to(&self.mirror, &ops) {
            self.clear_counters(policy_id)?;
        }
        let old_verdict = self.mirror.unknown_verdict;
        // A stricter verdict for unknown cgroups goes in before the maps
        // change, a looser one after (`verdict_goes_first`).
        let verdict_first = diff
            .unknown_verdict
            .filter(|&v| verdict_goes_first(old_verdict, v));
        if cgroups_checked_again || verdict_first.is_some() {
            // Before the first write: from it on, the established path
            // would take a cached allow the full path no longer gives.
            self.update_config(|config| {
                if cgroups_checked_again {
                    config.cgroup_epoch = config.cgroup_epoch.wrapping_add(1);
                }
                if let Some(v) = verdict_first {
                    config.unknown_verdict = repr::verdict(v) as u8;
                }
            })?;
        }
        for (done, write) in writes.iter().enumerate() {
            if let Err(e) = write.write(&mut self.maps) {
                // The mirror still holds the state before this diff.
                self.undo(&undo_ops(&self.mirror, &ops[..done]));
                // Verdicts cached while the diff was half written were
                // decided on maps that never were the policy; and the
                // verdict for unknown cgroups is the old one again.
                let restored = self.update_config(|config| {
                    config.rules_epoch = config.rules_epoch.wrapping_add(1);
                    config.cgroup_epoch = config.cgroup_epoch.wrapping_add(1);
                    config.unknown_verdict = repr::verdict(old_verdict) as u8;
                });
                if let Err(bump) = restored {
                    tracing::error!(error = %bump, "cannot move the epochs after a failed diff; verdicts cached during it stay until the next change");
                }
                return Err(e);
            }
        }
        let written = started.elapsed();
        self.mirror.apply_ops(&ops);
        tracing::debug!(
            ops = ops.len(),
            validate_encode = ?encoded,
            write = ?(written - encoded),
            mirror = ?(started.elapsed() - written),
            "diff written"
        );
        if let Some(v) = diff.unknown_verdict {
            self.mirror.unknown_verdict = v;
        }
        let process_classes = repr::process_classes(&self.mirror);
        let config = self.update_config(|config| {
            config.process_classes = process_classes;
            if let Some(v) = diff.unknown_verdict {
                config.unknown_verdict = repr::verdict(v) as u8;
            }
            config.generation = config.generation.wrapping_add(1);
            if rules_changed {
                config.rules_epoch = config.rules_epoch.wrapping_add(1);
            }
            // Again after the last write: allows stamped against the maps
            // half written are not taken either.
            if cgroups_checked_again {
                config.cgroup_epoch = config.cgroup_epoch.wrapping_add(1);
            }
        })?;
        Ok(config.generation)
    }

    /// Zeroes one policy id's `COUNTERS` slot on every CPU.
    fn clear_counters(&mut self, policy_id: u32) -> Result<(), KernelError> {
        let possible = |source| KernelError::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source,
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| possible(e))?;
        let zeros = PerCpuValues::try_from(vec![kern::PolicyCounters::default(); cpus])
            .map_err(possible)?;
        self.maps
            .counters
            .set(policy_id, zeros, 0)
            .map_err(map_err(map_names::COUNTERS))
    }

    /// Reads `CONFIG`, changes it and writes it back; what was written. A
    /// config that cannot be read is an error, never a default: that would
    /// put the epochs back where verdicts cached long ago match again.
    pub(super) fn update_config(
        &mut self,
        change: impl FnOnce(&mut kern::Config),
    ) -> Result<kern::Config, KernelError> {
        let mut config = self
            .maps
            .config
            .get(&0, 0)
            .map_err(map_err(map_names::CONFIG))?;
        change(&mut config);
        self.maps
            .config
            .set(0, config, 0)
            .map_err(map_err(map_names::CONFIG))?;
        Ok(config)
    }

    /// Writes `undo` ([`undo_ops`] of the writes so far) in its order. A
    /// write back can fail too (a full map, or no memory for an element: the
    /// hash maps allocate as entries are added); then the maps are not what
    /// the mirror says, and every later diff planned from the mirror could
    /// be refused. So the mirror is read again from the maps, and the
    /// generation moves: a diff planned before is refused, and policyd plans
    /// the next one from what the maps hold.
    fn undo(&mut self, undo: &[MapOp]) {
        let mut failed = false;
        for back in undo {
            let result = MapWrite::encode(back, self.exe_key)
                .map_err(KernelError::from)
                .and_then(|write| write.write(&mut self.maps));
            if let Err(e) = result {
                failed = true;
                tracing::error!(error = %e, "undoing a failed diff failed; reading the maps again");
            }
        }
        if failed {
            self.read_mirror_again();
        }
    }

    /// The mirror from the maps themselves, and a new generation.
    fn read_mirror_again(&mut self) {
        match self.read_state() {
            Ok(state) => self.mirror = state,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the maps again; the loader's view of them may stay wrong until it restarts");
                return;
            }
        }
        let process_classes = repr::process_classes(&self.mirror);
        if let Err(e) = self.update_config(|c| {
            c.generation = c.generation.wrapping_add(1);
            c.process_classes = process_classes;
        }) {
            tracing::error!(error = %e, "cannot move the generation after reading the maps again");
        }
    }
}

/// One operation in the kernel's layout: the map it goes to, the encoded
/// key, and the encoded value (`None` deletes).
enum MapWrite {
    Cgroup(u64, Option<kern::CgroupPolicy>),
    Process(kern::ProcessKey, Option<kern::ProcessClass>),
    Host(kern::DestKey, Option<DestValue>),
    Dest(Key<kern::DestKey>, Option<DestValue>),
    ExactPort(kern::PortKey, Option<PortValue>),
    Port(Key<kern::PortKey>, Option<PortValue>),
    Veth(u32, Option<VethOwner>),
    VethSource(kern::VethAddrKey, Option<u8>),
}

impl MapWrite {
    fn encode(op: &MapOp, exe_key: [u64; 2]) -> Result<MapWrite, EncodeError> {
        Ok(match *op {
            MapOp::Upsert { entry } => match entry {
                Entry::Cgroup { id, value } => {
                    MapWrite::Cgroup(id, Some(repr::cgroup_value(&value)?))
                }
                Entry::Process { key, class } => MapWrite::Process(
                    repr::process_key(&key, exe_key)?,
                    Some(repr::process_value(&key, class)),
                ),
                Entry::Dest { key, ruleset } => {
                    MapWrite::dest(&key, Some(DestValue { ruleset, _pad: 0 }))?
                }
                Entry::Port { key, rule_id } => {
                    MapWrite::port(&key, Some(PortValue { rule_id, _pad: 0 }))?
                }
                Entry::Veth { ifindex, cgroup_id } => {
                    MapWrite::Veth(ifindex, Some(VethOwner { cgroup_id }))
                }
                Entry::VethSource { key } => {
                    MapWrite::VethSource(repr::veth_source_key(&key)?, Some(1))
                }
            },
            MapOp::Delete { key } => match key {
                EntryKey::Cgroup { id } => MapWrite::Cgroup(id, None),
                EntryKey::Process { key } => {
                    MapWrite::Process(repr::process_key(&key, exe_key)?, None)
                }
                EntryKey::Dest { key } => MapWrite::dest(&key, None)?,
                EntryKey::Port { key } => MapWrite::port(&key, None)?,
                EntryKey::Veth { ifindex } => MapWrite::Veth(ifindex, None),
                EntryKey::VethSource { key } => {
                    MapWrite::VethSource(repr::veth_source_key(&key)?, None)
                }
            },
        })
    }

    /// Full-length destinations go to the hash map, shorter prefixes to the
    /// trie.
    fn dest(
        key: &kernel_model::state::DestPrefix,
        value: Option<DestValue>,
    ) -> Result<MapWrite, EncodeError> {
        let encoded = repr::dest_key(key)?;
        Ok(if repr::dest_is_host(key) {
            MapWrite::Host(encoded.data, value)
        } else {
            MapWrite::Dest(lpm(encoded), value)
        })
    }

    /// Single ports go to the hash map, port blocks to the trie.
    fn port(
        key: &kernel_model::state::PortPrefix,
        value: Option<PortValue>,
    ) -> Result<MapWrite, EncodeError> {
        let encoded = repr::port_key(key)?;
        Ok(if repr::port_is_exact(key) {
            MapWrite::ExactPort(encoded.data, value)
        } else {
            MapWrite::Port(lpm(encoded), value)
        })
    }

    fn write(&self, m: &mut PolicyMaps) -> Result<(), KernelError> {
        match self {
            MapWrite::Cgroup(k, v) => set(&mut m.cgroups, k, v, map_names::CGROUPS),
            MapWrite::Process(k, v) => set(&mut m.processes, k, v, map_names::PROCESSES),
            MapWrite::Host(k, v) => set(&mut m.hosts, k, v, map_names::HOSTS),
            MapWrite::ExactPort(k, v) => set(&mut m.exact_ports, k, v, map_names::EXACT_PORTS),
            MapWrite::Veth(k, v) => set(&mut m.veths, k, v, map_names::VETHS),
            MapWrite::VethSource(k, v) => set(&mut m.veth_sources, k, v, map_names::VETH_SOURCES),
            MapWrite::Dest(k, v) => match v {
                Some(v) => m.dests.insert(k, v, 0),
                None => absent_is_removed(m.dests.remove(k)),
            }
            .map_err(map_err(map_names::DESTS)),
            MapWrite::Port(k, v) => match v {
                Some(v) => m.ports.insert(k, v, 0),
                None => absent_is_removed(m.ports.remove(k)),
            }
            .map_err(map_err(map_names::PORTS)),
        }
    }
}

/// Inserts `value` at `key`, or removes `key` when there is no value.
fn set<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    value: &Option<V>,
    name: &'static str,
) -> Result<(), KernelError> {
    match value {
        Some(v) => map.insert(key, v, 0),
        None => absent_is_removed(map.remove(key)),
    }
    .map_err(map_err(name))
}

/// The policy ids `ops` point a cgroup at or write entries under that
/// nothing in `current` uses.
fn policies_new_to(current: &KernelState, ops: &[MapOp]) -> BTreeSet<u32> {
    let used = current.policy_ids_in_use();
    ops.iter()
        .filter_map(|op| match op {
            MapOp::Upsert {
                entry: Entry::Cgroup { value, .. },
            } => Some(value.policy_id),
            MapOp::Upsert {
                entry: Entry::Dest { key, .. },
            } => Some(key.policy_id),
            MapOp::Upsert {
                entry: Entry::Process { key, .. },
            } => Some(key.policy_id),
            _ => None,
        })
        .filter(|id| *id != kern::UNKNOWN_POLICY_ID && !used.contains(id))
        .collect()
}

/// A delete whose key is already absent has done what the diff asks: the
/// entry is not there.
fn absent_is_removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Whether `diff` changes what an entry already in the maps decides, so
/// the kernel's cached verdicts must be judged again. Adding or removing a
/// container's cgroup does not: a socket's cache also holds the policy id it
/// was decided under, which a new or removed cgroup entry changes. Container
/// churn thus leaves every other socket's cache (and UDP reply allowance)
/// alone.
fn changes_rules(current: &KernelState, diff: &MapDiff) -> bool {
    if diff
        .unknown_verdict
        .is_some_and(|v| v != current.unknown_verdict)
    {
        return true;
    }
    diff.ops.iter().any(|op| match op {
        MapOp::Upsert {
            entry: entry @ Entry::Cgroup { .. },
        } => current.get(&entry.key()).is_some_and(|old| old != *entry),
        MapOp::Delete {
            key: EntryKey::Cgroup { .. },
        } => false,
        // Which container a veth belongs to, and the addresses its frames
        // may carry, decide no cached verdict: only the veth backstop reads
        // them, and it caches none.
        MapOp::Upsert {
            entry: Entry::Veth { .. } | Entry::VethSource { .. },
        }
        | MapOp::Delete {
            key: EntryKey::Veth { .. } | EntryKey::VethSource { .. },
        } => false,
        _ => true,
    })
}

/// Whether `diff` removes a cgroup's entry. Its sockets' cached allows were
/// checked against that entry, so the established-flow path may no longer
/// take them without looking the cgroup up again (which then finds no
/// entry). Cached verdicts themselves stay: they hold the policy id too.
fn removes_cgroups(diff: &MapDiff) -> bool {
    diff.ops.iter().any(|op| {
        matches!(
            op,
            MapOp::Delete {
                key: EntryKey::Cgroup { .. }
            }
        )
    })
}

/// The model's trie key as aya's.
fn lpm<K: aya::Pod>(k: LpmKey<K>) -> Key<K> {
    Key::new(k.prefix_len, k.data)
}

#[cfg(test)]
mod tests {
    use kernel_model::state::{CgroupEntry, PortPrefix, Verdict};

    use super::*;

    fn cgroup(id: u64, policy_id: u32) -> Entry {
        Entry::Cgroup {
            id,
            value: CgroupEntry {
                policy_id,
                audit: false,
                unrestricted: false,
                forwarded_dns: false,
            },
        }
    }

    fn diff(ops: Vec<MapOp>, unknown_verdict: Option<Verdict>) -> MapDiff {
        MapDiff {
            from_generation: 0,
            unknown_verdict,
            ops,
        }
    }

    fn state_with(entries: &[Entry]) -> KernelState {
        let mut state = KernelState::default();
        for e in entries {
            state.upsert(*e);
        }
        state
    }

    #[test]
    fn container_churn_keeps_the_rules_epoch() {
        let current = state_with(&[cgroup(1, 7)]);
        let start = MapOp::Upsert {
            entry: cgroup(2, 7),
        };
        let stop = MapOp::Delete {
            key: EntryKey::Cgroup { id: 1 },
        };
        assert!(!changes_rules(&current, &diff(vec![start, stop], None)));
        let same_again = MapOp::Upsert {
            entry: cgroup(1, 7),
        };
        assert!(!changes_rules(&current, &diff(vec![same_again], None)));
        // A container's veth comes and goes with it.
        let veth = MapOp::Upsert {
            entry: Entry::Veth {
                ifindex: 9,
                cgroup_id: 2,
            },
        };
        let veth_gone = MapOp::Delete {
            key: EntryKey::Veth { ifindex: 9 },
        };
        assert!(!changes_rules(&current, &diff(vec![veth, veth_gone], None)));
        // And its addresses (which every start and stop changed, moving the
        // epoch for every socket on the host).
        let source = kernel_model::state::VethSource {
            ifindex: 9,
            addr: [7; 16],
        };
        let address = MapOp::Upsert {
            entry: Entry::VethSource { key: source },
        };
        let address_gone = MapOp::Delete {
            key: EntryKey::VethSource { key: source },
        };
        assert!(!changes_rules(
            &current,
            &diff(vec![address, address_gone], None)
        ));
    }

    #[test]
    fn only_a_removed_cgroup_moves_the_cgroup_epoch_without_the_rules() {
        let start = MapOp::Upsert {
            entry: cgroup(2, 7),
        };
        let veth = MapOp::Upsert {
            entry: Entry::Veth {
                ifindex: 9,
                cgroup_id: 2,
            },
        };
        assert!(!removes_cgroups(&diff(vec![start, veth], None)));
        let stop = MapOp::Delete {
            key: EntryKey::Cgroup { id: 1 },
        };
        assert!(removes_cgroups(&diff(vec![stop], None)));
    }

    #[test]
    fn a_changed_rule_cgroup_or_unknown_verdict_bumps_it() {
        let current = state_with(&[cgroup(1, 7)]);
        let moved = MapOp::Upsert {
            entry: cgroup(1, 8),
        };
        assert!(changes_rules(&current, &diff(vec![moved], None)));
        let rule = MapOp::Upsert {
            entry: Entry::Port {
                key: PortPrefix {
                    ruleset: 1,
                    proto: 6,
                    port: 443,
                    port_bits: 16,
                },
                rule_id: 3,
            },
        };
        assert!(changes_rules(&current, &diff(vec![rule], None)));
        assert!(changes_rules(&current, &diff(vec![], Some(Verdict::Audit))));
        assert!(!changes_rules(
            &current,
            &diff(vec![], Some(current.unknown_verdict))
        ));
    }
}
