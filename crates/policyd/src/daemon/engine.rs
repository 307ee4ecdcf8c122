//! The one task that owns the daemon's state and changes the loader's
//! maps: it takes [`Command`]s, plans ([`super::plan`]) and applies, and
//! publishes a [`View`] after each batch. Readers (status, explain, event
//! attribution, metrics) read the last published view and never wait for
//! a reload.
//!
//! Commands queued while the engine works are taken together: every
//! reload waiting is answered by one reload that started after it asked,
//! and only the newest inventory is used.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kernel_model::{
    diff::{MapDiff, OpCounts},
    state::KernelState,
};
use proto::{
    loader::{LoaderClient, LoaderError, StateSnapshot},
    policyd::{self as wire, Connection, PolicydError, ReloadReport},
    resolver::{ExeFile, ExeLookup, ResolverClient},
    transport,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    plan::{self, Loaded},
    view::{self, View},
};
use crate::{
    compile,
    diagnostic::{Diagnostic, Severity},
    ids::IdTables,
    inventory::{self, Inventory},
    metrics::{Recorder, ReloadResult},
    policy::{self, PolicyError, PolicySet},
};

/// How long a state transfer or apply may take on a big host.
const LOADER_DEADLINE_SECS: u64 = 60;

/// Connection to the loader, shared by the engine and the readers,
/// re-established on demand.
pub struct LoaderLink {
    pub path: PathBuf,
    client: Mutex<Option<LoaderClient>>,
    last_error: Mutex<Option<String>>,
}

/// Locks `m`; a panic elsewhere while it was held left a plain value.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoaderLink {
    pub fn new(path: PathBuf) -> Self {
        LoaderLink {
            path,
            client: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    pub async fn client(&self) -> Result<LoaderClient, PolicydError> {
        if let Some(client) = lock(&self.client).clone() {
            return Ok(client);
        }
        match transport::connect(&self.path).await {
            Ok(stream) => {
                let client = LoaderClient::new(
                    tarpc::client::Config::default(),
                    transport::client(stream, transport::Service::Loader),
                )
                .spawn();
                *lock(&self.client) = Some(client.clone());
                *lock(&self.last_error) = None;
                Ok(client)
            }
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    /// Drops the connection after a transport error; the next call redials.
    pub fn failed(&self, error: String) -> PolicydError {
        *lock(&self.client) = None;
        *lock(&self.last_error) = Some(error.clone());
        PolicydError::LoaderUnavailable(error)
    }

    /// Records an error the loader answered with (the connection is fine).
    pub fn refused(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub fn connected(&self) -> bool {
        lock(&self.client).is_some()
    }

    pub fn connection(&self) -> Connection {
        Connection {
            connected: self.connected(),
            endpoint: self.path.display().to_string(),
            error: lock(&self.last_error).clone(),
        }
    }

    async fn state(&self) -> Result<StateSnapshot, PolicydError> {
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
    async fn generation(&self) -> Result<u64, PolicydError> {
        let client = self.client().await?;
        client
            .generation(transport::context_with_deadline(LOADER_DEADLINE_SECS))
            .await
            .map_err(|e| self.failed(format!("generation request failed: {e}")))
    }

    /// The cgroups the loader's programs are attached to, relative to the
    /// cgroup2 mount, or why they are not known.
    pub async fn attached_parents(&self) -> crate::coverage::AttachedParents {
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

    async fn apply(&self, diff: MapDiff) -> Result<Result<u64, LoaderError>, PolicydError> {
        let client = self.client().await?;
        client
            .apply(transport::context_with_deadline(LOADER_DEADLINE_SECS), diff)
            .await
            .map_err(|e| self.failed(format!("apply request failed: {e}")))
    }
}

/// The resolver, asked what `exe` paths name inside containers (policyd
/// cannot open other users' `/proc/<pid>/root`; the resolver can).
pub struct ExeResolver {
    path: PathBuf,
    client: Mutex<Option<ResolverClient>>,
}

/// How a resolution the resolver could not be asked for starts.
pub const UNANSWERED: &str = "not resolved: the resolver could not be asked";

/// Paths asked for in one request.
const EXE_LOOKUPS_PER_REQUEST: usize = 4096;

impl ExeResolver {
    pub fn new(path: PathBuf) -> Self {
        ExeResolver {
            path,
            client: Mutex::new(None),
        }
    }

    /// Resolves `lookups`, in order; `Err` when the resolver could not be
    /// asked (nothing is known then).
    pub async fn executables(
        &self,
        lookups: Vec<ExeLookup>,
    ) -> Result<Vec<Result<ExeFile, String>>, String> {
        let mut results = Vec::with_capacity(lookups.len());
        for chunk in lookups.chunks(EXE_LOOKUPS_PER_REQUEST) {
            let cached = lock(&self.client).clone();
            let client = match cached {
                Some(c) => c,
                None => {
                    let stream = transport::connect(&self.path).await.map_err(|e| {
                        format!("the resolver ({}) is unavailable: {e}", self.path.display())
                    })?;
                    let client = ResolverClient::new(
                        tarpc::client::Config::default(),
                        transport::client(stream, transport::Service::Resolver),
                    )
                    .spawn();
                    *lock(&self.client) = Some(client.clone());
                    client
                }
            };
            // Hashing large executables takes a while.
            let got = client
                .executables(transport::context_with_deadline(60), chunk.to_vec())
                .await
                .map_err(|e| {
                    *lock(&self.client) = None;
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

type Reply = oneshot::Sender<Result<ReloadReport, PolicydError>>;

/// What the engine is asked to do.
pub enum Command {
    /// Re-read the policy file and apply it (or, with `dry_run`, say what
    /// applying it would do).
    Reload { dry_run: bool, reply: Reply },
    /// A new inventory from the resolver (or the inventory file).
    SetInventory(Inventory),
    /// The inventory source failed; the last inventory stays.
    InventoryUnavailable(String),
    /// Re-read the loader's state if it may have changed behind our back
    /// (`healthy`: nothing is failing, so a generation check suffices), and
    /// retry the executables the resolver did not answer.
    Resync { healthy: bool },
    /// No inventory arrived in time: converge without one.
    GraceOver,
}

/// The engine's end for everyone else: commands in, the published view out.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<View>>,
    pub loader: Arc<LoaderLink>,
    /// `None` with an inventory file (resolutions then come from the file).
    pub exe_resolver: Option<Arc<ExeResolver>>,
    pub policy_path: PathBuf,
}

/// Commands that may wait for the engine; senders wait beyond that.
const QUEUED_COMMANDS: usize = 64;

impl Handle {
    /// The state as of the engine's last finished batch.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    pub async fn send(&self, command: Command) {
        // Only fails once the engine is gone, when the daemon is ending.
        let _ = self.commands.send(command).await;
    }

    pub async fn reload(&self, dry_run: bool) -> Result<ReloadReport, PolicydError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reload { dry_run, reply }).await;
        answer
            .await
            .unwrap_or_else(|_| Err(PolicydError::Internal("the engine stopped".into())))
    }
}

/// Where the inventory comes from, as far as converging goes.
#[derive(Clone, Debug, Default)]
struct InventoryLink {
    connection: Connection,
    /// Whether a first inventory arrived.
    ready: bool,
    /// Hold convergence until the first inventory or the end of the grace
    /// period: converging earlier would apply rules under policy ids not
    /// yet learned from the running containers.
    hold: bool,
}

/// What one convergence did.
#[derive(Debug, Default)]
struct Outcome {
    applied: bool,
    /// Why nothing was applied although something may need to be.
    pending: Option<String>,
    generation: u64,
    diff: MapDiff,
    warnings: Vec<Diagnostic>,
}

struct Engine {
    loader: Arc<LoaderLink>,
    exe_resolver: Option<Arc<ExeResolver>>,
    policy_path: PathBuf,
    publish: watch::Sender<Arc<View>>,
    ids: IdTables,
    loaded: Option<Arc<Loaded>>,
    /// Digest of the last file that failed validation, so the file watcher
    /// reports it once, not every second.
    rejected_digest: Option<u64>,
    inventory: Arc<Inventory>,
    link: InventoryLink,
    /// What the loader holds, as of its generation, when known.
    kernel: Option<Arc<StateSnapshot>>,
    /// Whether the id tables have learned the loader's ids since start.
    seeded: bool,
    /// The last resolution could not reach the resolver: retried by the
    /// periodic resync.
    exes_incomplete: bool,
    reloads: u64,
    reload_failures: u64,
    last_applied_unix: Option<u64>,
    last_error: Option<String>,
    /// Containers already reported as unenforced (id → reason), so each is
    /// warned about once, and again if it recurs.
    unenforced_reported: BTreeMap<String, String>,
    recorder: Arc<Recorder>,
}

/// Where the engine starts from.
pub struct Setup {
    pub policy_path: PathBuf,
    pub loader_socket: PathBuf,
    pub inventory: super::InventorySource,
    pub recorder: Arc<Recorder>,
}

/// Starts the engine's task; it runs until every [`Handle`] is dropped.
pub fn spawn(setup: Setup) -> Handle {
    let (commands, queue) = mpsc::channel(QUEUED_COMMANDS);
    let (publish, view) = watch::channel(Arc::new(View::default()));
    let mut link = InventoryLink::default();
    let mut inventory = Inventory::default();
    let exe_resolver = match &setup.inventory {
        super::InventorySource::Resolver(path) => {
            link.connection.endpoint = path.display().to_string();
            link.hold = true;
            Some(Arc::new(ExeResolver::new(path.clone())))
        }
        super::InventorySource::File(path) => {
            link.connection.endpoint = path.display().to_string();
            match super::feeds::read_inventory_file(path) {
                Ok(read) => {
                    inventory = read;
                    link.ready = true;
                    link.connection.connected = true;
                }
                Err(err) => tracing::warn!(error = %err, "inventory file not usable yet"),
            }
            None
        }
    };
    let handle = Handle {
        commands,
        view,
        loader: Arc::new(LoaderLink::new(setup.loader_socket)),
        exe_resolver,
        policy_path: setup.policy_path,
    };
    let engine = Engine {
        loader: handle.loader.clone(),
        exe_resolver: handle.exe_resolver.clone(),
        policy_path: handle.policy_path.clone(),
        publish,
        ids: IdTables::default(),
        loaded: None,
        rejected_digest: None,
        inventory: Arc::new(inventory),
        link,
        kernel: None,
        seeded: false,
        exes_incomplete: false,
        reloads: 0,
        reload_failures: 0,
        last_applied_unix: None,
        last_error: None,
        unenforced_reported: BTreeMap::new(),
        recorder: setup.recorder,
    };
    engine.publish();
    tokio::spawn(engine.run(queue));
    handle
}

/// The commands that were waiting, merged.
#[derive(Default)]
struct Batch {
    reloads: Vec<Reply>,
    dry_runs: Vec<Reply>,
    inventory: Option<Inventory>,
    /// The inventory source's state after the batch: `Ok` when its last
    /// word was an inventory.
    link: Option<Result<(), String>>,
    resync: Option<bool>,
    grace_over: bool,
}

impl Batch {
    fn add(&mut self, command: Command) {
        match command {
            Command::Reload {
                dry_run: false,
                reply,
            } => self.reloads.push(reply),
            Command::Reload {
                dry_run: true,
                reply,
            } => self.dry_runs.push(reply),
            Command::SetInventory(inventory) => {
                self.inventory = Some(inventory);
                self.link = Some(Ok(()));
            }
            Command::InventoryUnavailable(error) => self.link = Some(Err(error)),
            Command::Resync { healthy } => {
                self.resync = Some(self.resync.unwrap_or(true) && healthy);
            }
            Command::GraceOver => self.grace_over = true,
        }
    }
}

fn answer(replies: Vec<Reply>, result: &Result<ReloadReport, PolicydError>) {
    for reply in replies {
        // The asker may have given up; nothing to tell it then.
        let _ = reply.send(result.clone());
    }
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

fn error_diagnostic(message: String) -> PolicydError {
    invalid(&[Diagnostic {
        severity: Severity::Error,
        location: None,
        message,
        source_line: None,
    }])
}

pub fn compile_failure(e: compile::CompileError) -> PolicydError {
    error_diagnostic(e.to_string())
}

/// Reads, validates and compiles the policy file.
fn load(path: &std::path::Path, ids: &mut IdTables) -> Result<Loaded, PolicydError> {
    let policies = policy::load_file(path).map_err(|e| match e {
        PolicyError::Invalid(invalid_policy) => invalid(&invalid_policy.diagnostics),
        PolicyError::Read { .. } => error_diagnostic(e.to_string()),
    })?;
    let rules = compile::compile_rules(&policies, ids).map_err(compile_failure)?;
    Ok(Loaded { policies, rules })
}

impl Engine {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        while let Some(first) = queue.recv().await {
            let mut batch = Batch::default();
            batch.add(first);
            while let Ok(more) = queue.try_recv() {
                batch.add(more);
            }
            let (reloads, dry_runs) = self.handle_batch(&mut batch).await;
            // Published before anyone hears back, so a client's next
            // status or explain sees what its reload did.
            self.publish();
            if let Some(result) = reloads {
                answer(std::mem::take(&mut batch.reloads), &result);
            }
            if let Some(result) = dry_runs {
                answer(std::mem::take(&mut batch.dry_runs), &result);
            }
        }
    }

    async fn handle_batch(
        &mut self,
        batch: &mut Batch,
    ) -> (
        Option<Result<ReloadReport, PolicydError>>,
        Option<Result<ReloadReport, PolicydError>>,
    ) {
        match batch.link.take() {
            Some(Ok(())) => {
                self.link.connection.connected = true;
                self.link.connection.error = None;
            }
            Some(Err(error)) => {
                self.link.connection.connected = false;
                self.link.connection.error = Some(error);
            }
            None => {}
        }
        let mut why = None;
        if batch.grace_over && !self.link.ready {
            tracing::warn!(
                grace_secs = INVENTORY_GRACE.as_secs(),
                "no container inventory yet; applying the policy's rules and keeping the loader's cgroup entries until it arrives"
            );
            self.link.hold = false;
            why = Some("inventory grace period over");
        }
        if let Some(inventory) = batch.inventory.take() {
            why = self.set_inventory(inventory).await.or(why);
        }
        if let Some(healthy) = batch.resync {
            why = self.resync(healthy).await.or(why);
        }
        let reloaded = if batch.reloads.is_empty() {
            if let Some(why) = why {
                self.converge_logged(why).await;
                self.warn_unenforced().await;
            }
            None
        } else {
            Some(self.reload(false).await)
        };
        let dry_run = if batch.dry_runs.is_empty() {
            None
        } else {
            Some(self.reload(true).await)
        };
        (reloaded, dry_run)
    }

    fn publish(&self) {
        let view = View {
            loaded: self.loaded.clone(),
            rejected_digest: self.rejected_digest,
            inventory: self.inventory.clone(),
            inventory_connection: self.link.connection.clone(),
            kernel: self.kernel.clone(),
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            last_applied_unix: self.last_applied_unix,
            last_error: self.last_error.clone(),
        };
        self.publish.send_replace(Arc::new(view));
    }

    /// The inventory to plan with: none until a first one arrived.
    fn ready_inventory(&self) -> Option<&Inventory> {
        self.link.ready.then_some(&*self.inventory)
    }

    /// The loader's state, fetched if not known.
    async fn kernel_state(&mut self) -> Result<Arc<StateSnapshot>, PolicydError> {
        if let Some(k) = &self.kernel {
            return Ok(k.clone());
        }
        let snapshot = Arc::new(self.loader.state().await?);
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
                    self.loaded = Some(Arc::new(Loaded {
                        policies: loaded.policies.clone(),
                        rules,
                    }))
                }
                // It compiled before with other ids, so this cannot fail in
                // practice; keep what we have if it does.
                Err(e) => tracing::warn!(error = %e, "recompiling with the loader's ids failed"),
            }
        }
        self.ids = ids;
        self.seeded = true;
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
        let Some(resolver) = self.exe_resolver.as_ref().filter(|_| !lookups.is_empty()) else {
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

    /// The periodic check: retries the executables the resolver did not
    /// answer, and forgets the loader's state unless its generation says
    /// nothing changed. Says why to converge, if it should.
    async fn resync(&mut self, healthy: bool) -> Option<&'static str> {
        let mut why = None;
        if let Some(loaded) = self.loaded.clone().filter(|_| self.exes_incomplete) {
            let mut inventory = (*self.inventory).clone();
            self.resolve_exes(&loaded.policies, &mut inventory, false)
                .await;
            if inventory != *self.inventory {
                self.inventory = Arc::new(inventory);
                why = Some("executables resolved");
            }
        }
        // A full state read is megabytes on a big host: skip it when the
        // loader's generation says nothing changed behind our back.
        let known = self.kernel.as_ref().map(|k| k.generation);
        if healthy && known.is_some() && self.loader.generation().await.ok() == known {
            return why;
        }
        self.kernel = None;
        Some(if healthy { "periodic resync" } else { "retry" })
    }

    /// Makes the loader hold the desired state. Retries on a generation
    /// mismatch (someone else changed the maps between fetch and apply).
    async fn converge(&mut self) -> Result<Outcome, PolicydError> {
        const ATTEMPTS: usize = 4;
        if self.link.hold && !self.link.ready {
            return Ok(Outcome {
                pending: Some(format!(
                    "waiting for the first container inventory from {}",
                    self.link.connection.endpoint
                )),
                ..Outcome::default()
            });
        }
        for _ in 0..ATTEMPTS {
            let kernel = self.kernel_state().await?;
            self.seed(&kernel.state);
            let Some(loaded) = self.loaded.clone() else {
                return Ok(Outcome {
                    generation: kernel.generation,
                    ..Outcome::default()
                });
            };
            let plan =
                plan::plan(&loaded, self.ready_inventory(), &kernel).map_err(compile_failure)?;
            if plan.diff.is_empty() {
                return Ok(Outcome {
                    generation: kernel.generation,
                    warnings: plan.warnings,
                    ..Outcome::default()
                });
            }
            match self.loader.apply(plan.diff.clone()).await {
                Ok(Ok(generation)) => {
                    self.ids.retain_live(&plan.desired, &loaded.policies);
                    tracing::info!(generation, ops = plan.diff.ops.len(), "applied");
                    self.kernel = Some(Arc::new(StateSnapshot {
                        generation,
                        state: plan.desired,
                    }));
                    self.last_applied_unix = Some(unix_now());
                    return Ok(Outcome {
                        applied: true,
                        pending: None,
                        generation,
                        diff: plan.diff,
                        warnings: plan.warnings,
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
                Err(e) => {
                    self.kernel = None;
                    return Err(e);
                }
            }
        }
        Err(PolicydError::Internal(format!(
            "the loader's generation changed {ATTEMPTS} times while applying; another writer is active?"
        )))
    }

    /// Converges and records the outcome for status.
    async fn converge_logged(&mut self, why: &str) {
        match self.converge().await {
            Ok(outcome) => {
                if let Some(why) = &outcome.pending {
                    tracing::info!(why, "convergence pending");
                }
                if outcome.applied {
                    tracing::info!(
                        why,
                        generation = outcome.generation,
                        ops = outcome.diff.ops.len(),
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

    /// Re-reads the policy file and applies it (or, with `dry_run`, plans
    /// it against the loader's state and applies nothing).
    async fn reload(&mut self, dry_run: bool) -> Result<ReloadReport, PolicydError> {
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
        let mut inventory = (*self.inventory).clone();
        if self.link.ready {
            self.resolve_exes(&candidate.policies, &mut inventory, true)
                .await;
        }
        let compile_us = started.elapsed().as_micros() as u64;
        // The policy's own warnings, then what matching it against the
        // containers found (an executable that resolved to nothing, a sha256
        // pin the file fails).
        let mut warnings: Vec<Diagnostic> = candidate
            .policies
            .warnings
            .iter()
            .chain(&candidate.rules.warnings)
            .cloned()
            .collect();
        let policy_digest = format!("{:016x}", candidate.policies.digest);

        let outcome = if dry_run {
            let kernel = self.kernel_state().await?;
            let plan = plan::plan(&candidate, self.link.ready.then_some(&inventory), &kernel)
                .map_err(compile_failure)?;
            Outcome {
                generation: kernel.generation,
                diff: plan.diff,
                warnings: plan.warnings,
                ..Outcome::default()
            }
        } else {
            let previous = self.loaded.replace(Arc::new(candidate));
            self.inventory = Arc::new(inventory);
            self.rejected_digest = None;
            match self.converge().await {
                Ok(outcome) => outcome,
                // The loader refused the diff (capacity, invalid): nothing
                // changed in the kernel, so the running policy stays ours too.
                Err(e @ PolicydError::Loader(_)) => {
                    self.loaded = previous;
                    return Err(e);
                }
                // The loader is away: the new policy is valid and stays
                // desired; convergence retries when the loader is back.
                Err(e) => return Err(e),
            }
        };
        warnings.extend(outcome.warnings);
        Ok(ReloadReport {
            dry_run,
            applied: outcome.applied,
            generation: outcome.generation,
            policy_digest,
            unknown_verdict: outcome.diff.unknown_verdict,
            counts: OpCounts::of(&outcome.diff.ops),
            ops: outcome.diff.ops,
            pending: outcome.pending,
            warnings: warnings.iter().map(to_wire).collect(),
            compile_us,
            apply_us: started.elapsed().as_micros() as u64 - compile_us,
        })
    }

    /// Takes a new inventory. The executables of containers already known
    /// are not resolved again; a new container's are, before its entries
    /// are applied. Says why to converge, if anything changed.
    async fn set_inventory(&mut self, mut inventory: Inventory) -> Option<&'static str> {
        let first = !self.link.ready;
        inventory::carry_exes(&self.inventory, &mut inventory);
        if let Some(loaded) = self.loaded.clone() {
            self.resolve_exes(&loaded.policies, &mut inventory, false)
                .await;
        }
        if !first && inventory == *self.inventory {
            return None;
        }
        self.inventory = Arc::new(inventory);
        self.link.ready = true;
        if first {
            // Policy ids are learned through running containers' cgroups:
            // now that they are known, learn again from the loader's state.
            self.seeded = false;
            return Some("first inventory");
        }
        Some("inventory changed")
    }

    /// Logs a warning for every selected container whose policy the kernel
    /// does not enforce (its cgroup is below no attached parent), once per
    /// container and reason.
    async fn warn_unenforced(&mut self) {
        let Some(loaded) = &self.loaded else {
            return;
        };
        let Ok(assigned) = compile::assign(&loaded.policies, &loaded.rules, &self.inventory) else {
            return;
        };
        let attached = self.loader.attached_parents().await;
        let mut now = BTreeMap::new();
        let enforcements =
            view::enforcements(loaded, &self.inventory, assigned.assignments, &attached);
        for (c, _, enforcement) in enforcements {
            let (Some(reason), "unenforced") =
                (enforcement.unenforced_reason, enforcement.mode.as_str())
            else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Container;

    fn inventory(name: &str) -> Inventory {
        Inventory {
            containers: vec![Container {
                name: name.into(),
                ..Container::default()
            }],
        }
    }

    #[test]
    fn queued_commands_merge_into_one_reload_the_newest_inventory_and_the_worst_resync() {
        let mut batch = Batch::default();
        let mut answers = Vec::new();
        for command in [
            Command::SetInventory(inventory("old")),
            Command::Resync { healthy: true },
            Command::SetInventory(inventory("new")),
            Command::Resync { healthy: false },
            Command::InventoryUnavailable("resolver restarted".into()),
        ] {
            let (reply, answer) = oneshot::channel();
            batch.add(Command::Reload {
                dry_run: false,
                reply,
            });
            answers.push(answer);
            batch.add(command);
        }
        assert_eq!(batch.reloads.len(), 5);
        assert!(batch.dry_runs.is_empty());
        assert_eq!(batch.inventory, Some(inventory("new")));
        assert_eq!(batch.link, Some(Err("resolver restarted".into())));
        assert_eq!(batch.resync, Some(false));
        let report = Ok(ReloadReport::default());
        answer(std::mem::take(&mut batch.reloads), &report);
        for mut a in answers {
            assert_eq!(a.try_recv(), Ok(report.clone()));
        }
    }
}
