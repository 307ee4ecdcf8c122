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
//! /proc/<pid>/net/{fib_trie,if_inet6} ─► the namespace's addresses
//! ```
//!
//! Pure logic lives in [`cgroup`], [`process`] and [`addresses`] (parsers),
//! [`links`] (message → link), [`resolve`], [`inventory`], [`docker`]
//! (parsers) and [`containerd`] (event decoding); the I/O is in the
//! reconciler, the link watcher, the containerd source and the service.

pub mod addresses;
pub mod cgroup;
pub mod containerd;
pub mod docker;
pub mod error;
pub mod exe;
pub mod inventory;
pub mod links;
pub mod process;
pub mod reconciler;
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
    inventory::{VersionedInventory, DEFAULT_LOG_CAPACITY},
    links::Netlink,
    process::Proc,
    reconciler::{Reconciler, Shared},
    service::ResolverServer,
    source::{SourceEvent, StatusBoard},
};

/// How the resolver runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to serve the tarpc service.
    pub socket: PathBuf,
    /// containerd's socket; `None` runs without containerd (other sources
    /// feed the reconciler through [`Daemon::sender`]).
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
    /// The group that owns the socket; `None`: group `contain` if the host
    /// has it. Peers besides root: policyd's user `contain` only.
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
    nix::unistd::Group::from_name(proto::paths::GROUP)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// The socket's mode and who it serves. Only policyd asks the resolver
/// anything: root and policyd's user, which reaches the socket through its
/// group. The group's other members (operators using the CLI) are not
/// admitted, since a lookup hashes files in containers and reports what it
/// finds. Without the group or the user: root alone.
fn socket_access(group: Option<u32>, policyd_uid: Option<u32>) -> (u32, PeerPolicy) {
    match (group, policyd_uid) {
        (Some(_), Some(uid)) => (0o660, PeerPolicy::RootOrUser(uid)),
        _ => (0o600, PeerPolicy::RootOnly),
    }
}

fn policyd_uid() -> Option<u32> {
    nix::unistd::User::from_name(proto::paths::USER)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// A running resolver: reconciler, link watcher, containerd source, server.
pub struct Daemon {
    shared: Arc<Shared>,
    source_tx: mpsc::Sender<SourceEvent>,
    tasks: Vec<JoinHandle<()>>,
    socket: PathBuf,
}

/// How long start-up waits for containerd's first listing before serving
/// the inventory without it.
pub const FIRST_LISTING_WAIT: Duration = Duration::from_secs(10);

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
        let inventory = VersionedInventory::new(instance, first_generation, DEFAULT_LOG_CAPACITY);
        let shared = Arc::new(Shared::new(
            inventory,
            status.clone(),
            mount.mount_point.display().to_string(),
        ));

        let netlink = Netlink::connect()?;
        let gid = config.socket_group.or_else(contain_gid);
        let (mode, policy) = socket_access(gid, policyd_uid());

        let (source_tx, source_rx) = mpsc::channel(1024);
        let (link_tx, link_rx) = mpsc::channel(1024);
        let mut tasks = Vec::new();
        let reconciler = Reconciler::new(shared.clone(), Proc::default(), mount, netlink);
        tasks.push(tokio::spawn(reconciler.run(
            source_rx,
            link_rx,
            config.rescan,
        )));
        tasks.push(tokio::spawn(links::watch(link_tx)));
        let mut first_listing = None;
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
            first_listing = Some(source.name());
            shared
                .sources
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(source.name());
            tasks.push(tokio::spawn(source.run()));
        }
        // A client's first inventory must hold the running containers: an
        // empty one would tell policyd they are all gone, and it would take
        // their entries out of the kernel until the listing came (a
        // restarted resolver would deny every selected container's allowed
        // flows for that long). So the socket is served once containerd's
        // first listing is in, or, if containerd does not answer, after
        // FIRST_LISTING_WAIT with what is known.
        if let Some(name) = first_listing {
            let mut listed = shared.listed.subscribe();
            let waited =
                tokio::time::timeout(FIRST_LISTING_WAIT, listed.wait_for(|l| l.contains(&name)))
                    .await;
            if !matches!(waited, Ok(Ok(_))) {
                tracing::warn!(source = %name, wait = ?FIRST_LISTING_WAIT, "no first listing of the containers yet; serving the inventory without it");
            }
        }
        let listener = match bind(&config.socket, mode, gid) {
            Ok(listener) => listener,
            Err(e) => {
                for t in &tasks {
                    t.abort();
                }
                return Err(Error::io(&config.socket, e));
            }
        };
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
        self.shared.snapshot()
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
    use proto::transport::PeerCred;

    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerCred {
        PeerCred {
            pid: None,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn the_socket_serves_root_and_policyds_user_only() {
        const CONTAIN_GID: u32 = 990;
        const POLICYD_UID: u32 = 991;
        let (mode, policy) = socket_access(Some(CONTAIN_GID), Some(POLICYD_UID));
        assert_eq!(mode, 0o660);
        assert!(policy.admits(&peer(0, 0, &[])), "root");
        assert!(
            policy.admits(&peer(POLICYD_UID, CONTAIN_GID, &[])),
            "policyd's user"
        );
        assert!(
            !policy.admits(&peer(1000, 1000, &[CONTAIN_GID])),
            "an operator in the group"
        );
        assert!(
            !policy.admits(&peer(1000, CONTAIN_GID, &[])),
            "a process whose primary group is the group"
        );
        for (group, uid) in [
            (None, Some(POLICYD_UID)),
            (Some(CONTAIN_GID), None),
            (None, None),
        ] {
            assert_eq!(
                socket_access(group, uid),
                (0o600, PeerPolicy::RootOnly),
                "group {group:?}, policyd's uid {uid:?}"
            );
        }
    }
}
