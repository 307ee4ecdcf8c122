//! The one task that owns the daemon's state and changes the loader's
//! maps: it takes reloads and [`Feed`] news, plans ([`super::plan`]),
//! applies, and publishes a [`View`] after each batch. Readers (status,
//! explain, event attribution, metrics) read the last published view and
//! never wait for a reload.
//!
//! Commands queued while the engine works are taken together, and every
//! reload waiting is answered by one reload that started after it asked:
//! reloads never run in parallel, and a storm of them costs one.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kernel_model::{
    diff::{MapDiff, OpCounts},
    state::KernelState,
};
use proto::{
    loader::{LoaderError, StateSnapshot},
    policyd::{self as wire, PolicydError, ReloadReport},
    resolver::ExeLookup,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    links::{loader_deadline, ExeResolver, LoaderLink, UNANSWERED},
    plan::{self, ContainerChange, Loaded, Since},
    view::{self, View},
    Config, InventorySource,
};
use crate::{
    compile,
    diagnostic::{Diagnostic, Severity},
    ids::IdTables,
    inventory::{self, Container, Inventory},
    metrics::{Recorder, ReloadResult},
    policy::{self, PolicyError, PolicySet},
};

type Reply = oneshot::Sender<Result<ReloadReport, PolicydError>>;

/// What the engine is asked to do.
enum Command {
    /// Re-read the policy file and apply it (or, with `dry_run`, say what
    /// applying it would do). `settled`: the digest of the version the file
    /// watcher saw settle; another read now is not applied.
    Reload {
        dry_run: bool,
        settled: Option<u64>,
        reply: Reply,
    },
    Feed(Feed),
}

/// News from a feed: what changed, or that it is time to look.
pub enum Feed {
    /// A new inventory from the resolver (or the inventory file).
    SetInventory(Inventory),
    /// Containers changed, by inventory key (`None`: gone); the others
    /// are as before.
    ContainersChanged(Vec<(String, Option<Container>)>),
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

    async fn send(&self, command: Command) {
        // Only fails once the engine is gone, when the daemon is ending.
        let _ = self.commands.send(command).await;
    }

    pub async fn tell(&self, feed: Feed) {
        self.send(Command::Feed(feed)).await;
    }

    /// Re-reads the policy file and applies it (or, with `dry_run`, says
    /// what applying it would do). With `settled` (the digest of the
    /// version the file watcher saw settle), only if the file still holds
    /// that version: an edit begun since is applied once it settles, never
    /// half written.
    pub async fn reload(
        &self,
        dry_run: bool,
        settled: Option<u64>,
    ) -> Result<ReloadReport, PolicydError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reload {
            dry_run,
            settled,
            reply,
        })
        .await;
        answer
            .await
            .unwrap_or_else(|_| Err(PolicydError::Internal("the engine stopped".into())))
    }
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

/// One change to a published value, made again to an older copy.
trait Patch<C> {
    fn patch(&mut self, change: &C);
}

/// A key's container (`None`: gone) in an inventory in key order.
type InventoryChange = (String, Option<Container>);

impl Patch<InventoryChange> for Inventory {
    fn patch(&mut self, (key, container): &InventoryChange) {
        match (position_of(self, key), container.clone()) {
            (Ok(i), Some(container)) => self.containers[i] = container,
            (Ok(i), None) => {
                self.containers.remove(i);
            }
            (Err(i), Some(container)) => self.containers.insert(i, container),
            (Err(_), None) => {}
        }
    }
}

/// A diff the loader applied, and the generation it reached.
type Applied = (u64, MapDiff);

impl Patch<Applied> for StateSnapshot {
    fn patch(&mut self, (generation, diff): &Applied) {
        kernel_model::diff::apply(&mut self.state, diff.unknown_verdict, &diff.ops);
        self.generation = *generation;
    }
}

/// Changes a value readers share (the view's inventory, the loader's
/// state) without a clone of all of it per change: the copy the previous
/// publish held, once no reader holds it any more, is kept with the
/// changes it lacks, and the next change is made to it. A change then
/// costs what it changes, not the size of the host.
struct Recycler<T, C> {
    /// An unshared earlier copy and the changes made since.
    spare: Option<(T, Vec<C>)>,
    /// The changes made since the last publish; `None` when the value was
    /// replaced whole (no older copy can catch up by changes).
    since_publish: Option<Vec<C>>,
}

impl<T, C> Default for Recycler<T, C> {
    fn default() -> Self {
        Recycler {
            spare: None,
            since_publish: Some(Vec::new()),
        }
    }
}

impl<T: Clone + Patch<C>, C: Clone> Recycler<T, C> {
    /// Makes `changes` to `current`: in place when nobody else holds it,
    /// else to the spare copy (caught up first), else to a clone.
    fn change(&mut self, current: &mut Arc<T>, changes: &[C]) {
        if Arc::get_mut(current).is_none() {
            if let Some((mut spare, lag)) = self.spare.take() {
                lag.iter().for_each(|c| spare.patch(c));
                *current = Arc::new(spare);
            }
        }
        let value = Arc::make_mut(current);
        changes.iter().for_each(|c| value.patch(c));
        if let Some(since) = &mut self.since_publish {
            since.extend_from_slice(changes);
        }
    }

    /// The value was replaced whole.
    fn replaced(&mut self) {
        self.spare = None;
        self.since_publish = None;
    }

    /// After a publish: the value the previous publish held becomes the
    /// spare, if it is not the current one and nobody holds it.
    fn recycle(&mut self, previous: Option<Arc<T>>, current: Option<&Arc<T>>) {
        let since = self.since_publish.replace(Vec::new());
        let (Some(previous), Some(current), Some(lag)) = (previous, current, since) else {
            self.spare = None;
            return;
        };
        if Arc::ptr_eq(&previous, current) {
            // Unchanged since: a spare kept earlier still catches up.
            return;
        }
        self.spare = Arc::try_unwrap(previous).ok().map(|value| (value, lag));
    }
}

struct Engine {
    loader: Arc<LoaderLink>,
    exe_resolver: Option<Arc<ExeResolver>>,
    policy_path: PathBuf,
    /// What readers see; published after each batch of commands.
    view: View,
    publish: watch::Sender<Arc<View>>,
    ids: IdTables,
    /// Whether a first inventory arrived.
    inventory_ready: bool,
    /// Hold convergence until the first inventory or the end of the grace
    /// period: converging earlier would apply rules under policy ids not
    /// yet learned from the running containers.
    hold: bool,
    /// Whether the id tables have learned the loader's ids since start.
    seeded: bool,
    /// The last resolution could not reach the resolver: retried by the
    /// periodic resync.
    exes_incomplete: bool,
    /// Containers already reported as unenforced (id → reason), so each is
    /// warned about once, and again if it recurs.
    unenforced_reported: BTreeMap<String, String>,
    /// The containers changed since the loader's state was last planned
    /// and converged from `planned_with`, by inventory key (from the
    /// first change's before to the last one's after); `None` when
    /// anything else may have changed (then the whole state is planned).
    since_converged: Option<BTreeMap<String, ContainerChange>>,
    planned_with: Option<Arc<Loaded>>,
    /// The containers the last convergence looked at alone, for the
    /// unenforced check; `None`: all of them.
    last_converged: Option<Vec<ContainerChange>>,
    inventory_copies: Recycler<Inventory, InventoryChange>,
    kernel_copies: Recycler<StateSnapshot, Applied>,
    recorder: Arc<Recorder>,
}

/// Starts the engine's task; it ends when every [`Handle`] is dropped.
pub fn spawn(config: &Config, recorder: Arc<Recorder>) -> (Handle, JoinHandle<()>) {
    let (commands, queue) = mpsc::channel(QUEUED_COMMANDS);
    let mut view = View::default();
    let exe_resolver = match &config.inventory {
        InventorySource::Resolver(path) => {
            view.inventory_connection.endpoint = path.display().to_string();
            Some(Arc::new(ExeResolver::new(path.clone())))
        }
        InventorySource::File(path) => {
            view.inventory_connection.endpoint = path.display().to_string();
            match super::feeds::read_inventory_file(path) {
                Ok(inventory) => {
                    view.inventory = Arc::new(inventory);
                    view.inventory_connection.connected = true;
                }
                Err(err) => tracing::warn!(error = %err, "inventory file not usable yet"),
            }
            None
        }
    };
    let (publish, published) = watch::channel(Arc::new(view.clone()));
    let handle = Handle {
        commands,
        view: published,
        loader: Arc::new(LoaderLink::new(config.loader_socket.clone())),
        exe_resolver,
        policy_path: config.policy.clone(),
    };
    let engine = Engine {
        // A connection of its own: clients' requests (event long polls,
        // status) fill the loader's per-connection request limit, and the
        // engine's applies must never wait behind them or be throttled.
        loader: Arc::new(LoaderLink::new(config.loader_socket.clone())),
        exe_resolver: handle.exe_resolver.clone(),
        policy_path: handle.policy_path.clone(),
        // Ready with an inventory file read; held for the resolver's.
        inventory_ready: view.inventory_connection.connected,
        hold: handle.exe_resolver.is_some(),
        view,
        publish,
        ids: IdTables::default(),
        seeded: false,
        exes_incomplete: false,
        unenforced_reported: BTreeMap::new(),
        since_converged: None,
        planned_with: None,
        last_converged: None,
        inventory_copies: Recycler::default(),
        kernel_copies: Recycler::default(),
        recorder,
    };
    (handle, tokio::spawn(engine.run(queue)))
}

pub fn to_wire(d: &Diagnostic) -> wire::Diagnostic {
    wire::Diagnostic {
        severity: match d.severity {
            Severity::Error => "error".into(),
            Severity::Warning => "warning".into(),
        },
        file: d.location.as_ref().map(|l| l.file.to_string()),
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

/// A policy file refused, with the digest of the very bytes refused (a
/// second read could find an editor's finished write and have the file
/// watcher skip it for good).
struct Refused {
    error: PolicydError,
    digest: Option<u64>,
}

/// Reads, validates and compiles the policy file. The same bytes as
/// `previous` was loaded from are `previous` itself; otherwise only the
/// policies that differ from `previous`'s are compiled again. With
/// `settled`, bytes of another digest are refused: the file changed since
/// the watcher saw that version settle (an edit under way). With `proof`
/// (the first load after a start), policies learn the ids the kernel's
/// entries prove are theirs before anything is compiled.
fn load(
    path: &std::path::Path,
    ids: &mut IdTables,
    previous: Option<&Arc<Loaded>>,
    settled: Option<u64>,
    proof: Option<(&KernelState, &Inventory)>,
) -> Result<Arc<Loaded>, Refused> {
    let started = Instant::now();
    let text = std::fs::read_to_string(path).map_err(|source| Refused {
        error: error_diagnostic(
            PolicyError::Read {
                path: path.display().to_string(),
                source,
            }
            .to_string(),
        ),
        digest: None,
    })?;
    let digest = policy::fnv1a(text.as_bytes());
    if settled.is_some_and(|settled| settled != digest) {
        return Err(Refused {
            error: PolicydError::Internal(format!(
                "the policy file {} changed while it was read (an edit under way?); the running policy stays, and the file is applied once it settles",
                path.display()
            )),
            digest: None,
        });
    }
    let name = path.display().to_string();
    if let Some(previous) =
        previous.filter(|p| p.policies.digest == digest && p.policies.source_name == name)
    {
        tracing::debug!(elapsed = ?started.elapsed(), "policy file unchanged; its compiled form stays");
        return Ok(previous.clone());
    }
    let refused = |error| Refused {
        error,
        digest: Some(digest),
    };
    let read = started.elapsed();
    let policies = policy::parse(&name, &text)
        .map_err(|invalid_policy| refused(invalid(&invalid_policy.diagnostics)))?;
    drop(text);
    let parsed = started.elapsed();
    if let Some((kernel, inventory)) = proof {
        ids.seed_policies(kernel, &policies, inventory);
        compile::seed_policy_ids_from_rules(kernel, &policies, ids);
    }
    let (rules, reuse) =
        compile::compile_rules_reusing(&policies, ids, previous.map(|p| (&p.policies, &p.rules)))
            .map_err(|e| refused(compile_failure(e)))?;
    tracing::debug!(
        ?read,
        parse = ?(parsed - read),
        compile = ?(started.elapsed() - parsed),
        reused = reuse.reused,
        compiled = reuse.compiled,
        "policy loaded"
    );
    Ok(Arc::new(Loaded { policies, rules }))
}

impl Engine {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        while let Some(first) = queue.recv().await {
            let mut commands = vec![first];
            while let Ok(more) = queue.try_recv() {
                commands.push(more);
            }
            let (mut reloads, mut dry_runs, mut why) = (Vec::new(), Vec::new(), None);
            // Held to a settled version only when no one asked for the file
            // as it is now.
            let (mut settled, mut only_settled) = (None, true);
            for command in commands {
                match command {
                    Command::Reload {
                        dry_run: true,
                        reply,
                        ..
                    } => dry_runs.push(reply),
                    Command::Reload {
                        settled: version,
                        reply,
                        ..
                    } => {
                        settled = version.or(settled);
                        only_settled &= version.is_some();
                        reloads.push(reply);
                    }
                    Command::Feed(feed) => why = self.take(feed).await.or(why),
                }
            }
            // The feeds' news first: a reload the file or the loader
            // refuses converges nothing, and a container start or a lost
            // diff must reach the kernel all the same.
            if let Some(why) = why {
                self.converge_logged(why).await;
                if reloads.is_empty() {
                    self.warn_unenforced().await;
                }
            }
            // One reload answers every reload that waited: each asked
            // before it began, so each sees the file as it is now.
            let mut answers = Vec::new();
            if !reloads.is_empty() {
                let settled = settled.filter(|_| only_settled);
                answers.push((reloads, self.reload(false, settled).await));
            }
            if !dry_runs.is_empty() {
                answers.push((dry_runs, self.reload(true, None).await));
            }
            // Published before anyone hears back, so a client's next
            // status or explain sees what its reload did.
            let previous = self.publish.send_replace(Arc::new(self.view.clone()));
            let (inventory, kernel) = match Arc::try_unwrap(previous) {
                Ok(previous) => (Some(previous.inventory), previous.kernel),
                Err(_) => (None, None),
            };
            self.inventory_copies
                .recycle(inventory, Some(&self.view.inventory));
            self.kernel_copies
                .recycle(kernel, self.view.kernel.as_ref());
            // After the publish: only then is the view before the reload,
            // and the policy it held, let go.
            if !answers.is_empty() {
                release_freed_memory();
            }
            for (replies, result) in answers {
                for reply in replies {
                    // The asker may have given up; nothing to tell it then.
                    let _ = reply.send(result.clone());
                }
            }
        }
    }

    /// Takes a feed's news; says why to converge, if it should.
    async fn take(&mut self, feed: Feed) -> Option<&'static str> {
        if let Feed::ContainersChanged(changes) = &feed {
            if !self.inventory_ready {
                // Changes to a list this engine never took (the resolver's
                // feed sends the whole list first): taken as the whole, they
                // would remove every other running container's entry and
                // leave its veth without an owner; nor do they make the
                // source connected.
                tracing::warn!(
                    containers = changes.len(),
                    "container changes before any inventory; ignored until the resolver's list arrives"
                );
                return None;
            }
        }
        if let Feed::SetInventory(_) | Feed::ContainersChanged(_) = feed {
            self.view.inventory_connection.connected = true;
            self.view.inventory_connection.error = None;
        }
        match feed {
            Feed::SetInventory(inventory) => self.set_inventory(inventory).await,
            Feed::ContainersChanged(changes) => self.change_containers(changes).await,
            Feed::InventoryUnavailable(error) => {
                self.view.inventory_connection.connected = false;
                self.view.inventory_connection.error = Some(error);
                None
            }
            Feed::Resync { healthy } => self.resync(healthy).await,
            Feed::GraceOver if !self.inventory_ready => {
                tracing::warn!(
                    grace_secs = INVENTORY_GRACE.as_secs(),
                    "no container inventory yet; applying the policy's rules and keeping the loader's cgroup entries until it arrives"
                );
                self.hold = false;
                Some("inventory grace period over")
            }
            Feed::GraceOver => None,
        }
    }

    /// Forgets the loader's state (it is fetched again before the next
    /// plan), and with it what the last plan knew.
    fn forget_kernel(&mut self) {
        self.view.kernel = None;
        self.kernel_copies.replaced();
        self.since_converged = None;
    }

    /// The loader's state, fetched if not known.
    async fn kernel_state(&mut self) -> Result<Arc<StateSnapshot>, PolicydError> {
        if let Some(k) = &self.view.kernel {
            return Ok(k.clone());
        }
        let ctx = loader_deadline();
        let snapshot = self
            .loader
            .call("state", |c| async move { c.state(ctx).await })
            .await?
            .map_err(PolicydError::Loader)?;
        let snapshot = Arc::new(snapshot);
        self.view.kernel = Some(snapshot.clone());
        self.kernel_copies.replaced();
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
        if let Some(loaded) = &self.view.loaded {
            ids.seed_policies(kernel, &loaded.policies, &self.view.inventory);
            // What the containers did not tell (none known yet, or a policy
            // no running container has), the kernel's rules may.
            compile::seed_policy_ids_from_rules(kernel, &loaded.policies, &mut ids);
            match compile::compile_rules(&loaded.policies, &mut ids) {
                Ok(rules) => {
                    self.view.loaded = Some(Arc::new(Loaded {
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
        if let Some(loaded) = self.view.loaded.clone().filter(|_| self.exes_incomplete) {
            let mut inventory = (*self.view.inventory).clone();
            self.resolve_exes(&loaded.policies, &mut inventory, false)
                .await;
            if inventory != *self.view.inventory {
                self.view.inventory = Arc::new(inventory);
                self.inventory_copies.replaced();
                self.since_converged = None;
                why = Some("executables resolved");
            }
        }
        // A full state read is megabytes on a big host: skip it when the
        // loader's generation says nothing changed behind our back.
        let known = self.view.kernel.as_ref().map(|k| k.generation);
        let loader = self.loader.clone();
        let generation = loader.call("generation", |c| async move {
            c.generation(loader_deadline()).await
        });
        if healthy && known.is_some() && generation.await.ok() == known {
            return why;
        }
        self.forget_kernel();
        Some(if healthy { "periodic resync" } else { "retry" })
    }

    /// Makes the loader hold the desired state. Retries on a generation
    /// mismatch (someone else changed the maps between fetch and apply).
    async fn converge(&mut self) -> Result<Outcome, PolicydError> {
        const ATTEMPTS: usize = 4;
        self.last_converged = None;
        if self.hold && !self.inventory_ready {
            return Ok(Outcome {
                pending: Some(format!(
                    "waiting for the first container inventory from {}",
                    self.view.inventory_connection.endpoint
                )),
                ..Outcome::default()
            });
        }
        for _ in 0..ATTEMPTS {
            let kernel = self.kernel_state().await?;
            self.seed(&kernel.state);
            let Some(loaded) = self.view.loaded.clone() else {
                return Ok(Outcome {
                    generation: kernel.generation,
                    ..Outcome::default()
                });
            };
            let changes: Option<Vec<ContainerChange>> = self
                .planned_with
                .as_ref()
                .filter(|planned| Arc::ptr_eq(planned, &loaded))
                .and(self.since_converged.as_ref())
                .map(|changes| changes.values().cloned().collect());
            let since = changes
                .as_deref()
                .map_or(Since::Anything, Since::Containers);
            // None until a first inventory arrived.
            let inventory = self.inventory_ready.then_some(&*self.view.inventory);
            let plan::SafePlan {
                loaded: planned,
                moved_ids,
                plan,
            } = plan::plan_moving_safely(&loaded, &self.ids, inventory, &kernel, since)
                .map_err(compile_failure)?;
            // What this plan looked at alone, once it is in the loader.
            let looked_at = match (&plan.desired, since) {
                (None, Since::Containers(changes)) => Some(changes.to_vec()),
                _ => None,
            };
            if plan.diff.is_empty() {
                self.converged(&loaded, looked_at);
                return Ok(Outcome {
                    generation: kernel.generation,
                    warnings: plan.warnings,
                    ..Outcome::default()
                });
            }
            let diff = plan.diff.clone();
            let applied = self
                .loader
                .call("apply", |c| async move {
                    c.apply(loader_deadline(), diff).await
                })
                .await
                .and_then(|applied| applied.map_err(PolicydError::Loader));
            let generation = match applied {
                Ok(generation) => generation,
                Err(PolicydError::Loader(LoaderError::GenerationMismatch { expected, actual })) => {
                    tracing::info!(
                        expected,
                        actual,
                        "loader state moved on; refetching and diffing again"
                    );
                    self.forget_kernel();
                    continue;
                }
                Err(e) => {
                    self.forget_kernel();
                    return Err(e);
                }
            };
            tracing::info!(generation, ops = plan.diff.ops.len(), "applied");
            // What the loader now holds is the plan's: policies moved to
            // fresh ids are ours only from here on.
            if let Some(ids) = moved_ids {
                tracing::info!("policies that changed while containers moved onto or off them are under fresh ids");
                self.ids = ids;
                self.view.loaded = Some(planned.clone());
            }
            match plan.desired {
                Some(state) => {
                    self.ids.retain_live(&state, &planned.policies);
                    self.view.kernel = Some(Arc::new(StateSnapshot { generation, state }));
                    self.kernel_copies.replaced();
                }
                // Only container entries changed: the rules, and the ids
                // they hold, are as they were.
                None => {
                    // Not held here, so it can be changed in place.
                    drop(kernel);
                    match &mut self.view.kernel {
                        Some(held) => self
                            .kernel_copies
                            .change(held, &[(generation, plan.diff.clone())]),
                        // The plan was made from it: cannot happen; it is
                        // read again before the next plan.
                        None => self.forget_kernel(),
                    }
                }
            }
            self.converged(&planned, looked_at);
            let now = SystemTime::now().duration_since(UNIX_EPOCH);
            self.view.last_applied_unix = Some(now.map_or(0, |d| d.as_secs()));
            return Ok(Outcome {
                applied: true,
                pending: None,
                generation,
                diff: plan.diff,
                warnings: plan.warnings,
            });
        }
        Err(PolicydError::Internal(format!(
            "the loader's generation changed {ATTEMPTS} times while applying; another writer is active?"
        )))
    }

    /// The loader holds what `loaded` calls for on the inventory: later
    /// container changes can be planned alone.
    fn converged(&mut self, loaded: &Arc<Loaded>, looked_at: Option<Vec<ContainerChange>>) {
        self.since_converged = Some(BTreeMap::new());
        self.planned_with = Some(loaded.clone());
        self.last_converged = looked_at;
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
                self.view.last_error = None;
            }
            Err(e) => {
                tracing::warn!(why, error = %e, "cannot converge yet");
                self.view.last_error = Some(e.to_string());
            }
        }
    }

    /// Re-reads the policy file and applies it (or, with `dry_run`, plans
    /// it against the loader's state and applies nothing).
    async fn reload(
        &mut self,
        dry_run: bool,
        settled: Option<u64>,
    ) -> Result<ReloadReport, PolicydError> {
        let started = Instant::now();
        let result = self.reload_inner(dry_run, settled, started).await;
        if !dry_run {
            self.recorder
                .reload(reload_result(&result), started.elapsed());
            self.view.reloads += 1;
            if let Err(e) = &result {
                self.view.reload_failures += 1;
                self.view.last_error = Some(e.to_string());
            } else {
                self.view.last_error = None;
                self.warn_unenforced().await;
            }
        }
        result
    }

    async fn reload_inner(
        &mut self,
        dry_run: bool,
        settled: Option<u64>,
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
        let loaded = self.view.loaded.as_ref();
        let proof = self
            .view
            .kernel
            .as_ref()
            .filter(|_| loaded.is_none())
            .map(|kernel| (&kernel.state, &*self.view.inventory));
        let candidate = load(&self.policy_path, &mut self.ids, loaded, settled, proof).map_err(
            |Refused { error, digest }| {
                if digest.is_some() {
                    self.view.rejected_digest = digest;
                }
                tracing::warn!(error = %error, "policy refused");
                error
            },
        )?;
        // Every executable again: a file may have been replaced or
        // modified since it was resolved.
        let mut inventory = (*self.view.inventory).clone();
        if self.inventory_ready {
            self.resolve_exes(&candidate.policies, &mut inventory, true)
                .await;
        }
        let compile_us = started.elapsed().as_micros() as u64;
        let outcome = if dry_run {
            let kernel = self.kernel_state().await?;
            // As a reload would plan it, the ids it would move included.
            let plan = plan::plan_moving_safely(
                &candidate,
                &self.ids,
                self.inventory_ready.then_some(&inventory),
                &kernel,
                Since::Anything,
            )
            .map_err(compile_failure)?
            .plan;
            Outcome {
                generation: kernel.generation,
                diff: plan.diff,
                warnings: plan.warnings,
                ..Outcome::default()
            }
        } else {
            let previous = self.view.loaded.replace(candidate.clone());
            self.view.inventory = Arc::new(inventory);
            self.inventory_copies.replaced();
            self.since_converged = None;
            self.view.rejected_digest = None;
            match self.converge().await {
                Ok(outcome) => outcome,
                // The loader refused the diff (capacity, invalid): nothing
                // changed in the kernel, so the running policy stays ours too.
                Err(e @ PolicydError::Loader(_)) => {
                    self.view.loaded = previous;
                    return Err(e);
                }
                // The loader is away: the new policy is valid and stays
                // desired; convergence retries when the loader is back.
                Err(e) => return Err(e),
            }
        };
        Ok(ReloadReport {
            dry_run,
            applied: outcome.applied,
            generation: outcome.generation,
            policy_digest: format!("{:016x}", candidate.policies.digest),
            unknown_verdict: outcome.diff.unknown_verdict,
            counts: OpCounts::of(&outcome.diff.ops),
            ops: outcome.diff.ops,
            pending: outcome.pending,
            // The policy's own warnings, then what matching it against the
            // containers found (an executable that resolved to nothing, a
            // sha256 pin the file fails).
            warnings: candidate
                .policies
                .warnings
                .iter()
                .chain(&candidate.rules.warnings)
                .chain(&outcome.warnings)
                .map(to_wire)
                .collect(),
            compile_us,
            apply_us: started.elapsed().as_micros() as u64 - compile_us,
        })
    }

    /// Takes a new inventory. The executables of containers already known
    /// are not resolved again; a new container's are, before its entries
    /// are applied. Says why to converge, if anything changed.
    async fn set_inventory(&mut self, mut inventory: Inventory) -> Option<&'static str> {
        let first = !self.inventory_ready;
        inventory::carry_exes(&self.view.inventory.containers, &mut inventory);
        if let Some(loaded) = self.view.loaded.clone() {
            self.resolve_exes(&loaded.policies, &mut inventory, false)
                .await;
        }
        if !first && inventory == *self.view.inventory {
            return None;
        }
        self.view.inventory = Arc::new(inventory);
        self.inventory_copies.replaced();
        self.inventory_ready = true;
        self.since_converged = None;
        if first {
            // Policy ids are learned through running containers' cgroups:
            // now that they are known, learn again from the loader's state.
            self.seeded = false;
            return Some("first inventory");
        }
        Some("inventory changed")
    }

    /// Takes the changed containers of an inventory, the others unchanged:
    /// only these are looked at (their executables carried over or
    /// resolved as [`Self::set_inventory`] does), so a change costs what
    /// its containers do, not what the host's do. Says why to converge,
    /// if anything changed.
    async fn change_containers(
        &mut self,
        changes: Vec<(String, Option<Container>)>,
    ) -> Option<&'static str> {
        let mut changed = Vec::new();
        for (key, after) in changes {
            let position = position_of(&self.view.inventory, &key);
            let before = position
                .ok()
                .map(|i| self.view.inventory.containers[i].clone());
            let mut alone = Inventory {
                containers: after.into_iter().collect(),
            };
            inventory::carry_exes(&before, &mut alone);
            if let Some(loaded) = self.view.loaded.clone() {
                // Only this container's unanswered paths are asked again
                // here; the periodic resync still retries everyone's.
                let incomplete = std::mem::take(&mut self.exes_incomplete);
                self.resolve_exes(&loaded.policies, &mut alone, false).await;
                self.exes_incomplete |= incomplete;
            }
            let after = alone.containers.pop();
            if before == after {
                continue;
            }
            changed.push((key, ContainerChange { before, after }));
        }
        if changed.is_empty() {
            return None;
        }
        let edits: Vec<InventoryChange> = changed
            .iter()
            .map(|(key, change)| (key.clone(), change.after.clone()))
            .collect();
        self.inventory_copies
            .change(&mut self.view.inventory, &edits);
        if let Some(since) = &mut self.since_converged {
            for (key, change) in changed {
                since
                    .entry(key)
                    .and_modify(|earlier| earlier.after = change.after.clone())
                    .or_insert(change);
            }
        }
        Some("inventory changed")
    }

    /// Logs a warning for every selected container whose policy the kernel
    /// does not enforce (its cgroup is below no attached parent), once per
    /// container and reason.
    async fn warn_unenforced(&mut self) {
        let Some(loaded) = self.view.loaded.clone() else {
            return;
        };
        // After a convergence that looked at some containers alone, only
        // those can have become (or stopped being) unenforced.
        let scope = self.last_converged.take();
        let inventory = match &scope {
            Some(changes) => Cow::Owned(Inventory {
                containers: changes.iter().filter_map(|c| c.after.clone()).collect(),
            }),
            None => Cow::Borrowed(&*self.view.inventory),
        };
        let Ok(assigned) = compile::assign(&loaded.policies, &loaded.rules, &inventory) else {
            return;
        };
        let attached = self.loader.attached_parents().await;
        let mut reported = match &scope {
            Some(changes) => {
                let mut kept = std::mem::take(&mut self.unenforced_reported);
                let mut previous = BTreeMap::new();
                for c in changes.iter().flat_map(|c| c.before.iter().chain(&c.after)) {
                    if let Some(reason) = kept.remove(&c.id) {
                        previous.insert(c.id.clone(), reason);
                    }
                }
                self.unenforced_reported = previous;
                kept
            }
            None => BTreeMap::new(),
        };
        let enforcements = view::enforcements(
            &loaded,
            &inventory,
            &assigned,
            &attached,
            self.view.kernel.as_deref(),
            view::Rules::JustConverged,
        );
        for (c, _, enforcement) in enforcements {
            let (Some(reason), "unenforced") =
                (enforcement.unenforced_reason, enforcement.mode.as_str())
            else {
                continue;
            };
            if self.unenforced_reported.get(&c.id) != Some(&reason) {
                tracing::warn!(
                    container = ?c.name,
                    id = %c.id,
                    reason = %reason,
                    "container selected by a policy is NOT enforced"
                );
            }
            reported.insert(c.id.clone(), reason);
        }
        self.unenforced_reported = reported;
    }
}

/// Where the container of inventory key `key` (`namespace/id`) is in an
/// inventory kept in key order (the resolver's), or would go.
fn position_of(inventory: &Inventory, key: &str) -> Result<usize, usize> {
    inventory.containers.binary_search_by(|c| {
        c.namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(c.id.bytes())
            .cmp(key.bytes())
    })
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

    fn policy_text(port: u16) -> String {
        format!(
            "[[policy]]\nname = \"a\"\nselect = {{ name = \"a\" }}\nallow = [{{ to = \"10.0.0.1\", proto = \"tcp\", ports = [443] }}]\n\
             [[policy]]\nname = \"b\"\nselect = {{ name = \"b\" }}\nallow = [{{ to = \"10.0.0.2\", proto = \"tcp\", ports = [{port}] }}]\n"
        )
    }

    #[tokio::test]
    async fn changes_before_the_first_inventory_are_not_taken_for_it() {
        let dir = std::env::temp_dir().join(format!("policyd-early-{}", std::process::id()));
        let config = Config {
            policy: dir.join("policy.toml"),
            socket: dir.join("policyd.sock"),
            loader_socket: dir.join("no-loader.sock"),
            inventory: InventorySource::Resolver(dir.join("no-resolver.sock")),
            group: "root".into(),
            file_poll: Duration::from_secs(3600),
            policy_watch: None,
            resync_every: Duration::from_secs(3600),
            metrics_listen: None,
            event_log: super::super::observe::EventLogTarget::Off,
        };
        let (mut handle, task) = spawn(&config, Arc::default());
        let web = Container {
            id: "web-id".into(),
            name: "web".into(),
            ..Container::default()
        };
        handle
            .tell(Feed::ContainersChanged(vec![(
                "default/web-id".into(),
                Some(web),
            )]))
            .await;
        // Published after the batch that took it.
        handle.view.changed().await.unwrap();
        let view = handle.view.borrow_and_update().clone();
        assert!(view.inventory.containers.is_empty(), "{:?}", view.inventory);
        assert!(!view.inventory_connection.connected);
        drop(handle);
        task.await.unwrap();
    }

    #[test]
    fn the_same_bytes_again_are_the_loaded_policy_itself() {
        let dir = std::env::temp_dir().join(format!("policyd-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy_text(443)).unwrap();
        let mut ids = IdTables::default();
        let Ok(first) = load(&path, &mut ids, None, None, None) else {
            panic!("the policy loads")
        };
        let Ok(again) = load(&path, &mut ids, Some(&first), None, None) else {
            panic!("the policy loads")
        };
        assert!(Arc::ptr_eq(&first, &again), "not parsed nor compiled again");

        std::fs::write(&path, policy_text(8443)).unwrap();
        let mut fresh_ids = ids.clone();
        let Ok(edited) = load(&path, &mut ids, Some(&again), None, None) else {
            panic!("the policy loads")
        };
        // The watcher's settled version is no longer the file's: refused,
        // not taken as a policy.
        let stale = policy::fnv1a(policy_text(443).as_bytes());
        let Err(refused) = load(&path, &mut ids, Some(&edited), Some(stale), None) else {
            panic!("a version other than the settled one is applied")
        };
        assert!(
            refused
                .error
                .to_string()
                .contains("changed while it was read"),
            "{}",
            refused.error
        );
        assert_eq!(refused.digest, None, "not remembered as a refused file");
        let current = policy::fnv1a(policy_text(8443).as_bytes());
        assert!(load(&path, &mut ids, Some(&edited), Some(current), None).is_ok());
        assert!(!Arc::ptr_eq(&again, &edited));
        assert_eq!(
            edited.rules,
            compile::compile_rules(&edited.policies, &mut fresh_ids).unwrap()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn container(id: &str) -> Container {
        Container {
            id: id.into(),
            namespace: "default".into(),
            cgroup_id: Some(id.len() as u64),
            ..Container::default()
        }
    }

    fn add(id: &str) -> InventoryChange {
        (format!("default/{id}"), Some(container(id)))
    }

    fn ids(inventory: &Inventory) -> Vec<&str> {
        inventory.containers.iter().map(|c| c.id.as_str()).collect()
    }

    /// One engine batch: `changes` made to the value, then published.
    fn batch(
        copies: &mut Recycler<Inventory, InventoryChange>,
        value: &mut Arc<Inventory>,
        published: &mut Arc<Inventory>,
        changes: &[InventoryChange],
    ) {
        copies.change(value, changes);
        let previous = std::mem::replace(published, value.clone());
        copies.recycle(Some(previous), Some(value));
    }

    #[test]
    fn a_change_to_a_published_value_is_made_to_the_spare_copy_caught_up() {
        let mut copies = Recycler::default();
        let mut value = Arc::new(Inventory::default());
        let mut published = value.clone();
        batch(
            &mut copies,
            &mut value,
            &mut published,
            &[add("b"), add("d")],
        );
        // The value before that batch, unheld, is the spare now.
        assert!(copies.spare.is_some());
        batch(&mut copies, &mut value, &mut published, &[add("a")]);
        assert_eq!(ids(&value), ["a", "b", "d"]);
        batch(
            &mut copies,
            &mut value,
            &mut published,
            &[("default/b".into(), None), add("c")],
        );
        assert_eq!(ids(&value), ["a", "c", "d"]);
        assert_eq!(ids(&published), ["a", "c", "d"]);
    }

    #[test]
    fn a_copy_a_reader_holds_or_a_value_replaced_whole_is_not_reused() {
        let mut copies = Recycler::default();
        let mut value = Arc::new(Inventory::default());
        let mut published = value.clone();
        let reader = published.clone();
        batch(&mut copies, &mut value, &mut published, &[add("a")]);
        assert!(copies.spare.is_none(), "a reader still holds it");
        drop(reader);
        value = Arc::new(Inventory {
            containers: vec![container("z")],
        });
        copies.replaced();
        let previous = std::mem::replace(&mut published, value.clone());
        copies.recycle(Some(previous), Some(&value));
        assert!(copies.spare.is_none(), "it cannot catch up by changes");
        batch(&mut copies, &mut value, &mut published, &[add("b")]);
        assert_eq!(ids(&value), ["b", "z"]);
    }
}
