//! Stable ids for policies, process classes, rules and rulesets.
//!
//! Map keys and values embed these ids, so if a one-rule edit renumbered
//! them every entry would change. Each id is therefore derived from *what
//! it names* (a content hash picks the preferred id; collisions probe to the
//! next free one) and remembered in a table that lives as long as the
//! daemon: the same content keeps its id across reloads, new content gets a
//! new id, and an id still present in the kernel is never handed to
//! different content (that would briefly mix two rulesets while a diff is
//! being applied).
//!
//! After a restart the tables are rebuilt from the loader's state (ruleset
//! contents are visible there; policy ids are recovered through the cgroups
//! of running containers, process classes through the comms and resolved
//! files of the policies' entries), so a restarted policyd converges with an
//! empty or near-empty diff.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
};

use kernel_model::state::{KernelState, ProcessKey, ProcessMatch};

use crate::{
    inventory::{self, Inventory},
    policy::{Allowance, PolicySet, ProcessIdent},
};

/// FNV-1a as a `Hasher`: deterministic across runs (std's `RandomState`
/// is not), so the same content prefers the same id after a restart.
#[derive(Default)]
pub struct StableHasher(u64);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let start = if self.0 == 0 {
            contain_common::fnv1a_start()
        } else {
            self.0
        };
        self.0 = bytes
            .iter()
            .fold(start, |h, &b| contain_common::fnv1a_step(h, b));
    }
}

pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = StableHasher::default();
    value.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free {what} id left in {first}..={last}")]
pub struct IdSpaceFull {
    pub what: &'static str,
    pub first: u32,
    pub last: u32,
}

/// Content → id, both ways, within an inclusive id range.
#[derive(Clone, Debug)]
pub struct IdTable<K> {
    what: &'static str,
    first: u32,
    last: u32,
    by_key: HashMap<K, u32>,
    by_id: HashMap<u32, K>,
    /// Ids the kernel's state uses that no key here is known to hold: what
    /// they name cannot be told, so none is handed out.
    reserved: BTreeSet<u32>,
}

impl<K: Clone + Eq + Hash> IdTable<K> {
    pub fn new(what: &'static str, first: u32, last: u32) -> Self {
        IdTable {
            what,
            first,
            last,
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            reserved: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// The id of `key`, allocating one near its content hash if new.
    pub fn get_or_alloc(&mut self, key: &K) -> Result<u32, IdSpaceFull> {
        if let Some(&id) = self.by_key.get(key) {
            return Ok(id);
        }
        self.alloc(key, |_| false)
    }

    /// Gives `key` an id other than its own, one `taken` does not name and
    /// no other key holds. On failure `key` keeps its id.
    pub fn move_to_fresh(
        &mut self,
        key: &K,
        taken: impl Fn(u32) -> bool,
    ) -> Result<u32, IdSpaceFull> {
        let old = self.by_key.remove(key);
        if let Some(old) = old {
            self.by_id.remove(&old);
        }
        let moved = self.alloc(key, |id| Some(id) == old || taken(id));
        if let (Err(_), Some(old)) = (&moved, old) {
            self.by_key.insert(key.clone(), old);
            self.by_id.insert(old, key.clone());
        }
        moved
    }

    /// Allocates `key` (which holds no id) the first id from its content
    /// hash on that no key holds and `skip` does not name.
    fn alloc(&mut self, key: &K, skip: impl Fn(u32) -> bool) -> Result<u32, IdSpaceFull> {
        let full = IdSpaceFull {
            what: self.what,
            first: self.first,
            last: self.last,
        };
        let span = u64::from(self.last - self.first) + 1;
        if self.by_key.len() as u64 >= span {
            return Err(full);
        }
        let start = stable_hash(key) % span;
        // Linear probing: the table is sparse for every realistic policy, so
        // this finds a slot in a step or two; `skip` may leave none.
        for offset in 0..span {
            let id = self.first + ((start + offset) % span) as u32;
            if !self.by_id.contains_key(&id) && !self.reserved.contains(&id) && !skip(id) {
                self.by_key.insert(key.clone(), id);
                self.by_id.insert(id, key.clone());
                return Ok(id);
            }
        }
        Err(full)
    }

    /// Records an id learned from the kernel, unless the key or id is taken.
    pub fn seed(&mut self, key: K, id: u32) -> bool {
        if id < self.first
            || id > self.last
            || self.by_key.contains_key(&key)
            || self.by_id.contains_key(&id)
        {
            return false;
        }
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key);
        true
    }

    /// Reserves the ids of `in_use` (ids the kernel holds) that no key
    /// holds, in place of what was reserved before: an id learned later
    /// ([`IdTable::seed`]) is no longer reserved, being held.
    pub fn reserve_unknown(&mut self, in_use: impl IntoIterator<Item = u32>) {
        self.reserved = in_use
            .into_iter()
            .filter(|id| (self.first..=self.last).contains(id) && !self.by_id.contains_key(id))
            .collect();
    }

    /// Forgets every id for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, &K) -> bool) {
        self.by_id.retain(|id, key| keep(*id, key));
        let by_id = &self.by_id;
        self.by_key.retain(|_, id| by_id.contains_key(id));
    }
}

/// Which process class of a policy: the policy id and the sorted process
/// identities of its entry as written (comms, and exe paths: the files
/// those name differ from container to container, the class does not).
pub type ClassKey = (u32, Vec<ProcessIdent>);

/// A rule id names an *allowance* within a scope, not a destination: all
/// rules of one policy and process scope that allow the same protocols and
/// ports share it, so 100 000 destinations with the same ports fold into
/// one ruleset. `explain` finds the precise rule from the destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleKey {
    pub policy: String,
    /// `None` for the policy's container-wide rules.
    pub process: Option<Vec<ProcessIdent>>,
    pub allowances: Vec<Allowance>,
}

/// A ruleset's content: its `PORTS` entries as (proto, port, bits, rule id).
pub type RulesetKey = Vec<(u8, u16, u8, u32)>;

/// Rule id 0 means "no rule"; 1 is the implicit loopback allowance.
pub const LOOPBACK_RULE_ID: u32 = 1;
/// The `allow_docker_dns` allowance (TCP and UDP to `127.0.0.11`).
pub const DOCKER_DNS_RULE_ID: u32 = 2;
const FIRST_RULE_ID: u32 = 3;

#[derive(Clone, Debug)]
pub struct IdTables {
    pub policies: IdTable<String>,
    pub classes: IdTable<ClassKey>,
    pub rules: IdTable<RuleKey>,
    pub rulesets: IdTable<RulesetKey>,
}

impl Default for IdTables {
    fn default() -> Self {
        IdTables {
            policies: IdTable::new("policy", 1, contain_common::MAX_POLICIES - 1),
            classes: IdTable::new("process class", 1, u32::MAX),
            rules: IdTable::new("rule", FIRST_RULE_ID, u32::MAX),
            rulesets: IdTable::new("ruleset", 1, u32::MAX),
        }
    }
}

impl IdTables {
    /// Learns rulesets from what the kernel holds, and reserves the policy
    /// ids it uses: a policy learns its id only from proof (the containers
    /// it selects, [`IdTables::seed_policies`], or its rules,
    /// `compile::seed_policy_ids_from_rules`), never by preferring the same
    /// id as the policy the kernel's entries were made for.
    pub fn seed_from_state(&mut self, state: &KernelState) {
        self.policies.reserve_unknown(state.policy_ids_in_use());
        let mut rulesets: BTreeMap<u32, RulesetKey> = BTreeMap::new();
        for (key, &rule_id) in &state.ports {
            rulesets.entry(key.ruleset).or_default().push((
                key.proto,
                key.port,
                key.port_bits,
                rule_id,
            ));
        }
        // A ruleset with no PORTS entries (an explicit "nothing") is seen
        // only through DESTS.
        for &ruleset in state.dests.values() {
            rulesets.entry(ruleset).or_default();
        }
        for (id, mut content) in rulesets {
            content.sort_unstable();
            self.rulesets.seed(content, id);
        }
    }

    /// Learns policy ids from the cgroups of running containers: the
    /// policy that selects a container now is taken to be the one whose id
    /// its cgroup carries in the kernel, when that is consistent.
    pub fn seed_policies(
        &mut self,
        state: &KernelState,
        policies: &PolicySet,
        inventory: &Inventory,
    ) {
        for container in &inventory.containers {
            let Some(entry) = container.cgroup_id.and_then(|id| state.cgroups.get(&id)) else {
                continue;
            };
            if entry.unrestricted || entry.policy_id == 0 {
                continue;
            }
            if let Some(index) = inventory::select(policies, container).policy {
                self.policies
                    .seed(policies.policies[index].name.clone(), entry.policy_id);
            }
        }
        self.seed_classes(state, policies, inventory);
    }

    /// Learns process classes of the policies whose ids are known: the
    /// class the kernel holds for an entry's comm, or for a file one of its
    /// exe paths names in a container the policy selects.
    fn seed_classes(&mut self, state: &KernelState, policies: &PolicySet, inventory: &Inventory) {
        let mut selected: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (ci, container) in inventory.containers.iter().enumerate() {
            if let Some(index) = inventory::select(policies, container).policy {
                selected.entry(index).or_default().push(ci);
            }
        }
        for (index, policy) in policies.policies.iter().enumerate() {
            let Some(policy_id) = self.policies.get(&policy.name) else {
                continue;
            };
            let containers = selected.get(&index).map(Vec::as_slice).unwrap_or(&[]);
            for process in &policy.processes {
                let comms = process.idents.iter().filter_map(ProcessIdent::comm_match);
                let files = containers.iter().flat_map(|&ci| {
                    let exes = &inventory.containers[ci].exes;
                    process.exe_paths().filter_map(|path| {
                        let file = exes.get(path)?.as_ref().ok()?.file;
                        Some(ProcessMatch::File(file))
                    })
                });
                let class = comms.chain(files).find_map(|process| {
                    state
                        .processes
                        .get(&ProcessKey { policy_id, process })
                        .copied()
                });
                if let Some(class) = class {
                    let mut idents = process.idents.clone();
                    idents.sort_unstable();
                    idents.dedup();
                    self.classes.seed((policy_id, idents), class);
                }
            }
        }
    }

    /// Forgets ids the kernel no longer holds (after a successful apply),
    /// so the tables do not grow without bound across edits.
    pub fn retain_live(&mut self, state: &KernelState, policies: &PolicySet) {
        // A class whose executables no running container has keeps its
        // rules in DESTS: it is live as long as those are.
        let live_classes: HashSet<(u32, u32)> = state
            .processes
            .iter()
            .map(|(k, &c)| (k.policy_id, c))
            .chain(state.dests.keys().map(|k| (k.policy_id, k.class)))
            .collect();
        self.classes
            .retain(|id, key| live_classes.contains(&(key.0, id)));
        let live_rules: HashSet<u32> = state.ports.values().copied().collect();
        self.rules.retain(|id, _| live_rules.contains(&id));
        let live_rulesets: HashSet<u32> = state
            .dests
            .values()
            .copied()
            .chain(state.ports.keys().map(|k| k.ruleset))
            .collect();
        self.rulesets.retain(|id, _| live_rulesets.contains(&id));
        // A policy the file no longer has keeps its id while the kernel
        // uses it (cgroup entries kept without an inventory), so that no
        // other policy takes that id and those containers' rules with it.
        let names: HashSet<&str> = policies.policies.iter().map(|p| p.name.as_str()).collect();
        let in_use = state.policy_ids_in_use();
        self.policies
            .retain(|id, name| names.contains(name.as_str()) || in_use.contains(&id));
        self.policies.reserve_unknown(in_use);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_id_and_collisions_probe() {
        let mut t: IdTable<String> = IdTable::new("test", 1, 3);
        let a = t.get_or_alloc(&"a".to_string()).unwrap();
        assert_eq!(t.get_or_alloc(&"a".to_string()).unwrap(), a);
        let b = t.get_or_alloc(&"b".to_string()).unwrap();
        let c = t.get_or_alloc(&"c".to_string()).unwrap();
        let mut all = vec![a, b, c];
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3]);
        assert!(t.get_or_alloc(&"d".to_string()).is_err());
        t.retain(|id, _| id != b);
        assert_eq!(t.get_or_alloc(&"d".to_string()).unwrap(), b);
    }

    #[test]
    fn preferred_id_is_deterministic() {
        let mut a: IdTable<String> = IdTable::new("t", 1, u32::MAX);
        let mut b: IdTable<String> = IdTable::new("t", 1, u32::MAX);
        assert_eq!(
            a.get_or_alloc(&"x".into()).unwrap(),
            b.get_or_alloc(&"x".into()).unwrap()
        );
    }

    #[test]
    fn a_key_moved_to_a_fresh_id_avoids_its_own_the_taken_and_the_held() {
        let mut t = IdTable::new("policy", 1, 4);
        let web = t.get_or_alloc(&"web".to_string()).unwrap();
        let db = t.get_or_alloc(&"db".to_string()).unwrap();
        let taken = |id| id == 1 || id == 2;
        let moved = t.move_to_fresh(&"web".to_string(), taken).unwrap();
        assert!(moved != web && moved != db && !taken(moved), "{moved}");
        assert_eq!(t.get(&"web".to_string()), Some(moved));
        assert_eq!(t.len(), 2);
        // Nowhere left to go: it keeps its id.
        let err = t.move_to_fresh(&"web".to_string(), |id| id != moved);
        assert!(err.is_err());
        assert_eq!(t.get(&"web".to_string()), Some(moved));
        assert_eq!(t.get(&"db".to_string()), Some(db));
    }

    /// Two policy names that prefer the same policy id.
    fn colliding_names() -> (String, String) {
        let span = u64::from(contain_common::MAX_POLICIES - 1);
        let mut first_by_preference = HashMap::new();
        for n in 0.. {
            let name = format!("policy-{n}");
            let preference = stable_hash(&name) % span;
            if let Some(first) = first_by_preference.insert(preference, name.clone()) {
                return (first, name);
            }
        }
        unreachable!()
    }

    fn kernel_with_a_cgroup_of(policy_id: u32) -> KernelState {
        let mut state = KernelState::default();
        state.upsert(kernel_model::state::Entry::Cgroup {
            id: 42,
            value: kernel_model::state::CgroupEntry {
                policy_id,
                audit: false,
                unrestricted: false,
                forwarded_dns: false,
            },
        });
        state
    }

    fn policies_named(names: &[&str]) -> PolicySet {
        let text: String = names
            .iter()
            .map(|n| format!("[[policy]]\nname = '{n}'\nselect = {{ name = '{n}' }}\n"))
            .collect();
        crate::policy::parse("test.toml", &text).expect("a valid policy")
    }

    #[test]
    fn a_removed_policys_id_the_kernel_still_uses_goes_to_no_other_policy() {
        let (old, new) = colliding_names();
        let mut ids = IdTables::default();
        let id = ids.policies.get_or_alloc(&old).unwrap();
        // The file drops `old`; its containers' entries stay in the kernel
        // (kept without an inventory), and `new` prefers the same id.
        ids.retain_live(&kernel_with_a_cgroup_of(id), &policies_named(&[&new]));
        assert_ne!(ids.policies.get_or_alloc(&new).unwrap(), id);
        assert_eq!(ids.policies.get(&old), Some(id), "kept while in use");
        // Once the kernel no longer uses it, the id is free again.
        let mut ids = IdTables::default();
        ids.policies.get_or_alloc(&old).unwrap();
        ids.retain_live(&KernelState::default(), &policies_named(&[&new]));
        assert_eq!(ids.policies.get_or_alloc(&new).unwrap(), id);
    }

    #[test]
    fn after_a_restart_a_policy_takes_a_kernel_id_only_from_proof() {
        let (old, new) = colliding_names();
        let id = IdTables::default().policies.get_or_alloc(&old).unwrap();
        let kernel = kernel_with_a_cgroup_of(id);
        // Nothing proves which policy the kernel's id names: `new`, which
        // prefers it, does not get it, and neither does `old` itself.
        let mut ids = IdTables::default();
        ids.seed_from_state(&kernel);
        assert_ne!(ids.policies.get_or_alloc(&new).unwrap(), id);
        assert_ne!(ids.policies.get_or_alloc(&old).unwrap(), id);
        // Learned from proof (the containers it selects, or its rules).
        let mut ids = IdTables::default();
        ids.seed_from_state(&kernel);
        assert!(ids.policies.seed(old.clone(), id));
        assert_eq!(ids.policies.get_or_alloc(&old).unwrap(), id);
        assert_ne!(ids.policies.get_or_alloc(&new).unwrap(), id);
    }

    #[test]
    fn seeding_refuses_taken_ids() {
        let mut t: IdTable<String> = IdTable::new("t", 1, 10);
        assert!(t.seed("a".into(), 5));
        assert!(!t.seed("b".into(), 5));
        assert!(!t.seed("a".into(), 6));
        assert!(!t.seed("c".into(), 11));
        assert_eq!(t.get(&"a".into()), Some(5));
    }
}
