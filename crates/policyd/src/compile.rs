//! Compiles a validated policy and the inventory into the kernel state.
//!
//! The kernel looks up, for a packet of a process of class K in a cgroup of
//! policy P: `DESTS[(P, K, addr)]` (longest prefix) → ruleset R, then
//! `PORTS[(R, proto, port)]` (longest prefix), then `PORTS[(R, any, *)]`.
//! It looks at one class and one prefix only, so the compiler must fold:
//!
//! * each process class's rules together with the policy's container-wide
//!   rules (class 0 is "any other process");
//! * each prefix's allowances together with those of every enclosing prefix
//!   (Cilium-style), so the longest match alone carries the whole answer;
//! * identical allowance sets into one ruleset id, so many destinations
//!   with the same ports share one set of `PORTS` entries.
//!
//! The implicit loopback allowance (`127.0.0.0/8`) stops short of Docker's
//! embedded DNS at `127.0.0.11`: that prefix gets an entry of its own that
//! folds in every enclosing prefix's allowances *except* loopback's, plus
//! TCP and UDP when `allow_docker_dns` is set (see [`fold_class`]).
//!
//! IPv6 prefixes never match IPv4 destinations, not even `::/0`: IPv4 is
//! written as IPv4. Since IPv4 is stored as `::ffff:a.b.c.d`, a short IPv6
//! prefix covers the mapped block in key space; the compiler then adds an
//! entry for `::ffff:0:0/96` carrying the IPv4 rules only (possibly none) so
//! the IPv6 rule cannot leak into IPv4.
//!
//! Every policy's rules are compiled whether or not a container uses it
//! yet, so a container start only needs its `CGROUPS` entry, its veth's
//! `VETHS` entry and a `PROCESSES` entry per executable its policy names.
//!
//! A process class is recognised by comm (policy-wide, compiled with the
//! rules) or by the file it executed: each `exe` path resolved inside each
//! selected container (the daemon asks the resolver; the results ride in
//! the inventory, [`crate::inventory::Container::exes`]) gives a
//! `PROCESSES` entry for that file under the policy. A path that names no
//! file there, or a file whose content is not the entry's `sha256` pin,
//! gives none, and a warning: that executable gets the container-wide
//! rules.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    rc::Rc,
};

use contain_common::capacity;
use kernel_model::state::{
    CgroupEntry, DestPrefix, FileId, KernelState, PortPrefix, ProcessKey, ProcessMatch, VethSource,
};

use crate::{
    diagnostic::{Diagnostic, Location},
    ids::{IdSpaceFull, IdTables, RuleKey, RulesetKey, DOCKER_DNS_RULE_ID, LOOPBACK_RULE_ID},
    inventory::{self, Inventory},
    net::{Family, PortBlock, Prefix},
    policy::{AllowRule, Allowance, ContainerPolicy, Mode, PolicySet, ProcessPolicy},
};

/// Where an allowance came from, inside one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleOrigin {
    /// The implicit loopback allowance.
    Loopback,
    /// The `allow_docker_dns` allowance.
    DockerDns,
    /// `process` is the index of the `[[policy.process]]` entry, `None` for
    /// container-wide rules; `rule` indexes that entry's `allow` list.
    Rule { process: Option<usize>, rule: usize },
}

/// Why a compile could not produce a state the kernel can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    IdSpace(#[from] IdSpaceFull),
    #[error("the policy needs {needed} {map} entries but the kernel map holds {capacity}; reduce the rules (or the process entries, which each repeat the container-wide rules)")]
    Capacity {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
}

/// What a policy id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    pub index: usize,
    pub name: String,
    pub mode: Mode,
}

/// What a rule id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub policy_index: Option<usize>,
    /// "container-wide", "exe /usr/bin/curl", or "implicit loopback".
    pub scope: String,
    pub allowances: String,
}

/// Reverse lookups from ids to the policy, for explain, status and events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub policies: BTreeMap<u32, PolicyInfo>,
    /// (policy id, class) → index of the process entry.
    pub classes: BTreeMap<(u32, u32), usize>,
    pub rules: BTreeMap<u32, RuleInfo>,
}

/// The policy-dependent part of the kernel state; the inventory adds only
/// `CGROUPS` and `VETHS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledRules {
    /// Policy id per policy index.
    pub policy_ids: Vec<u32>,
    /// Class id per policy index and process index.
    pub class_ids: Vec<Vec<u32>>,
    /// Rule id per policy, per scope (`0` = container-wide, `1 + i` =
    /// process `i`), per rule index.
    pub rule_ids: Vec<Vec<Vec<u32>>>,
    pub processes: BTreeMap<ProcessKey, u32>,
    pub dests: BTreeMap<DestPrefix, u32>,
    pub ports: BTreeMap<PortPrefix, u32>,
    pub catalog: Catalog,
    /// Redundant and shadowed rules.
    pub warnings: Vec<Diagnostic>,
    /// Which of `warnings` each policy (by index) gave, so a policy's
    /// compiled form can be taken over whole by the next compile.
    pub policy_warnings: Vec<std::ops::Range<usize>>,
}

/// Which policy a container got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub container_index: usize,
    pub policy_index: Option<usize>,
    /// Later policies whose selectors also match (the first wins).
    pub also_matched: Vec<usize>,
    /// The `CGROUPS` entry its policy gives it (`None`: no cgroup id yet).
    /// The one written differs when it shares its cgroup with a container
    /// that has another (see [`assign`]).
    pub entry: Option<CgroupEntry>,
}

/// What one `exe` path of a selected container's policy came to there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExeOutcome {
    pub container_index: usize,
    /// Index of the `[[policy.process]]` entry in the selecting policy.
    pub process_index: usize,
    pub path: String,
    /// The file the kernel recognises for that entry, or why there is none
    /// (the executable then gets the container-wide rules).
    pub file: Result<FileId, String>,
    /// Where the path's symlinks end inside the container's root, and the
    /// file's hard links (0: not known), as the resolver found them: a file
    /// of another name, or of several, is also other commands.
    pub final_path: Option<String>,
    pub links: u64,
}

/// Policy × inventory → everything the loader's maps should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub rules: CompiledRules,
    pub assignments: Vec<Assignment>,
    pub state: KernelState,
    /// Inventory findings (containers sharing a cgroup id, overlaps,
    /// executables not resolved).
    pub warnings: Vec<Diagnostic>,
    pub exes: Vec<ExeOutcome>,
}

/// Compiles policy and inventory in one go.
pub fn compile(
    policies: &PolicySet,
    inventory: &Inventory,
    ids: &mut IdTables,
) -> Result<Compiled, CompileError> {
    let rules = compile_rules(policies, ids)?;
    let Assigned {
        assignments,
        cgroups,
        veths,
        veth_sources,
        files,
        exes,
        warnings,
    } = assign(policies, &rules, inventory)?;
    let state = assemble(policies, &rules, cgroups, (veths, veth_sources), files);
    Ok(Compiled {
        rules,
        assignments,
        state,
        warnings,
        exes,
    })
}

/// The full kernel state from compiled rules and the inventory's maps.
pub fn assemble(
    policies: &PolicySet,
    rules: &CompiledRules,
    cgroups: BTreeMap<u64, CgroupEntry>,
    (veths, veth_sources): (BTreeMap<u32, u64>, BTreeSet<VethSource>),
    files: BTreeMap<ProcessKey, u32>,
) -> KernelState {
    let mut processes = rules.processes.clone();
    processes.extend(files);
    KernelState {
        unknown_verdict: policies.unknown_container,
        cgroups,
        processes,
        dests: rules.dests.clone(),
        ports: rules.ports.clone(),
        veths,
        veth_sources,
    }
}

/// The inventory-dependent part of the kernel state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    pub assignments: Vec<Assignment>,
    pub cgroups: BTreeMap<u64, CgroupEntry>,
    /// Host-side veth ifindex → the cgroup id of its owner.
    pub veths: BTreeMap<u32, u64>,
    /// The addresses of the owners' interfaces behind their veths.
    pub veth_sources: BTreeSet<VethSource>,
    /// `PROCESSES` entries of the executables resolved in the containers.
    pub files: BTreeMap<ProcessKey, u32>,
    /// Every `exe` path of every selected container, resolved or not.
    pub exes: Vec<ExeOutcome>,
    /// Containers sharing a cgroup id or a veth, overlapping selectors,
    /// host network, executables not resolved.
    pub warnings: Vec<Diagnostic>,
}

/// `CGROUPS` and `VETHS` from the inventory: the first selecting policy
/// wins; a known container no policy selects is left alone (unrestricted),
/// and so are the frames on its veths.
pub fn assign(
    policies: &PolicySet,
    rules: &CompiledRules,
    inventory: &Inventory,
) -> Result<Assigned, CompileError> {
    let mut assignments = Vec::with_capacity(inventory.containers.len());
    let mut cgroups = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut owner: HashMap<u64, usize> = HashMap::new();
    // Cgroups containers of different entries share.
    let mut shared: BTreeSet<u64> = BTreeSet::new();
    for (container_index, container) in inventory.containers.iter().enumerate() {
        let selection = inventory::select(policies, container);
        if let Some(index) = selection.policy {
            let policy = &policies.policies[index];
            if !selection.also_matched.is_empty() {
                let others: Vec<String> = selection
                    .also_matched
                    .iter()
                    .map(|&i| format!("\"{}\"", policies.policies[i].name))
                    .collect();
                warnings.push(Diagnostic::warning(
                    policy.location.clone(),
                    format!(
                        "container \"{}\" is selected by policy \"{}\" and also by {}; the first in the file applies",
                        container.name,
                        policy.name,
                        others.join(", ")
                    ),
                ));
            }
            if container.host_network && policy.allow_loopback {
                warnings.push(Diagnostic::warning(
                    policy.location.clone(),
                    format!(
                        "container \"{}\" uses the host network, so loopback is the host's: policy \"{}\" lets it reach every host-local service; set allow_loopback = false in that policy to prevent it",
                        container.name, policy.name
                    ),
                ));
            }
        }
        let entry = container
            .cgroup_id
            .map(|_| cgroup_entry(policies, rules, selection.policy));
        assignments.push(Assignment {
            container_index,
            policy_index: selection.policy,
            also_matched: selection.also_matched,
            entry,
        });
        let (Some(cgroup_id), Some(entry)) = (container.cgroup_id, entry) else {
            continue;
        };
        let Some(&kept) = cgroups.get(&cgroup_id) else {
            owner.insert(cgroup_id, container_index);
            cgroups.insert(cgroup_id, entry);
            continue;
        };
        // One cgroup, one entry: the kernel cannot tell the containers'
        // packets apart. The stricter entry is kept, so that sharing a
        // cgroup with an unselected (or audited) container never lifts a
        // policy. Between two policies of the same mode neither's rules may
        // judge the other's packets: the cgroup gets none (denied, or in
        // audit reported), and status shows both unenforced.
        if kept == entry {
            continue;
        }
        match strictness(&entry).cmp(&strictness(&kept)) {
            std::cmp::Ordering::Greater => {
                owner.insert(cgroup_id, container_index);
                cgroups.insert(cgroup_id, entry);
            }
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                cgroups.insert(cgroup_id, CgroupEntry::ruleless(kept.audit));
            }
        }
        shared.insert(cgroup_id);
    }
    // Said once the cgroup's entry is final: a later container may have
    // changed what judges the earlier ones.
    for cgroup_id in shared {
        let names: Vec<String> = inventory
            .containers
            .iter()
            .filter(|c| c.cgroup_id == Some(cgroup_id))
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        let entry = cgroups[&cgroup_id];
        let judged_by = if entry.is_ruleless() {
            let what = if entry.audit { "audited" } else { "denied" };
            format!("no rules: every packet is {what}")
        } else {
            format!(
                "\"{}\"'s policy",
                inventory.containers[owner[&cgroup_id]].name
            )
        };
        warnings.push(Diagnostic::warning(
            None,
            format!(
                "containers {} report the same cgroup id {cgroup_id} under different policies; the kernel cannot tell their packets apart and judges them all by {judged_by}",
                names.join(", "),
            ),
        ));
    }
    let (veths, veth_sources, sources_needed) =
        assign_veths(policies, inventory, &assignments, &mut warnings);
    let (files, exes) = assign_files(policies, rules, inventory, &assignments, &mut warnings);
    check_capacity(&[
        ("CGROUPS", cgroups.len(), capacity::CGROUPS),
        ("VETHS", veths.len(), capacity::VETHS),
        ("VETH_SOURCES", sources_needed, capacity::VETH_SOURCES),
        (
            "PROCESSES",
            rules.processes.len() + files.len(),
            capacity::PROCESSES,
        ),
    ])?;
    Ok(Assigned {
        assignments,
        cgroups,
        veths,
        veth_sources,
        files,
        exes,
        warnings,
    })
}

/// Fails on the first map that needs more entries than the kernel's holds.
fn check_capacity(maps: &[(&'static str, usize, u32)]) -> Result<(), CompileError> {
    for &(map, needed, capacity) in maps {
        if needed > capacity as usize {
            return Err(CompileError::Capacity {
                map,
                needed,
                capacity,
            });
        }
    }
    Ok(())
}

/// The `CGROUPS` entry of a container the policy of index `policy`
/// selects (`None`: no policy does).
pub fn cgroup_entry(
    policies: &PolicySet,
    rules: &CompiledRules,
    policy: Option<usize>,
) -> CgroupEntry {
    match policy {
        Some(index) => CgroupEntry {
            audit: policies.policies[index].mode == Mode::Audit,
            forwarded_dns: policies.policies[index].allow_docker_dns,
            ..CgroupEntry::enforced(rules.policy_ids[index])
        },
        None => CgroupEntry {
            unrestricted: true,
            ..CgroupEntry::ruleless(false)
        },
    }
}

/// How much a cgroup entry restricts: enforced over audited over
/// unrestricted.
fn strictness(entry: &CgroupEntry) -> u8 {
    match (entry.unrestricted, entry.audit) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 2,
    }
}

/// What the kernel recognises of `path` of entry `process` in a container
/// whose resolutions are `exes`: its file, or why none.
pub fn exe_file(
    process: &ProcessPolicy,
    path: &str,
    exes: &BTreeMap<String, crate::inventory::Resolution>,
) -> Result<FileId, String> {
    let resolved = match exes.get(path) {
        None => return Err("not resolved offline (the inventory lists no file for it)".into()),
        Some(Err(why)) => return Err(why.clone()),
        Some(Ok(resolved)) => resolved,
    };
    match (&process.sha256, &resolved.sha256) {
        (None, _) => Ok(resolved.file),
        (Some(_), None) => {
            Err("its content was not hashed, so the sha256 pin cannot be checked".into())
        }
        (Some(pin), Some(hash)) if pin == hash => Ok(resolved.file),
        (Some(pin), Some(hash)) => Err(format!(
            "its content (sha256 {hash}) is not what the sha256 pin says ({pin})"
        )),
    }
}

/// `PROCESSES` entries for the files the `exe` paths name in each mapped
/// container a policy selects (one entry per file and policy: containers
/// sharing a file share it). A path that names no usable file gives no
/// entry, and a warning.
fn assign_files(
    policies: &PolicySet,
    rules: &CompiledRules,
    inventory: &Inventory,
    assignments: &[Assignment],
    warnings: &mut Vec<Diagnostic>,
) -> (BTreeMap<ProcessKey, u32>, Vec<ExeOutcome>) {
    let mut files: BTreeMap<ProcessKey, (u32, usize)> = BTreeMap::new();
    let mut outcomes = Vec::new();
    for a in assignments {
        let container = &inventory.containers[a.container_index];
        let (Some(policy_index), Some(_)) = (a.policy_index, container.cgroup_id) else {
            continue;
        };
        let policy = &policies.policies[policy_index];
        let policy_id = rules.policy_ids[policy_index];
        for (pi, process) in policy.processes.iter().enumerate() {
            let class = rules.class_ids[policy_index][pi];
            for path in process.exe_paths() {
                let file = exe_file(process, path, &container.exes).and_then(|id| {
                    let key = ProcessKey {
                        policy_id,
                        process: ProcessMatch::File(id),
                    };
                    match files.get(&key) {
                        Some(&(other_class, other)) if other_class != class => Err(format!(
                            "it is the same file as {} of an earlier process entry, which keeps it",
                            policy.processes[other].describe()
                        )),
                        _ => {
                            files.insert(key, (class, pi));
                            Ok(id)
                        }
                    }
                });
                if let Err(why) = &file {
                    warnings.push(Diagnostic::warning(
                        process.location.clone(),
                        format!(
                            "container \"{}\": exe {path} gives no process class: {why}; processes running it get the container-wide rules of policy \"{}\"",
                            container.name, policy.name
                        ),
                    ));
                }
                let (final_path, links) = match container.exes.get(path) {
                    Some(Ok(resolved)) => (resolved.final_path.clone(), resolved.links),
                    _ => (None, 0),
                };
                outcomes.push(ExeOutcome {
                    container_index: a.container_index,
                    process_index: pi,
                    path: path.to_string(),
                    file,
                    final_path,
                    links,
                });
            }
        }
    }
    let files = files
        .into_iter()
        .map(|(key, (class, _))| (key, class))
        .collect();
    (files, outcomes)
}

/// `VETHS`: each host-side veth to its owner's cgroup id (see
/// [`Inventory::veth_owners`]). Frames from any packet socket behind a
/// shared veth are judged under the owner's policy, so containers sharing
/// it under another policy are named in a warning. `VETH_SOURCES`: the
/// owner's addresses on each of its veths (the containers sharing it share
/// them), link-local ones included: a container on several networks may
/// send from any of its addresses out of any of its veths, and the answer
/// comes back to it. Also how many sources that is: a container with more
/// veths and addresses than the map holds is not expanded past it.
fn assign_veths(
    policies: &PolicySet,
    inventory: &Inventory,
    assignments: &[Assignment],
    warnings: &mut Vec<Diagnostic>,
) -> (BTreeMap<u32, u64>, BTreeSet<VethSource>, usize) {
    let policy_of = |index: usize| assignments[index].policy_index;
    let mut veths = BTreeMap::new();
    let mut sources = BTreeSet::new();
    let mut sources_needed = 0usize;
    // One warning per namespace, not per veth.
    let mut differing: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (ifindex, owner) in inventory.veth_owners() {
        veths.insert(ifindex, owner.cgroup_id);
        let container = &inventory.containers[owner.owner];
        sources_needed += container.addresses.len();
        if sources_needed <= capacity::VETH_SOURCES as usize {
            sources.extend(
                container
                    .addresses
                    .iter()
                    .map(|&addr| VethSource::new(ifindex, addr)),
            );
        }
        if container.addresses.is_empty() && policy_of(owner.owner).is_some() {
            warnings.push(Diagnostic::warning(
                None,
                format!(
                    "container \"{}\": none of its addresses is known (the resolver reports them); its frames on veth {ifindex} are refused as forged, but for the kernel's neighbour discovery, until one is",
                    container.name
                ),
            ));
        }
        let others: Vec<usize> = owner
            .sharers
            .into_iter()
            .filter(|&i| policy_of(i) != policy_of(owner.owner))
            .collect();
        if !others.is_empty() {
            differing.insert(owner.owner, others);
        }
    }
    for (owner, others) in differing {
        let owner_name = &inventory.containers[owner].name;
        let names: Vec<String> = others
            .iter()
            .map(|&i| format!("\"{}\"", inventory.containers[i].name))
            .collect();
        let (subject, verb) = match names.as_slice() {
            [one] => (format!("container {one}"), "shares"),
            many => (format!("containers {}", many.join(", ")), "share"),
        };
        let policy = match policy_of(owner) {
            Some(index) => format!("policy \"{}\"", policies.policies[index].name),
            None => "unrestricted: no policy selects it".to_string(),
        };
        warnings.push(Diagnostic::warning(
            None,
            format!(
                "{subject} {verb} the network namespace of \"{owner_name}\"; packets from no container's socket there (the kernel's answers, Docker's DNS forwarding) are judged under \"{owner_name}\"'s policy ({policy})"
            ),
        ));
    }
    (veths, sources, sources_needed)
}

/// Compiles every policy's rules (independent of the inventory).
pub fn compile_rules(
    policies: &PolicySet,
    ids: &mut IdTables,
) -> Result<CompiledRules, CompileError> {
    compile_rules_reusing(policies, ids, None).map(|(rules, _)| rules)
}

/// Learns policy ids from the kernel's rules, for a start with no inventory
/// to say which container runs which policy (the resolver away): a policy
/// whose container-wide destinations, compiled, are exactly those one
/// policy id holds in the kernel (each prefix to its ruleset, whose ids
/// `ids` learned from the kernel's contents), and no other policy's are,
/// takes that id. Otherwise ids are handed out in the file's order, and two
/// policies whose names prefer the same id could take each other's: the
/// kept-over cgroup entries would point at the other policy's rules. A
/// policy changed since, or one whose rules another's equal, learns
/// nothing here.
pub fn seed_policy_ids_from_rules(state: &KernelState, policies: &PolicySet, ids: &mut IdTables) {
    let mut provisional = ids.clone();
    let Ok(rules) = compile_rules(policies, &mut provisional) else {
        return;
    };
    type Signature = Vec<([u8; 16], u8, u32)>;
    let signature = |dests: &BTreeMap<DestPrefix, u32>, policy_id: u32| -> Signature {
        policy_dests(dests, policy_id)
            .filter(|(k, _)| k.class == 0)
            .map(|(k, &ruleset)| (k.addr, k.prefix_len, ruleset))
            .collect()
    };
    let mut in_kernel: BTreeMap<Signature, Vec<u32>> = BTreeMap::new();
    let kernel_ids: BTreeSet<u32> = state.dests.keys().map(|k| k.policy_id).collect();
    for id in kernel_ids {
        in_kernel
            .entry(signature(&state.dests, id))
            .or_default()
            .push(id);
    }
    let mut compiled: BTreeMap<Signature, Vec<usize>> = BTreeMap::new();
    for (index, &id) in rules.policy_ids.iter().enumerate() {
        compiled
            .entry(signature(&rules.dests, id))
            .or_default()
            .push(index);
    }
    for (signature, indexes) in compiled {
        if signature.is_empty() {
            continue;
        }
        if let ([index], Some([id])) = (
            indexes.as_slice(),
            in_kernel.get(&signature).map(Vec::as_slice),
        ) {
            ids.policies
                .seed(policies.policies[*index].name.clone(), *id);
        }
    }
}

/// How many policies a compile took over from the previous one, and how
/// many it compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    pub reused: usize,
    pub compiled: usize,
}

/// [`compile_rules`], taking over from `previous` (the last compile, with
/// the policies it compiled) the compiled form of every policy that is
/// unchanged: equal in every field, at the same index, and whose ids the
/// tables still give it. Only the policies an edit touched are compiled
/// again, so a one-rule change costs one policy's compile, not the file's.
/// The result is what a full compile with the same id tables gives.
pub fn compile_rules_reusing(
    policies: &PolicySet,
    ids: &mut IdTables,
    previous: Option<(&PolicySet, &CompiledRules)>,
) -> Result<(CompiledRules, Reuse), CompileError> {
    let mut out = CompiledRules::default();
    let mut rulesets = Rulesets::default();
    let mut reuse = Reuse::default();
    for (index, policy) in policies.policies.iter().enumerate() {
        let policy_id = ids.policies.get_or_alloc(&policy.name)?;
        out.policy_ids.push(policy_id);
        out.catalog.policies.insert(
            policy_id,
            PolicyInfo {
                index,
                name: policy.name.clone(),
                mode: policy.mode,
            },
        );
        let warnings_from = out.warnings.len();
        let unchanged = previous.filter(|(before, compiled)| {
            before.policies.get(index) == Some(policy)
                && compiled.policy_ids.get(index) == Some(&policy_id)
                && compiled.policy_warnings.len() == before.policies.len()
        });
        match unchanged {
            Some((_, compiled)) if holds_ids(policy, index, policy_id, compiled, ids) => {
                take_over(index, policy_id, compiled, &mut out);
                reuse.reused += 1;
            }
            _ => {
                compile_policy(index, policy, policy_id, ids, &mut rulesets, &mut out)?;
                reuse.compiled += 1;
            }
        }
        out.policy_warnings.push(warnings_from..out.warnings.len());
    }
    check_capacity(&[
        ("PROCESSES", out.processes.len(), capacity::PROCESSES),
        ("DESTS", out.dests.len(), capacity::DESTS),
        ("PORTS", out.ports.len(), capacity::PORTS),
    ])?;
    Ok((out, reuse))
}

/// The `DESTS` entries of one policy, in a compile's map (keys sort by
/// policy id first).
fn policy_dests(
    dests: &BTreeMap<DestPrefix, u32>,
    policy_id: u32,
) -> impl Iterator<Item = (&DestPrefix, &u32)> {
    let first = DestPrefix {
        policy_id,
        class: 0,
        addr: [0; 16],
        prefix_len: 0,
    };
    dests
        .range(first..)
        .take_while(move |(k, _)| k.policy_id == policy_id)
}

/// The `PORTS` entries of one ruleset (keys sort by ruleset first).
fn ruleset_ports(
    ports: &BTreeMap<PortPrefix, u32>,
    ruleset: u32,
) -> impl Iterator<Item = (&PortPrefix, &u32)> {
    let first = PortPrefix {
        ruleset,
        proto: 0,
        port: 0,
        port_bits: 0,
    };
    ports
        .range(first..)
        .take_while(move |(k, _)| k.ruleset == ruleset)
}

/// The rulesets one policy's destinations point to.
fn policy_rulesets(compiled: &CompiledRules, policy_id: u32) -> BTreeSet<u32> {
    policy_dests(&compiled.dests, policy_id)
        .map(|(_, &ruleset)| ruleset)
        .collect()
}

/// Whether the id tables still give every key of `policy` the id its
/// compiled form in `compiled` uses. An id the tables forgot (an apply
/// drops ids the kernel no longer holds) is learned again; one given to
/// another key since means the policy must be compiled again.
fn holds_ids(
    policy: &ContainerPolicy,
    index: usize,
    policy_id: u32,
    compiled: &CompiledRules,
    ids: &mut IdTables,
) -> bool {
    fn holds<K: Clone + Eq + std::hash::Hash>(
        table: &mut crate::ids::IdTable<K>,
        key: K,
        id: u32,
    ) -> bool {
        match table.get(&key) {
            Some(have) => have == id,
            None => table.seed(key, id),
        }
    }
    let (Some(class_ids), Some(rule_ids)) =
        (compiled.class_ids.get(index), compiled.rule_ids.get(index))
    else {
        return false;
    };
    if class_ids.len() != policy.processes.len() || rule_ids.len() != policy.processes.len() + 1 {
        return false;
    }
    for (process, &class) in policy.processes.iter().zip(class_ids) {
        if !holds(&mut ids.classes, (policy_id, class_key(process)), class) {
            return false;
        }
    }
    for ((process, rules), scope_ids) in scopes(policy).zip(rule_ids) {
        if rules.len() != scope_ids.len() {
            return false;
        }
        // Rules of one scope with the same allowances share a key: check
        // each key once.
        let mut checked: Option<&[Allowance]> = None;
        for (rule, &id) in rules.iter().zip(scope_ids) {
            if checked == Some(rule.allowances.as_slice()) {
                continue;
            }
            if !holds(&mut ids.rules, rule_key(policy, process, rule), id) {
                return false;
            }
            checked = Some(&rule.allowances);
        }
    }
    for ruleset in policy_rulesets(compiled, policy_id) {
        let mut content: RulesetKey = ruleset_ports(&compiled.ports, ruleset)
            .map(|(k, &rule_id)| (k.proto, k.port, k.port_bits, rule_id))
            .collect();
        content.sort_unstable();
        if !holds(&mut ids.rulesets, content, ruleset) {
            return false;
        }
    }
    true
}

/// Copies policy `index`'s compiled form from `compiled` into `out`.
fn take_over(index: usize, policy_id: u32, compiled: &CompiledRules, out: &mut CompiledRules) {
    out.class_ids.push(compiled.class_ids[index].clone());
    out.rule_ids.push(compiled.rule_ids[index].clone());
    out.processes.extend(
        compiled
            .processes
            .iter()
            .filter(|(k, _)| k.policy_id == policy_id)
            .map(|(k, v)| (*k, *v)),
    );
    out.dests
        .extend(policy_dests(&compiled.dests, policy_id).map(|(k, v)| (*k, *v)));
    for ruleset in policy_rulesets(compiled, policy_id) {
        out.ports
            .extend(ruleset_ports(&compiled.ports, ruleset).map(|(k, v)| (*k, *v)));
    }
    out.catalog.classes.extend(
        compiled
            .catalog
            .classes
            .range((policy_id, 0)..=(policy_id, u32::MAX))
            .map(|(k, v)| (*k, *v)),
    );
    for &id in compiled.rule_ids[index].iter().flatten() {
        if let Some(info) = compiled.catalog.rules.get(&id) {
            out.catalog.rules.entry(id).or_insert_with(|| info.clone());
        }
    }
    out.warnings
        .extend_from_slice(&compiled.warnings[compiled.policy_warnings[index].clone()]);
}

/// A process entry's class key: its identities, sorted, without repeats.
fn class_key(process: &ProcessPolicy) -> Vec<crate::policy::ProcessIdent> {
    let mut idents = process.idents.clone();
    idents.sort_unstable();
    idents.dedup();
    idents
}

/// The id-table key of a rule: its policy, scope and allowances.
fn rule_key(
    policy: &ContainerPolicy,
    process: Option<&ProcessPolicy>,
    rule: &AllowRule,
) -> RuleKey {
    RuleKey {
        policy: policy.name.clone(),
        process: process.map(|p| p.idents.clone()),
        allowances: rule.allowances.clone(),
    }
}

fn compile_policy(
    index: usize,
    policy: &ContainerPolicy,
    policy_id: u32,
    ids: &mut IdTables,
    rulesets: &mut Rulesets,
    out: &mut CompiledRules,
) -> Result<(), CompileError> {
    // Rule ids, per scope.
    let rule_ids = scopes(policy)
        .map(|(process, rules)| scope_rule_ids(policy, process, rules, ids, index, out))
        .collect::<Result<Vec<_>, _>>()?;

    // Process classes: comms are keys here; exe files are keys per
    // container (see `assign_files`).
    let mut class_ids = Vec::with_capacity(policy.processes.len());
    for (pi, process) in policy.processes.iter().enumerate() {
        let class = ids.classes.get_or_alloc(&(policy_id, class_key(process)))?;
        for process_match in process.idents.iter().filter_map(|i| i.comm_match()) {
            out.processes.insert(
                ProcessKey {
                    policy_id,
                    process: process_match,
                },
                class,
            );
        }
        out.catalog.classes.insert((policy_id, class), pi);
        class_ids.push(class);
    }

    // The rules of a scope (`None`: container-wide), each with its origin
    // and id.
    let tagged = |process: Option<usize>| {
        let rules = match process {
            None => &policy.rules,
            Some(pi) => &policy.processes[pi].rules,
        };
        let scope_ids = &rule_ids[process.map_or(0, |pi| pi + 1)];
        rules
            .iter()
            .zip(scope_ids)
            .enumerate()
            .map(move |(rule, (r, &id))| (RuleOrigin::Rule { process, rule }, r, id))
    };
    let mut fold = Fold {
        policy,
        policy_id,
        ids,
        rulesets,
        out,
        redundant: Vec::new(),
    };
    // Class 0 is any process without an entry of its own. Container-wide
    // rules come first, so a process rule that repeats one is the one
    // reported as redundant.
    let classes = std::iter::once((0, None)).chain(
        class_ids
            .iter()
            .enumerate()
            .map(|(pi, &class)| (class, Some(pi))),
    );
    for (class, scope) in classes {
        let rules: Vec<_> = tagged(None)
            .chain(scope.into_iter().flat_map(|pi| tagged(Some(pi))))
            .collect();
        fold.class(class, &rules, scope)?;
    }
    fold.report_redundant();

    out.class_ids.push(class_ids);
    out.rule_ids.push(rule_ids);
    Ok(())
}

/// A policy's rule scopes: the container-wide rules, then each process
/// entry's.
fn scopes(
    policy: &ContainerPolicy,
) -> impl Iterator<Item = (Option<&ProcessPolicy>, &[AllowRule])> {
    std::iter::once((None, policy.rules.as_slice())).chain(
        policy
            .processes
            .iter()
            .map(|p| (Some(p), p.rules.as_slice())),
    )
}

fn scope_rule_ids(
    policy: &ContainerPolicy,
    process: Option<&ProcessPolicy>,
    rules: &[AllowRule],
    ids: &mut IdTables,
    policy_index: usize,
    out: &mut CompiledRules,
) -> Result<Vec<u32>, CompileError> {
    let scope = process.map_or_else(|| "container-wide".to_string(), ProcessPolicy::describe);
    rules
        .iter()
        .map(|rule| {
            let id = ids.rules.get_or_alloc(&rule_key(policy, process, rule))?;
            out.catalog.rules.entry(id).or_insert_with(|| RuleInfo {
                policy_index: Some(policy_index),
                scope: scope.clone(),
                allowances: rule.describe_allowances(),
            });
            Ok(id)
        })
        .collect()
}

/// Content-addressed rulesets of this compile, so each distinct allowance
/// set gets its `PORTS` entries once.
type Rulesets = foldhash::HashMap<RulesetKey, u32>;

/// The id of `set`'s ruleset; its `PORTS` entries are written the first
/// time.
fn intern(
    rulesets: &mut Rulesets,
    set: &AllowSet,
    ids: &mut IdTables,
    out: &mut CompiledRules,
) -> Result<u32, CompileError> {
    let key: RulesetKey = set
        .iter()
        .map(|(a, v)| (a.proto, a.block.port, a.block.bits, v.rule_id))
        .collect();
    if let Some(&id) = rulesets.get(&key) {
        return Ok(id);
    }
    let id = ids.rulesets.get_or_alloc(&key)?;
    out.ports
        .extend(key.iter().map(|&(proto, port, port_bits, rule_id)| {
            let prefix = PortPrefix {
                ruleset: id,
                proto,
                port,
                port_bits,
            };
            (prefix, rule_id)
        }));
    rulesets.insert(key, id);
    Ok(id)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grant {
    rule_id: u32,
    origin: RuleOrigin,
    /// Destination prefix of the rule that granted it (for messages).
    dest: Prefix,
}

/// A ruleset being built: allowance → who granted it. Kept minimal: no
/// entry covers another.
type AllowSet = BTreeMap<Allowance, Grant>;

fn covering(set: &AllowSet, a: &Allowance) -> Option<Grant> {
    if let Some(g) = set.get(&Allowance::ANY) {
        return Some(*g);
    }
    (0..=a.block.bits).find_map(|bits| {
        let block = PortBlock::enclosing(a.block.port, bits);
        set.get(&Allowance {
            proto: a.proto,
            block,
        })
        .copied()
    })
}

fn insert_minimal(set: &mut AllowSet, a: Allowance, grant: Grant) {
    if a == Allowance::ANY {
        set.clear();
    } else {
        let at = |port, bits| Allowance {
            proto: a.proto,
            block: PortBlock { port, bits },
        };
        let covered: Vec<Allowance> = set
            .range(at(a.block.first(), 0)..=at(a.block.last(), 16))
            .map(|(k, _)| *k)
            .filter(|k| a.covers(k))
            .collect();
        for k in covered {
            set.remove(&k);
        }
    }
    set.insert(a, grant);
}

/// One policy's classes being folded into `out`.
struct Fold<'a> {
    policy: &'a ContainerPolicy,
    policy_id: u32,
    ids: &'a mut IdTables,
    rulesets: &'a mut Rulesets,
    out: &'a mut CompiledRules,
    /// Found in every class, reported once all are folded.
    redundant: Vec<Redundant>,
}

/// A (rule, destination) whose every allowance was already granted.
struct Redundant {
    origin: RuleOrigin,
    dest: Prefix,
    by: Grant,
}

/// One contribution of a rule to a prefix.
#[derive(Clone, Copy)]
struct Contribution {
    allowance: Allowance,
    grant: Grant,
}

impl Fold<'_> {
    /// Folds class `class`, whose rules are `rules` (those of `scope` are
    /// its own: `None` for class 0), into `DESTS` entries and rulesets.
    fn class(
        &mut self,
        class: u32,
        rules: &[(RuleOrigin, &AllowRule, u32)],
        scope: Option<usize>,
    ) -> Result<(), CompileError> {
        // Own contributions per prefix, in rule order: the implicit allowances
        // first, so explicit rules repeating them are reported as redundant.
        let docker_dns = Prefix::docker_dns();
        let loopback = [Prefix::v4_loopback(), Prefix::v6_loopback()];
        let docker_dns_dests = [docker_dns];
        // Every port, not just 53: Docker DNATs 127.0.0.11:53 to a random
        // port of dockerd's listener inside the container's namespace, and
        // cgroup_skb/egress sees the packet after that NAT.
        let docker_dns_allowances = [contain_common::ip_proto::TCP, contain_common::ip_proto::UDP]
            .map(|proto| Allowance {
                proto,
                block: PortBlock::ALL,
            });
        let mut sources: Vec<(RuleOrigin, u32, &[Prefix], &[Allowance])> = Vec::new();
        if self.policy.allow_loopback {
            sources.push((
                RuleOrigin::Loopback,
                LOOPBACK_RULE_ID,
                &loopback,
                &[Allowance::ANY],
            ));
        }
        if self.policy.allow_docker_dns {
            sources.push((
                RuleOrigin::DockerDns,
                DOCKER_DNS_RULE_ID,
                &docker_dns_dests,
                &docker_dns_allowances,
            ));
        }
        sources.extend(rules.iter().map(|&(origin, rule, rule_id)| {
            (origin, rule_id, &rule.dests[..], &rule.allowances[..])
        }));
        let mut own: foldhash::HashMap<Prefix, Vec<Contribution>> = foldhash::HashMap::default();
        for (origin, rule_id, dests, allowances) in sources {
            for &dest in dests {
                let grant = Grant {
                    rule_id,
                    origin,
                    dest,
                };
                own.entry(dest).or_default().extend(
                    allowances
                        .iter()
                        .filter(|a| a.applies_to(dest.family()))
                        .map(|&allowance| Contribution { allowance, grant }),
                );
            }
        }

        let (mut v4, mut v6): (Vec<Prefix>, Vec<Prefix>) = own
            .iter()
            .filter(|(_, contributions)| !contributions.is_empty())
            .map(|(prefix, _)| *prefix)
            .partition(|prefix| prefix.family() == Family::V4);
        // Prefixes with an entry whatever their allowances. An IPv6 prefix
        // covering the IPv4-mapped block must not lend its allowances to IPv4:
        // pin the block with the IPv4 rules alone.
        let mut v4_pinned = Vec::new();
        let v4_root = Prefix::v4_all();
        if v6.iter().any(|p| p.contains(&v4_root)) {
            v4_pinned.push(v4_root);
        }
        // Docker's DNS forwards anything it is sent upstream from dockerd's
        // cgroup, beyond contain's sight: the loopback allowance must not reach
        // it. Its own entry keeps the longest match from landing on 127.0.0.0/8.
        let carve_out_docker_dns = self.policy.allow_loopback;
        if carve_out_docker_dns {
            v4_pinned.push(docker_dns);
        }
        for pinned in &v4_pinned {
            if !v4.contains(pinned) {
                v4.push(*pinned);
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();

        let in_scope = |origin: RuleOrigin| match origin {
            RuleOrigin::Loopback | RuleOrigin::DockerDns => false,
            RuleOrigin::Rule { process, .. } => process == scope,
        };

        for (list, pinned) in [(v4, v4_pinned), (v6, Vec::new())] {
            // Prefixes sorted by (address, length) visit every ancestor before
            // its descendants; the stack holds the chain of enclosing prefixes.
            let mut stack: Vec<(Prefix, Rc<AllowSet>)> = Vec::new();
            // Each prefix's (rule, destination) pairs and whether something
            // already granted them; a prefix has a handful: a list beats a map.
            let mut covered_pairs: Vec<((RuleOrigin, Prefix), Option<Grant>)> = Vec::new();
            for prefix in list {
                while stack.last().is_some_and(|(p, _)| !p.contains(&prefix)) {
                    stack.pop();
                }
                let parent = stack.last().map_or_else(Rc::default, |(_, s)| s.clone());
                let mut set: AllowSet = if carve_out_docker_dns && prefix == docker_dns {
                    fold_ancestors_without_loopback(&stack, &own)
                } else {
                    (*parent).clone()
                };
                let mut changed = false;
                covered_pairs.clear();
                for c in own.get(&prefix).map(Vec::as_slice).unwrap_or(&[]) {
                    let pair_key = (c.grant.origin, c.grant.dest);
                    let at = covered_pairs
                        .iter()
                        .position(|(k, _)| *k == pair_key)
                        .unwrap_or_else(|| {
                            covered_pairs.push((pair_key, None));
                            covered_pairs.len() - 1
                        });
                    let pair = &mut covered_pairs[at].1;
                    match covering(&set, &c.allowance) {
                        Some(by) => {
                            // Remember a coverer for the message unless part of
                            // this pair already added something.
                            pair.get_or_insert(by);
                        }
                        None => {
                            insert_minimal(&mut set, c.allowance, c.grant);
                            changed = true;
                            // Marks the pair as contributing.
                            *pair = Some(Grant {
                                rule_id: 0,
                                ..c.grant
                            });
                        }
                    }
                }
                for ((origin, dest), by) in covered_pairs.drain(..) {
                    if let Some(by) = by {
                        // The loopback allowance leaves Docker's DNS out: a rule
                        // over it opens that, and is no repeat of loopback.
                        let opens_docker_dns = by.origin == RuleOrigin::Loopback
                            && carve_out_docker_dns
                            && dest.contains(&docker_dns);
                        if by.rule_id != 0 && in_scope(origin) && !opens_docker_dns {
                            self.redundant.push(Redundant { origin, dest, by });
                        }
                    }
                }
                if changed || pinned.contains(&prefix) {
                    let ruleset = intern(self.rulesets, &set, self.ids, self.out)?;
                    let key = DestPrefix {
                        policy_id: self.policy_id,
                        class,
                        addr: prefix.key_bytes(),
                        prefix_len: prefix.len,
                    };
                    self.out.dests.insert(key, ruleset);
                    stack.push((prefix, Rc::new(set)));
                } else {
                    // Same allowances as the enclosing prefix: the kernel's
                    // longest match lands there anyway, no entry needed.
                    stack.push((prefix, parent));
                }
            }
        }
        Ok(())
    }

    /// Reports the redundant rules found in every class.
    fn report_redundant(self) {
        let Fold {
            policy,
            out,
            mut redundant,
            ..
        } = self;
        // A (rule, destination) pair is reported once, even though container
        // rules are folded into every class.
        redundant.sort_by_key(|r| (r.origin, r.dest));
        redundant.dedup_by_key(|r| (r.origin, r.dest));
        const SHOWN: usize = 3;
        for items in redundant.chunk_by(|a, b| a.origin == b.origin) {
            let (what, location) = describe_origin(policy, items[0].origin);
            let mut parts: Vec<String> = items
                .iter()
                .take(SHOWN)
                .map(|r| {
                    let (by, by_loc) = describe_origin(policy, r.by.origin);
                    let at = by_loc
                        .map(|l| format!(" (line {})", l.line))
                        .unwrap_or_default();
                    let through = if r.by.dest == r.dest {
                        String::new()
                    } else {
                        format!(" through {}", r.by.dest)
                    };
                    format!("{} is already allowed by {by}{at}{through}", r.dest)
                })
                .collect();
            if items.len() > SHOWN {
                parts.push(format!("and {} more destinations", items.len() - SHOWN));
            }
            out.warnings.push(Diagnostic::warning(
                location,
                format!(
                    "policy \"{}\": {what} is redundant for some destinations: {}",
                    policy.name,
                    parts.join("; ")
                ),
            ));
        }
    }
}

/// The allowances of the enclosing prefixes on `stack` (outermost first),
/// folded again from their own contributions with the loopback allowance
/// left out: what a prefix carved out of loopback inherits.
fn fold_ancestors_without_loopback(
    stack: &[(Prefix, Rc<AllowSet>)],
    own: &foldhash::HashMap<Prefix, Vec<Contribution>>,
) -> AllowSet {
    let mut set = AllowSet::new();
    let contributions = stack
        .iter()
        .filter_map(|(ancestor, _)| own.get(ancestor))
        .flatten()
        .filter(|c| c.grant.origin != RuleOrigin::Loopback);
    for c in contributions {
        if covering(&set, &c.allowance).is_none() {
            insert_minimal(&mut set, c.allowance, c.grant);
        }
    }
    set
}

fn describe_origin(policy: &ContainerPolicy, origin: RuleOrigin) -> (String, Option<Location>) {
    match origin {
        RuleOrigin::Loopback => (
            "the implicit loopback allowance (allow_loopback)".into(),
            None,
        ),
        RuleOrigin::DockerDns => ("the Docker DNS allowance (allow_docker_dns)".into(), None),
        RuleOrigin::Rule {
            process: None,
            rule,
        } => {
            let r = &policy.rules[rule];
            (format!("allow[{}]", r.index), r.location.clone())
        }
        RuleOrigin::Rule {
            process: Some(pi),
            rule,
        } => {
            let p = &policy.processes[pi];
            let r = &p.rules[rule];
            (
                format!("process {} allow[{}]", p.describe(), r.index),
                r.location.clone(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inventory::Container, policy};
    use kernel_model::diff::diff_ops;

    pub(crate) fn policy(text: &str) -> PolicySet {
        policy::parse("p.toml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_restart_without_an_inventory_learns_policy_ids_from_the_rules() {
        let a = "[[policy]]\nname='a'\nselect={name='x'}\nallow=[{to='10.0.0.0/8', proto='tcp', ports=[443]}]\n";
        let b = "[[policy]]\nname='b'\nselect={name='y'}\nallow=[{to='192.168.0.0/16', proto='udp', ports=[53]}]\n";
        // Before: the ids the names would not get by preference (as after
        // a collision, or a policy's id kept while another came and went).
        let mut before = IdTables::default();
        assert!(before.policies.seed("a".into(), 7));
        assert!(before.policies.seed("b".into(), 8));
        let written = compile_rules(&policy(&format!("{a}{b}")), &mut before).unwrap();
        let mut state = KernelState::default();
        for (&key, &ruleset) in &written.dests {
            state.upsert(kernel_model::state::Entry::Dest { key, ruleset });
        }
        for (&key, &rule_id) in &written.ports {
            state.upsert(kernel_model::state::Entry::Port { key, rule_id });
        }
        // After a restart, the file reordered, no inventory.
        let reordered = policy(&format!("{b}{a}"));
        let mut ids = IdTables::default();
        ids.seed_from_state(&state);
        seed_policy_ids_from_rules(&state, &reordered, &mut ids);
        let rules = compile_rules(&reordered, &mut ids).unwrap();
        assert_eq!(rules.policy_ids, [8, 7], "b keeps 8 and a keeps 7");
        assert!(
            rules
                .dests
                .iter()
                .all(|(k, r)| written.dests.get(k) == Some(r)),
            "the same entries: nothing to write"
        );
        // A policy whose rules changed learns nothing (and takes no id).
        let changed = policy(&format!("{}{b}", a.replace("443", "8443")));
        let mut ids = IdTables::default();
        ids.seed_from_state(&state);
        seed_policy_ids_from_rules(&state, &changed, &mut ids);
        assert_eq!(ids.policies.get(&"a".to_string()), None);
        assert_eq!(ids.policies.get(&"b".to_string()), Some(8));
    }

    fn inventory(containers: &[(&str, u64)]) -> Inventory {
        Inventory {
            containers: containers
                .iter()
                .map(|&(name, cg)| Container {
                    id: format!("{name}-id"),
                    name: name.into(),
                    image: "alpine:3".into(),
                    namespace: "moby".into(),
                    runtime: "docker".into(),
                    cgroup_id: Some(cg),
                    ..Container::default()
                })
                .collect(),
        }
    }

    fn dest_count(state: &KernelState, policy_id: u32, class: u32) -> usize {
        state
            .dests
            .keys()
            .filter(|k| k.policy_id == policy_id && k.class == class)
            .count()
    }

    #[test]
    fn cgroups_get_their_policy_or_are_left_alone() {
        let p = policy("mode='audit'\n[[policy]]\nname='a'\nselect={name='web'}\nallow=[{to='1.1.1.1', proto='tcp', ports=[443]}]\n");
        let c = compile(
            &p,
            &inventory(&[("web", 10), ("other", 11)]),
            &mut IdTables::default(),
        )
        .unwrap();
        let web = c.state.cgroups[&10];
        assert!(web.audit && !web.unrestricted && web.policy_id >= 1);
        assert!(c.state.cgroups[&11].unrestricted);
        assert_eq!(c.state.unknown_verdict, kernel_model::state::Verdict::Deny);
    }

    #[test]
    fn forwarded_dns_follows_the_selecting_policys_docker_dns_setting() {
        let p = policy(
            "allow_docker_dns=true\n[[policy]]\nname='dns'\nselect={name='a'}\n[[policy]]\nname='nodns'\nallow_docker_dns=false\nselect={name='b'}\n",
        );
        let c = compile(
            &p,
            &inventory(&[("a", 10), ("b", 11), ("other", 12)]),
            &mut IdTables::default(),
        )
        .unwrap();
        let forwarded = |cg: u64| c.state.cgroups[&cg].forwarded_dns;
        assert!(forwarded(10), "the top-level setting reaches the policy");
        assert!(!forwarded(11), "a policy's own setting wins");
        assert!(!forwarded(12), "an unrestricted container has no policy");
    }

    /// Each container its veths and an address.
    fn with_veths(mut inventory: Inventory, veths: &[&[u32]]) -> Inventory {
        for (i, (c, v)) in inventory.containers.iter_mut().zip(veths).enumerate() {
            c.host_veths = v.to_vec();
            c.addresses = vec![std::net::Ipv4Addr::new(10, 0, 0, i as u8 + 1).into()];
        }
        inventory
    }

    #[test]
    fn veths_point_to_their_containers_cgroups_selected_or_not() {
        let p = policy("[[policy]]\nname='a'\nselect={name='web'}\n");
        let inv = with_veths(
            inventory(&[("web", 10), ("other", 11), ("host", 12)]),
            &[&[7], &[8, 9], &[]],
        );
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        assert_eq!(c.state.veths, BTreeMap::from([(7, 10), (8, 11), (9, 11)]));
        assert!(c.state.cgroups[&11].unrestricted, "so its veths pass");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_veths_sources_are_its_owners_addresses() {
        let p = policy("[[policy]]\nname='a'\nselect={name='web'}\n");
        let mut inv = with_veths(inventory(&[("web", 10), ("other", 11)]), &[&[7], &[8]]);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        inv.containers[0].addresses = vec![ip("172.17.0.2"), ip("fd00::2"), ip("fe80::1")];
        inv.containers[1].addresses = vec![ip("172.17.0.3")];
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let sources: Vec<(u32, std::net::IpAddr)> = c
            .state
            .veth_sources
            .iter()
            .map(|s| (s.ifindex, s.address()))
            .collect();
        assert_eq!(
            sources,
            [
                (7, ip("172.17.0.2")),
                (7, ip("fd00::2")),
                (7, ip("fe80::1")),
                (8, ip("172.17.0.3"))
            ],
            "its link-local address too; an unrestricted container's are written as well"
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        inv.containers[0].addresses.clear();
        inv.containers[1].addresses.clear();
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let messages: Vec<&str> = c.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(
            messages,
            ["container \"web\": none of its addresses is known (the resolver reports them); its frames on veth 7 are refused as forged, but for the kernel's neighbour discovery, until one is"],
            "only for a container a policy selects"
        );
    }

    #[test]
    fn a_shared_veth_has_one_owner_and_a_warning_when_policies_differ() {
        let p = policy(
            "[[policy]]\nname='app'\nselect={name='app'}\n[[policy]]\nname='side'\nselect={name='sidecar'}\n",
        );
        // Ids "app-id" < "sidecar-id" < "twin-id": app owns the veth.
        let inv = with_veths(
            inventory(&[("sidecar", 11), ("app", 10), ("twin", 12)]),
            &[&[7], &[7], &[7]],
        );
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        assert_eq!(c.state.veths, BTreeMap::from([(7, 10)]));
        let messages: Vec<&str> = c.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(
            messages,
            ["containers \"sidecar\", \"twin\" share the network namespace of \"app\"; packets from no container's socket there (the kernel's answers, Docker's DNS forwarding) are judged under \"app\"'s policy (policy \"app\")"]
        );

        // Under one policy, sharing changes nothing worth a warning.
        let p = policy("[[policy]]\nname='all'\nselect={image='alpine:*'}\n");
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        assert_eq!(c.state.veths, BTreeMap::from([(7, 10)]));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn more_veths_than_the_map_holds_is_a_capacity_error() {
        let p = policy("[[policy]]\nname='a'\nselect={name='web'}\n");
        let veths: Vec<u32> = (0..=capacity::VETHS).collect();
        let inv = with_veths(inventory(&[("web", 10)]), &[&veths]);
        assert_eq!(
            compile(&p, &inv, &mut IdTables::default()),
            Err(CompileError::Capacity {
                map: "VETHS",
                needed: capacity::VETHS as usize + 1,
                capacity: capacity::VETHS,
            })
        );
    }

    #[test]
    fn more_sources_than_the_map_holds_is_a_capacity_error_not_a_long_build() {
        let p = policy("[[policy]]\nname='a'\nselect={name='web'}\n");
        let veths: Vec<u32> = (1..=300).collect();
        let mut inv = with_veths(inventory(&[("web", 10)]), &[&veths]);
        inv.containers[0].addresses = (0..300u32)
            .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).into())
            .collect();
        assert_eq!(
            compile(&p, &inv, &mut IdTables::default()),
            Err(CompileError::Capacity {
                map: "VETH_SOURCES",
                needed: 90_000,
                capacity: capacity::VETH_SOURCES,
            })
        );
    }

    #[test]
    fn enclosing_prefixes_fold_into_specific_ones() {
        let p = policy(
            "allow_loopback=false\n[[policy]]\nname='a'\nselect={name='a'}\nallow=[\n{to='10.0.0.0/8', proto='tcp', ports=[443]},\n{to='10.1.0.0/16', proto='udp', ports=[53]},\n]\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        assert_eq!(c.state.dests.len(), 2);
        let specific = c
            .state
            .dests
            .iter()
            .find(|(k, _)| k.prefix_len == 96 + 16)
            .unwrap();
        let ports: Vec<(u8, u16)> = c
            .state
            .ports
            .keys()
            .filter(|k| k.ruleset == *specific.1)
            .map(|k| (k.proto, k.port))
            .collect();
        assert_eq!(ports, vec![(6, 443), (17, 53)]);
    }

    #[test]
    fn process_classes_include_container_wide_rules() {
        let p = policy(
            "allow_loopback=false\n[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='9.9.9.9', proto='udp', ports=[53]}]\n[[policy.process]]\ncomm='curl'\nallow=[{to='1.1.1.0/24', proto='tcp', ports=[80, 443]}]\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        let pid = c.rules.policy_ids[0];
        let class = c.rules.class_ids[0][0];
        assert_eq!(dest_count(&c.state, pid, 0), 1);
        assert_eq!(dest_count(&c.state, pid, class), 2);
        assert_eq!(
            c.state.processes[&ProcessKey {
                policy_id: pid,
                process: kernel_model::state::ProcessMatch::Comm(contain_common::comm_hash(
                    b"curl"
                ))
            }],
            class
        );
    }

    /// The kernel skips the class lookups while no policy has a class
    /// (`Config::process_classes`), which is safe only because a class never
    /// allows less than class 0: every target class 0 allows, each class
    /// allows too, whatever the rules' shapes.
    #[test]
    fn a_process_class_never_allows_less_than_the_container_wide_rules() {
        use kernel_model::decide::{lookup, Creator, Target};
        use kernel_model::state::Verdict;
        let p = policy(
            "allow_loopback=true\nallow_docker_dns=true\n[[policy]]\nname='a'\nselect={name='a'}\n\
             allow=[{to='10.0.0.0/8', proto='tcp', ports=[443, '8000-8100']}, {to='9.9.9.9', proto='udp', ports=[53]},\
             {to='10.2.0.0/16', proto='icmp', icmp_types=['echo-request']}, {to='2001:db8::/32', proto='tcp'}]\n\
             [[policy.process]]\ncomm='curl'\nallow=[{to='10.1.0.0/16', proto='udp', ports=[53]}, {to='10.2.3.4', proto='tcp', ports=[22]}]\n\
             [[policy.process]]\ncomm='dig'\nallow=[{to='9.9.9.0/24', proto='udp', ports=[5353]}]\n",
        );
        let c = compile(&p, &inventory(&[("a", 10)]), &mut IdTables::default()).unwrap();
        let dests = [
            "10.0.0.1",
            "10.1.2.3",
            "10.2.3.4",
            "10.2.9.9",
            "9.9.9.9",
            "9.9.9.8",
            "127.0.0.1",
            "127.0.0.11",
            "11.0.0.1",
            "2001:db8::1",
            "::1",
        ];
        let targets = dests.iter().flat_map(|d| {
            [
                (6, 443),
                (6, 8050),
                (6, 22),
                (17, 53),
                (17, 5353),
                (1, 8 << 8),
                (6, 80),
            ]
            .map(|(proto, port)| Target {
                dest: d.parse().unwrap(),
                proto,
                port,
                later_fragment: false,
            })
        });
        let anyone = Creator::default();
        let mut allowed = 0;
        for target in targets {
            if lookup(&c.state, 10, Some(&anyone), &target).verdict != Verdict::Allow {
                continue;
            }
            allowed += 1;
            for comm in ["curl", "dig"] {
                let creator = Creator {
                    file: None,
                    comm: Some(comm.as_bytes().to_vec()),
                };
                let class = lookup(&c.state, 10, Some(&creator), &target);
                assert_ne!(class.class, 0, "{comm} has a class");
                assert_eq!(class.verdict, Verdict::Allow, "{comm} to {target:?}");
            }
        }
        assert!(
            allowed >= 8,
            "the grid reaches the container-wide rules ({allowed})"
        );
    }

    #[test]
    fn same_ports_share_one_ruleset() {
        let mut text = String::from(
            "allow_loopback=false\n[[policy]]\nname='a'\nselect={name='a'}\nallow=[\n",
        );
        for i in 0..1000u32 {
            text.push_str(&format!(
                "{{to='10.{}.{}.{}', proto='tcp', ports=[80, 443]}},\n",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            ));
        }
        text.push_str("]\n");
        let c = compile(
            &policy(&text),
            &Inventory::default(),
            &mut IdTables::default(),
        )
        .unwrap();
        assert_eq!(c.state.dests.len(), 1000);
        let rulesets: std::collections::BTreeSet<u32> = c.state.dests.values().copied().collect();
        assert_eq!(rulesets.len(), 1);
        assert_eq!(c.state.ports.len(), 2);
    }

    /// The ruleset the kernel's longest match lands on for `addr`.
    fn ruleset_for(state: &KernelState, policy_id: u32, addr: &str) -> Option<u32> {
        let addr = crate::net::addr_key(addr.parse().unwrap());
        (0..=128u8).rev().find_map(|len| {
            state
                .dests
                .get(&DestPrefix {
                    policy_id,
                    class: 0,
                    addr: Prefix::new(addr, len).key_bytes(),
                    prefix_len: len,
                })
                .copied()
        })
    }

    fn ports_of(state: &KernelState, ruleset: u32) -> Vec<(u8, u16, u8, u32)> {
        state
            .ports
            .iter()
            .filter(|(k, _)| k.ruleset == ruleset)
            .map(|(k, &rule)| (k.proto, k.port, k.port_bits, rule))
            .collect()
    }

    #[test]
    fn loopback_is_implicit_and_shared() {
        let p = policy(
            "[[policy]]\nname='a'\nselect={name='a'}\n[[policy]]\nname='b'\nselect={name='b'}\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        // Per policy: 127.0.0.0/8 and ::1 (any protocol, one shared ruleset)
        // and the Docker DNS carve-out (an empty ruleset: nothing).
        assert_eq!(c.state.dests.len(), 6);
        assert_eq!(c.state.ports.len(), 1);
        let (key, rule) = c.state.ports.iter().next().unwrap();
        assert_eq!((key.proto, key.port_bits, *rule), (0, 0, LOOPBACK_RULE_ID));
    }

    #[test]
    fn docker_dns_is_carved_out_of_loopback() {
        let p = policy("[[policy]]\nname='a'\nselect={name='a'}\n");
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        let pid = c.rules.policy_ids[0];
        let lo = ruleset_for(&c.state, pid, "127.0.0.1").unwrap();
        assert_eq!(ports_of(&c.state, lo), [(0, 0, 0, LOOPBACK_RULE_ID)]);
        let dns = ruleset_for(&c.state, pid, "127.0.0.11").expect("a carve-out entry");
        assert_ne!(dns, lo);
        assert!(
            ports_of(&c.state, dns).is_empty(),
            "the loopback allowance must not fold into 127.0.0.11"
        );
    }

    #[test]
    fn docker_dns_carve_out_keeps_explicit_enclosing_rules() {
        let p = policy(
            "allow_docker_dns=true\n[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='0.0.0.0/0', proto='icmp'}]\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        let pid = c.rules.policy_ids[0];
        let dns = ruleset_for(&c.state, pid, "127.0.0.11").unwrap();
        let protos: Vec<(u8, u32)> = ports_of(&c.state, dns)
            .into_iter()
            .map(|(proto, _, _, rule)| (proto, rule))
            .collect();
        let icmp_rule = c.rules.rule_ids[0][0][0];
        assert_eq!(
            protos,
            [
                (1, icmp_rule),
                (6, DOCKER_DNS_RULE_ID),
                (17, DOCKER_DNS_RULE_ID)
            ]
        );
    }

    #[test]
    fn docker_dns_without_loopback_is_tcp_and_udp_only() {
        let p = policy(
            "allow_loopback=false\n[[policy]]\nname='a'\nallow_docker_dns=true\nselect={name='a'}\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        let pid = c.rules.policy_ids[0];
        assert_eq!(c.state.dests.len(), 1);
        assert_eq!(ruleset_for(&c.state, pid, "127.0.0.1"), None);
        let dns = ruleset_for(&c.state, pid, "127.0.0.11").unwrap();
        assert_eq!(
            ports_of(&c.state, dns),
            [
                (6, 0, 0, DOCKER_DNS_RULE_ID),
                (17, 0, 0, DOCKER_DNS_RULE_ID)
            ]
        );
    }

    #[test]
    fn ipv6_any_does_not_leak_into_ipv4() {
        let p = policy(
            "allow_loopback=false\n[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='::/0', proto='tcp', ports=[443]}]\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        let root = c
            .state
            .dests
            .iter()
            .find(|(k, _)| k.prefix_len == 96)
            .expect("IPv4 block pinned");
        assert!(
            c.state.ports.keys().all(|k| k.ruleset != *root.1),
            "the pinned IPv4 block allows nothing"
        );
    }

    #[test]
    fn redundant_rules_are_warned() {
        let p = policy(
            "[[policy]]\nname='a'\nselect={name='a'}\nallow=[\n{to='10.0.0.0/8', proto='tcp'},\n{to='10.1.0.0/16', proto='tcp', ports=[443]},\n{to='127.0.0.1', proto='tcp', ports=[80]},\n]\n[[policy.process]]\ncomm='x'\nallow=[{to='10.2.0.0/16', proto='tcp', ports=[22]}]\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        let w: Vec<String> = c.rules.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].contains("p.toml:6:1") || w[0].contains("allow[1]"),
            "{w:#?}"
        );
        assert!(
            w.iter()
                .any(|m| m.contains("allow[1] is redundant") && m.contains("through 10.0.0.0/8")),
            "{w:#?}"
        );
        assert!(
            w.iter()
                .any(|m| m.contains("allow[2] is redundant") && m.contains("loopback")),
            "{w:#?}"
        );
        assert!(
            w.iter()
                .any(|m| m.contains("process comm x allow[0] is redundant")),
            "{w:#?}"
        );
    }

    /// Review finding: `check` called a rule over 127/8 a repeat of the
    /// loopback allowance, though it is what opens Docker's DNS there.
    #[test]
    fn a_rule_that_opens_docker_dns_is_not_called_redundant() {
        let p = policy(
            "allow_docker_dns=false\n[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='127.0.0.0/8'}, {to='127.0.0.1', proto='tcp', ports=[80]}]\n",
        );
        let c = compile(&p, &Inventory::default(), &mut IdTables::default()).unwrap();
        let w: Vec<String> = c.rules.warnings.iter().map(ToString::to_string).collect();
        assert!(
            !w.iter().any(|m| m.contains("allow[0] is redundant")),
            "{w:#?}"
        );
        // A rule within loopback that leaves Docker's DNS out still is.
        assert!(
            w.iter().any(|m| m.contains("allow[1] is redundant")),
            "{w:#?}"
        );
        let pid = c.rules.policy_ids[0];
        let dns = ruleset_for(&c.state, pid, "127.0.0.11").expect("a carve-out entry");
        assert!(
            c.state.ports.keys().any(|k| k.ruleset == dns),
            "the rule opens Docker's DNS"
        );
    }

    fn file(ino: u64) -> FileId {
        FileId {
            dev: 60,
            ino,
            ctime_sec: 1,
            ctime_nsec: 2,
        }
    }

    fn resolved(ino: u64, sha256: Option<&str>) -> crate::inventory::Resolution {
        Ok(proto::resolver::ExeFile {
            file: file(ino),
            sha256: sha256.map(Into::into),
            ..Default::default()
        })
    }

    fn with_exes(
        mut inventory: Inventory,
        exes: &[&[(&str, crate::inventory::Resolution)]],
    ) -> Inventory {
        for (c, e) in inventory.containers.iter_mut().zip(exes) {
            c.exes = e.iter().map(|(p, r)| (p.to_string(), r.clone())).collect();
        }
        inventory
    }

    fn class_of(state: &KernelState, policy_id: u32, ino: u64) -> Option<u32> {
        state
            .processes
            .get(&ProcessKey {
                policy_id,
                process: ProcessMatch::File(file(ino)),
            })
            .copied()
    }

    const TWO_ENTRIES: &str = "[[policy]]\nname='a'\nselect={image='alpine:*'}\n[[policy.process]]\nexe=['/usr/bin/curl', '/bin/curl']\nallow=[{to='1.1.1.1'}]\n[[policy.process]]\nexe='/usr/bin/wget'\nallow=[{to='2.2.2.2'}]\n";

    #[test]
    fn each_container_gets_the_files_its_paths_name() {
        let p = policy(TWO_ENTRIES);
        let inv = with_exes(
            inventory(&[("c1", 10), ("c2", 11), ("unmapped", 12)]),
            &[
                &[
                    ("/usr/bin/curl", resolved(1, None)),
                    // A symlink to the same file: one entry.
                    ("/bin/curl", resolved(1, None)),
                    ("/usr/bin/wget", resolved(3, None)),
                ],
                &[
                    ("/usr/bin/curl", resolved(2, None)),
                    (
                        "/bin/curl",
                        Err("/bin/curl: no such file in container c2-id".into()),
                    ),
                    ("/usr/bin/wget", resolved(4, None)),
                ],
                &[("/usr/bin/curl", resolved(9, None))],
            ],
        );
        let mut inv = inv;
        inv.containers[2].cgroup_id = None;
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let pid = c.rules.policy_ids[0];
        let (curl, wget) = (c.rules.class_ids[0][0], c.rules.class_ids[0][1]);
        assert_eq!(class_of(&c.state, pid, 1), Some(curl));
        assert_eq!(class_of(&c.state, pid, 2), Some(curl));
        assert_eq!(class_of(&c.state, pid, 3), Some(wget));
        assert_eq!(class_of(&c.state, pid, 4), Some(wget));
        assert_eq!(
            class_of(&c.state, pid, 9),
            None,
            "an unmapped container gets no entries"
        );
        assert_eq!(c.state.processes.len(), 4);
        let messages: Vec<&str> = c.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(
            messages,
            ["container \"c2\": exe /bin/curl gives no process class: /bin/curl: no such file in container c2-id; processes running it get the container-wide rules of policy \"a\""]
        );
        assert_eq!(c.warnings[0].location.as_ref().map(|l| l.line), Some(4));
        assert_eq!(c.exes.len(), 6);
    }

    #[test]
    fn where_a_path_leads_and_the_files_links_go_with_its_outcome() {
        let p = policy(TWO_ENTRIES);
        let busybox = Ok(proto::resolver::ExeFile {
            file: file(5),
            final_path: Some("/bin/busybox".into()),
            links: 2,
            ..Default::default()
        });
        let inv = with_exes(
            inventory(&[("c1", 10)]),
            &[&[
                ("/usr/bin/curl", resolved(1, None)),
                ("/usr/bin/wget", busybox),
            ]],
        );
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let outcome = |path: &str| c.exes.iter().find(|o| o.path == path).unwrap();
        let wget = outcome("/usr/bin/wget");
        assert_eq!(
            (wget.file.clone(), wget.final_path.as_deref(), wget.links),
            (Ok(file(5)), Some("/bin/busybox"), 2)
        );
        let curl = outcome("/usr/bin/curl");
        assert_eq!((curl.final_path.as_deref(), curl.links), (None, 0));
        // Not resolved: nothing known of it.
        let bin_curl = outcome("/bin/curl");
        assert!(bin_curl.file.is_err());
        assert_eq!((bin_curl.final_path.as_deref(), bin_curl.links), (None, 0));
    }

    #[test]
    fn a_file_two_entries_name_goes_to_the_first() {
        let p = policy(TWO_ENTRIES);
        let inv = with_exes(
            inventory(&[("c1", 10)]),
            &[&[
                ("/usr/bin/curl", resolved(1, None)),
                ("/usr/bin/wget", resolved(1, None)),
            ]],
        );
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let pid = c.rules.policy_ids[0];
        assert_eq!(class_of(&c.state, pid, 1), Some(c.rules.class_ids[0][0]));
        assert!(
            c.warnings[1]
                .message
                .contains("exe /usr/bin/wget gives no process class: it is the same file as exe /usr/bin/curl|/bin/curl of an earlier process entry"),
            "{:#?}",
            c.warnings
        );
    }

    #[test]
    fn a_sha256_pin_keeps_other_content_out() {
        let pin = "ab".repeat(32);
        let p = policy(&format!(
            "[[policy]]\nname='a'\nselect={{image='alpine:*'}}\n[[policy.process]]\nexe='/usr/bin/curl'\nsha256='{pin}'\nallow=[{{to='1.1.1.1'}}]\n"
        ));
        let other = "cd".repeat(32);
        let inv = with_exes(
            inventory(&[("good", 10), ("bad", 11), ("unhashed", 12)]),
            &[
                &[("/usr/bin/curl", resolved(1, Some(&pin)))],
                &[("/usr/bin/curl", resolved(2, Some(&other)))],
                &[("/usr/bin/curl", resolved(3, None))],
            ],
        );
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let pid = c.rules.policy_ids[0];
        assert!(class_of(&c.state, pid, 1).is_some());
        assert_eq!(class_of(&c.state, pid, 2), None);
        assert_eq!(class_of(&c.state, pid, 3), None);
        let w: Vec<&str> = c.warnings.iter().map(|w| w.message.as_str()).collect();
        assert!(
            w[0].contains(&format!(
                "its content (sha256 {other}) is not what the sha256 pin says ({pin})"
            )),
            "{w:#?}"
        );
        assert!(w[1].contains("its content was not hashed"), "{w:#?}");
    }

    #[test]
    fn containers_coming_and_going_touch_only_their_own_files() {
        let p = policy(TWO_ENTRIES);
        let one = with_exes(
            inventory(&[("c1", 10)]),
            &[&[("/usr/bin/curl", resolved(1, None))]],
        );
        let two = with_exes(
            inventory(&[("c1", 10), ("c2", 11)]),
            &[
                &[("/usr/bin/curl", resolved(1, None))],
                &[("/usr/bin/curl", resolved(2, None))],
            ],
        );
        let mut ids = IdTables::default();
        let a = compile(&p, &one, &mut ids).unwrap();
        let b = compile(&p, &two, &mut ids).unwrap();
        let ops: Vec<String> = diff_ops(&a.state, &b.state)
            .iter()
            .map(crate::cli::describe_op)
            .collect();
        assert_eq!(ops.len(), 2, "{ops:#?}");
        assert!(ops[0].contains("file dev 0:60 ino 2"), "{ops:#?}");
        assert!(ops[1].starts_with("+ cgroup 11"), "{ops:#?}");
        // A restarted daemon learns the classes through the files, even
        // one that history put on an id its content would not pick.
        let curl = b.rules.class_ids[0][0];
        let mut kernel = b.state.clone();
        for class in kernel.processes.values_mut() {
            if *class == curl {
                *class = 77;
            }
        }
        kernel.dests = kernel
            .dests
            .into_iter()
            .map(|(mut k, v)| {
                if k.class == curl {
                    k.class = 77;
                }
                (k, v)
            })
            .collect();
        let mut fresh = IdTables::default();
        fresh.seed_from_state(&kernel);
        fresh.seed_policies(&kernel, &p, &two);
        let c = compile(&p, &two, &mut fresh).unwrap();
        assert_eq!(c.rules.class_ids[0][0], 77);
        assert!(diff_ops(&kernel, &c.state).is_empty());
    }

    #[test]
    fn recompiling_is_stable() {
        let p = policy(
            "[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='1.1.1.1', proto='tcp', ports=[443]}]\n[[policy.process]]\nexe='/bin/x'\nallow=[{to='2.2.2.2'}]\n",
        );
        let mut ids = IdTables::default();
        let a = compile(&p, &inventory(&[("a", 1)]), &mut ids).unwrap();
        let b = compile(&p, &inventory(&[("a", 1)]), &mut ids).unwrap();
        assert_eq!(a.state, b.state);
        // A fresh daemon that learns ids from the kernel lands on the same state.
        let mut fresh = IdTables::default();
        fresh.seed_from_state(&a.state);
        fresh.seed_policies(&a.state, &p, &inventory(&[("a", 1)]));
        let c = compile(&p, &inventory(&[("a", 1)]), &mut fresh).unwrap();
        assert!(diff_ops(&a.state, &c.state).is_empty());
    }

    /// Three policies, one with a process entry; `port` is one rule's port
    /// in the second.
    fn three_policies(port: u16) -> PolicySet {
        policy(&format!(
            "[[policy]]\nname='a'\nselect={{name='a'}}\nallow=[{{to='10.0.0.0/8', proto='tcp', ports=[443]}}, {{to='10.1.1.1', proto='tcp', ports=[443]}}]\n\
             [[policy.process]]\ncomm='curl'\nallow=[{{to='192.0.2.1', proto='tcp', ports=[80]}}]\n\
             [[policy]]\nname='b'\nselect={{name='b'}}\nallow=[{{to='10.2.0.1', proto='tcp', ports=[{port}]}}, {{to='2001:db8::/64', proto='udp', ports=[53]}}]\n\
             [[policy]]\nname='c'\nselect={{name='c'}}\nallow=[{{to='10.3.0.1', proto='tcp', ports=[443]}}]\n"
        ))
    }

    #[test]
    fn an_unchanged_file_takes_every_policy_over_without_compiling() {
        let p = three_policies(443);
        let mut ids = IdTables::default();
        let (first, reuse) = compile_rules_reusing(&p, &mut ids, None).unwrap();
        assert_eq!(
            reuse,
            Reuse {
                reused: 0,
                compiled: 3
            }
        );
        assert!(!first.warnings.is_empty(), "policy a has a redundant rule");
        let (again, reuse) = compile_rules_reusing(&p, &mut ids, Some((&p, &first))).unwrap();
        assert_eq!(
            reuse,
            Reuse {
                reused: 3,
                compiled: 0
            }
        );
        assert_eq!(again, first);
    }

    #[test]
    fn a_one_rule_change_compiles_only_its_policy_and_equals_a_full_compile() {
        let before = three_policies(443);
        let after = three_policies(8443);
        let mut ids = IdTables::default();
        let (first, _) = compile_rules_reusing(&before, &mut ids, None).unwrap();
        let mut full_ids = ids.clone();
        let (reused, reuse) =
            compile_rules_reusing(&after, &mut ids, Some((&before, &first))).unwrap();
        assert_eq!(
            reuse,
            Reuse {
                reused: 2,
                compiled: 1
            }
        );
        let full = compile_rules(&after, &mut full_ids).unwrap();
        assert_eq!(reused, full);
        assert_ne!(reused.dests, first.dests);
    }

    #[test]
    fn a_policy_moved_in_the_file_is_compiled_again() {
        let p = three_policies(443);
        let mut ids = IdTables::default();
        let (first, _) = compile_rules_reusing(&p, &mut ids, None).unwrap();
        let mut swapped = p.clone();
        swapped.policies.swap(0, 2);
        let (_, reuse) = compile_rules_reusing(&swapped, &mut ids, Some((&p, &first))).unwrap();
        assert_eq!(
            reuse,
            Reuse {
                reused: 1,
                compiled: 2
            }
        );
    }

    /// Ids the tables forgot since are learned again; an id another key
    /// holds now makes the policy compile again, never share the id.
    #[test]
    fn a_policy_whose_ids_went_elsewhere_is_compiled_again() {
        let p = three_policies(443);
        let mut ids = IdTables::default();
        let (first, _) = compile_rules_reusing(&p, &mut ids, None).unwrap();

        let mut forgetful = IdTables::default();
        for (index, policy) in p.policies.iter().enumerate() {
            assert!(forgetful
                .policies
                .seed(policy.name.clone(), first.policy_ids[index]));
        }
        let (relearned, reuse) =
            compile_rules_reusing(&p, &mut forgetful, Some((&p, &first))).unwrap();
        assert_eq!(
            reuse,
            Reuse {
                reused: 3,
                compiled: 0
            }
        );
        assert_eq!(relearned, first);
        assert_eq!(forgetful.rules.len(), ids.rules.len());
        assert_eq!(forgetful.rulesets.len(), ids.rulesets.len());

        let mut taken = IdTables::default();
        for (index, policy) in p.policies.iter().enumerate() {
            taken
                .policies
                .seed(policy.name.clone(), first.policy_ids[index]);
        }
        let b_ruleset = *policy_dests(&first.dests, first.policy_ids[1])
            .next()
            .unwrap()
            .1;
        assert!(taken.rulesets.seed(vec![(99, 9, 16, 9)], b_ruleset));
        let mut full_ids = taken.clone();
        let (recompiled, reuse) =
            compile_rules_reusing(&p, &mut taken, Some((&p, &first))).unwrap();
        assert!(reuse.compiled >= 1, "{reuse:?}");
        assert!(policy_dests(&recompiled.dests, first.policy_ids[1])
            .all(|(_, &ruleset)| ruleset != b_ruleset));
        assert_eq!(recompiled, compile_rules(&p, &mut full_ids).unwrap());
    }
}
