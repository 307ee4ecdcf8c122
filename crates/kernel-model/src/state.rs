//! The kernel state contain manages, as plain data: what policyd wants the
//! loader's maps to hold and what the loader says they hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

/// What the kernel does with traffic no rule allows (or a cgroup it does not
/// know yet).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    #[default]
    Deny,
    Allow,
    Audit,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Deny => "deny",
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
        })
    }
}

/// How a cgroup is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CgroupEntry {
    pub policy_id: u32,
    /// Report what would be denied, deny nothing.
    pub audit: bool,
    /// Known, but selected by no policy: leave it alone.
    pub unrestricted: bool,
    /// The policy lets the container use Docker's embedded DNS: the queries
    /// dockerd forwards for it from inside its namespace may leave.
    #[serde(default)]
    pub forwarded_dns: bool,
}

impl CgroupEntry {
    /// A cgroup enforced under `policy_id`: what its rules do not allow is
    /// denied.
    pub fn enforced(policy_id: u32) -> CgroupEntry {
        CgroupEntry {
            policy_id,
            audit: false,
            unrestricted: false,
            forwarded_dns: false,
        }
    }

    /// A cgroup under no policy's rules that is not left alone: every
    /// packet misses, so it is denied (in audit, reported). What containers
    /// under two policies that share one cgroup get: the kernel cannot tell
    /// their packets apart, and either policy's rules would let the other
    /// container's through.
    pub fn ruleless(audit: bool) -> CgroupEntry {
        CgroupEntry {
            policy_id: contain_common::UNKNOWN_POLICY_ID,
            audit,
            unrestricted: false,
            forwarded_dns: false,
        }
    }

    /// Whether this is a [`CgroupEntry::ruleless`] one.
    pub fn is_ruleless(&self) -> bool {
        !self.unrestricted && self.policy_id == contain_common::UNKNOWN_POLICY_ID
    }
}

/// The file a process executes, as the kernel records it at exec: its
/// filesystem, inode and inode change time. A replaced, copied, chrooted or
/// bind-mounted file is another file; one modified in place gets a new
/// change time.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct FileId {
    /// The filesystem's device number as the kernel encodes it
    /// (`major << 20 | minor`), not as `stat` reports it.
    pub dev: u32,
    pub ino: u64,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
}

impl FileId {
    /// The identity of a file as `stat` reports it (`st_dev` in the C
    /// library's encoding, which the kernel's differs from).
    pub fn from_stat(st_dev: u64, ino: u64, ctime_sec: i64, ctime_nsec: i64) -> FileId {
        let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
        let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
        FileId {
            dev: ((major << 20) | (minor & 0xf_ffff)) as u32,
            ino,
            ctime_sec,
            ctime_nsec: ctime_nsec.clamp(0, 999_999_999) as u32,
        }
    }
}

/// How a process is recognised inside a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessMatch {
    /// The executed file (an `exe` rule resolved inside one container).
    File(FileId),
    /// FNV-1a of the comm (`contain_common::comm_hash`).
    Comm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    pub policy_id: u32,
    pub process: ProcessMatch,
}

/// A destination prefix of one (policy, process class). Addresses are 16
/// bytes; IPv4 is `::ffff:a.b.c.d` with `prefix_len` 96 + the IPv4 length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DestPrefix {
    pub policy_id: u32,
    pub class: u32,
    pub addr: [u8; 16],
    pub prefix_len: u8,
}

/// A (protocol, port prefix) allowance of one ruleset. `port` holds
/// `type << 8 | code` for ICMP; `port_bits` is how many leading bits of it
/// must match (0 = any port / any type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortPrefix {
    pub ruleset: u32,
    pub proto: u8,
    pub port: u16,
    pub port_bits: u8,
}

/// An address of a container's interface, on the host-side veth it sits
/// behind: a source the container's frames there may carry. Addresses are
/// 16 bytes, IPv4 as `::ffff:a.b.c.d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VethSource {
    pub ifindex: u32,
    pub addr: [u8; 16],
}

impl VethSource {
    pub fn new(ifindex: u32, addr: IpAddr) -> Self {
        VethSource {
            ifindex,
            addr: crate::prefix::addr_key(addr).to_be_bytes(),
        }
    }

    /// The address, IPv4 as such.
    pub fn address(&self) -> IpAddr {
        let v6 = std::net::Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// One map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "map")]
pub enum Entry {
    Cgroup {
        id: u64,
        value: CgroupEntry,
    },
    Process {
        key: ProcessKey,
        class: u32,
    },
    Dest {
        key: DestPrefix,
        ruleset: u32,
    },
    Port {
        key: PortPrefix,
        rule_id: u32,
    },
    /// The container (by cgroup id) whose frames arrive on the host-side
    /// veth `ifindex`.
    Veth {
        ifindex: u32,
        cgroup_id: u64,
    },
    /// A source address the frames on a veth may carry.
    VethSource {
        key: VethSource,
    },
}

/// The key of one map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "map")]
pub enum EntryKey {
    Cgroup { id: u64 },
    Process { key: ProcessKey },
    Dest { key: DestPrefix },
    Port { key: PortPrefix },
    Veth { ifindex: u32 },
    VethSource { key: VethSource },
}

impl Entry {
    pub fn key(&self) -> EntryKey {
        match *self {
            Entry::Cgroup { id, .. } => EntryKey::Cgroup { id },
            Entry::Process { key, .. } => EntryKey::Process { key },
            Entry::Dest { key, .. } => EntryKey::Dest { key },
            Entry::Port { key, .. } => EntryKey::Port { key },
            Entry::Veth { ifindex, .. } => EntryKey::Veth { ifindex },
            Entry::VethSource { key } => EntryKey::VethSource { key },
        }
    }
}

/// One change to one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum MapOp {
    Upsert { entry: Entry },
    Delete { key: EntryKey },
}

/// The tables a policy's containers are judged by, borrowed from a whole
/// state or from compiled rules alone: process classes, destination
/// prefixes and the rulesets' ports.
#[derive(Clone, Copy, Debug)]
pub struct RuleTables<'a> {
    pub processes: &'a BTreeMap<ProcessKey, u32>,
    pub dests: &'a BTreeMap<DestPrefix, u32>,
    pub ports: &'a BTreeMap<PortPrefix, u32>,
}

impl<'a> RuleTables<'a> {
    pub fn of(state: &'a KernelState) -> Self {
        RuleTables {
            processes: &state.processes,
            dests: &state.dests,
            ports: &state.ports,
        }
    }

    /// Whether both judge the containers of policy `policy_id` alike: the
    /// same classes by comm, the same destination prefixes to the same
    /// rulesets, and the same ports in each of those rulesets. The
    /// containers' executable files (`ProcessMatch::File`) are each
    /// container's own and left to the caller.
    pub fn judge_policy_alike(&self, other: &RuleTables, policy_id: u32) -> bool {
        if !self.comms(policy_id).eq(other.comms(policy_id))
            || !self.dests(policy_id).eq(other.dests(policy_id))
        {
            return false;
        }
        // The prefixes agree, so they point to the same rulesets.
        let rulesets: BTreeSet<u32> = self.dests(policy_id).map(|(_, &r)| r).collect();
        rulesets
            .into_iter()
            .all(|ruleset| self.ports(ruleset).eq(other.ports(ruleset)))
    }

    fn comms(&self, policy_id: u32) -> impl Iterator<Item = (&'a ProcessKey, &'a u32)> {
        let least = |policy_id| ProcessKey {
            policy_id,
            process: ProcessMatch::File(FileId {
                dev: 0,
                ino: 0,
                ctime_sec: i64::MIN,
                ctime_nsec: 0,
            }),
        };
        policy_range(self.processes, policy_id, least)
            .filter(|(k, _)| matches!(k.process, ProcessMatch::Comm(_)))
    }

    fn dests(&self, policy_id: u32) -> impl Iterator<Item = (&'a DestPrefix, &'a u32)> {
        let least = |policy_id| DestPrefix {
            policy_id,
            class: 0,
            addr: [0; 16],
            prefix_len: 0,
        };
        policy_range(self.dests, policy_id, least)
    }

    fn ports(&self, ruleset: u32) -> impl Iterator<Item = (&'a PortPrefix, &'a u32)> {
        let least = |ruleset| PortPrefix {
            ruleset,
            proto: 0,
            port: 0,
            port_bits: 0,
        };
        policy_range(self.ports, ruleset, least)
    }
}

/// The entries of `map` whose keys lead with `id`, given the least key
/// that leads with an id.
fn policy_range<K: Ord, V>(
    map: &BTreeMap<K, V>,
    id: u32,
    least: impl Fn(u32) -> K,
) -> std::collections::btree_map::Range<'_, K, V> {
    match id.checked_add(1) {
        Some(next) => map.range(least(id)..least(next)),
        None => map.range(least(id)..),
    }
}

/// Everything the policy maps hold, plus the global unknown-cgroup verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelState {
    pub unknown_verdict: Verdict,
    #[serde(with = "as_pairs")]
    pub cgroups: BTreeMap<u64, CgroupEntry>,
    #[serde(with = "as_pairs")]
    pub processes: BTreeMap<ProcessKey, u32>,
    #[serde(with = "as_pairs")]
    pub dests: BTreeMap<DestPrefix, u32>,
    #[serde(with = "as_pairs")]
    pub ports: BTreeMap<PortPrefix, u32>,
    /// Host-side veth ifindex → the cgroup id of the container behind it.
    #[serde(with = "as_pairs", default)]
    pub veths: BTreeMap<u32, u64>,
    /// The addresses each veth's frames may carry as their source.
    #[serde(default)]
    pub veth_sources: BTreeSet<VethSource>,
}

impl KernelState {
    /// Every policy id a cgroup points at or an entry is written under.
    pub fn policy_ids_in_use(&self) -> BTreeSet<u32> {
        self.cgroups
            .values()
            .map(|e| e.policy_id)
            .chain(self.dests.keys().map(|k| k.policy_id))
            .chain(self.processes.keys().map(|k| k.policy_id))
            .collect()
    }

    pub fn entry_count(&self) -> usize {
        self.cgroups.len()
            + self.processes.len()
            + self.dests.len()
            + self.ports.len()
            + self.veths.len()
            + self.veth_sources.len()
    }

    pub fn get(&self, key: &EntryKey) -> Option<Entry> {
        match *key {
            EntryKey::Cgroup { id } => self
                .cgroups
                .get(&id)
                .map(|&value| Entry::Cgroup { id, value }),
            EntryKey::Process { key } => self
                .processes
                .get(&key)
                .map(|&class| Entry::Process { key, class }),
            EntryKey::Dest { key } => self
                .dests
                .get(&key)
                .map(|&ruleset| Entry::Dest { key, ruleset }),
            EntryKey::Port { key } => self
                .ports
                .get(&key)
                .map(|&rule_id| Entry::Port { key, rule_id }),
            EntryKey::Veth { ifindex } => self
                .veths
                .get(&ifindex)
                .map(|&cgroup_id| Entry::Veth { ifindex, cgroup_id }),
            EntryKey::VethSource { key } => self
                .veth_sources
                .contains(&key)
                .then_some(Entry::VethSource { key }),
        }
    }

    pub fn upsert(&mut self, entry: Entry) {
        match entry {
            Entry::Cgroup { id, value } => {
                self.cgroups.insert(id, value);
            }
            Entry::Process { key, class } => {
                self.processes.insert(key, class);
            }
            Entry::Dest { key, ruleset } => {
                self.dests.insert(key, ruleset);
            }
            Entry::Port { key, rule_id } => {
                self.ports.insert(key, rule_id);
            }
            Entry::Veth { ifindex, cgroup_id } => {
                self.veths.insert(ifindex, cgroup_id);
            }
            Entry::VethSource { key } => {
                self.veth_sources.insert(key);
            }
        }
    }

    pub fn remove(&mut self, key: &EntryKey) -> Option<Entry> {
        let old = self.get(key);
        match *key {
            EntryKey::Cgroup { id } => {
                self.cgroups.remove(&id);
            }
            EntryKey::Process { key } => {
                self.processes.remove(&key);
            }
            EntryKey::Dest { key } => {
                self.dests.remove(&key);
            }
            EntryKey::Port { key } => {
                self.ports.remove(&key);
            }
            EntryKey::Veth { ifindex } => {
                self.veths.remove(&ifindex);
            }
            EntryKey::VethSource { key } => {
                self.veth_sources.remove(&key);
            }
        }
        old
    }

    /// Applies `ops` in order.
    pub fn apply_ops(&mut self, ops: &[MapOp]) {
        for op in ops {
            match op {
                MapOp::Upsert { entry } => self.upsert(*entry),
                MapOp::Delete { key } => {
                    self.remove(key);
                }
            }
        }
    }

    /// Every entry, in map order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let cgroups = self
            .cgroups
            .iter()
            .map(|(&id, &value)| Entry::Cgroup { id, value });
        let processes = self
            .processes
            .iter()
            .map(|(&key, &class)| Entry::Process { key, class });
        let dests = self
            .dests
            .iter()
            .map(|(&key, &ruleset)| Entry::Dest { key, ruleset });
        let ports = self
            .ports
            .iter()
            .map(|(&key, &rule_id)| Entry::Port { key, rule_id });
        let veths = self
            .veths
            .iter()
            .map(|(&ifindex, &cgroup_id)| Entry::Veth { ifindex, cgroup_id });
        let veth_sources = self
            .veth_sources
            .iter()
            .map(|&key| Entry::VethSource { key });
        cgroups
            .chain(processes)
            .chain(dests)
            .chain(ports)
            .chain(veths)
            .chain(veth_sources)
    }
}

/// Serialises a map with non-string keys as a list of pairs (JSON objects
/// need string keys).
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let pairs: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_takes_the_kernels_device_encoding() {
        // 8:1 (sda1) is 0x801 to the C library, 8 << 20 | 1 to the kernel;
        // 259:65536 shows the high bits of both halves.
        assert_eq!(FileId::from_stat(0x801, 5, 6, 7).dev, (8 << 20) | 1);
        let big = (259u64 << 8) | (0x10000u64 << 12);
        assert_eq!(FileId::from_stat(big, 5, 6, 7).dev, (259 << 20) | 0x10000);
        assert_eq!(FileId::from_stat(0x801, 5, 6, 7).ctime_nsec, 7);
    }

    #[test]
    fn a_veth_source_keeps_ipv4_v4_mapped_and_gives_it_back() {
        let v4: IpAddr = "172.17.0.2".parse().unwrap();
        let source = VethSource::new(7, v4);
        assert_eq!(
            source.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 172, 17, 0, 2]
        );
        assert_eq!(source.address(), v4);
        let v6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(VethSource::new(7, v6).address(), v6);
    }

    fn sample() -> KernelState {
        let mut s = KernelState::default();
        s.upsert(Entry::Cgroup {
            id: 42,
            value: CgroupEntry::enforced(1),
        });
        s.upsert(Entry::Dest {
            key: DestPrefix {
                policy_id: 1,
                class: 0,
                addr: [0; 16],
                prefix_len: 0,
            },
            ruleset: 7,
        });
        s.upsert(Entry::Port {
            key: PortPrefix {
                ruleset: 7,
                proto: 6,
                port: 443,
                port_bits: 16,
            },
            rule_id: 3,
        });
        s
    }

    /// A policy's tables are alike when its comm classes, prefixes and
    /// their rulesets' ports are; other policies, unused rulesets and the
    /// containers' files do not count.
    #[test]
    fn rule_tables_judge_a_policy_alike_by_its_own_entries() {
        let base = sample();
        let alike = |f: &dyn Fn(&mut KernelState)| {
            let mut changed = base.clone();
            f(&mut changed);
            RuleTables::of(&base).judge_policy_alike(&RuleTables::of(&changed), 1)
        };
        assert!(alike(&|_| ()));
        let port = |ruleset, port| Entry::Port {
            key: PortPrefix {
                ruleset,
                proto: 6,
                port,
                port_bits: 16,
            },
            rule_id: 3,
        };
        let dest = |policy_id, prefix_len| Entry::Dest {
            key: DestPrefix {
                policy_id,
                class: 0,
                addr: [0; 16],
                prefix_len,
            },
            ruleset: 7,
        };
        let process = |policy_id, process| Entry::Process {
            key: ProcessKey { policy_id, process },
            class: 1,
        };
        assert!(!alike(&|s| s.upsert(port(7, 22))), "a port of its ruleset");
        assert!(!alike(&|s| s.upsert(dest(1, 8))), "a prefix of its own");
        assert!(
            !alike(&|s| s.upsert(process(1, ProcessMatch::Comm(9)))),
            "a comm class"
        );
        assert!(
            alike(&|s| s.upsert(port(8, 22))),
            "a ruleset it does not use"
        );
        assert!(alike(&|s| s.upsert(dest(2, 8))), "another policy's prefix");
        assert!(
            alike(&|s| s.upsert(process(1, ProcessMatch::File(FileId::default())))),
            "a container's file"
        );
        assert!(alike(
            &|s| s.upsert(process(u32::MAX, ProcessMatch::Comm(9)))
        ));
        let mut last = base.clone();
        last.upsert(process(u32::MAX, ProcessMatch::Comm(9)));
        assert!(
            !RuleTables::of(&base).judge_policy_alike(&RuleTables::of(&last), u32::MAX),
            "the last policy id"
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = sample();
        let json = serde_json_roundtrip(&s);
        assert_eq!(json, s);
    }

    fn serde_json_roundtrip(s: &KernelState) -> KernelState {
        let text = serde_json::to_string(s).expect("serialise");
        serde_json::from_str(&text).expect("deserialise")
    }

    #[test]
    fn upsert_then_delete_restores() {
        let mut s = sample();
        let before = s.clone();
        let key = EntryKey::Cgroup { id: 9 };
        s.apply_ops(&[MapOp::Upsert {
            entry: Entry::Cgroup {
                id: 9,
                value: CgroupEntry {
                    policy_id: 2,
                    audit: true,
                    unrestricted: false,
                    forwarded_dns: false,
                },
            },
        }]);
        assert!(s.get(&key).is_some());
        s.apply_ops(&[MapOp::Delete { key }]);
        assert_eq!(s, before);
    }
}
