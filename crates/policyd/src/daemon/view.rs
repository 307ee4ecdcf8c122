//! What the engine publishes after each batch of commands, and the readers
//! that answer from it (status, explain, event attribution) without
//! waiting for the engine: a status during a long reload shows the state
//! before it.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kernel_model::state::{CgroupEntry, KernelState, ProcessKey, ProcessMatch, RuleTables};

use proto::{
    loader::{Counters, StateSnapshot},
    policyd::{
        Connection, ContainerStatus, EntryCounts, ExecutableStatus, ExplainQuery, Explanation,
        PolicyStatus, PolicydError, Status,
    },
    resolver::ExeLookup,
    transport,
};

use super::{
    engine::{compile_failure, to_wire, Handle},
    links::{LoaderLink, UNANSWERED},
    plan::{self, Loaded},
};
use crate::{
    compile::{self, Assigned, Assignment, ExeOutcome},
    coverage::{self, AttachedParents, Enforcement},
    docker_dns::HostSettings,
    explain::{self, ExplainError},
    inventory::{Container, Inventory},
    policy::{Format, PolicySet},
};

/// The engine's state as of its last finished batch.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub loaded: Option<Arc<Loaded>>,
    /// Digest of the last policy file refused.
    pub rejected_digest: Option<u64>,
    pub inventory: Arc<Inventory>,
    pub inventory_connection: Connection,
    /// What the loader holds, as last read or applied.
    pub kernel: Option<Arc<StateSnapshot>>,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_applied_unix: Option<u64>,
    pub last_error: Option<String>,
}

impl View {
    /// The name of the loaded policy with kernel id `policy_id`.
    pub fn policy_name(&self, policy_id: u32) -> Option<&str> {
        let loaded = self.loaded.as_ref()?;
        let info = loaded.rules.catalog.policies.get(&policy_id)?;
        Some(&info.name)
    }

    /// Whether the maps judge `cgroup_id` by no rules (containers under
    /// different policies share it), as last read or applied.
    pub fn is_ruleless(&self, cgroup_id: u64) -> bool {
        self.kernel
            .as_ref()
            .and_then(|k| k.state.cgroups.get(&cgroup_id))
            .is_some_and(CgroupEntry::is_ruleless)
    }

    /// The container owning `cgroup_id`, for an event.
    pub fn container_of(&self, cgroup_id: u64) -> Option<&Container> {
        self.inventory
            .containers
            .iter()
            .find(|c| c.cgroup_id == Some(cgroup_id))
    }
}

/// Whether [`enforcements`] compares the maps' rules with the loaded ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// Compare them (status, explain: the maps may be at any state).
    Compare,
    /// Take them as held: the engine has just applied (or found nothing
    /// to apply to) what the loaded policy gives; a failed convergence
    /// leaves it no view of the maps at all. Spares a compare of every
    /// rule of a policy on each container start.
    JustConverged,
}

/// Each container of `assigned`, with its assignment and what the kernel
/// enforces of it: by the programs' attachment, and by what the loader's
/// maps hold (`kernel`, as last read or applied).
pub fn enforcements<'a>(
    loaded: &Loaded,
    inventory: &'a Inventory,
    assigned: &Assigned,
    attached: &AttachedParents,
    kernel: Option<&StateSnapshot>,
    rules: Rules,
) -> Vec<(&'a Container, Assignment, Enforcement)> {
    let mut held = Held::new(loaded, &assigned.cgroups, &assigned.files, kernel);
    if rules == Rules::JustConverged {
        held.rules_held = loaded
            .rules
            .policy_ids
            .iter()
            .map(|&id| (id, true))
            .collect();
    }
    assigned
        .assignments
        .iter()
        .filter_map(|a| {
            let c = inventory.containers.get(a.container_index)?;
            let mode = a.policy_index.map(|i| loaded.policies.policies[i].mode);
            let enforcement = held.judge(coverage::enforcement(c, mode, attached), c, a.entry);
            Some((c, a.clone(), enforcement))
        })
        .collect()
}

/// Whether the loader's maps judge a container as the loaded policy says.
/// A container is only reported enforced (or audited) when they hold its
/// entry, its policy's rules and its executables' entries as the policy
/// gives them: not while they wait to be applied, nor after an apply that
/// failed, nor while the loader keeps a policy's earlier rules.
pub struct Held<'a> {
    kernel: Option<&'a KernelState>,
    cgroups: &'a BTreeMap<u64, CgroupEntry>,
    files: &'a BTreeMap<ProcessKey, u32>,
    rules: RuleTables<'a>,
    /// Whether the maps hold each policy id's rules as compiled, once
    /// looked at: many containers share a policy of many rules.
    rules_held: BTreeMap<u32, bool>,
}

impl<'a> Held<'a> {
    /// `cgroups` and `files`: the containers' entries the policy gives.
    pub fn new(
        loaded: &'a Loaded,
        cgroups: &'a BTreeMap<u64, CgroupEntry>,
        files: &'a BTreeMap<ProcessKey, u32>,
        kernel: Option<&'a StateSnapshot>,
    ) -> Self {
        Held {
            kernel: kernel.map(|k| &k.state),
            cgroups,
            files,
            rules: RuleTables {
                processes: &loaded.rules.processes,
                dests: &loaded.rules.dests,
                ports: &loaded.rules.ports,
            },
            rules_held: BTreeMap::new(),
        }
    }

    /// `enforcement` (from the programs' attachment), or why the maps do
    /// not do what it says; `own`: the entry the container's policy gives
    /// it.
    pub fn judge(
        &mut self,
        enforcement: Enforcement,
        container: &Container,
        own: Option<CgroupEntry>,
    ) -> Enforcement {
        if !matches!(enforcement.mode.as_str(), "enforce" | "audit") {
            return enforcement;
        }
        let Some(cgroup_id) = container.cgroup_id else {
            return enforcement;
        };
        let unenforced = |mode: &str, why: &str| Enforcement {
            mode: mode.into(),
            unenforced_reason: Some(why.into()),
        };
        let Some(kernel) = self.kernel else {
            return unenforced(
                "unverified",
                "policyd does not know what the loader's maps hold: it has not read them since it started or since they changed (a loader restarted on fresh maps, another writer), the loader cannot be reached or an apply failed (see the last error)",
            );
        };
        let desired = self.cgroups.get(&cgroup_id);
        if desired != own.as_ref() {
            let why = if desired.is_some_and(CgroupEntry::is_ruleless) {
                "it shares its cgroup with a container under another policy: the kernel cannot tell their packets apart and judges both by no rules, so every packet is denied (in audit, reported) (see the warnings)"
            } else {
                "it shares its cgroup with a container under another policy, and the kernel judges both by that one's (see the warnings)"
            };
            return unenforced("unenforced", why);
        }
        if kernel.cgroups.get(&cgroup_id) != desired {
            return unenforced(
                "unenforced",
                "the loader's maps do not hold this container's entry as its policy gives it (not applied yet, or the last apply failed: see the last error)",
            );
        }
        let Some(policy_id) = desired.map(|e| e.policy_id) else {
            return enforcement;
        };
        let rules = self.rules;
        let rules_held = *self
            .rules_held
            .entry(policy_id)
            .or_insert_with(|| rules.judge_policy_alike(&RuleTables::of(kernel), policy_id));
        if !rules_held {
            return unenforced(
                "unenforced",
                "the loader's maps hold other rules for its policy than the policy file gives (not applied yet, or the last apply failed: see the last error): the kernel judges it by the rules it had before",
            );
        }
        let files_held = container.exes.values().flatten().all(|exe| {
            let key = ProcessKey {
                policy_id,
                process: ProcessMatch::File(exe.file),
            };
            self.files
                .get(&key)
                .is_none_or(|class| kernel.processes.get(&key) == Some(class))
        });
        if !files_held {
            return unenforced(
                "unenforced",
                "the loader's maps do not hold its executables' entries as its policy gives them (not applied yet, or the last apply failed: see the last error): those processes get the container-wide rules",
            );
        }
        enforcement
    }
}

/// Why the frames on `container`'s veths are not judged as its policy
/// says, when the loader's maps do not give one of them the owner the
/// policy does (not applied yet, or the last apply failed); `None` when
/// they all do. Only veths the policy maps are looked at: a veth another
/// container of the same namespace owns is judged under that one's.
fn veths_not_held(
    container: &Container,
    desired: &BTreeMap<u32, u64>,
    kernel: &KernelState,
) -> Option<String> {
    let unheld = listed(container.host_veths.iter().filter(|ifindex| {
        desired
            .get(ifindex)
            .is_some_and(|owner| kernel.veths.get(ifindex) != Some(owner))
    }))?;
    Some(format!(
        "the loader's maps do not map its veth (ifindex {unheld}) to it as its policy gives it (not applied yet, or the last apply failed: see the last error): the sources of its frames, what its namespace forwards and the kernel's answers are not checked there"
    ))
}

/// Why the frames on `container`'s veths may not be judged at all, when the
/// loader does not find its backstop first on one its policy maps (the
/// attach failed or was removed, another tc program or filter runs before
/// it, or the loader has not taken the veth's link event yet), or cannot
/// be asked; `None` when the backstop runs first on all of them.
fn veths_not_attached(
    container: &Container,
    desired: &BTreeMap<u32, u64>,
    attached: &Result<BTreeSet<u32>, String>,
) -> Option<String> {
    let mut mapped = container
        .host_veths
        .iter()
        .filter(|ifindex| desired.contains_key(ifindex))
        .peekable();
    mapped.peek()?;
    let attached = match attached {
        Ok(attached) => attached,
        Err(why) => {
            return Some(format!(
                "cannot tell whether the backstop is on its veth: {why}"
            ))
        }
    };
    let bare = listed(mapped.filter(|ifindex| !attached.contains(ifindex)))?;
    Some(format!(
        "the kernel does not run the backstop first on its veth (ifindex {bare}): frames from its packet sockets, forged sources and what its namespace forwards may pass there unjudged (the attach failed or was removed, or another tc program or filter runs before it: the loader's log says which; or the loader has not taken the veth's link event yet)"
    ))
}

/// `ifindexes` as a list for people; `None` when there are none.
fn listed<'a>(ifindexes: impl Iterator<Item = &'a u32>) -> Option<String> {
    let listed: Vec<String> = ifindexes.map(u32::to_string).collect();
    (!listed.is_empty()).then(|| listed.join(", "))
}

/// The loader's counters, or `None` (why is kept for status).
pub async fn counters(loader: &LoaderLink) -> Option<Counters> {
    let ctx = transport::context_with_deadline(10);
    match loader
        .call("counters", |c| async move { c.counters(ctx).await })
        .await
    {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            loader.refused(e.to_string());
            None
        }
        Err(_) => None,
    }
}

/// How long a status or explain waits for the engine to publish an apply
/// the loader already shows.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The engine's last published view, and what the loader's maps hold as
/// that view has them, while they are still at its generation: after a
/// loader restart on fresh maps, or another writer's apply, until the
/// engine reads them again, what policyd holds is not what the kernel
/// does (`None`). An apply of the engine's own shows in the loader's
/// generation before the engine publishes it (once its batch is done):
/// that view is waited for, briefly, so that a status in between does not
/// show every container unverified.
async fn settled_view(handle: &Handle) -> (Arc<View>, Option<Arc<StateSnapshot>>) {
    let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
    loop {
        let view = handle.view();
        let Some(held) = view.kernel.clone() else {
            return (view, None);
        };
        let Ok(generation) = handle.loader.generation().await else {
            return (view, None);
        };
        if generation == held.generation {
            return (view, Some(held));
        }
        if tokio::time::Instant::now() >= deadline {
            return (view, None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What `policyd status` shows: the engine's last published view, with
/// the loader's attachments (and `counters`) as they are now, and a
/// container shown enforced only if the maps are still as the view holds
/// them.
pub async fn status(handle: &Handle, counters: Option<&Counters>) -> Status {
    let (view, kernel) = settled_view(handle).await;
    let (attached, attached_veths) = tokio::join!(
        handle.loader.attached_parents(),
        handle.loader.attached_veths()
    );
    let mut status = Status {
        api_version: proto::API_VERSION,
        policy_file: handle.policy_path.display().to_string(),
        // What the maps hold now, or nothing while policyd does not know.
        generation: kernel.as_ref().map(|k| k.generation),
        unknown_container: kernel.as_ref().map(|k| k.state.unknown_verdict),
        loader: handle.loader.connection(),
        inventory: view.inventory_connection.clone(),
        reloads: view.reloads,
        reload_failures: view.reload_failures,
        last_applied_unix: view.last_applied_unix,
        last_error: view.last_error.clone(),
        events_dropped_kernel: counters.map_or(0, |c| c.events_dropped_kernel),
        events_dropped_loader: counters.map_or(0, |c| c.events_dropped_loader),
        entries: kernel
            .as_ref()
            .map_or_else(EntryCounts::default, |k| EntryCounts {
                cgroups: k.state.cgroups.len() as u64,
                processes: k.state.processes.len() as u64,
                dests: k.state.dests.len() as u64,
                ports: k.state.ports.len() as u64,
                veths: k.state.veths.len() as u64,
            }),
        ..Status::default()
    };
    let inventory = &view.inventory;
    let matched = view.loaded.as_ref().and_then(|loaded| {
        let assigned = compile::assign(&loaded.policies, &loaded.rules, inventory).ok()?;
        Some((loaded, assigned))
    });
    let container = |c: &Container| ContainerStatus {
        id: c.id.clone(),
        name: c.name.clone(),
        image: c.image.clone(),
        cgroup_id: c.cgroup_id,
        cgroup_path: c.cgroup_path.clone(),
        readonly_rootfs: c.readonly_rootfs,
        outside_managed_parent: coverage::outside_attached(c, &attached),
        mode: "unknown".into(),
        ..ContainerStatus::default()
    };
    let Some((loaded, assigned)) = matched else {
        status.containers = inventory.containers.iter().map(container).collect();
        return status;
    };
    let policies = &loaded.policies;
    status.policy_digest = Some(format!("{:016x}", policies.digest));
    status.mode = Some(match policies.format {
        Format::Toml => policies.mode.to_string(),
        Format::ThesisJson => format!("{} (thesis JSON)", policies.mode),
    });
    status.warnings = policies
        .warnings
        .iter()
        .chain(&loaded.rules.warnings)
        .chain(&assigned.warnings)
        .map(to_wire)
        .collect();
    let desired_veths = &assigned.veths;
    let enforcements = enforcements(
        loaded,
        inventory,
        &assigned,
        &attached,
        kernel.as_deref(),
        Rules::Compare,
    );
    let mut policy_of = vec![None; inventory.containers.len()];
    for (_, a, _) in &enforcements {
        policy_of[a.container_index] = a.policy_index.map(|i| &policies.policies[i]);
    }
    let mut uncovered = coverage::packet_sockets_uncovered(inventory, &policy_of, None);
    if let Some(kernel) = kernel.as_deref() {
        for (i, c) in inventory.containers.iter().enumerate() {
            if policy_of[i].is_some() && uncovered[i].is_none() {
                uncovered[i] = veths_not_held(c, desired_veths, &kernel.state)
                    .or_else(|| veths_not_attached(c, desired_veths, &attached_veths));
            }
        }
    }
    // What the host's settings leave open, where the veth judges the rest.
    let forged_dns = HostSettings::read().forged_query_forwarded();
    let dns_gaps = coverage::packet_sockets_uncovered(inventory, &policy_of, forged_dns.as_deref());
    for (gap, dns_gap) in uncovered.iter_mut().zip(dns_gaps) {
        if gap.is_none() {
            *gap = dns_gap;
        }
    }
    let mut containers_per_policy = vec![0u32; policies.policies.len()];
    for (c, a, enforcement) in enforcements {
        if let Some(i) = a.policy_index {
            containers_per_policy[i] += 1;
        }
        status.containers.push(ContainerStatus {
            policy: a.policy_index.map(|i| policies.policies[i].name.clone()),
            also_matched: a
                .also_matched
                .iter()
                .map(|&i| policies.policies[i].name.clone())
                .collect(),
            mode: enforcement.mode,
            unenforced_reason: enforcement.unenforced_reason,
            packet_sockets_uncovered: uncovered[a.container_index].take(),
            executables: executable_statuses(policies, &a, &assigned.exes),
            ..container(c)
        });
    }
    for (i, p) in policies.policies.iter().enumerate() {
        let policy_id = loaded.rules.policy_ids.get(i).copied().unwrap_or(0);
        let counter = counters.and_then(|c| c.policies.iter().find(|pc| pc.policy_id == policy_id));
        status.policies.push(PolicyStatus {
            name: p.name.clone(),
            policy_id,
            mode: p.mode.to_string(),
            rules: p.rule_count() as u32,
            processes: p.processes.len() as u32,
            containers: containers_per_policy[i],
            allowed: counter.map_or(0, |c| c.allowed),
            denied: counter.map_or(0, |c| c.denied),
            audited: counter.map_or(0, |c| c.audited),
        });
    }
    status
}

/// What each `exe` path of the policy selecting a container names there.
pub(crate) fn executable_statuses(
    policies: &PolicySet,
    assignment: &Assignment,
    exes: &[ExeOutcome],
) -> Vec<ExecutableStatus> {
    let Some(policy) = assignment.policy_index.map(|i| &policies.policies[i]) else {
        return Vec::new();
    };
    exes.iter()
        .filter(|o| o.container_index == assignment.container_index)
        .map(|o| ExecutableStatus {
            entry: policy.processes[o.process_index].describe(),
            path: o.path.clone(),
            file: o.file.as_ref().ok().copied(),
            problem: o.file.as_ref().err().cloned(),
            final_path: o.final_path.clone(),
            links: o.links,
        })
        .collect()
}

/// Explains a flow under the policy in force; when the loader's programs
/// do not (or may not) see the container, or its maps do not hold what
/// the policy gives it, says so first, since the verdict is then the
/// policy's, not the kernel's.
pub async fn explain(handle: &Handle, query: &ExplainQuery) -> Result<Explanation, PolicydError> {
    let (view, kernel) = settled_view(handle).await;
    let Some(loaded) = &view.loaded else {
        return Err(PolicydError::NoPolicy(
            view.last_error
                .clone()
                .unwrap_or_else(|| "not loaded".into()),
        ));
    };
    let inventory = inventory_for_explain(handle, &view.inventory, query).await;
    let (desired, _) = plan::desired(loaded, &inventory).map_err(compile_failure)?;
    let mut explanation =
        explain::explain(&loaded.policies, &loaded.rules, &desired, &inventory, query).map_err(
            |e| match e {
                ExplainError::NotFound(m) => PolicydError::NotFound(m),
                ExplainError::BadQuery(m) => PolicydError::BadRequest(m),
            },
        )?;
    let Some(policy_name) = explanation.policy.as_deref() else {
        return Ok(explanation);
    };
    let policy_index = loaded
        .policies
        .policies
        .iter()
        .position(|p| p.name == policy_name);
    let policy_mode = policy_index.map(|i| loaded.policies.policies[i].mode);
    let attached = handle.loader.attached_parents().await;
    if let Ok(container) = inventory.find(&query.container) {
        let enforcement = coverage::enforcement(container, policy_mode, &attached);
        let enforcement = Held::new(
            loaded,
            &desired.cgroups,
            &desired.processes,
            kernel.as_deref(),
        )
        .judge(
            enforcement,
            container,
            container
                .cgroup_id
                .map(|_| compile::cgroup_entry(&loaded.policies, &loaded.rules, policy_index)),
        );
        if let Some(why) = enforcement.unenforced_reason {
            explanation.reason = format!(
                "{} ({why}); what the policy says: {}",
                enforcement.mode, explanation.reason
            );
            explanation.mode = enforcement.mode;
        }
    }
    Ok(explanation)
}

/// The inventory, with the file the query's executable path names in its
/// container when no policy path already did: explain then judges the file
/// the kernel would see (a symlink to an allowed binary is that binary; a
/// copy is not).
async fn inventory_for_explain<'a>(
    handle: &Handle,
    inventory: &'a Inventory,
    query: &ExplainQuery,
) -> Cow<'a, Inventory> {
    let path = query.process.as_deref().filter(|p| p.starts_with('/'));
    let container = inventory.find(&query.container).ok();
    let (Some(path), Some(container), Some(resolver)) = (path, container, &handle.exe_resolver)
    else {
        return Cow::Borrowed(inventory);
    };
    if container.exes.contains_key(path) || container.cgroup_id.is_none() {
        return Cow::Borrowed(inventory);
    }
    let lookup = ExeLookup {
        namespace: container.namespace.clone(),
        container_id: container.id.clone(),
        path: path.to_string(),
        sha256: false,
    };
    let result = match resolver.executables(vec![lookup]).await {
        Ok(mut results) => results
            .pop()
            .unwrap_or_else(|| Err("the resolver gave no answer".into())),
        Err(e) => Err(format!("{UNANSWERED}: {e}")),
    };
    let (namespace, id) = (container.namespace.clone(), container.id.clone());
    let mut inventory = inventory.clone();
    if let Some(c) = inventory
        .containers
        .iter_mut()
        .find(|c| c.namespace == namespace && c.id == id)
    {
        c.exes.insert(path.to_string(), result);
    }
    Cow::Owned(inventory)
}

#[cfg(test)]
mod tests {
    use kernel_model::state::FileId;
    use proto::resolver::ExeFile;

    use super::*;

    fn enforced() -> Enforcement {
        Enforcement {
            mode: "enforce".into(),
            unenforced_reason: None,
        }
    }

    fn entry(policy_id: u32) -> CgroupEntry {
        CgroupEntry {
            policy_id,
            audit: false,
            unrestricted: false,
            forwarded_dns: false,
        }
    }

    /// Status and explain say "enforce" only for what the maps hold: the
    /// container's entry, its policy's rules and its executables' entries.
    #[test]
    fn a_container_is_enforced_only_once_the_maps_hold_its_entry_and_rules() {
        let policies = crate::policy::parse(
            "web.toml",
            r#"
            [[policy]]
            name = "web"
            select = { name = "web" }
            allow = [{ to = "10.0.0.0/8", proto = "tcp", ports = [443] }]
            [[policy.process]]
            exe = "/usr/bin/curl"
            allow = [{ to = "1.1.1.1", proto = "tcp", ports = [80] }]
            "#,
        )
        .unwrap();
        let rules =
            compile::compile_rules(&policies, &mut crate::ids::IdTables::default()).unwrap();
        let loaded = Loaded { policies, rules };
        let curl = FileId {
            dev: 1,
            ino: 2,
            ctime_sec: 3,
            ctime_nsec: 4,
        };
        let container = Container {
            name: "web".into(),
            cgroup_id: Some(7),
            exes: [(
                "/usr/bin/curl".to_string(),
                Ok(ExeFile {
                    file: curl,
                    ..ExeFile::default()
                }),
            )]
            .into(),
            ..Container::default()
        };
        let inventory = Inventory {
            containers: vec![container.clone()],
        };
        let (desired, _) = plan::desired(&loaded, &inventory).unwrap();
        let policy_id = desired.cgroups[&7].policy_id;
        let file_key = ProcessKey {
            policy_id,
            process: ProcessMatch::File(curl),
        };
        assert!(desired.processes.contains_key(&file_key));
        let mode = |change: &dyn Fn(&mut KernelState)| {
            let mut state = desired.clone();
            change(&mut state);
            let kernel = StateSnapshot {
                generation: 1,
                state,
            };
            Held::new(&loaded, &desired.cgroups, &desired.processes, Some(&kernel))
                .judge(enforced(), &container, Some(desired.cgroups[&7]))
                .mode
        };
        assert_eq!(mode(&|_| ()), "enforce");
        assert_eq!(
            mode(&|s| s.cgroups.clear()),
            "unenforced",
            "the entry not applied"
        );
        assert_eq!(
            mode(&|s| {
                s.cgroups.insert(7, entry(policy_id + 1));
            }),
            "unenforced",
            "another policy's entry"
        );
        assert_eq!(
            mode(&|s| {
                let (&key, _) = s.ports.iter().next().unwrap();
                s.ports.remove(&key);
            }),
            "unenforced",
            "a port of its rules not applied"
        );
        assert_eq!(
            mode(&|s| s.dests.retain(|k, _| k.class != 0)),
            "unenforced",
            "its container-wide prefixes not applied"
        );
        assert_eq!(
            mode(&|s| {
                s.processes.remove(&file_key);
            }),
            "unenforced",
            "its executable's entry not applied"
        );
        let unverified = Held::new(&loaded, &desired.cgroups, &desired.processes, None).judge(
            enforced(),
            &container,
            Some(desired.cgroups[&7]),
        );
        assert_eq!(unverified.mode, "unverified", "the maps never read");
    }

    /// Containers sharing a cgroup share its one entry: the stricter one,
    /// or between two policies of one mode no rules at all (so neither
    /// policy's rules let the other's packets through); a container whose
    /// own entry it is not is not shown enforced by its policy.
    #[test]
    fn containers_sharing_a_cgroup_get_the_stricter_entry_and_are_shown_so() {
        let policies = crate::policy::parse(
            "shared.toml",
            r#"
            [[policy]]
            name = "audited"
            mode = "audit"
            select = { name = "audited" }
            [[policy]]
            name = "web"
            select = { name = "web" }
            allow = [{ to = "10.0.0.0/8", proto = "tcp", ports = [443] }]
            [[policy]]
            name = "db"
            select = { name = "db" }
            [[policy]]
            name = "audited-too"
            mode = "audit"
            select = { name = "audited-too" }
            "#,
        )
        .unwrap();
        let rules =
            compile::compile_rules(&policies, &mut crate::ids::IdTables::default()).unwrap();
        let loaded = Loaded { policies, rules };
        let modes = |names: &[&str]| {
            let inventory = Inventory {
                containers: names
                    .iter()
                    .map(|name| Container {
                        id: format!("{name}-id"),
                        name: name.to_string(),
                        cgroup_id: Some(7),
                        ..Container::default()
                    })
                    .collect(),
            };
            let (desired, _) = plan::desired(&loaded, &inventory).unwrap();
            let kernel = StateSnapshot {
                generation: 1,
                state: desired.clone(),
            };
            let assigned = compile::assign(&loaded.policies, &loaded.rules, &inventory).unwrap();
            assert_eq!(assigned.warnings.len(), 1, "{:?}", assigned.warnings);
            let warning = &assigned.warnings[0].message;
            for name in names {
                assert!(warning.contains(&format!("\"{name}\"")), "{warning}");
            }
            let entry = desired.cgroups[&7];
            let policy_of_entry = if entry.is_ruleless() {
                assert!(!entry.forwarded_dns);
                assert!(warning.contains("judges them all by no rules"), "{warning}");
                Some(
                    if entry.audit {
                        "(none, audited)"
                    } else {
                        "(none)"
                    }
                    .to_string(),
                )
            } else {
                loaded
                    .rules
                    .policy_ids
                    .iter()
                    .position(|&id| id == entry.policy_id)
                    .map(|i| loaded.policies.policies[i].name.clone())
            };
            let mut held = Held::new(&loaded, &assigned.cgroups, &assigned.files, Some(&kernel));
            let modes: Vec<String> = assigned
                .assignments
                .iter()
                .map(|a| {
                    let c = &inventory.containers[a.container_index];
                    let mode = a.policy_index.map_or("unrestricted".into(), |i| {
                        loaded.policies.policies[i].mode.to_string()
                    });
                    let enforcement = Enforcement {
                        mode,
                        unenforced_reason: None,
                    };
                    held.judge(enforcement, c, a.entry).mode
                })
                .collect();
            (policy_of_entry, modes)
        };
        assert_eq!(
            modes(&["free", "web"]),
            (
                Some("web".into()),
                vec!["unrestricted".into(), "enforce".into()]
            ),
            "an unselected container first does not lift web's policy"
        );
        assert_eq!(
            modes(&["audited", "web"]),
            (
                Some("web".into()),
                vec!["unenforced".into(), "enforce".into()]
            ),
            "enforced over audited"
        );
        let unenforced = |n: usize| vec!["unenforced".to_string(); n];
        assert_eq!(
            modes(&["web", "db"]),
            (Some("(none)".into()), unenforced(2)),
            "between two enforced policies neither's rules judge the cgroup: every packet is denied"
        );
        assert_eq!(
            modes(&["web", "db", "web"]),
            (Some("(none)".into()), unenforced(3)),
            "a third container under one of them does not bring its rules back"
        );
        assert_eq!(
            modes(&["web", "db", "audited", "free"]),
            (
                Some("(none)".into()),
                unenforced(3)
                    .into_iter()
                    .chain(["unrestricted".into()])
                    .collect()
            ),
            "nor does an audited or unselected one"
        );
        assert_eq!(
            modes(&["audited", "audited-too"]),
            (Some("(none, audited)".into()), unenforced(2)),
            "between two audited policies every packet is reported"
        );
        assert_eq!(
            modes(&["audited", "web", "db"]),
            (Some("(none)".into()), unenforced(3)),
            "whatever the order"
        );
        assert_eq!(
            modes(&["audited", "audited-too", "web"]),
            (
                Some("web".into()),
                vec!["unenforced".into(), "unenforced".into(), "enforce".into()]
            ),
            "an enforced policy is stricter than audit"
        );
    }

    #[test]
    fn a_veth_without_the_backstop_is_named() {
        let container = Container {
            host_veths: vec![7, 8, 9],
            ..Container::default()
        };
        // Veth 9 is not the policy's (no entry is desired for it).
        let desired = BTreeMap::from([(7, 100), (8, 100)]);
        let on = |veths: &[u32]| Ok(veths.iter().copied().collect());
        assert_eq!(veths_not_attached(&container, &desired, &on(&[7, 8])), None);
        let why = veths_not_attached(&container, &desired, &on(&[7, 9])).unwrap();
        assert!(
            why.starts_with("the kernel does not run the backstop first on its veth (ifindex 8):"),
            "{why}"
        );
        let why = veths_not_attached(&container, &desired, &Err("loader down".into())).unwrap();
        assert_eq!(
            why,
            "cannot tell whether the backstop is on its veth: loader down"
        );
        // A container none of whose veths the policy maps is not this check's.
        assert_eq!(
            veths_not_attached(&Container::default(), &desired, &on(&[])),
            None
        );
    }

    #[test]
    fn a_veth_the_maps_do_not_give_its_owner_is_named() {
        let container = Container {
            host_veths: vec![7, 8, 9],
            ..Container::default()
        };
        // Veth 9 belongs to another container of the namespace.
        let desired = BTreeMap::from([(7, 100), (8, 100), (9, 200)]);
        let held = |veths: &[(u32, u64)]| KernelState {
            veths: veths.iter().copied().collect(),
            ..KernelState::default()
        };
        assert_eq!(
            veths_not_held(&container, &desired, &held(&[(7, 100), (8, 100), (9, 200)])),
            None
        );
        let why = veths_not_held(&container, &desired, &held(&[(7, 100), (9, 300)]))
            .expect("veth 8 unmapped, veth 9 another owner's");
        assert!(why.contains("ifindex 8, 9"), "{why}");
        assert_eq!(
            veths_not_held(&Container::default(), &desired, &held(&[])),
            None,
            "no veth of its own: the packet-socket coverage says so"
        );
    }
}
