//! Helpers of the resolver's integration tests: a tarpc client, waiting
//! for the inventory, a watcher's copy of it; the host side (namespaces,
//! veths, processes, cgroups, cleanup by name, the root-only tier) is
//! test-kit's.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use proto::resolver::{Container, ResolverClient, Snapshot, WatchReply};

/// Whether the test applies: as root. Otherwise it is recorded as skipped
/// (test-kit's `privileged`).
pub fn root_or_skip(test: &str) -> bool {
    test_kit::privileged::root_or_skip(test, "network namespaces, veths, cgroups")
}

/// The cgroup2 mount.
pub fn cgroup_mount() -> PathBuf {
    test_kit::cgroup::cgroup2_mount().unwrap_or_else(|e| panic!("prerequisite missing: {e}"))
}

/// A file's inode: a cgroup's id, a network namespace's id.
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

pub fn ifindex(name: &str) -> u32 {
    test_kit::lab::ifindex(name).unwrap_or_else(|e| panic!("{e}"))
}

pub async fn connect(socket: &Path) -> ResolverClient {
    // The resolver serves once containerd's first listing is in, or after
    // FIRST_LISTING_WAIT without it: wait longer than that, since a loaded
    // machine (or the resolver's own start-up) adds to it.
    let deadline = Instant::now() + resolver::FIRST_LISTING_WAIT + Duration::from_secs(20);
    loop {
        match proto::transport::connect(
            socket,
            &proto::transport::ServerIs::root_or([nix::unistd::geteuid().as_raw()]),
        )
        .await
        {
            Ok(stream) => {
                return ResolverClient::new(
                    tarpc::client::Config::default(),
                    proto::transport::client(stream, proto::transport::Service::Resolver),
                )
                .spawn();
            }
            Err(e) if Instant::now() > deadline => {
                panic!("resolver socket {}: {e}", socket.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub fn ctx() -> tarpc::context::Context {
    proto::transport::context_with_deadline(40)
}

pub async fn list(client: &ResolverClient) -> Snapshot {
    client.list(ctx()).await.expect("list over tarpc")
}

/// Polls the inventory until `check` returns `Some`, or panics after
/// `timeout` with the last inventory and `what`.
pub async fn wait_for<T>(
    client: &ResolverClient,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Snapshot) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let snap = list(client).await;
        if let Some(v) = check(&snap) {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\ninventory: {:#?}",
                snap.containers
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn find<'a>(snap: &'a Snapshot, namespace: &str, id: &str) -> Option<&'a Container> {
    snap.containers
        .iter()
        .find(|c| c.namespace == namespace && c.id == id)
}

/// A client-side copy of the inventory kept only through `watch`.
pub struct Watcher {
    pub copy: BTreeMap<String, Container>,
    pub at: u64,
    pub resyncs: u32,
    pub seen_added: std::collections::BTreeSet<String>,
}

impl Watcher {
    pub async fn new(client: &ResolverClient) -> Watcher {
        let snap = list(client).await;
        Watcher {
            copy: snap
                .containers
                .iter()
                .map(|c| (c.key(), c.clone()))
                .collect(),
            at: snap.generation,
            resyncs: 0,
            seen_added: Default::default(),
        }
    }

    /// One long poll; returns whether anything changed.
    pub async fn poll(&mut self, client: &ResolverClient, wait_ms: u32) -> bool {
        let reply = client
            .watch(ctx(), self.at, wait_ms)
            .await
            .expect("watch over tarpc");
        let changed = match &reply {
            WatchReply::Changes { changes, .. } => {
                for ch in changes {
                    if let proto::resolver::ChangeKind::Added { container } = &ch.kind {
                        self.seen_added.insert(container.key());
                    }
                }
                !changes.is_empty()
            }
            WatchReply::Resync { .. } => {
                self.resyncs += 1;
                true
            }
        };
        self.at = reply.apply_to(&mut self.copy);
        changed
    }

    /// Polls until the copy equals the server's list at the same generation.
    pub async fn converge(&mut self, client: &ResolverClient, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll(client, 200).await;
            let snap = list(client).await;
            if snap.generation == self.at {
                let server: BTreeMap<_, _> = snap
                    .containers
                    .iter()
                    .map(|c| (c.key(), c.clone()))
                    .collect();
                assert_eq!(
                    self.copy, server,
                    "a watcher's copy differs from the list at the same generation"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "watcher did not catch up with generation {}",
                snap.generation
            );
        }
    }
}
