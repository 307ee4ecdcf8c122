//! contain's resolver: the live container inventory.
//!
//! It answers, continuously, which container (runtime, namespace, id, name,
//! labels, image) owns which cgroup v2 id, network namespace and host veth.
//! The chain, never guessed from names:
//!
//! ```text
//! runtime task (containerd event or listing) ─► init pid
//! /proc/<pid>/cgroup "0::<path>" ─► <cgroup2 mount>/<path> ─► inode = cgroup id
//! <cgroup dir>/cgroup.procs (recursively) ─► the container's processes
//! /proc/<pid>/ns/net ─► netns inode, and (RTM_GETNSID) the host's nsid for it
//! host links (rtnetlink) with IFLA_LINK_NETNSID == nsid ─► host veths
//! ```
//!
//! Pure logic lives in [`cgroup`], [`procfs`] (parsers), [`links`]
//! (message → link), [`resolve`], [`inventory`], [`docker`] (parsers) and
//! [`containerd`] (event decoding); the I/O is in the engine, the link
//! watcher, the containerd source and the service.

pub mod cgroup;
pub mod containerd;
pub mod docker;
pub mod engine;
pub mod error;
pub mod exe;
pub mod inventory;
pub mod links;
pub mod process;
pub mod resolve;
pub mod service;
pub mod source;

#[cfg(test)]
mod bad_input;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use proto::{
    resolver::{Resolver as _, Snapshot},
    transport::{bind, serve, spawn_request, PeerPolicy, Service},
};
use tarpc::server::Channel as _;
use tokio::{sync::mpsc, task::JoinHandle};

pub use error::{Error, Result};

use crate::{
    cgroup::Cgroup2Mount,
    engine::{Engine, Shared},
    inventory::{Inventory, DEFAULT_LOG_CAPACITY},
    links::Netlink,
    process::Proc,
    service::ResolverServer,
    source::{SourceEvent, StatusBoard},
};

/// Exponential back-off between retries.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; doubles the next one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// How the resolver runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to serve the tarpc service.
    pub socket: PathBuf,
    /// containerd's socket; `None` runs without containerd (other sources
    /// feed the engine through [`Daemon::sender`]).
    pub containerd_socket: Option<PathBuf>,
    /// containerd namespaces to follow.
    pub namespaces: Vec<String>,
    /// The cgroup2 mount; found in `/proc/self/mountinfo` when `None`.
    pub cgroup_root: Option<PathBuf>,
    /// Docker's API socket and data root, for Docker names and labels.
    pub docker_socket: PathBuf,
    pub docker_root: PathBuf,
    /// Full rescan period (processes, cgroups, links); also how often the
    /// containerd listing is repeated.
    pub rescan: Duration,
    /// The group whose members may use the socket besides root; `None`:
    /// group `contain` if the host has it, else root only.
    pub socket_group: Option<u32>,
}

impl Config {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Config {
            socket: socket.into(),
            containerd_socket: Some(PathBuf::from("/run/containerd/containerd.sock")),
            namespaces: containerd::DEFAULT_NAMESPACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cgroup_root: None,
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            docker_root: PathBuf::from("/var/lib/docker"),
            rescan: Duration::from_secs(30),
            socket_group: None,
        }
    }
}

/// The gid of group `contain`, if the host has it.
fn contain_gid() -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == proto::paths::GROUP).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// A running resolver: engine, link watcher, containerd source, server.
pub struct Daemon {
    shared: Arc<Shared>,
    source_tx: mpsc::Sender<SourceEvent>,
    tasks: Vec<JoinHandle<()>>,
    socket: PathBuf,
}

impl Daemon {
    /// Starts everything on the current tokio runtime. Fails only on what
    /// the resolver cannot do without: the cgroup2 mount, a netlink socket,
    /// the service socket. An absent containerd is retried in the
    /// background.
    pub async fn start(config: Config) -> Result<Daemon> {
        let mount = match &config.cgroup_root {
            Some(root) => {
                if !root.join("cgroup.procs").exists() {
                    return Err(Error::NoCgroup2Mount(format!(
                        "--cgroup-root {} (no cgroup.procs there)",
                        root.display()
                    )));
                }
                Cgroup2Mount::at(root)
            }
            None => cgroup::find_mount()?,
        };
        tracing::info!(mount = %mount.mount_point.display(), root = %mount.root, "cgroup2 hierarchy");
        let status = StatusBoard::default();
        let instance = {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
        };
        // Generations start at the wall clock in microseconds: above any a
        // previous run handed out, unless the clock went back.
        let first_generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let inventory = Inventory::new(instance, first_generation, DEFAULT_LOG_CAPACITY);
        let shared = Arc::new(Shared::new(
            inventory,
            status.clone(),
            mount.mount_point.display().to_string(),
        ));

        let netlink = Netlink::connect()?;
        let gid = config.socket_group.or_else(contain_gid);
        let (mode, policy) = match gid {
            Some(gid) => (0o660, PeerPolicy::RootOrGroup(gid)),
            None => (0o600, PeerPolicy::RootOnly),
        };
        let listener = bind(&config.socket, mode, gid).map_err(|e| Error::io(&config.socket, e))?;

        let (source_tx, source_rx) = mpsc::channel(1024);
        let (link_tx, link_rx) = mpsc::channel(1024);
        let mut tasks = Vec::new();
        let engine = Engine::new(shared.clone(), Proc::default(), mount, netlink);
        tasks.push(tokio::spawn(engine.run(source_rx, link_rx, config.rescan)));
        tasks.push(tokio::spawn(links::watch(link_tx)));
        if let Some(socket) = &config.containerd_socket {
            let mut namespaces = config.namespaces.clone();
            namespaces.sort();
            namespaces.dedup();
            let source = containerd::ContainerdSource {
                socket: socket.clone(),
                namespaces,
                docker: Arc::new(docker::Docker::new(
                    &config.docker_socket,
                    &config.docker_root,
                )),
                tx: source_tx.clone(),
                status: status.clone(),
                relist: config.rescan,
            };
            tasks.push(tokio::spawn(source.run()));
        }
        let server = ResolverServer {
            shared: shared.clone(),
        };
        let socket = config.socket.clone();
        tasks.push(tokio::spawn(async move {
            let serve = serve(listener, policy, Service::Resolver, move |channel, _peer| {
                channel.execute(server.clone().serve()).for_each(spawn_request)
            });
            if let Err(e) = serve.await {
                tracing::error!(socket = %socket.display(), error = %e, "the service socket failed");
            }
        }));
        tracing::info!(socket = %config.socket.display(), "serving the inventory");
        Ok(Daemon {
            shared,
            source_tx,
            tasks,
            socket: config.socket,
        })
    }

    /// Where other sources (and tests) feed runtime containers in.
    pub fn sender(&self) -> mpsc::Sender<SourceEvent> {
        self.source_tx.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.read().snapshot()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stops every task and removes the socket.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
