//! The containerd source: lists containers and tasks of the watched
//! namespaces, follows containerd's event stream, and reconnects (with
//! back-off, saying so) whenever containerd is absent, restarts or the
//! stream breaks; every (re)connection starts with a full listing.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use containerd_client::{
    events::{
        ContainerCreate, ContainerDelete, ContainerUpdate, TaskCreate, TaskDelete, TaskExecStarted,
        TaskExit, TaskStart,
    },
    services::v1::{
        containers_client::ContainersClient, events_client::EventsClient,
        tasks_client::TasksClient, GetContainerRequest, ListContainersRequest, ListTasksRequest,
        SubscribeRequest,
    },
    tonic::{self, transport::Channel, Code},
    types::{v1::Status as TaskStatus, Envelope},
};
use prost::{Message, Name};
use proto::resolver::Runtime;
use tokio::{sync::mpsc, time::Instant};

use crate::{
    docker::Docker,
    error::{Error, Result},
    source::{RuntimeContainer, SourceEvent, StatusBoard},
};

const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Waits between attempts to reach containerd: 0.25 s doubling to 10 s.
const RECONNECT: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(250))
    .with_max_delay(RECONNECT_MAX)
    .without_max_times();

/// Namespaces always watched: Docker's, containerd's default, Kubernetes'.
pub const DEFAULT_NAMESPACES: &[&str] = &["moby", "default", "k8s.io"];
/// The namespace Docker runs its containers in.
pub const DOCKER_NAMESPACE: &str = "moby";
/// The namespace of Kubernetes' containers (CRI).
pub const CRI_NAMESPACE: &str = "k8s.io";
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a full listing failed while the event stream still runs (a
/// containerd too busy to answer in time): the next attempt, 2 s doubling
/// to 16 s. A listing holds up the events while it waits for its answer:
/// back to back, failing listings would leave the events little time.
const RELIST_RETRY: Duration = Duration::from_secs(2);
const RELIST_RETRY_MAX: Duration = Duration::from_secs(16);
/// How long listings may keep failing before the session is given up (and
/// the source reported disconnected), though its event stream is open.
const LISTING_GIVE_UP: Duration = Duration::from_secs(120);

/// Sleeps until `at`; never wakes for `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which runtime a namespace belongs to.
pub fn runtime_of(namespace: &str) -> Runtime {
    if namespace == DOCKER_NAMESPACE {
        Runtime::Docker
    } else {
        Runtime::Containerd
    }
}

/// The name of a containerd container, from labels its runtime sets over
/// those of its image (a container's labels start as its image's, and an
/// image's author must not choose the name a policy selects):
/// - in Kubernetes' namespace, `<namespace>/<pod>/<container>`
///   (`<namespace>/<pod>/POD` for the pod's sandbox) from the kubelet's
///   labels; nerdctl's name label is the image's there, never a name;
/// - elsewhere, nerdctl's name label, which nerdctl sets for every
///   container it runs (plain `ctr` sets none: an image's then stands);
/// - else the id.
pub fn containerd_name(namespace: &str, id: &str, labels: &BTreeMap<String, String>) -> String {
    let label = |key: &str| labels.get(key).filter(|v| !v.is_empty());
    if namespace == CRI_NAMESPACE {
        return match (
            label("io.kubernetes.pod.namespace"),
            label("io.kubernetes.pod.name"),
        ) {
            (Some(pod_namespace), Some(pod)) => {
                let container = label("io.kubernetes.container.name")
                    .map(String::as_str)
                    .unwrap_or("POD");
                format!("{pod_namespace}/{pod}/{container}")
            }
            _ => id.to_string(),
        };
    }
    label("nerdctl/name")
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

/// A record this listing could not complete takes the last complete one of
/// the same container (a Docker container's name and labels, read before),
/// keeping what this listing read of its own (the root's read-only flag).
fn keep_complete(meta: &mut Meta, previous: Option<&Meta>) {
    if let Some(previous) = previous.filter(|p| p.complete && !meta.complete) {
        *meta = Meta {
            readonly_rootfs: meta.readonly_rootfs,
            pid: meta.pid,
            ..previous.clone()
        };
    }
}

/// An event the source acts on, decoded from an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A container was created or updated: (re)read its record.
    ContainerChanged {
        namespace: String,
        id: String,
    },
    ContainerDeleted {
        namespace: String,
        id: String,
    },
    /// A task was created or started: its init process is `pid`.
    TaskRunning {
        namespace: String,
        id: String,
        pid: u32,
    },
    /// The init process exited, or the task was deleted.
    TaskGone {
        namespace: String,
        id: String,
    },
    /// An exec process started: the container has new processes.
    ExecStarted {
        namespace: String,
        id: String,
    },
}

impl Event {
    /// The container it is about: (namespace, id).
    pub fn container(&self) -> (&str, &str) {
        match self {
            Event::ContainerChanged { namespace, id }
            | Event::ContainerDeleted { namespace, id }
            | Event::TaskRunning { namespace, id, .. }
            | Event::TaskGone { namespace, id }
            | Event::ExecStarted { namespace, id } => (namespace, id),
        }
    }
}

fn decode<T: Message + Name + Default>(any: &prost_types::Any) -> Option<T> {
    // containerd leaves out the leading `/` of type URLs; accept both.
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != T::full_name() {
        return None;
    }
    T::decode(any.value.as_slice()).ok()
}

/// Pure: decodes the envelopes the source cares about; `None` for other
/// topics, undecodable payloads, or namespaces not in `namespaces`.
pub fn decode_envelope(env: &Envelope, namespaces: &[String]) -> Option<Event> {
    if !namespaces.contains(&env.namespace) {
        return None;
    }
    let any = env.event.as_ref()?;
    let namespace = env.namespace.clone();
    match env.topic.as_str() {
        "/containers/create" => decode::<ContainerCreate>(any).map(|e| Event::ContainerChanged {
            namespace,
            id: e.id,
        }),
        "/containers/update" => decode::<ContainerUpdate>(any).map(|e| Event::ContainerChanged {
            namespace,
            id: e.id,
        }),
        "/containers/delete" => decode::<ContainerDelete>(any).map(|e| Event::ContainerDeleted {
            namespace,
            id: e.id,
        }),
        "/tasks/create" => decode::<TaskCreate>(any).map(|e| Event::TaskRunning {
            namespace,
            id: e.container_id,
            pid: e.pid,
        }),
        "/tasks/start" => decode::<TaskStart>(any).map(|e| Event::TaskRunning {
            namespace,
            id: e.container_id,
            pid: e.pid,
        }),
        "/tasks/exit" => decode::<TaskExit>(any).and_then(|e| {
            // Exits of exec processes carry their own id; only the init
            // process's exit (id == container id) ends the task.
            (e.id.is_empty() || e.id == e.container_id).then_some(Event::TaskGone {
                namespace,
                id: e.container_id,
            })
        }),
        "/tasks/delete" => decode::<TaskDelete>(any).and_then(|e| {
            (e.id.is_empty() || e.id == e.container_id).then_some(Event::TaskGone {
                namespace,
                id: e.container_id,
            })
        }),
        "/tasks/exec-started" => decode::<TaskExecStarted>(any).map(|e| Event::ExecStarted {
            namespace,
            id: e.container_id,
        }),
        _ => None,
    }
}

/// Lookups of a new Docker container's record before reporting it incomplete.
const DOCKER_META_ATTEMPTS: u32 = 4;
const DOCKER_META_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// What the source keeps of a containerd container record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Meta {
    name: String,
    labels: BTreeMap<String, String>,
    image: String,
    /// Init pid of the running task, 0 if none.
    pid: u32,
    /// Name and labels come from the runtime that owns them (for Docker
    /// containers: Docker, not containerd's `moby` record).
    complete: bool,
    /// `root.readonly` of the container's OCI spec.
    readonly_rootfs: Option<bool>,
}

/// Pure: whether an OCI runtime spec (containerd keeps it as JSON in the
/// container record, Docker's included: dockerd writes its
/// `HostConfig.ReadonlyRootfs` there as `root.readonly`) mounts the root
/// filesystem read-only. `None` when the spec is missing or unreadable.
pub fn readonly_rootfs_of_spec(spec: Option<&prost_types::Any>) -> Option<bool> {
    let spec: serde_json::Value = serde_json::from_slice(&spec?.value).ok()?;
    let root = spec.get("root")?.as_object()?;
    match root.get("readonly") {
        None | Some(serde_json::Value::Null) => Some(false),
        Some(v) => v.as_bool(),
    }
}

fn meta_of(namespace: &str, c: &containerd_client::services::v1::Container) -> Meta {
    let labels: BTreeMap<String, String> = c
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let name = if namespace == DOCKER_NAMESPACE {
        c.id.clone()
    } else {
        containerd_name(namespace, &c.id, &labels)
    };
    Meta {
        name,
        labels,
        image: c.image.clone(),
        pid: 0,
        complete: namespace != DOCKER_NAMESPACE,
        readonly_rootfs: readonly_rootfs_of_spec(c.spec.as_ref()),
    }
}

/// Pure: the running containers of one namespace from a container listing
/// and a task listing. A task counts while its status is created, running,
/// paused or pausing and it has a pid.
pub fn join_listing(
    containers: &[containerd_client::services::v1::Container],
    tasks: &[containerd_client::types::v1::Process],
) -> Vec<(String, u32)> {
    let mut pids: HashMap<&str, u32> = HashMap::new();
    for t in tasks {
        let id = if t.container_id.is_empty() {
            t.id.as_str()
        } else {
            t.container_id.as_str()
        };
        let alive = matches!(
            TaskStatus::try_from(t.status),
            Ok(TaskStatus::Created
                | TaskStatus::Running
                | TaskStatus::Paused
                | TaskStatus::Pausing)
        );
        if alive && t.pid != 0 {
            pids.insert(id, t.pid);
        }
    }
    containers
        .iter()
        .filter_map(|c| pids.get(c.id.as_str()).map(|&pid| (c.id.clone(), pid)))
        .collect()
}

fn with_namespace<T>(namespace: &str, msg: T) -> std::result::Result<tonic::Request<T>, String> {
    let mut req = tonic::Request::new(msg);
    let value = tonic::metadata::MetadataValue::try_from(namespace)
        .map_err(|_| format!("namespace {namespace:?} is not a valid gRPC header value"))?;
    req.metadata_mut().insert("containerd-namespace", value);
    Ok(req)
}

/// Follows one containerd.
pub struct ContainerdSource {
    pub socket: PathBuf,
    pub namespaces: Vec<String>,
    pub docker: Arc<Docker>,
    pub tx: mpsc::Sender<SourceEvent>,
    pub status: StatusBoard,
    /// How often the full listing is repeated while connected (catches what
    /// no event announces, such as a Docker rename).
    pub relist: Duration,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a session ended.
enum End {
    /// The reconciler is gone: stop.
    Shutdown,
    /// Reconnect after a back-off.
    Lost(Error),
}

/// What an event asks of the session after it was handled.
enum Handled {
    Done,
    /// A record was not read (the read failed, with why, or reads wait for
    /// a listing): a full listing soon makes up for it.
    ListAgain(Option<Error>),
}

impl ContainerdSource {
    pub fn name(&self) -> String {
        format!("containerd:{}", self.socket.display())
    }

    fn err(&self, reason: impl std::fmt::Display) -> Error {
        Error::Containerd {
            socket: self.socket.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Runs forever (until the reconciler goes away).
    pub async fn run(self) {
        let name = self.name();
        self.status.register(&name);
        let mut delays = RECONNECT.build();
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let mut connected = false;
            match self.session(&mut connected).await {
                End::Shutdown => return,
                End::Lost(e) => {
                    if connected {
                        delays = RECONNECT.build();
                        attempt = 1;
                    }
                    let delay = delays.next().unwrap_or(RECONNECT_MAX);
                    self.status.failed(&name, &e);
                    // Every failure is logged while the back-off grows; once
                    // it is at its cap, about once a minute.
                    if connected || delay < RECONNECT_MAX || attempt.is_multiple_of(6) {
                        tracing::warn!(error = %e, retry_in = ?delay, attempt, "containerd unavailable; its containers stay as last seen until it is back");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn connect(&self) -> Result<Channel> {
        match tokio::time::timeout(CALL_TIMEOUT, containerd_client::connect(&self.socket)).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => {
                // tonic's error hides the cause (e.g. "No such file").
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    let text = s.to_string();
                    if !msg.contains(&text) {
                        msg = format!("{msg}: {text}");
                    }
                    src = s.source();
                }
                Err(self.err(msg))
            }
            Err(_) => Err(self.err("connect timed out")),
        }
    }

    async fn session(&self, connected: &mut bool) -> End {
        let name = self.name();
        let channel = match self.connect().await {
            Ok(c) => c,
            Err(e) => return End::Lost(e),
        };
        // Subscribe before listing. containerd sends the stream's headers
        // only with the first event, so the subscription runs in its own
        // task and forwards what it receives; the listing goes out right
        // after the subscription request on the same connection, and is
        // repeated once shortly after, when the subscription is surely in
        // place, so nothing that happened in between is missed. Events that
        // raced a listing are applied again afterwards, which is harmless.
        let (event_tx, mut events) = mpsc::channel::<std::result::Result<Envelope, String>>(1024);
        let mut events_client = EventsClient::new(channel.clone());
        let filters = vec![
            r#"topic~="^/tasks/""#.to_string(),
            r#"topic~="^/containers/""#.to_string(),
        ];
        let subscription = tokio::spawn(async move {
            let mut stream = match events_client.subscribe(SubscribeRequest { filters }).await {
                Ok(resp) => resp.into_inner(),
                Err(status) => {
                    let _ = event_tx
                        .send(Err(format!("subscribe: {}", status.message())))
                        .await;
                    return;
                }
            };
            loop {
                let item = match stream.message().await {
                    Ok(Some(env)) => Ok(env),
                    Ok(None) => Err("event stream ended".to_string()),
                    Err(status) => Err(format!("event stream: {}", status.message())),
                };
                let last = item.is_err();
                if event_tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        let _abort = AbortOnDrop(subscription);
        tokio::task::yield_now().await;
        let mut cache: HashMap<(String, String), Meta> = HashMap::new();
        if let Err(end) = self.full_listing(&channel, &mut cache).await {
            return end;
        }
        *connected = true;
        self.status.connected(&name);
        self.status.resynced(&name);
        tracing::info!(socket = %self.socket.display(), namespaces = ?self.namespaces, "following containerd");

        let confirm = tokio::time::sleep(Duration::from_millis(250));
        tokio::pin!(confirm);
        let mut confirmed = false;
        let mut relist = tokio::time::interval(self.relist.max(Duration::from_secs(1)));
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        relist.tick().await;
        // The session ends with the event stream, or once listings have
        // failed for LISTING_GIVE_UP (a containerd that accepts and never
        // answers). A listing or a record read that fails while events
        // still arrive (a containerd busy with a burst of starts answers
        // late) is tried again soon: reconnecting would drop the stream, and
        // with it the events of the very containers that made containerd
        // slow. After a read failed, the events that need one wait (each
        // read would wait out the call timeout) for the next listing: if it
        // fails too (a busy containerd lists tasks slower than it reads one
        // record), they are handled again, reads and all.
        let mut retry_at: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        let mut reads_paused = false;
        let mut waiting: Vec<Event> = Vec::new();
        let mut retry_in = RELIST_RETRY;
        loop {
            let listed = tokio::select! {
                item = events.recv() => match item {
                    Some(Ok(env)) => {
                        let Some(event) = decode_envelope(&env, &self.namespaces) else { continue };
                        if let Event::TaskGone { namespace, id } | Event::ContainerDeleted { namespace, id } = &event {
                            waiting.retain(|w| w.container() != (namespace.as_str(), id.as_str()));
                        }
                        match self.handle(&channel, &mut cache, event.clone(), !reads_paused).await {
                            Ok(Handled::Done) => {}
                            Ok(Handled::ListAgain(failed)) => {
                                if let Some(e) = failed {
                                    self.status.degraded(&name, &e);
                                    failing_since.get_or_insert_with(Instant::now);
                                    reads_paused = true;
                                }
                                waiting.push(event);
                                retry_at.get_or_insert_with(|| Instant::now() + RELIST_RETRY);
                            }
                            Err(end) => return end,
                        }
                        continue;
                    }
                    Some(Err(reason)) => return End::Lost(self.err(reason)),
                    None => return End::Lost(self.err("event subscription ended")),
                },
                _ = &mut confirm, if !confirmed => {
                    confirmed = true;
                    self.full_listing(&channel, &mut cache).await
                }
                _ = relist.tick() => self.full_listing(&channel, &mut cache).await,
                _ = sleep_until_some(retry_at) => self.full_listing(&channel, &mut cache).await,
            };
            reads_paused = false;
            match listed {
                Ok(()) => {
                    retry_at = None;
                    failing_since = None;
                    retry_in = RELIST_RETRY;
                    waiting.clear();
                    self.status.connected(&name);
                }
                Err(End::Lost(e)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= LISTING_GIVE_UP {
                        return End::Lost(self.err(format!(
                            "no listing has succeeded for {} s: {e}",
                            since.elapsed().as_secs()
                        )));
                    }
                    tracing::warn!(error = %e, ?retry_in, "a full listing of containerd failed; following its events meanwhile");
                    self.status.degraded(&name, &e);
                    retry_at = Some(Instant::now() + retry_in);
                    retry_in = (retry_in * 2).min(RELIST_RETRY_MAX);
                    for event in std::mem::take(&mut waiting) {
                        match self
                            .handle(&channel, &mut cache, event.clone(), !reads_paused)
                            .await
                        {
                            Ok(Handled::Done) => {}
                            Ok(Handled::ListAgain(failed)) => {
                                reads_paused |= failed.is_some();
                                waiting.push(event);
                            }
                            Err(end) => return end,
                        }
                    }
                }
                Err(end) => return end,
            }
        }
    }

    async fn send(&self, ev: SourceEvent) -> std::result::Result<(), End> {
        self.tx.send(ev).await.map_err(|_| End::Shutdown)
    }

    /// Lists every watched namespace and sends one snapshot. The cache is
    /// replaced only by a listing that completed.
    async fn full_listing(
        &self,
        channel: &Channel,
        cache: &mut HashMap<(String, String), Meta>,
    ) -> std::result::Result<(), End> {
        let mut all = Vec::new();
        let previous = std::mem::take(cache);
        let listed = self.list_all(channel, cache, &previous, &mut all).await;
        if listed.is_err() {
            *cache = previous;
            return listed;
        }
        tracing::debug!(containers = all.len(), "containerd listing");
        self.send(SourceEvent::Snapshot {
            source: self.name(),
            containers: all,
        })
        .await
    }

    /// Lists every watched namespace into `cache` and `all`. A Docker
    /// container whose lookup fails this time keeps the complete record it
    /// had (`previous`): a runtime that answers slowly, or a listing past
    /// its size limit, must not turn an enforced container unknown at every
    /// re-list.
    async fn list_all(
        &self,
        channel: &Channel,
        cache: &mut HashMap<(String, String), Meta>,
        previous: &HashMap<(String, String), Meta>,
        all: &mut Vec<RuntimeContainer>,
    ) -> std::result::Result<(), End> {
        for ns in &self.namespaces {
            let containers = self.list_containers(channel, ns).await.map_err(End::Lost)?;
            let tasks = self.list_tasks(channel, ns).await.map_err(End::Lost)?;
            let running = join_listing(&containers, &tasks);
            for c in &containers {
                cache.insert((ns.clone(), c.id.clone()), meta_of(ns, c));
            }
            if ns == DOCKER_NAMESPACE && !running.is_empty() {
                let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
                let docker = self.docker.lookup_many(&ids).await;
                for (id, meta) in docker {
                    if let Some(m) = cache.get_mut(&(ns.clone(), id)) {
                        *m = Meta {
                            name: meta.name,
                            labels: meta.labels,
                            image: meta.image,
                            pid: 0,
                            complete: true,
                            readonly_rootfs: m.readonly_rootfs,
                        };
                    }
                }
            }
            for (id, pid) in running {
                let key = (ns.clone(), id.clone());
                let entry = cache.entry(key.clone()).or_default();
                keep_complete(entry, previous.get(&key));
                entry.pid = pid;
                all.push(self.container(ns, &id, entry.clone(), pid));
            }
        }
        Ok(())
    }

    fn container(&self, namespace: &str, id: &str, meta: Meta, pid: u32) -> RuntimeContainer {
        RuntimeContainer {
            runtime: runtime_of(namespace),
            namespace: namespace.to_string(),
            id: id.to_string(),
            name: if meta.name.is_empty() {
                id.to_string()
            } else {
                meta.name
            },
            labels: meta.labels,
            image: meta.image,
            pid,
            metadata_complete: meta.complete,
            readonly_rootfs: meta.readonly_rootfs,
        }
    }

    /// Docker writes its record of a container around the time containerd
    /// reports the task: a few quick retries catch it without waiting for
    /// the next full listing.
    async fn docker_meta_with_retries(&self, id: &str) -> Option<crate::docker::DockerMeta> {
        for attempt in 0..DOCKER_META_ATTEMPTS {
            if let Some(meta) = self.docker.lookup(id).await {
                return Some(meta);
            }
            if attempt + 1 < DOCKER_META_ATTEMPTS {
                tokio::time::sleep(DOCKER_META_RETRY).await;
            }
        }
        None
    }

    async fn list_containers(
        &self,
        channel: &Channel,
        ns: &str,
    ) -> Result<Vec<containerd_client::services::v1::Container>> {
        let req = with_namespace(ns, ListContainersRequest { filters: vec![] })
            .map_err(|e| self.err(e))?;
        let mut client = ContainersClient::new(channel.clone());
        match tokio::time::timeout(CALL_TIMEOUT, client.list(req)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().containers),
            Ok(Err(status)) => {
                Err(self.err(format!("listing containers of {ns}: {}", status.message())))
            }
            Err(_) => Err(self.err(format!("listing containers of {ns} timed out"))),
        }
    }

    async fn list_tasks(
        &self,
        channel: &Channel,
        ns: &str,
    ) -> Result<Vec<containerd_client::types::v1::Process>> {
        let req = with_namespace(
            ns,
            ListTasksRequest {
                filter: String::new(),
            },
        )
        .map_err(|e| self.err(e))?;
        let mut client = TasksClient::new(channel.clone());
        match tokio::time::timeout(CALL_TIMEOUT, client.list(req)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().tasks),
            Ok(Err(status)) => {
                Err(self.err(format!("listing tasks of {ns}: {}", status.message())))
            }
            Err(_) => Err(self.err(format!("listing tasks of {ns} timed out"))),
        }
    }

    /// The record of one container: `Ok(None)` if containerd no longer has it.
    async fn get_meta(&self, channel: &Channel, ns: &str, id: &str) -> Result<Option<Meta>> {
        let req = with_namespace(ns, GetContainerRequest { id: id.to_string() })
            .map_err(|e| self.err(e))?;
        let mut client = ContainersClient::new(channel.clone());
        let container = match tokio::time::timeout(CALL_TIMEOUT, client.get(req)).await {
            Ok(Ok(resp)) => resp.into_inner().container,
            Ok(Err(status)) if status.code() == Code::NotFound => return Ok(None),
            Ok(Err(status)) => {
                return Err(self.err(format!("getting container {ns}/{id}: {}", status.message())))
            }
            Err(_) => return Err(self.err(format!("getting container {ns}/{id} timed out"))),
        };
        let Some(container) = container else {
            return Ok(None);
        };
        let mut meta = meta_of(ns, &container);
        if ns == DOCKER_NAMESPACE {
            match self.docker_meta_with_retries(id).await {
                Some(d) => {
                    meta = Meta {
                        name: d.name,
                        labels: d.labels,
                        image: d.image,
                        pid: 0,
                        complete: true,
                        readonly_rootfs: meta.readonly_rootfs,
                    };
                }
                None => {
                    tracing::warn!(container = %id, "no Docker name or labels for this container yet (Docker API and config.v2.json both failed); reported as incomplete until the next listing");
                }
            }
        }
        Ok(Some(meta))
    }

    async fn handle(
        &self,
        channel: &Channel,
        cache: &mut HashMap<(String, String), Meta>,
        event: Event,
        read_records: bool,
    ) -> std::result::Result<Handled, End> {
        let source = self.name();
        match event {
            Event::ContainerChanged { namespace, id } => {
                // The record is read here; a container enters the inventory
                // when its task runs, or now if it already runs (an update
                // of its labels).
                let key = (namespace.clone(), id.clone());
                let pid = cache.get(&key).map_or(0, |m| m.pid);
                if !read_records {
                    return Ok(Handled::ListAgain(None));
                }
                match self.get_meta(channel, &namespace, &id).await {
                    Ok(Some(mut meta)) => {
                        meta.pid = pid;
                        cache.insert(key, meta.clone());
                        if pid != 0 {
                            let container = self.container(&namespace, &id, meta, pid);
                            self.send(SourceEvent::Upsert { source, container }).await?;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a container record; listing everything again soon");
                        return Ok(Handled::ListAgain(Some(e)));
                    }
                }
                Ok(Handled::Done)
            }
            Event::ContainerDeleted { namespace, id } => {
                cache.remove(&(namespace.clone(), id.clone()));
                self.send(SourceEvent::Remove {
                    source,
                    namespace,
                    id,
                })
                .await?;
                Ok(Handled::Done)
            }
            Event::TaskRunning { namespace, id, pid } => {
                let cache_key = (namespace.clone(), id.clone());
                let meta = match cache.get(&cache_key) {
                    // A Docker container a listing saw before it ran has no
                    // Docker name or labels yet: read them now, or it would
                    // stay unmapped until the next listing.
                    Some(meta) if meta.complete => Some(meta.clone()),
                    _ if !read_records => return Ok(Handled::ListAgain(None)),
                    _ => match self.get_meta(channel, &namespace, &id).await {
                        Ok(meta) => meta,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read a container record; listing everything again soon");
                            return Ok(Handled::ListAgain(Some(e)));
                        }
                    },
                };
                let Some(mut meta) = meta else {
                    return Ok(Handled::Done);
                };
                meta.pid = pid;
                cache.insert(cache_key, meta.clone());
                let container = self.container(&namespace, &id, meta, pid);
                self.send(SourceEvent::Upsert { source, container }).await?;
                Ok(Handled::Done)
            }
            Event::TaskGone { namespace, id } => {
                if let Some(m) = cache.get_mut(&(namespace.clone(), id.clone())) {
                    m.pid = 0;
                }
                self.send(SourceEvent::Remove {
                    source,
                    namespace,
                    id,
                })
                .await?;
                Ok(Handled::Done)
            }
            Event::ExecStarted { namespace, id } => {
                self.send(SourceEvent::Refresh { namespace, id }).await?;
                Ok(Handled::Done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::types::v1::Process;

    fn envelope<T: Message + Name>(ns: &str, topic: &str, msg: &T) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: ns.into(),
            topic: topic.into(),
            // As containerd sends it: no leading slash.
            event: Some(prost_types::Any {
                type_url: T::full_name(),
                value: msg.encode_to_vec(),
            }),
        }
    }

    fn watched() -> Vec<String> {
        DEFAULT_NAMESPACES.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn task_create_carries_the_pid() {
        let env = envelope(
            "moby",
            "/tasks/create",
            &TaskCreate {
                container_id: "abc".into(),
                pid: 4242,
                ..Default::default()
            },
        );
        assert_eq!(
            decode_envelope(&env, &watched()),
            Some(Event::TaskRunning {
                namespace: "moby".into(),
                id: "abc".into(),
                pid: 4242
            })
        );
    }

    #[test]
    fn leading_slash_in_type_url_is_accepted() {
        let mut env = envelope(
            "default",
            "/tasks/start",
            &TaskStart {
                container_id: "c".into(),
                pid: 7,
            },
        );
        if let Some(any) = env.event.as_mut() {
            any.type_url = format!("/{}", any.type_url);
        }
        assert!(matches!(
            decode_envelope(&env, &watched()),
            Some(Event::TaskRunning { pid: 7, .. })
        ));
    }

    #[test]
    fn exec_exits_do_not_end_the_task() {
        let exec_exit = TaskExit {
            container_id: "c".into(),
            id: "exec-1".into(),
            pid: 9,
            ..Default::default()
        };
        assert_eq!(
            decode_envelope(&envelope("default", "/tasks/exit", &exec_exit), &watched()),
            None
        );
        let init_exit = TaskExit {
            container_id: "c".into(),
            id: "c".into(),
            pid: 8,
            ..Default::default()
        };
        assert_eq!(
            decode_envelope(&envelope("default", "/tasks/exit", &init_exit), &watched()),
            Some(Event::TaskGone {
                namespace: "default".into(),
                id: "c".into()
            })
        );
        let delete = TaskDelete {
            container_id: "c".into(),
            id: String::new(),
            ..Default::default()
        };
        assert!(matches!(
            decode_envelope(&envelope("default", "/tasks/delete", &delete), &watched()),
            Some(Event::TaskGone { .. })
        ));
    }

    #[test]
    fn unwatched_namespaces_other_topics_and_garbage_are_ignored() {
        let create = TaskCreate {
            container_id: "abc".into(),
            pid: 1,
            ..Default::default()
        };
        assert_eq!(
            decode_envelope(&envelope("buildkit", "/tasks/create", &create), &watched()),
            None
        );
        assert_eq!(
            decode_envelope(&envelope("moby", "/images/create", &create), &watched()),
            None
        );
        let mut wrong_type = envelope("moby", "/tasks/create", &ContainerDelete { id: "x".into() });
        assert_eq!(
            decode_envelope(&wrong_type, &watched()),
            None,
            "payload type must match the topic"
        );
        wrong_type.event = Some(prost_types::Any {
            type_url: TaskCreate::full_name(),
            value: vec![0xff, 0xff, 0xff],
        });
        assert_eq!(decode_envelope(&wrong_type, &watched()), None);
        wrong_type.event = None;
        assert_eq!(decode_envelope(&wrong_type, &watched()), None);
    }

    #[test]
    fn container_events_decode() {
        let env = envelope(
            "k8s.io",
            "/containers/delete",
            &ContainerDelete { id: "p".into() },
        );
        assert_eq!(
            decode_envelope(&env, &watched()),
            Some(Event::ContainerDeleted {
                namespace: "k8s.io".into(),
                id: "p".into()
            })
        );
        let env = envelope(
            "default",
            "/containers/create",
            &ContainerCreate {
                id: "n".into(),
                ..Default::default()
            },
        );
        assert!(matches!(
            decode_envelope(&env, &watched()),
            Some(Event::ContainerChanged { .. })
        ));
    }

    #[test]
    fn names_of_plain_containerd_containers() {
        let mut labels = BTreeMap::new();
        assert_eq!(containerd_name("default", "id1", &labels), "id1");
        labels.insert("nerdctl/name".into(), "mine".into());
        assert_eq!(containerd_name("default", "id1", &labels), "mine");
        // Outside Kubernetes' namespace its labels are an image's like any.
        labels.insert("io.kubernetes.pod.namespace".into(), "prod".into());
        labels.insert("io.kubernetes.pod.name".into(), "web-0".into());
        assert_eq!(containerd_name("default", "id1", &labels), "mine");
        assert_eq!(runtime_of("moby"), Runtime::Docker);
        assert_eq!(runtime_of("k8s.io"), Runtime::Containerd);
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_complete_record() {
        let known = Meta {
            name: "web".into(),
            labels: BTreeMap::from([("egress".into(), "block".into())]),
            image: "nginx".into(),
            pid: 7,
            complete: true,
            readonly_rootfs: Some(false),
        };
        // This listing's own record: containerd's, Docker's lookup failed.
        let listed = || Meta {
            name: "0123abcd".into(),
            readonly_rootfs: Some(true),
            ..Meta::default()
        };
        let mut meta = listed();
        keep_complete(&mut meta, Some(&known));
        assert!(meta.complete);
        assert_eq!((meta.name.as_str(), meta.labels.len()), ("web", 1));
        assert_eq!(
            meta.readonly_rootfs,
            Some(true),
            "what this listing read stays"
        );
        // Nothing complete before: it stays incomplete (unknown, as it was).
        let mut meta = listed();
        keep_complete(&mut meta, None);
        assert!(!meta.complete);
        let mut meta = listed();
        keep_complete(&mut meta, Some(&listed()));
        assert!(!meta.complete);
        // A lookup that succeeded this time is not overwritten.
        let mut meta = Meta {
            name: "renamed".into(),
            complete: true,
            ..Meta::default()
        };
        keep_complete(&mut meta, Some(&known));
        assert_eq!(meta.name, "renamed");
    }

    #[test]
    fn a_kubernetes_name_is_the_kubelets_and_names_its_namespace() {
        let mut labels = BTreeMap::new();
        labels.insert("io.kubernetes.pod.name".into(), "web-0".into());
        // No namespace: not a name that could tell two pods apart.
        assert_eq!(containerd_name("k8s.io", "id1", &labels), "id1");
        labels.insert("io.kubernetes.pod.namespace".into(), "prod".into());
        assert_eq!(containerd_name("k8s.io", "id1", &labels), "prod/web-0/POD");
        labels.insert("io.kubernetes.container.name".into(), "nginx".into());
        assert_eq!(
            containerd_name("k8s.io", "id1", &labels),
            "prod/web-0/nginx"
        );
        // An image's nerdctl/name label (the kubelet sets none) names nothing.
        labels.insert("nerdctl/name".into(), "payments".into());
        assert_eq!(
            containerd_name("k8s.io", "id1", &labels),
            "prod/web-0/nginx"
        );
    }

    #[test]
    fn read_only_root_comes_from_the_oci_spec() {
        let spec = |json: &str| prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: json.as_bytes().to_vec(),
        };
        let ro = spec(r#"{"ociVersion":"1.1.0","root":{"path":"rootfs","readonly":true}}"#);
        assert_eq!(readonly_rootfs_of_spec(Some(&ro)), Some(true));
        let rw = spec(r#"{"root":{"path":"/var/lib/x/rootfs"}}"#);
        assert_eq!(readonly_rootfs_of_spec(Some(&rw)), Some(false));
        let rw = spec(r#"{"root":{"path":"rootfs","readonly":false}}"#);
        assert_eq!(readonly_rootfs_of_spec(Some(&rw)), Some(false));
        assert_eq!(
            readonly_rootfs_of_spec(Some(&spec(r#"{"process":{}}"#))),
            None
        );
        assert_eq!(readonly_rootfs_of_spec(Some(&spec("garbage"))), None);
        assert_eq!(readonly_rootfs_of_spec(None), None);
        let c = containerd_client::services::v1::Container {
            id: "x".into(),
            spec: Some(ro),
            ..Default::default()
        };
        assert_eq!(meta_of("moby", &c).readonly_rootfs, Some(true));
    }

    #[test]
    fn listing_keeps_only_live_tasks() {
        let c = |id: &str| containerd_client::services::v1::Container {
            id: id.into(),
            ..Default::default()
        };
        let t = |id: &str, pid: u32, status: TaskStatus| Process {
            id: id.into(),
            pid,
            status: status as i32,
            ..Default::default()
        };
        let containers = vec![c("run"), c("stopped"), c("notask"), c("paused"), c("zero")];
        let tasks = vec![
            t("run", 10, TaskStatus::Running),
            t("stopped", 11, TaskStatus::Stopped),
            t("paused", 12, TaskStatus::Paused),
            t("zero", 0, TaskStatus::Running),
            t("orphan", 13, TaskStatus::Running),
        ];
        let mut got = join_listing(&containers, &tasks);
        got.sort();
        assert_eq!(
            got,
            vec![("paused".to_string(), 12), ("run".to_string(), 10)]
        );
    }
}
