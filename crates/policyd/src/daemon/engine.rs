//! The daemon's state and its one job: keep the loader's maps equal to
//! what the policy and the inventory call for, with minimal diffs.
//!
//! Every change goes through [`Engine::converge`]: fetch (or reuse) the
//! loader's state and generation, diff against the desired state, apply
//! with `from_generation`; on a generation mismatch, refetch and retry. An
//! invalid policy never gets that far: the running one stays in force.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kernel_model::{
    diff::{diff_ops, diff_verdict, MapDiff, OpCounts},
    state::{KernelState, MapOp, ProcessKey, ProcessMatch, Verdict},
};
use proto::{
    loader::{LoaderClient, LoaderError, StateSnapshot},
    policyd::{
        self as wire, Connection, ContainerStatus, EntryCounts, ExecutableStatus, ExplainQuery,
        Explanation, PolicyStatus, PolicydError, ReloadReport, Status,
    },
    resolver::{ExeFile, ExeLookup, ResolverClient},
    transport,
};

use crate::{
    compile::{self, Assignment, CompiledRules, ExeOutcome},
    coverage::{self, AttachedParents},
    diagnostic::{Diagnostic, Severity},
    explain::{self, ExplainError},
    ids::IdTables,
    inventory::{self, Inventory},
    metrics::{Recorder, ReloadResult},
    policy::{self, Format, PolicyError, PolicySet},
};

/// A policy that passed validation and compiled.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub policies: PolicySet,
    pub rules: CompiledRules,
}

/// Connection to the loader, re-established on demand.
pub struct LoaderLink {
    pub path: PathBuf,
    client: Option<LoaderClient>,
    pub last_error: Option<String>,
}

/// How long a state transfer or apply may take on a big host.
const LOADER_DEADLINE_SECS: u64 = 60;

impl LoaderLink {
    pub fn new(path: PathBuf) -> Self {
        LoaderLink {
            path,
            client: None,
            last_error: None,
        }
    }

    pub async fn client(&mut self) -> Result<LoaderClient, PolicydError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        match transport::connect(&self.path).await {
            Ok(stream) => {
                let client = LoaderClient::new(
                    tarpc::client::Config::default(),
                    transport::client(stream, transport::Service::Loader),
                )
                .spawn();
                self.client = Some(client.clone());
                self.last_error = None;
                Ok(client)
            }
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    /// Drops the connection after a transport error; the next call redials.
    pub fn failed(&mut self, error: String) -> PolicydError {
        self.client = None;
        self.last_error = Some(error.clone());
        PolicydError::LoaderUnavailable(error)
    }

    pub fn connected(&self) -> bool {
        self.client.is_some()
    }

    pub async fn state(&mut self) -> Result<StateSnapshot, PolicydError> {
        let client = self.client().await?;
        match client
            .state(transport::context_with_deadline(LOADER_DEADLINE_SECS))
            .await
        {
            Ok(Ok(snapshot)) => Ok(snapshot),
            Ok(Err(e)) => Err(PolicydError::Loader(e)),
            Err(e) => Err(self.failed(format!("state request failed: {e}"))),
        }
    }

    /// The loader's generation only: a cheap check before a full state read.
    pub async fn generation(&mut self) -> Result<u64, PolicydError> {
        let client = self.client().await?;
        client
            .generation(transport::context_with_deadline(LOADER_DEADLINE_SECS))
            .await
            .map_err(|e| self.failed(format!("generation request failed: {e}")))
    }

    /// The cgroups the loader's programs are attached to, relative to the
    /// cgroup2 mount, or why they are not known.
    pub async fn attached_parents(&mut self) -> AttachedParents {
        let client = self.client().await.map_err(|e| e.to_string())?;
        match client
            .attachments(transport::context_with_deadline(10))
            .await
        {
            Ok(attachments) => Ok(attachments.into_iter().map(|a| a.cgroup_path).collect()),
            Err(e) => Err(self
                .failed(format!("attachments request failed: {e}"))
                .to_string()),
        }
    }

    async fn apply(&mut self, diff: MapDiff) -> Result<Result<u64, LoaderError>, PolicydError> {
        let client = self.client().await?;
        match client
            .apply(transport::context_with_deadline(LOADER_DEADLINE_SECS), diff)
            .await
        {
            Ok(result) => Ok(result),
            Err(e) => Err(self.failed(format!("apply request failed: {e}"))),
        }
    }
}

/// The resolver, asked what `exe` paths name inside containers (policyd
/// cannot open other users' `/proc/<pid>/root`; the resolver can).
pub struct ExeResolver {
    pub path: PathBuf,
    client: Option<ResolverClient>,
}

/// How a resolution the resolver could not be asked for starts.
const UNANSWERED: &str = "not resolved: the resolver could not be asked";

/// Paths asked for in one request.
const EXE_LOOKUPS_PER_REQUEST: usize = 4096;

impl ExeResolver {
    pub fn new(path: PathBuf) -> Self {
        ExeResolver { path, client: None }
    }

    /// Resolves `lookups`, in order; `Err` when the resolver could not be
    /// asked (nothing is known then).
    pub async fn executables(
        &mut self,
        lookups: Vec<ExeLookup>,
    ) -> Result<Vec<Result<ExeFile, String>>, String> {
        let mut results = Vec::with_capacity(lookups.len());
        for chunk in lookups.chunks(EXE_LOOKUPS_PER_REQUEST) {
            let client = match &self.client {
                Some(c) => c.clone(),
                None => {
                    let stream = transport::connect(&self.path).await.map_err(|e| {
                        format!("the resolver ({}) is unavailable: {e}", self.path.display())
                    })?;
                    let client = ResolverClient::new(
                        tarpc::client::Config::default(),
                        transport::client(stream, transport::Service::Resolver),
                    )
                    .spawn();
                    self.client = Some(client.clone());
                    client
                }
            };
            // Hashing large executables takes a while.
            let got = client
                .executables(transport::context_with_deadline(60), chunk.to_vec())
                .await
                .map_err(|e| {
                    self.client = None;
                    format!("the resolver's executables request failed: {e}")
                })?;
            if got.len() != chunk.len() {
                return Err(format!(
                    "the resolver answered {} results for {} paths",
                    got.len(),
                    chunk.len()
                ));
            }
            results.extend(got);
        }
        Ok(results)
    }
}

/// Where the inventory comes from, for status.
#[derive(Clone, Debug, Default)]
pub struct InventoryState {
    pub connection: Connection,
    /// Whether a first inventory arrived.
    pub ready: bool,
    /// Hold convergence until the first inventory or the end of the grace
    /// period: converging earlier would apply rules under policy ids not
    /// yet learned from the running containers.
    pub hold: bool,
}

/// What one convergence did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub applied: bool,
    /// Why nothing was applied although something may need to be.
    pub pending: Option<String>,
    pub generation: u64,
    pub unknown_verdict: Option<Verdict>,
    pub ops: Vec<MapOp>,
}

pub struct Engine {
    pub policy_path: PathBuf,
    pub ids: IdTables,
    pub loaded: Option<Loaded>,
    /// Digest of the last file that failed validation, so the file watcher
    /// reports it once, not every second.
    pub rejected_digest: Option<u64>,
    pub inventory: Inventory,
    pub inventory_state: InventoryState,
    pub loader: LoaderLink,
    /// What the loader holds, as of its generation, when known.
    pub kernel: Option<StateSnapshot>,
    /// Whether the id tables have learned the loader's ids since start.
    seeded: bool,
    pub assignments: Vec<Assignment>,
    pub inventory_warnings: Vec<Diagnostic>,
    /// Resolves `exe` paths in containers; `None` with an inventory file
    /// (resolutions can then only come from the file).
    pub exe_resolver: Option<ExeResolver>,
    /// The last resolution could not reach the resolver: retried by the
    /// periodic resync.
    pub exes_incomplete: bool,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_applied_unix: Option<u64>,
    pub last_error: Option<String>,
    /// Containers already reported as unenforced (key → reason), so each is
    /// warned about once, and again if it recurs.
    unenforced_reported: BTreeMap<String, String>,
    /// What the metrics endpoint reports of reloads and events.
    pub recorder: std::sync::Arc<Recorder>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn to_wire(d: &Diagnostic) -> wire::Diagnostic {
    wire::Diagnostic {
        severity: match d.severity {
            Severity::Error => "error".into(),
            Severity::Warning => "warning".into(),
        },
        file: d.location.as_ref().map(|l| l.file.clone()),
        line: d.location.as_ref().map(|l| l.line),
        column: d.location.as_ref().map(|l| l.column),
        message: d.message.clone(),
        rendered: d.to_string(),
    }
}

fn invalid(diagnostics: &[Diagnostic]) -> PolicydError {
    PolicydError::InvalidPolicy {
        diagnostics: diagnostics.iter().map(to_wire).collect(),
    }
}

fn compile_failure(e: compile::CompileError) -> PolicydError {
    invalid(&[Diagnostic {
        severity: Severity::Error,
        location: None,
        message: e.to_string(),
        source_line: None,
    }])
}

/// Reads, validates and compiles the policy file.
pub fn load(path: &std::path::Path, ids: &mut IdTables) -> Result<Loaded, PolicydError> {
    let policies = policy::load_file(path).map_err(|e| match e {
        PolicyError::Invalid(invalid_policy) => invalid(&invalid_policy.diagnostics),
        PolicyError::Read { .. } => invalid(&[Diagnostic {
            severity: Severity::Error,
            location: None,
            message: e.to_string(),
            source_line: None,
        }]),
    })?;
    let rules = compile::compile_rules(&policies, ids).map_err(compile_failure)?;
    Ok(Loaded { policies, rules })
}

impl Engine {
    pub fn new(policy_path: PathBuf, loader_socket: PathBuf, inventory_endpoint: String) -> Self {
        Engine {
            policy_path,
            ids: IdTables::default(),
            loaded: None,
            rejected_digest: None,
            inventory: Inventory::default(),
            inventory_state: InventoryState {
                connection: Connection {
                    connected: false,
                    endpoint: inventory_endpoint,
                    error: None,
                },
                ready: false,
                hold: false,
            },
            loader: LoaderLink::new(loader_socket),
            kernel: None,
            seeded: false,
            assignments: Vec::new(),
            inventory_warnings: Vec::new(),
            exe_resolver: None,
            exes_incomplete: false,
            reloads: 0,
            reload_failures: 0,
            last_applied_unix: None,
            last_error: None,
            unenforced_reported: BTreeMap::new(),
            recorder: Default::default(),
        }
    }

    /// The loader's state, fetched if not known.
    async fn kernel_state(&mut self) -> Result<StateSnapshot, PolicydError> {
        if let Some(k) = &self.kernel {
            return Ok(k.clone());
        }
        let snapshot = self.loader.state().await?;
        self.kernel = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// After a start, learns the loader's ids before the first compile is
    /// used, so a restarted daemon converges with an (almost) empty diff.
    fn seed(&mut self, kernel: &KernelState) {
        if self.seeded {
            return;
        }
        let mut ids = IdTables::default();
        ids.seed_from_state(kernel);
        if let Some(loaded) = &self.loaded {
            ids.seed_policies(kernel, &loaded.policies, &self.inventory);
            match compile::compile_rules(&loaded.policies, &mut ids) {
                Ok(rules) => {
                    self.loaded = Some(Loaded {
                        policies: loaded.policies.clone(),
                        rules,
                    })
                }
                // It compiled before with other ids, so this cannot fail in
                // practice; keep what we have if it does.
                Err(e) => tracing::warn!(error = %e, "recompiling with the loader's ids failed"),
            }
        }
        self.ids = ids;
        self.seeded = true;
    }

    /// The state the policy and inventory call for. Until a first inventory
    /// arrives, the loader's cgroup, veth and executable entries are
    /// carried over unchanged: dropping them would turn every running
    /// container "unknown".
    fn desired(&mut self, kernel: &KernelState) -> Result<Option<KernelState>, PolicydError> {
        let Some(loaded) = &self.loaded else {
            return Ok(None);
        };
        let (cgroups, veths, files) = if self.inventory_state.ready {
            let compile::Assigned {
                assignments,
                cgroups,
                veths,
                files,
                exes: _,
                warnings,
            } = compile::assign(&loaded.policies, &loaded.rules, &self.inventory)
                .map_err(compile_failure)?;
            self.assignments = assignments;
            self.inventory_warnings = warnings;
            (cgroups, veths, files)
        } else {
            let files: BTreeMap<ProcessKey, u32> = kernel
                .processes
                .iter()
                .filter(|(k, _)| matches!(k.process, ProcessMatch::File(_)))
                .map(|(k, &class)| (*k, class))
                .collect();
            (kernel.cgroups.clone(), kernel.veths.clone(), files)
        };
        Ok(Some(compile::assemble(
            &loaded.policies,
            &loaded.rules,
            cgroups,
            veths,
            files,
        )))
    }

    /// Asks the resolver what the `exe` paths of `policies` name in each
    /// container they select, and records it in `inventory`: the paths not
    /// known yet, or all of them with `again` (a reload: a file may have
    /// been replaced since). Resolutions of paths no policy names any more
    /// are dropped. When the resolver cannot be asked, what was known stays
    /// and the rest is marked unresolved (retried by the periodic resync).
    async fn resolve_exes(&mut self, policies: &PolicySet, inventory: &mut Inventory, again: bool) {
        let wanted = inventory::wanted_exes(policies, inventory);
        inventory::keep_wanted_exes(inventory, &wanted);
        if std::mem::take(&mut self.exes_incomplete) {
            // Ask again what the resolver never answered.
            for c in &mut inventory.containers {
                c.exes
                    .retain(|_, r| !r.as_ref().is_err_and(|e| e.starts_with(UNANSWERED)));
            }
        }
        let lookups = inventory::exe_lookups(&wanted, inventory, again);
        if lookups.is_empty() {
            return;
        }
        let Some(resolver) = &mut self.exe_resolver else {
            return;
        };
        let started = Instant::now();
        let asked: Vec<ExeLookup> = lookups.iter().map(|(_, l)| l.clone()).collect();
        match resolver.executables(asked).await {
            Ok(results) => {
                let failed = results.iter().filter(|r| r.is_err()).count();
                for ((ci, lookup), result) in lookups.into_iter().zip(results) {
                    inventory.containers[ci].exes.insert(lookup.path, result);
                }
                tracing::debug!(paths = inventory.containers.len(), failed, elapsed = ?started.elapsed(), "executables resolved");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot resolve the policy's executables; processes of the paths not resolved get the container-wide rules until the resolver answers");
                for (ci, lookup) in lookups {
                    inventory.containers[ci]
                        .exes
                        .entry(lookup.path)
                        .or_insert_with(|| Err(format!("{UNANSWERED}: {e}")));
                }
                self.exes_incomplete = true;
            }
        }
    }

    /// Retries the resolutions the resolver did not answer, and converges
    /// if that changed anything.
    pub async fn retry_exes(&mut self) {
        if !self.exes_incomplete {
            return;
        }
        let Some(loaded) = &self.loaded else {
            return;
        };
        let policies = loaded.policies.clone();
        let mut inventory = self.inventory.clone();
        self.resolve_exes(&policies, &mut inventory, false).await;
        if inventory != self.inventory {
            self.inventory = inventory;
            self.converge_logged("executables resolved").await;
        }
    }

    /// Makes the loader hold the desired state. Retries on a generation
    /// mismatch (someone else changed the maps between fetch and apply).
    pub async fn converge(&mut self) -> Result<Outcome, PolicydError> {
        const ATTEMPTS: usize = 4;
        if self.inventory_state.hold && !self.inventory_state.ready {
            return Ok(Outcome {
                pending: Some(format!(
                    "waiting for the first container inventory from {}",
                    self.inventory_state.connection.endpoint
                )),
                ..Outcome::default()
            });
        }
        for _ in 0..ATTEMPTS {
            let snapshot = self.kernel_state().await?;
            self.seed(&snapshot.state);
            let Some(desired) = self.desired(&snapshot.state)? else {
                return Ok(Outcome {
                    generation: snapshot.generation,
                    ..Outcome::default()
                });
            };
            let ops = diff_ops(&snapshot.state, &desired);
            let unknown_verdict = diff_verdict(&snapshot.state, &desired);
            if ops.is_empty() && unknown_verdict.is_none() {
                return Ok(Outcome {
                    generation: snapshot.generation,
                    ..Outcome::default()
                });
            }
            let diff = MapDiff {
                from_generation: snapshot.generation,
                unknown_verdict,
                ops: ops.clone(),
            };
            match self.loader.apply(diff).await {
                Err(e) => {
                    self.kernel = None;
                    return Err(e);
                }
                Ok(Ok(generation)) => {
                    if let Some(loaded) = &self.loaded {
                        self.ids.retain_live(&desired, &loaded.policies);
                    }
                    tracing::info!(generation, ops = ops.len(), "applied");
                    self.kernel = Some(StateSnapshot {
                        generation,
                        state: desired,
                    });
                    self.last_applied_unix = Some(unix_now());
                    return Ok(Outcome {
                        applied: true,
                        pending: None,
                        generation,
                        unknown_verdict,
                        ops,
                    });
                }
                Ok(Err(LoaderError::GenerationMismatch { expected, actual })) => {
                    tracing::info!(
                        expected,
                        actual,
                        "loader state moved on; refetching and diffing again"
                    );
                    self.kernel = None;
                }
                Ok(Err(e)) => {
                    self.kernel = None;
                    return Err(PolicydError::Loader(e));
                }
            }
        }
        Err(PolicydError::Internal(format!(
            "the loader's generation changed {ATTEMPTS} times while applying; another writer is active?"
        )))
    }

    /// Converges and records the outcome for status.
    pub async fn converge_logged(&mut self, why: &str) {
        match self.converge().await {
            Ok(outcome) => {
                if let Some(why) = &outcome.pending {
                    tracing::info!(why, "convergence pending");
                }
                if outcome.applied {
                    tracing::info!(
                        why,
                        generation = outcome.generation,
                        ops = outcome.ops.len(),
                        "converged"
                    );
                }
                self.last_error = None;
            }
            Err(e) => {
                tracing::warn!(why, error = %e, "cannot converge yet");
                self.last_error = Some(e.to_string());
            }
        }
    }

    /// Re-reads the policy file and applies it (or, with `dry_run`, says
    /// what applying it would do).
    pub async fn reload(&mut self, dry_run: bool) -> Result<ReloadReport, PolicydError> {
        let started = Instant::now();
        let result = self.reload_inner(dry_run, started).await;
        release_freed_memory();
        if !dry_run {
            self.recorder
                .reload(reload_result(&result), started.elapsed());
            self.reloads += 1;
            if let Err(e) = &result {
                self.reload_failures += 1;
                self.last_error = Some(e.to_string());
            } else {
                self.last_error = None;
                self.warn_unenforced().await;
            }
        }
        result
    }

    async fn reload_inner(
        &mut self,
        dry_run: bool,
        started: Instant,
    ) -> Result<ReloadReport, PolicydError> {
        // Learn the loader's ids first (after a start), so the candidate
        // compiles onto them. If the loader is away, convergence will seed
        // and recompile when it is back.
        if !self.seeded {
            if let Ok(snapshot) = self.kernel_state().await {
                self.seed(&snapshot.state);
            }
        }
        let candidate = match load(&self.policy_path, &mut self.ids) {
            Ok(c) => c,
            Err(e) => {
                if let Ok(text) = std::fs::read(&self.policy_path) {
                    self.rejected_digest = Some(policy::fnv1a(&text));
                }
                tracing::warn!(error = %e, "policy refused");
                return Err(e);
            }
        };
        // Every executable again: a file may have been replaced or
        // modified since it was resolved.
        let mut inventory = self.inventory.clone();
        if self.inventory_state.ready {
            self.resolve_exes(&candidate.policies, &mut inventory, true)
                .await;
        }
        let compile_us = started.elapsed().as_micros() as u64;
        // The policy's own warnings, then what matching it against the
        // containers found (an executable that resolved to nothing, a sha256
        // pin the file fails).
        let mut warnings: Vec<wire::Diagnostic> = candidate
            .policies
            .warnings
            .iter()
            .chain(&candidate.rules.warnings)
            .map(to_wire)
            .collect();
        let policy_digest = format!("{:016x}", candidate.policies.digest);

        if dry_run {
            let snapshot = self.kernel_state().await?;
            let previous = self.loaded.replace(candidate);
            let previous_inventory = std::mem::replace(&mut self.inventory, inventory);
            let previous_warnings = self.inventory_warnings.clone();
            let desired = self.desired(&snapshot.state);
            self.loaded = previous;
            self.inventory = previous_inventory;
            let found = std::mem::replace(&mut self.inventory_warnings, previous_warnings);
            warnings.extend(found.iter().map(to_wire));
            let desired = desired?.unwrap_or_default();
            let ops = diff_ops(&snapshot.state, &desired);
            return Ok(ReloadReport {
                dry_run: true,
                applied: false,
                generation: snapshot.generation,
                policy_digest,
                unknown_verdict: diff_verdict(&snapshot.state, &desired),
                counts: OpCounts::of(&ops),
                ops,
                pending: None,
                warnings,
                compile_us,
                apply_us: started.elapsed().as_micros() as u64 - compile_us,
            });
        }

        let previous = self.loaded.replace(candidate);
        self.inventory = inventory;
        self.rejected_digest = None;
        let converged = self.converge().await;
        warnings.extend(self.inventory_warnings.iter().map(to_wire));
        match converged {
            Ok(outcome) => Ok(ReloadReport {
                dry_run: false,
                applied: outcome.applied,
                generation: outcome.generation,
                policy_digest,
                unknown_verdict: outcome.unknown_verdict,
                counts: OpCounts::of(&outcome.ops),
                ops: outcome.ops,
                pending: outcome.pending,
                warnings,
                compile_us,
                apply_us: started.elapsed().as_micros() as u64 - compile_us,
            }),
            // The loader refused the diff (capacity, invalid): nothing
            // changed in the kernel, so the running policy stays ours too.
            Err(e @ PolicydError::Loader(_)) => {
                self.loaded = previous;
                Err(e)
            }
            // The loader is away: the new policy is valid and stays
            // desired; convergence retries when the loader is back.
            Err(e) => Err(e),
        }
    }

    /// A new inventory from the resolver (or the inventory file). The
    /// executables of containers already known are not resolved again; a
    /// new container's are, before its entries are applied.
    pub async fn set_inventory(&mut self, mut inventory: Inventory) {
        let first = !self.inventory_state.ready;
        inventory::carry_exes(&self.inventory, &mut inventory);
        if let Some(loaded) = &self.loaded {
            let policies = loaded.policies.clone();
            self.resolve_exes(&policies, &mut inventory, false).await;
        }
        if !first && inventory == self.inventory {
            return;
        }
        self.inventory = inventory;
        self.inventory_state.ready = true;
        if first {
            // Policy ids are learned through running containers' cgroups:
            // now that they are known, learn again from the loader's state.
            self.seeded = false;
        }
        self.converge_logged(if first {
            "first inventory"
        } else {
            "inventory changed"
        })
        .await;
        self.warn_unenforced().await;
    }

    /// Each container's enforcement under the loaded policy, in inventory
    /// order, with the policy index that selects it.
    fn enforcements(&self, attached: &AttachedParents) -> Vec<(Assignment, coverage::Enforcement)> {
        let Some(loaded) = &self.loaded else {
            return Vec::new();
        };
        let policies = &loaded.policies;
        let assignments = match compile::assign(policies, &loaded.rules, &self.inventory) {
            Ok(assigned) => assigned.assignments,
            Err(_) => self.assignments.clone(),
        };
        assignments
            .into_iter()
            .filter_map(|a| {
                let c = self.inventory.containers.get(a.container_index)?;
                let mode = a.policy_index.map(|i| policies.policies[i].mode);
                let enforcement = coverage::enforcement(c, mode, attached);
                Some((a, enforcement))
            })
            .collect()
    }

    /// Logs a warning for every selected container whose policy the kernel
    /// does not enforce (its cgroup is below no attached parent), once per
    /// container and reason.
    async fn warn_unenforced(&mut self) {
        let attached = self.loader.attached_parents().await;
        let mut now = BTreeMap::new();
        for (a, e) in self.enforcements(&attached) {
            if e.mode != "unenforced" {
                continue;
            }
            let (Some(reason), Some(c)) = (
                e.unenforced_reason,
                self.inventory.containers.get(a.container_index),
            ) else {
                continue;
            };
            if self.unenforced_reported.get(&c.id) != Some(&reason) {
                tracing::warn!(
                    container = %c.name,
                    id = %c.id,
                    reason = %reason,
                    "container selected by a policy is NOT enforced"
                );
            }
            now.insert(c.id.clone(), reason);
        }
        self.unenforced_reported = now;
    }

    /// Explains a flow; when the loader's programs do not (or may not) see
    /// the container, says so first, since the verdict is then the
    /// policy's, not the kernel's.
    pub async fn explain(&mut self, query: &ExplainQuery) -> Result<Explanation, PolicydError> {
        let inventory = self.inventory_for_explain(query).await;
        let mut explanation = self.explain_policy(query, &inventory)?;
        let Some(policy_name) = explanation.policy.clone() else {
            return Ok(explanation);
        };
        let attached = self.loader.attached_parents().await;
        let policy_mode = self.loaded.as_ref().and_then(|l| {
            l.policies
                .policies
                .iter()
                .find(|p| p.name == policy_name)
                .map(|p| p.mode)
        });
        if let Ok(container) = inventory.find(&query.container) {
            let enforcement = coverage::enforcement(container, policy_mode, &attached);
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

    /// The inventory, with the file the query's executable path names in
    /// its container when no policy path already did: explain then judges
    /// the file the kernel would see (a symlink to an allowed binary is
    /// that binary; a copy is not).
    async fn inventory_for_explain(&mut self, query: &ExplainQuery) -> Inventory {
        let mut inventory = self.inventory.clone();
        let Some(path) = query.process.as_deref().filter(|p| p.starts_with('/')) else {
            return inventory;
        };
        let Ok(container) = inventory.find(&query.container) else {
            return inventory;
        };
        if container.exes.contains_key(path) || container.cgroup_id.is_none() {
            return inventory;
        }
        let id = container.id.clone();
        let Some(resolver) = &mut self.exe_resolver else {
            return inventory;
        };
        let lookup = ExeLookup {
            container_id: id.clone(),
            path: path.to_string(),
            sha256: false,
        };
        let result = match resolver.executables(vec![lookup]).await {
            Ok(mut results) => results
                .pop()
                .unwrap_or_else(|| Err("the resolver gave no answer".into())),
            Err(e) => Err(format!("{UNANSWERED}: {e}")),
        };
        if let Some(c) = inventory.containers.iter_mut().find(|c| c.id == id) {
            c.exes.insert(path.to_string(), result);
        }
        inventory
    }

    fn explain_policy(
        &mut self,
        query: &ExplainQuery,
        inventory: &Inventory,
    ) -> Result<Explanation, PolicydError> {
        let Some(loaded) = &self.loaded else {
            return Err(PolicydError::NoPolicy(
                self.last_error
                    .clone()
                    .unwrap_or_else(|| "not loaded".into()),
            ));
        };
        let assigned =
            compile::assign(&loaded.policies, &loaded.rules, inventory).map_err(compile_failure)?;
        let state = compile::assemble(
            &loaded.policies,
            &loaded.rules,
            assigned.cgroups,
            assigned.veths,
            assigned.files,
        );
        explain::explain(&loaded.policies, &loaded.rules, &state, inventory, query).map_err(|e| {
            match e {
                ExplainError::NotFound(m) => PolicydError::NotFound(m),
                ExplainError::BadQuery(m) => PolicydError::BadRequest(m),
            }
        })
    }

    pub async fn status(&mut self) -> Status {
        let counters = match self.loader.client().await {
            Ok(client) => match client.counters(transport::context_with_deadline(10)).await {
                Ok(Ok(c)) => Some(c),
                Ok(Err(e)) => {
                    self.loader.last_error = Some(e.to_string());
                    None
                }
                Err(e) => {
                    self.loader.failed(format!("counters request failed: {e}"));
                    None
                }
            },
            Err(_) => None,
        };
        let mut status = Status {
            api_version: proto::API_VERSION,
            policy_file: self.policy_path.display().to_string(),
            generation: self.kernel.as_ref().map(|k| k.generation),
            loader: Connection {
                connected: self.loader.connected(),
                endpoint: self.loader.path.display().to_string(),
                error: self.loader.last_error.clone(),
            },
            inventory: self.inventory_state.connection.clone(),
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            last_applied_unix: self.last_applied_unix,
            last_error: self.last_error.clone(),
            ..Status::default()
        };
        if let Some(c) = &counters {
            status.events_dropped_kernel = c.events_dropped_kernel;
            status.events_dropped_loader = c.events_dropped_loader;
        }
        if let Some(k) = &self.kernel {
            status.entries = EntryCounts {
                cgroups: k.state.cgroups.len() as u64,
                processes: k.state.processes.len() as u64,
                dests: k.state.dests.len() as u64,
                ports: k.state.ports.len() as u64,
                veths: k.state.veths.len() as u64,
            };
        }
        let attached = self.loader.attached_parents().await;
        let enforcements = self.enforcements(&attached);
        let exes: Vec<ExeOutcome> = self
            .loaded
            .as_ref()
            .and_then(|l| compile::assign(&l.policies, &l.rules, &self.inventory).ok())
            .map(|a| a.exes)
            .unwrap_or_default();
        let Some(loaded) = &self.loaded else {
            status.containers = self
                .inventory
                .containers
                .iter()
                .map(|c| ContainerStatus {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    image: c.image.clone(),
                    cgroup_id: c.cgroup_id,
                    cgroup_path: c.cgroup_path.clone(),
                    outside_managed_parent: coverage::outside_attached(c, &attached),
                    mode: "unknown".into(),
                    ..ContainerStatus::default()
                })
                .collect();
            return status;
        };
        let policies = &loaded.policies;
        status.policy_digest = Some(format!("{:016x}", policies.digest));
        status.mode = Some(match policies.format {
            Format::Toml => policies.mode.to_string(),
            Format::ThesisJson => format!("{} (thesis JSON)", policies.mode),
        });
        status.unknown_container = Some(policies.unknown_container);
        status.warnings = policies
            .warnings
            .iter()
            .chain(&loaded.rules.warnings)
            .chain(&self.inventory_warnings)
            .map(to_wire)
            .collect();
        let mut policy_of = vec![None; self.inventory.containers.len()];
        for (a, _) in &enforcements {
            policy_of[a.container_index] =
                a.policy_index.map(|i| policies.policies[i].name.as_str());
        }
        let mut uncovered = coverage::packet_sockets_uncovered(&self.inventory, &policy_of);
        let mut containers_per_policy = vec![0u32; policies.policies.len()];
        for (a, enforcement) in enforcements {
            let Some(c) = self.inventory.containers.get(a.container_index) else {
                continue;
            };
            if let Some(i) = a.policy_index {
                containers_per_policy[i] += 1;
            }
            status.containers.push(ContainerStatus {
                id: c.id.clone(),
                name: c.name.clone(),
                image: c.image.clone(),
                cgroup_id: c.cgroup_id,
                policy: a.policy_index.map(|i| policies.policies[i].name.clone()),
                also_matched: a
                    .also_matched
                    .iter()
                    .map(|&i| policies.policies[i].name.clone())
                    .collect(),
                cgroup_path: c.cgroup_path.clone(),
                mode: enforcement.mode,
                unenforced_reason: enforcement.unenforced_reason,
                packet_sockets_uncovered: uncovered[a.container_index].take(),
                readonly_rootfs: c.readonly_rootfs,
                outside_managed_parent: coverage::outside_attached(c, &attached),
                executables: executable_statuses(policies, &a, &exes),
            });
        }
        for (i, p) in policies.policies.iter().enumerate() {
            let policy_id = loaded.rules.policy_ids.get(i).copied().unwrap_or(0);
            let counter = counters
                .as_ref()
                .and_then(|c| c.policies.iter().find(|pc| pc.policy_id == policy_id));
            status.policies.push(PolicyStatus {
                name: p.name.clone(),
                policy_id,
                mode: p.mode.to_string(),
                rules: p.rule_count() as u32,
                processes: p.processes.len() as u32,
                containers: containers_per_policy[i],
                allowed: counter.map(|c| c.allowed).unwrap_or(0),
                denied: counter.map(|c| c.denied).unwrap_or(0),
                audited: counter.map(|c| c.audited).unwrap_or(0),
            });
        }
        status
    }

    /// Names for an event: the container owning the cgroup and the policy.
    pub fn attribute(&self, cgroup_id: u64, policy_id: u32) -> (Option<String>, Option<String>) {
        let container = self
            .inventory
            .containers
            .iter()
            .find(|c| c.cgroup_id == Some(cgroup_id))
            .map(|c| c.name.clone());
        let policy = self
            .loaded
            .as_ref()
            .and_then(|l| l.rules.catalog.policies.get(&policy_id))
            .map(|p| p.name.clone());
        (container, policy)
    }

    /// The name of the loaded policy with kernel id `policy_id`.
    pub fn policy_name(&self, policy_id: u32) -> Option<String> {
        self.loaded
            .as_ref()
            .and_then(|l| l.rules.catalog.policies.get(&policy_id))
            .map(|p| p.name.clone())
    }

    pub fn loaded_digest(&self) -> Option<u64> {
        self.loaded.as_ref().map(|l| l.policies.digest)
    }
}

/// How a reload ended, for the metrics.
fn reload_result(result: &Result<ReloadReport, PolicydError>) -> ReloadResult {
    match result {
        Ok(report) if report.pending.is_some() => ReloadResult::Pending,
        Ok(report) if report.applied => ReloadResult::Applied,
        Ok(_) => ReloadResult::Unchanged,
        Err(PolicydError::InvalidPolicy { .. } | PolicydError::NoPolicy(_)) => {
            ReloadResult::Invalid
        }
        Err(_) => ReloadResult::Failed,
    }
}

/// What each `exe` path of the policy selecting a container names there.
fn executable_statuses(
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
        })
        .collect()
}

/// Hands freed heap back to the kernel. Parsing a large TOML file builds
/// a document tree of tens of MB for a moment (the `toml` crate's, not
/// ours); glibc keeps such memory mapped unless asked, and policyd must
/// stay small at rest.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long the first convergence waits for an inventory before carrying
/// the loader's cgroup entries over unchanged.
pub const INVENTORY_GRACE: Duration = Duration::from_secs(15);
