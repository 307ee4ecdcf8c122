//! The minimal change from the kernel state there is to the one wanted,
//! and the order it reaches the kernel in.
//!
//! `apply(diff(a, b), a) == b` for all states (property-tested). Operations
//! come in the order [`apply_order`] prescribes, so a packet racing the
//! update never meets a pointer to a missing table.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::state::{
    CgroupEntry, DestPrefix, Entry, EntryKey, FileId, KernelState, MapOp, PortPrefix, ProcessKey,
    ProcessMatch, Verdict, VethSource,
};

/// A transactional change: applied only if the loader is still at
/// `from_generation`, all or nothing.
///
/// On the wire its operations go packed ([`PackedOp`]: one short JSON
/// array each, a quarter of [`MapOp`]'s own form and read without
/// buffering); a diff in the long form (`ops`) is read too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "WireDiff")]
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

/// [`MapDiff`] as it travels.
#[derive(Deserialize)]
struct WireDiff {
    from_generation: u64,
    unknown_verdict: Option<Verdict>,
    /// The long form, [`MapOp`]'s own.
    #[serde(default)]
    ops: Vec<MapOp>,
    #[serde(default)]
    packed: Vec<PackedOp>,
}

impl From<WireDiff> for MapDiff {
    fn from(wire: WireDiff) -> MapDiff {
        let mut ops = wire.ops;
        ops.extend(wire.packed.into_iter().map(MapOp::from));
        MapDiff {
            from_generation: wire.from_generation,
            unknown_verdict: wire.unknown_verdict,
            ops,
        }
    }
}

impl Serialize for MapDiff {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        struct Packed<'a>(&'a [MapOp]);
        impl Serialize for Packed<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|op| PackedOp::from(*op)))
            }
        }
        let mut diff = serializer.serialize_struct("MapDiff", 3)?;
        diff.serialize_field("from_generation", &self.from_generation)?;
        diff.serialize_field("unknown_verdict", &self.unknown_verdict)?;
        diff.serialize_field("packed", &Packed(&self.ops))?;
        diff.end()
    }
}

/// One operation, packed: the map and the verb in a one-letter tag (a
/// leading `-` deletes), the key's and value's fields in order, addresses
/// as two big-endian halves. `{"d":[1,0,0,281470681743360,120,7]}` is a
/// `DESTS` upsert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackedOp {
    /// cgroup id, policy id, audit, unrestricted, forwarded DNS.
    #[serde(rename = "c")]
    Cgroup(u64, u32, bool, bool, bool),
    /// policy id, comm hash, class.
    #[serde(rename = "p")]
    Comm(u32, u64, u32),
    /// policy id, device, inode, change time (s, ns), class.
    #[serde(rename = "f")]
    File(u32, u32, u64, i64, u32, u32),
    /// policy id, class, address (high, low), prefix length, ruleset.
    #[serde(rename = "d")]
    Dest(u32, u32, u64, u64, u8, u32),
    /// ruleset, protocol, port, port bits, rule id.
    #[serde(rename = "r")]
    Port(u32, u8, u16, u8, u32),
    /// ifindex, cgroup id.
    #[serde(rename = "v")]
    Veth(u32, u64),
    /// ifindex, address (high, low).
    #[serde(rename = "s")]
    VethSource(u32, u64, u64),
    #[serde(rename = "-c")]
    DeleteCgroup(u64),
    #[serde(rename = "-p")]
    DeleteComm(u32, u64),
    #[serde(rename = "-f")]
    DeleteFile(u32, u32, u64, i64, u32),
    #[serde(rename = "-d")]
    DeleteDest(u32, u32, u64, u64, u8),
    #[serde(rename = "-r")]
    DeletePort(u32, u8, u16, u8),
    #[serde(rename = "-v")]
    DeleteVeth(u32),
    #[serde(rename = "-s")]
    DeleteVethSource(u32, u64, u64),
}

fn addr_halves(addr: [u8; 16]) -> (u64, u64) {
    let a = u128::from_be_bytes(addr);
    ((a >> 64) as u64, a as u64)
}

fn addr_of(high: u64, low: u64) -> [u8; 16] {
    ((u128::from(high) << 64) | u128::from(low)).to_be_bytes()
}

impl From<MapOp> for PackedOp {
    fn from(op: MapOp) -> PackedOp {
        match op {
            MapOp::Upsert { entry } => match entry {
                Entry::Cgroup { id, value } => PackedOp::Cgroup(
                    id,
                    value.policy_id,
                    value.audit,
                    value.unrestricted,
                    value.forwarded_dns,
                ),
                Entry::Process { key, class } => match key.process {
                    ProcessMatch::Comm(comm) => PackedOp::Comm(key.policy_id, comm, class),
                    ProcessMatch::File(f) => PackedOp::File(
                        key.policy_id,
                        f.dev,
                        f.ino,
                        f.ctime_sec,
                        f.ctime_nsec,
                        class,
                    ),
                },
                Entry::Dest { key, ruleset } => {
                    let (high, low) = addr_halves(key.addr);
                    PackedOp::Dest(key.policy_id, key.class, high, low, key.prefix_len, ruleset)
                }
                Entry::Port { key, rule_id } => {
                    PackedOp::Port(key.ruleset, key.proto, key.port, key.port_bits, rule_id)
                }
                Entry::Veth { ifindex, cgroup_id } => PackedOp::Veth(ifindex, cgroup_id),
                Entry::VethSource { key } => {
                    let (high, low) = addr_halves(key.addr);
                    PackedOp::VethSource(key.ifindex, high, low)
                }
            },
            MapOp::Delete { key } => match key {
                EntryKey::Cgroup { id } => PackedOp::DeleteCgroup(id),
                EntryKey::Process { key } => match key.process {
                    ProcessMatch::Comm(comm) => PackedOp::DeleteComm(key.policy_id, comm),
                    ProcessMatch::File(f) => {
                        PackedOp::DeleteFile(key.policy_id, f.dev, f.ino, f.ctime_sec, f.ctime_nsec)
                    }
                },
                EntryKey::Dest { key } => {
                    let (high, low) = addr_halves(key.addr);
                    PackedOp::DeleteDest(key.policy_id, key.class, high, low, key.prefix_len)
                }
                EntryKey::Port { key } => {
                    PackedOp::DeletePort(key.ruleset, key.proto, key.port, key.port_bits)
                }
                EntryKey::Veth { ifindex } => PackedOp::DeleteVeth(ifindex),
                EntryKey::VethSource { key } => {
                    let (high, low) = addr_halves(key.addr);
                    PackedOp::DeleteVethSource(key.ifindex, high, low)
                }
            },
        }
    }
}

impl From<PackedOp> for MapOp {
    fn from(op: PackedOp) -> MapOp {
        let file = |policy_id, dev, ino, ctime_sec, ctime_nsec| ProcessKey {
            policy_id,
            process: ProcessMatch::File(FileId {
                dev,
                ino,
                ctime_sec,
                ctime_nsec,
            }),
        };
        let comm = |policy_id, comm| ProcessKey {
            policy_id,
            process: ProcessMatch::Comm(comm),
        };
        let dest = |policy_id, class, high, low, prefix_len| DestPrefix {
            policy_id,
            class,
            addr: addr_of(high, low),
            prefix_len,
        };
        let port = |ruleset, proto, port, port_bits| PortPrefix {
            ruleset,
            proto,
            port,
            port_bits,
        };
        let source = |ifindex, high, low| VethSource {
            ifindex,
            addr: addr_of(high, low),
        };
        let upsert = |entry| MapOp::Upsert { entry };
        let delete = |key| MapOp::Delete { key };
        match op {
            PackedOp::Cgroup(id, policy_id, audit, unrestricted, forwarded_dns) => {
                upsert(Entry::Cgroup {
                    id,
                    value: CgroupEntry {
                        policy_id,
                        audit,
                        unrestricted,
                        forwarded_dns,
                    },
                })
            }
            PackedOp::Comm(policy_id, c, class) => upsert(Entry::Process {
                key: comm(policy_id, c),
                class,
            }),
            PackedOp::File(policy_id, dev, ino, sec, nsec, class) => upsert(Entry::Process {
                key: file(policy_id, dev, ino, sec, nsec),
                class,
            }),
            PackedOp::Dest(policy_id, class, high, low, len, ruleset) => upsert(Entry::Dest {
                key: dest(policy_id, class, high, low, len),
                ruleset,
            }),
            PackedOp::Port(ruleset, proto, p, bits, rule_id) => upsert(Entry::Port {
                key: port(ruleset, proto, p, bits),
                rule_id,
            }),
            PackedOp::Veth(ifindex, cgroup_id) => upsert(Entry::Veth { ifindex, cgroup_id }),
            PackedOp::DeleteCgroup(id) => delete(EntryKey::Cgroup { id }),
            PackedOp::DeleteComm(policy_id, c) => delete(EntryKey::Process {
                key: comm(policy_id, c),
            }),
            PackedOp::DeleteFile(policy_id, dev, ino, sec, nsec) => delete(EntryKey::Process {
                key: file(policy_id, dev, ino, sec, nsec),
            }),
            PackedOp::DeleteDest(policy_id, class, high, low, len) => delete(EntryKey::Dest {
                key: dest(policy_id, class, high, low, len),
            }),
            PackedOp::DeletePort(ruleset, proto, p, bits) => delete(EntryKey::Port {
                key: port(ruleset, proto, p, bits),
            }),
            PackedOp::DeleteVeth(ifindex) => delete(EntryKey::Veth { ifindex }),
            PackedOp::VethSource(ifindex, high, low) => upsert(Entry::VethSource {
                key: source(ifindex, high, low),
            }),
            PackedOp::DeleteVethSource(ifindex, high, low) => delete(EntryKey::VethSource {
                key: source(ifindex, high, low),
            }),
        }
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
    for &key in current.veth_sources.difference(&desired.veth_sources) {
        ops.push(MapOp::Delete {
            key: EntryKey::VethSource { key },
        });
    }
    for &key in desired.veth_sources.difference(&current.veth_sources) {
        ops.push(MapOp::Upsert {
            entry: Entry::VethSource { key },
        });
    }
    // Stable: within one class of operation, keys stay in map order.
    ops.sort_by_key(apply_order);
    ops
}

/// The policy ids whose rewrite by `ops` (applied to `current`) a cgroup
/// moving between policies would see: an entry written under a policy id a
/// cgroup leaves (it still points there while the policy's tables are
/// written, [`apply_order`]), or one deleted under a policy id a cgroup
/// joins (it points there before the policy's old entries go). Such a
/// cgroup would be judged by neither its old policy nor its new one for the
/// length of the diff. A veth whose owner changes moves its frames the same
/// way. A policy id rewritten in place under the same cgroups is safe:
/// every state on the way judges each packet as the old or the new tables
/// do. So is a policy id the current state does not use at all, which is
/// how policyd avoids what this finds: the policy's new tables go under a
/// fresh id.
///
/// The executable files of a policy's containers (`ProcessMatch::File`)
/// are not counted: one comes and goes with the container that holds it
/// (a start and a stop in one diff would otherwise move the whole policy),
/// and a moving container's process runs another container's file only
/// through a volume both mount.
pub fn rewrites_seen_by_moving_cgroups(current: &KernelState, ops: &[MapOp]) -> BTreeSet<u32> {
    // The policy whose tables judge a cgroup's packets, if any.
    let judged_by = |entry: &CgroupEntry| (!entry.unrestricted).then_some(entry.policy_id);
    let now = |id: &u64| current.cgroups.get(id).and_then(judged_by);
    // Cgroup entries as the diff leaves them (absent: as they are).
    let mut after: BTreeMap<u64, Option<u32>> = BTreeMap::new();
    let (mut written, mut deleted) = (BTreeSet::new(), BTreeSet::new());
    let (mut left, mut joined) = (BTreeSet::new(), BTreeSet::new());
    let mut moved = |before: Option<u32>, later: Option<u32>| {
        if before != later {
            left.extend(before);
            joined.extend(later);
        }
    };
    for op in ops {
        match op {
            MapOp::Upsert {
                entry: Entry::Dest { key, .. },
            } => _ = written.insert(key.policy_id),
            MapOp::Upsert {
                entry: Entry::Process { key, .. },
            } if !matches!(key.process, ProcessMatch::File(_)) => _ = written.insert(key.policy_id),
            MapOp::Delete {
                key: EntryKey::Dest { key },
            } => _ = deleted.insert(key.policy_id),
            MapOp::Delete {
                key: EntryKey::Process { key },
            } if !matches!(key.process, ProcessMatch::File(_)) => _ = deleted.insert(key.policy_id),
            MapOp::Upsert {
                entry: Entry::Cgroup { id, value },
            } => {
                after.insert(*id, judged_by(value));
                moved(now(id), judged_by(value));
            }
            MapOp::Delete {
                key: EntryKey::Cgroup { id },
            } => {
                after.insert(*id, None);
                moved(now(id), None);
            }
            _ => {}
        }
    }
    for op in ops {
        // A veth that goes has frames no rule judges after: nothing on the
        // way lets through more than that.
        let MapOp::Upsert {
            entry: Entry::Veth { ifindex, cgroup_id },
        } = op
        else {
            continue;
        };
        let before = current.veths.get(ifindex).and_then(now);
        let later = after
            .get(cgroup_id)
            .copied()
            .unwrap_or_else(|| now(cgroup_id));
        moved(before, later);
    }
    left.intersection(&written)
        .chain(joined.intersection(&deleted))
        .copied()
        .collect()
}

/// Whether the kernel's maps hold every state on the way from `current`
/// through `ops`: new keys are written before anything is deleted
/// ([`apply_order`]), so each kind of entry peaks at what the current state
/// has plus the new keys. (A destination goes to `HOSTS` or `DESTS` and a
/// port to `PORTS` or `EXACT_PORTS`: each kind is held to the smaller map.)
pub fn fits_on_the_way(current: &KernelState, ops: &[MapOp]) -> bool {
    use contain_common::capacity;
    let mut added = [0usize; 6];
    for op in ops {
        if let MapOp::Upsert { entry } = op {
            if current.get(&entry.key()).is_none() {
                added[kind(&entry.key())] += 1;
            }
        }
    }
    let held = [
        (current.cgroups.len(), capacity::CGROUPS),
        (current.processes.len(), capacity::PROCESSES),
        (current.dests.len(), capacity::DESTS.min(capacity::HOSTS)),
        (
            current.ports.len(),
            capacity::PORTS.min(capacity::EXACT_PORTS),
        ),
        (current.veths.len(), capacity::VETHS),
        (current.veth_sources.len(), capacity::VETH_SOURCES),
    ];
    held.iter()
        .zip(added)
        .all(|(&(now, cap), new)| now + new <= cap as usize)
}

/// The index of an entry's kind in [`fits_on_the_way`]'s table.
fn kind(key: &EntryKey) -> usize {
    match key {
        EntryKey::Cgroup { .. } => 0,
        EntryKey::Process { .. } => 1,
        EntryKey::Dest { .. } => 2,
        EntryKey::Port { .. } => 3,
        EntryKey::Veth { .. } => 4,
        EntryKey::VethSource { .. } => 5,
    }
}

/// The global verdict change, if any.
pub fn diff_verdict(current: &KernelState, desired: &KernelState) -> Option<Verdict> {
    (current.unknown_verdict != desired.unknown_verdict).then_some(desired.unknown_verdict)
}

/// Whether a changed verdict for unknown cgroups reaches the kernel before
/// the diff's map writes rather than after them: a stricter one does (a
/// cgroup the diff removes is then never judged by the looser old verdict
/// on the way), a looser one does not (one the diff adds is never judged by
/// the looser new verdict before its entry is there). On the way, a packet
/// is then never let through that both the old and the new state refuse.
pub fn verdict_goes_first(current: Verdict, new: Verdict) -> bool {
    let leniency = |v: Verdict| match v {
        Verdict::Deny => 0,
        Verdict::Audit => 1,
        Verdict::Allow => 2,
    };
    leniency(new) < leniency(current)
}

/// Applies ops and a verdict change to a state: what the loader does.
pub fn apply(state: &mut KernelState, unknown_verdict: Option<Verdict>, ops: &[MapOp]) {
    if let Some(v) = unknown_verdict {
        state.unknown_verdict = v;
    }
    state.apply_ops(ops);
}

/// The operations that take the maps back to `before` from where `done`
/// (the first operations of a diff from `before`, each key once, as
/// [`validate`](crate::validate::validate) requires) left them, in the
/// order they are to be written: newest first. Each one then leaves the
/// maps in a state the diff passed through, so a packet racing the undo
/// is judged as on the way there.
pub fn undo_ops(before: &KernelState, done: &[MapOp]) -> Vec<MapOp> {
    done.iter()
        .rev()
        .map(|op| {
            let key = match op {
                MapOp::Upsert { entry } => entry.key(),
                MapOp::Delete { key } => *key,
            };
            match before.get(&key) {
                Some(entry) => MapOp::Upsert { entry },
                None => MapOp::Delete { key },
            }
        })
        .collect()
}

/// The order in which a diff's operations reach the kernel, so that a packet
/// racing the update never sees a rule whose target is missing: first the
/// rule tables a new policy points to, then the cgroup pointers, and only
/// then the removal of what nothing points to any more. A veth points to a
/// cgroup entry: it comes after it and goes before it. A veth's source
/// addresses are in place before the veth is mapped, and a changed address's
/// new entry before its old one goes, so that no frame of the container's
/// own is refused while the maps change.
///
/// Destination prefixes are written longest first and removed shortest
/// first: a packet then meets, for its address, either the entries of the
/// old state or those of the new one, never a new broad prefix without the
/// narrower one that restricts it (the `::ffff:0:0/96` entry that keeps an
/// IPv6 rule for every address off IPv4, Docker's DNS under 127/8). Written
/// broadest first, adding `::/0` port 443 allowed IPv4 port 443 everywhere
/// until its restricting entry followed.
pub fn apply_order(op: &MapOp) -> (u8, u8) {
    let class = apply_class(op);
    let within = match op {
        MapOp::Upsert {
            entry: Entry::Dest { key, .. },
        } => u8::MAX - key.prefix_len,
        MapOp::Delete {
            key: EntryKey::Dest { key },
        } => key.prefix_len,
        _ => 0,
    };
    (class, within)
}

/// The kinds of operation in the order they reach the kernel.
fn apply_class(op: &MapOp) -> u8 {
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
            entry: Entry::VethSource { .. },
        } => 4,
        MapOp::Upsert {
            entry: Entry::Veth { .. },
        }
        | MapOp::Delete {
            key: EntryKey::Veth { .. },
        } => 5,
        MapOp::Delete {
            key: EntryKey::VethSource { .. },
        } => 6,
        MapOp::Delete {
            key: EntryKey::Cgroup { .. },
        } => 7,
        MapOp::Delete {
            key: EntryKey::Process { .. },
        } => 8,
        MapOp::Delete {
            key: EntryKey::Dest { .. },
        } => 9,
        MapOp::Delete {
            key: EntryKey::Port { .. },
        } => 10,
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
    #[serde(default)]
    pub veth_sources: usize,
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
                EntryKey::VethSource { .. } => c.veth_sources += 1,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.upserts + self.deletes
    }
}

/// "3 upserts, 1 deletes: 1 cgroups, 0 veths, …": the counts as policyd's
/// apply report and the bench print them.
impl std::fmt::Display for OpCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} upserts, {} deletes: {} cgroups, {} veths, {} veth sources, {} processes, {} destinations, {} ports",
            self.upserts,
            self.deletes,
            self.cgroups,
            self.veths,
            self.veth_sources,
            self.processes,
            self.dests,
            self.ports
        )
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
        let veth_sources = prop::collection::btree_set(
            (1u32..4, 0u8..4).prop_map(|(ifindex, b)| {
                let mut addr = [0u8; 16];
                addr[15] = b;
                VethSource { ifindex, addr }
            }),
            0..6,
        );
        let verdict = prop::sample::select(vec![Verdict::Deny, Verdict::Allow, Verdict::Audit]);
        (
            verdict,
            cgroups,
            processes,
            dests,
            ports,
            veths,
            veth_sources,
        )
            .prop_map(
                |(unknown_verdict, cgroups, processes, dests, ports, veths, veth_sources)| {
                    KernelState {
                        unknown_verdict,
                        cgroups,
                        processes,
                        dests,
                        ports,
                        veths,
                        veth_sources,
                    }
                },
            )
    }

    /// Any operation, every field over its whole range.
    fn arb_op() -> impl Strategy<Value = MapOp> {
        let process = prop_oneof![
            (any::<u32>(), any::<u64>(), any::<i64>(), any::<u32>()).prop_map(
                |(dev, ino, ctime_sec, ctime_nsec)| ProcessMatch::File(FileId {
                    dev,
                    ino,
                    ctime_sec,
                    ctime_nsec,
                })
            ),
            any::<u64>().prop_map(ProcessMatch::Comm),
        ];
        let entry = prop_oneof![
            (
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(id, policy_id, audit, unrestricted, forwarded_dns)| {
                    Entry::Cgroup {
                        id,
                        value: CgroupEntry {
                            policy_id,
                            audit,
                            unrestricted,
                            forwarded_dns,
                        },
                    }
                }),
            (any::<u32>(), process, any::<u32>()).prop_map(|(policy_id, process, class)| {
                Entry::Process {
                    key: ProcessKey { policy_id, process },
                    class,
                }
            }),
            (
                any::<u32>(),
                any::<u32>(),
                any::<[u8; 16]>(),
                any::<u8>(),
                any::<u32>()
            )
                .prop_map(|(policy_id, class, addr, prefix_len, ruleset)| {
                    Entry::Dest {
                        key: DestPrefix {
                            policy_id,
                            class,
                            addr,
                            prefix_len,
                        },
                        ruleset,
                    }
                }),
            (
                any::<u32>(),
                any::<u8>(),
                any::<u16>(),
                any::<u8>(),
                any::<u32>()
            )
                .prop_map(|(ruleset, proto, port, port_bits, rule_id)| Entry::Port {
                    key: PortPrefix {
                        ruleset,
                        proto,
                        port,
                        port_bits,
                    },
                    rule_id,
                }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(ifindex, cgroup_id)| Entry::Veth { ifindex, cgroup_id }),
            (any::<u32>(), any::<[u8; 16]>()).prop_map(|(ifindex, addr)| Entry::VethSource {
                key: VethSource { ifindex, addr },
            }),
        ];
        (entry, any::<bool>()).prop_map(|(entry, delete)| {
            if delete {
                MapOp::Delete { key: entry.key() }
            } else {
                MapOp::Upsert { entry }
            }
        })
    }

    fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&a);
        addr
    }

    /// States as policyd writes them: one enforced cgroup, rulesets whose
    /// port blocks are fixed by their id (a ruleset never changes while in
    /// use; 0 is empty, as the entries that restrict a broader prefix),
    /// destinations from nested prefixes.
    fn arb_policy_state() -> impl Strategy<Value = KernelState> {
        let v6 = |text: &str| text.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let prefixes = vec![
            ([0u8; 16], 0u8),
            (v4_mapped([0, 0, 0, 0]), 96),
            (v4_mapped([10, 0, 0, 0]), 104),
            (v4_mapped([10, 1, 0, 0]), 112),
            (v4_mapped([10, 1, 2, 3]), 128),
            (v4_mapped([127, 0, 0, 0]), 104),
            (v4_mapped([127, 0, 0, 11]), 128),
            (v6("2001:db8::"), 32),
            (v6("2001:db8::1"), 128),
        ];
        prop::collection::btree_map(prop::sample::select(prefixes), 0u32..4, 0..7).prop_map(
            |dests| {
                let mut s = KernelState::default();
                s.upsert(Entry::Cgroup {
                    id: 42,
                    value: CgroupEntry::enforced(1),
                });
                with_rulesets(&mut s);
                for ((addr, prefix_len), ruleset) in dests {
                    s.upsert(Entry::Dest {
                        key: DestPrefix {
                            policy_id: 1,
                            class: 0,
                            addr,
                            prefix_len,
                        },
                        ruleset,
                    });
                }
                s
            },
        )
    }

    /// States of two policies (ids 1 and 2), their destinations drawn as in
    /// [`arb_policy_state`], three cgroups each under one of them or
    /// unknown, and two veths each owned by one of the cgroups or none.
    fn arb_policies_state() -> impl Strategy<Value = KernelState> {
        let policy = || arb_policy_state().prop_map(|s| s.dests);
        let cgroup = || prop::option::of(1u32..=2);
        let veth = || prop::option::of(41u64..=43);
        (
            policy(),
            policy(),
            [cgroup(), cgroup(), cgroup()],
            [veth(), veth()],
        )
            .prop_map(|(one, two, cgroups, veths)| {
                let mut s = KernelState::default();
                for (ifindex, owner) in (1..).zip(veths) {
                    if let Some(cgroup_id) = owner {
                        s.upsert(Entry::Veth { ifindex, cgroup_id });
                    }
                }
                for (policy_id, dests) in [(1, one), (2, two)] {
                    for (key, ruleset) in dests {
                        s.upsert(Entry::Dest {
                            key: DestPrefix { policy_id, ..key },
                            ruleset,
                        });
                    }
                }
                for (cgroup, policy_id) in (41..).zip(cgroups) {
                    if let Some(policy_id) = policy_id {
                        s.upsert(Entry::Cgroup {
                            id: cgroup,
                            value: CgroupEntry::enforced(policy_id),
                        });
                    }
                }
                with_rulesets(&mut s);
                s
            })
    }

    /// `state` with policy id `from`'s tables and cgroups under `to`: what
    /// policyd does to a policy [`rewrites_seen_by_moving_cgroups`] names.
    fn renumber(state: &KernelState, from: u32, to: u32) -> KernelState {
        let id = |policy_id| if policy_id == from { to } else { policy_id };
        let mut out = state.clone();
        out.dests = state
            .dests
            .iter()
            .map(|(k, &v)| {
                (
                    DestPrefix {
                        policy_id: id(k.policy_id),
                        ..*k
                    },
                    v,
                )
            })
            .collect();
        for entry in out.cgroups.values_mut() {
            entry.policy_id = id(entry.policy_id);
        }
        out
    }

    /// Steps `ops` one at a time from `a`: the first state in which a
    /// cgroup's packet is judged as neither `a` nor `b` judges it.
    fn first_state_neither(a: &KernelState, b: &KernelState, ops: &[MapOp]) -> Option<String> {
        // A cgroup's packets, and the frames on a veth: its owner's rules,
        // and on a veth of no container, passed.
        let senders = [
            (41, None),
            (42, None),
            (43, None),
            (0, Some(1)),
            (0, Some(2)),
        ];
        // Out of reach, as the README says: a veth whose owner changes
        // while the old or the new owner's entry does (its frames meet the
        // old owner's new entry, or the new owner's old one, whichever goes
        // first).
        let owner_moves_with_its_entry = |ifindex: u32| {
            let (from, to) = (a.veths.get(&ifindex), b.veths.get(&ifindex));
            let entry_changes =
                |id: Option<&u64>| id.is_some_and(|id| a.cgroups.get(id) != b.cgroups.get(id));
            from != to && (entry_changes(from) || entry_changes(to))
        };
        let mut state = a.clone();
        for (i, op) in ops.iter().enumerate() {
            state.apply_ops(std::slice::from_ref(op));
            for (cgroup, veth) in senders {
                if veth.is_some_and(owner_moves_with_its_entry) {
                    continue;
                }
                for target in policy_targets() {
                    let verdict = |s: &KernelState| {
                        let cgroup = match veth {
                            Some(ifindex) => match s.veths.get(&ifindex) {
                                Some(&owner) => owner,
                                None => return Verdict::Allow,
                            },
                            None => cgroup,
                        };
                        crate::decide::lookup(s, cgroup, None, &target).verdict
                    };
                    let (old, now, new) = (verdict(a), verdict(&state), verdict(b));
                    // A veth's frames have no flow to revoke: a frame
                    // dropped on the way is all a denial costs there, so
                    // only what passes must be the old or the new verdict.
                    let dropped_frame = veth.is_some() && now == Verdict::Deny;
                    if now != old && now != new && !dropped_frame {
                        return Some(format!(
                            "after op {i} ({op:?}): cgroup {cgroup}, veth {veth:?}, {target:?} judged {now:?}, old {old:?}, new {new:?}"
                        ));
                    }
                }
            }
        }
        None
    }

    /// Rulesets whose port blocks are fixed by their id: 1 TCP 443, 2
    /// anything, 3 UDP 53.
    fn with_rulesets(s: &mut KernelState) {
        for (ruleset, proto, port, port_bits) in [(1, 6, 443, 16), (2, 0, 0, 0), (3, 17, 53, 16)] {
            s.upsert(Entry::Port {
                key: PortPrefix {
                    ruleset,
                    proto,
                    port,
                    port_bits,
                },
                rule_id: ruleset,
            });
        }
    }

    /// Packets to addresses inside and outside each of those prefixes.
    fn policy_targets() -> Vec<crate::decide::Target> {
        let addresses = [
            "10.1.2.3",
            "10.1.9.9",
            "10.9.9.9",
            "93.184.216.34",
            "127.0.0.11",
            "127.0.0.1",
            "2001:db8::1",
            "2001:db8::2",
            "2002::1",
        ];
        addresses
            .iter()
            .flat_map(|a| {
                [(6, 443), (17, 53), (6, 80)].map(|(proto, port)| crate::decide::Target {
                    dest: a.parse().unwrap(),
                    proto,
                    port,
                    later_fragment: false,
                })
            })
            .collect()
    }

    proptest! {
        #[test]
        fn a_diff_travels_packed_and_arrives_the_same(
            ops in prop::collection::vec(arb_op(), 0..40),
            from_generation in any::<u64>(),
        ) {
            let diff = MapDiff { from_generation, unknown_verdict: Some(Verdict::Audit), ops };
            let json = serde_json::to_string(&diff).unwrap();
            prop_assert_eq!(serde_json::from_str::<MapDiff>(&json).unwrap(), diff.clone());
            // The long form, MapOp's own, is read too.
            let long = serde_json::json!({
                "from_generation": from_generation,
                "unknown_verdict": "audit",
                "ops": diff.ops,
            });
            prop_assert_eq!(serde_json::from_value::<MapDiff>(long).unwrap(), diff);
        }

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

        /// Each operation reaches the kernel alone: after every one of them
        /// (and so after every step of an undo, which retraces them), each
        /// packet is judged as the old state or the new one judges it.
        #[test]
        fn every_state_on_the_way_judges_as_the_old_or_the_new(
            a in arb_policy_state(),
            b in arb_policy_state(),
        ) {
            let ops = diff_ops(&a, &b);
            let mut state = a.clone();
            for (i, op) in ops.iter().enumerate() {
                state.apply_ops(std::slice::from_ref(op));
                for target in policy_targets() {
                    let verdict = |s: &KernelState| crate::decide::lookup(s, 42, None, &target).verdict;
                    let (old, now, new) = (verdict(&a), verdict(&state), verdict(&b));
                    prop_assert!(
                        now == old || now == new,
                        "after op {i} ({op:?}): {target:?} judged {now:?}, old {old:?}, new {new:?}"
                    );
                }
            }
        }

        /// With cgroups moving between policies that change too: a diff
        /// the detector passes judges every cgroup's packets as its old or
        /// its new policy all the way; one it does not, once the policies
        /// it names have moved to fresh ids (as policyd does), too.
        #[test]
        fn a_cgroup_moving_between_changed_policies_is_judged_as_the_old_or_the_new(
            a in arb_policies_state(),
            b in arb_policies_state(),
        ) {
            let ops = diff_ops(&a, &b);
            let named = rewrites_seen_by_moving_cgroups(&a, &ops);
            let (b, ops) = if named.is_empty() {
                (b, ops)
            } else {
                let fresh = (3..).zip(&named).fold(b, |s, (to, &from)| renumber(&s, from, to));
                let ops = diff_ops(&a, &fresh);
                prop_assert!(rewrites_seen_by_moving_cgroups(&a, &ops).is_empty());
                (fresh, ops)
            };
            let failure = first_state_neither(&a, &b, &ops);
            prop_assert!(failure.is_none(), "{}", failure.unwrap_or_default());
        }

        /// With the verdict for unknown cgroups changing too, written
        /// before or after the maps as [`verdict_goes_first`] says: no state
        /// on the way lets a cgroup's packet through that both the old and
        /// the new state refuse.
        #[test]
        fn a_changed_unknown_verdict_opens_nothing_on_the_way(
            a in arb_policies_state(),
            b in arb_policies_state(),
            verdicts in (0..3usize, 0..3usize),
        ) {
            let all = [Verdict::Deny, Verdict::Audit, Verdict::Allow];
            let (mut a, mut b) = (a, b);
            a.unknown_verdict = all[verdicts.0];
            b.unknown_verdict = all[verdicts.1];
            let named = rewrites_seen_by_moving_cgroups(&a, &diff_ops(&a, &b));
            let b = (3..).zip(&named).fold(b, |s, (to, &from)| renumber(&s, from, to));
            let ops = diff_ops(&a, &b);
            let first = verdict_goes_first(a.unknown_verdict, b.unknown_verdict);
            let mut state = a.clone();
            if first {
                state.unknown_verdict = b.unknown_verdict;
            }
            let passes = |v: Verdict| v != Verdict::Deny;
            for (i, op) in ops.iter().enumerate() {
                state.apply_ops(std::slice::from_ref(op));
                for cgroup in 41..=43 {
                    for target in policy_targets() {
                        let verdict =
                            |s: &KernelState| crate::decide::lookup(s, cgroup, None, &target).verdict;
                        let (old, now, new) = (verdict(&a), verdict(&state), verdict(&b));
                        prop_assert!(
                            !passes(now) || passes(old) || passes(new),
                            "after op {i} ({op:?}), verdict first: {first}: cgroup {cgroup}, {target:?} judged {now:?}, old {old:?}, new {new:?}"
                        );
                    }
                }
            }
        }

        /// A diff stopped after any number of its operations and undone:
        /// after each undo write the maps are exactly as the diff left them
        /// one write earlier, down to the state before it. So every state
        /// the undo passes through is one the tests above judge.
        #[test]
        fn an_undo_retraces_the_states_of_the_diff(a in arb_state(), b in arb_state()) {
            let ops = diff_ops(&a, &b);
            let mut on_the_way = vec![a.clone()];
            for op in &ops {
                let mut next = on_the_way[on_the_way.len() - 1].clone();
                next.apply_ops(std::slice::from_ref(op));
                on_the_way.push(next);
            }
            for done in 0..=ops.len() {
                let undo = undo_ops(&a, &ops[..done]);
                prop_assert_eq!(undo.len(), done);
                let mut state = on_the_way[done].clone();
                for (step, op) in undo.iter().enumerate() {
                    state.apply_ops(std::slice::from_ref(op));
                    let expected = done - 1 - step;
                    prop_assert_eq!(
                        &state,
                        &on_the_way[expected],
                        "{} of {} ops done, undo step {} ({:?}) should reach the state after op {}",
                        done, ops.len(), step, op, expected
                    );
                }
            }
        }

        #[test]
        fn ops_are_in_apply_order(a in arb_state(), b in arb_state()) {
            let ops = diff_ops(&a, &b);
            prop_assert!(ops.windows(2).all(|w| apply_order(&w[0]) <= apply_order(&w[1])));
        }
    }

    /// Review finding: `db` leaves policy 1 for policy 2 in the reload that
    /// gives policy 1 a new host. Policy 1's entry is written while `db`
    /// still points there, so `db` reaches the host, which neither of its
    /// policies allows; under a fresh id it never does.
    #[test]
    fn a_cgroup_leaving_a_policy_never_sees_its_new_rules() {
        let dest = |policy_id, addr, prefix_len, ruleset| Entry::Dest {
            key: DestPrefix {
                policy_id,
                class: 0,
                addr,
                prefix_len,
            },
            ruleset,
        };
        let mut a = KernelState::default();
        a.upsert(Entry::Port {
            key: PortPrefix {
                ruleset: 1,
                proto: 0,
                port: 0,
                port_bits: 0,
            },
            rule_id: 1,
        });
        a.upsert(dest(1, v4_mapped([10, 0, 0, 0]), 104, 1));
        for (cgroup, policy_id) in [(41, 1), (42, 1)] {
            a.upsert(Entry::Cgroup {
                id: cgroup,
                value: CgroupEntry::enforced(policy_id),
            });
        }
        let mut b = a.clone();
        b.upsert(dest(1, v4_mapped([93, 184, 216, 34]), 128, 1));
        b.upsert(Entry::Cgroup {
            id: 42,
            value: CgroupEntry::enforced(2),
        });
        let ops = diff_ops(&a, &b);
        assert_eq!(
            rewrites_seen_by_moving_cgroups(&a, &ops),
            BTreeSet::from([1])
        );
        let failure = first_state_neither(&a, &b, &ops).expect("the in-place order lets db out");
        assert!(failure.contains("cgroup 42"), "{failure}");
        let fresh = renumber(&b, 1, 3);
        let ops = diff_ops(&a, &fresh);
        assert!(rewrites_seen_by_moving_cgroups(&a, &ops).is_empty());
        assert_eq!(first_state_neither(&a, &fresh, &ops), None);
    }

    /// A rolling update under a policy with an `exe` rule: one container
    /// stops and another starts in one diff, each with its own file's
    /// entry. Nothing moves: neither container runs the other's file.
    #[test]
    fn a_container_replaced_under_an_exe_policy_moves_nothing() {
        let file = |ino| Entry::Process {
            key: ProcessKey {
                policy_id: 1,
                process: ProcessMatch::File(FileId {
                    dev: 52,
                    ino,
                    ctime_sec: 1,
                    ctime_nsec: 0,
                }),
            },
            class: 1,
        };
        let cgroup = |id| Entry::Cgroup {
            id,
            value: CgroupEntry::enforced(1),
        };
        let mut a = KernelState::default();
        a.upsert(file(10));
        a.upsert(cgroup(41));
        let mut b = KernelState::default();
        b.upsert(file(20));
        b.upsert(cgroup(42));
        let ops = diff_ops(&a, &b);
        assert!(rewrites_seen_by_moving_cgroups(&a, &ops).is_empty());
        // A comm rule is the policy's own table: changed with a container
        // leaving, it is named.
        let comm = |hash| Entry::Process {
            key: ProcessKey {
                policy_id: 1,
                process: ProcessMatch::Comm(hash),
            },
            class: 1,
        };
        a.upsert(comm(7));
        b.upsert(comm(8));
        let ops = diff_ops(&a, &b);
        assert_eq!(
            rewrites_seen_by_moving_cgroups(&a, &ops),
            BTreeSet::from([1])
        );
    }

    #[test]
    fn a_diff_fits_when_every_state_on_the_way_does() {
        let comm = |policy_id, hash| Entry::Process {
            key: ProcessKey {
                policy_id,
                process: ProcessMatch::Comm(hash),
            },
            class: 1,
        };
        let cap = contain_common::capacity::PROCESSES as u64;
        let mut a = KernelState::default();
        for hash in 0..cap * 3 / 4 {
            a.upsert(comm(1, hash));
        }
        // The same entries under a fresh id: both copies at once, before
        // the old ones go, do not fit; a quarter of them does.
        let mut moved = KernelState::default();
        for hash in 0..cap * 3 / 4 {
            moved.upsert(comm(2, hash));
        }
        assert!(!fits_on_the_way(&a, &diff_ops(&a, &moved)));
        let mut smaller = KernelState::default();
        for hash in 0..cap / 4 {
            smaller.upsert(comm(2, hash));
        }
        assert!(fits_on_the_way(&a, &diff_ops(&a, &smaller)));
    }

    #[test]
    fn a_packed_operation_is_a_quarter_of_the_long_form() {
        let op = MapOp::Upsert {
            entry: Entry::Dest {
                key: DestPrefix {
                    policy_id: 3,
                    class: 1,
                    addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 10, 1, 2, 3],
                    prefix_len: 128,
                },
                ruleset: 77,
            },
        };
        let packed = serde_json::to_string(&PackedOp::from(op)).unwrap();
        assert_eq!(packed, r#"{"d":[3,1,0,281470849581571,128,77]}"#);
        assert!(packed.len() * 3 < serde_json::to_string(&op).unwrap().len());
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
                value: CgroupEntry::enforced(1),
            },
        };
        let veth = MapOp::Upsert {
            entry: Entry::Veth {
                ifindex: 5,
                cgroup_id: 42,
            },
        };
        let source = VethSource {
            ifindex: 5,
            addr: [1; 16],
        };
        let new_source = MapOp::Upsert {
            entry: Entry::VethSource { key: source },
        };
        let old_source = MapOp::Delete {
            key: EntryKey::VethSource { key: source },
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
        let order: Vec<u8> = [
            &port,
            &cgroup,
            &new_source,
            &veth,
            &old_source,
            &del_cgroup,
            &del_port,
        ]
        .into_iter()
        .map(apply_class)
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    /// A new entry is undone by a delete, a changed one by its old value,
    /// a deleted one by writing it again; the newest write first.
    #[test]
    fn an_undo_writes_back_the_old_entries_newest_first() {
        let cgroup = |id, policy_id| Entry::Cgroup {
            id,
            value: CgroupEntry::enforced(policy_id),
        };
        let port = Entry::Port {
            key: PortPrefix {
                ruleset: 1,
                proto: 6,
                port: 443,
                port_bits: 16,
            },
            rule_id: 1,
        };
        let mut before = KernelState::default();
        before.upsert(cgroup(41, 1));
        before.upsert(port);
        let done = [
            MapOp::Upsert {
                entry: cgroup(41, 2),
            },
            MapOp::Upsert {
                entry: cgroup(42, 1),
            },
            MapOp::Delete { key: port.key() },
        ];
        let undo = undo_ops(&before, &done);
        assert_eq!(
            undo,
            [
                MapOp::Upsert { entry: port },
                MapOp::Delete {
                    key: EntryKey::Cgroup { id: 42 },
                },
                MapOp::Upsert {
                    entry: cgroup(41, 1),
                },
            ]
        );
        let mut state = before.clone();
        state.apply_ops(&done);
        state.apply_ops(&undo);
        assert_eq!(state, before);
    }

    #[test]
    fn identical_states_need_nothing() {
        let s = KernelState::default();
        assert!(diff_ops(&s, &s).is_empty());
        assert_eq!(diff_verdict(&s, &s), None);
    }
}
