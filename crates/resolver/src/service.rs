//! The tarpc face of the resolver: reads of the published inventory, and a
//! long-polling watch. Never waits on a runtime.

use std::{collections::BTreeMap, fs::File, sync::Arc, time::Duration};

use proto::resolver::{
    ExeFile, ExeLookup, Resolver, ResolverStatus, Snapshot, WatchReply, MAX_WATCH_WAIT_MS,
};
use tarpc::context::Context;

use crate::{exe, reconciler::Shared, source};

/// A running container's processes and the root it started with.
type Target = (Vec<u32>, Option<exe::RootId>);

/// Most paths resolved in one call.
pub const MAX_EXE_LOOKUPS: usize = 16_384;

#[derive(Clone)]
pub struct ResolverServer {
    pub shared: Arc<Shared>,
}

impl ResolverServer {
    /// The watch logic, callable without tarpc.
    pub async fn watch_inner(&self, after_generation: u64, wait_ms: u32) -> WatchReply {
        let mut generation = self.shared.generation.subscribe();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::from(wait_ms.min(MAX_WATCH_WAIT_MS)));
        loop {
            // Mark the current value seen before reading the inventory, so a
            // change published after the read wakes the wait below.
            generation.borrow_and_update();
            let (instance, current, reply) = {
                let inv = self.shared.read();
                (
                    inv.instance(),
                    inv.generation(),
                    inv.changes_after(after_generation),
                )
            };
            if let Some(mut reply) = reply {
                if let WatchReply::Resync { snapshot, .. } = &mut reply {
                    snapshot.unlisted_sources = self.shared.unlisted_sources();
                }
                return reply;
            }
            match tokio::time::timeout_at(deadline, generation.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the reconciler is gone: nothing new.
                _ => {
                    return WatchReply::Changes {
                        instance,
                        generation: current,
                        changes: Vec::new(),
                    }
                }
            }
        }
    }
}

impl ResolverServer {
    /// The executables logic, callable without tarpc. Blocking: reads
    /// /proc and hashes files.
    pub fn executables_blocking(&self, lookups: &[ExeLookup]) -> Vec<Result<ExeFile, String>> {
        if lookups.len() > MAX_EXE_LOOKUPS {
            let e = format!(
                "{} paths in one request; at most {MAX_EXE_LOOKUPS} are resolved at once",
                lookups.len()
            );
            return lookups.iter().map(|_| Err(e.clone())).collect();
        }
        // Each container's processes and recorded root, read once under
        // the lock, then its root opened once for all of its paths.
        let mut targets: BTreeMap<(&str, &str), Option<Target>> = BTreeMap::new();
        {
            let inv = self.shared.read();
            for l in lookups {
                let named = (l.namespace.as_str(), l.container_id.as_str());
                targets.entry(named).or_insert_with(|| {
                    let key = source::key(&l.namespace, &l.container_id);
                    let container = inv.get(&key)?;
                    Some((container.pids.clone(), self.shared.root_of(&key)))
                });
            }
        }
        let roots: BTreeMap<(&str, &str), Result<File, String>> = targets
            .into_iter()
            .map(|((namespace, id), target)| {
                let root = match target {
                    None => Err(format!(
                        "no container {id} is running in namespace {namespace}"
                    )),
                    Some((pids, expected)) => {
                        exe::open_root(&self.shared.proc_root, id, &pids, expected)
                    }
                };
                ((namespace, id), root)
            })
            .collect();
        lookups
            .iter()
            .map(
                |l| match &roots[&(l.namespace.as_str(), l.container_id.as_str())] {
                    Ok(root) => exe::resolve_in(root, &l.container_id, &l.path, l.sha256),
                    Err(e) => Err(e.clone()),
                },
            )
            .collect()
    }
}

impl Resolver for ResolverServer {
    async fn status(self, _: Context) -> ResolverStatus {
        let (instance, generation, containers) = {
            let inv = self.shared.read();
            (
                inv.instance(),
                inv.generation(),
                u32::try_from(inv.len()).unwrap_or(u32::MAX),
            )
        };
        ResolverStatus {
            api_version: proto::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance,
            generation,
            containers,
            cgroup_root: self.shared.cgroup_root.clone(),
            sources: self.shared.status.all(),
        }
    }

    async fn list(self, _: Context) -> Snapshot {
        self.shared.snapshot()
    }

    async fn watch(self, ctx: Context, after_generation: u64, wait_ms: u32) -> WatchReply {
        // Answer (empty) a little before the caller's deadline rather than
        // let the call fail: a client with tarpc's default 10 s deadline
        // asking for a 30 s wait gets an empty reply after about 10 s.
        let budget = ctx
            .deadline
            .saturating_duration_since(std::time::Instant::now())
            .saturating_sub(Duration::from_millis(250));
        let wait_ms = wait_ms.min(u32::try_from(budget.as_millis()).unwrap_or(u32::MAX));
        self.watch_inner(after_generation, wait_ms).await
    }

    async fn executables(
        self,
        _: Context,
        lookups: Vec<ExeLookup>,
    ) -> Vec<Result<ExeFile, String>> {
        let count = lookups.len();
        let started = std::time::Instant::now();
        let results = tokio::task::spawn_blocking(move || self.executables_blocking(&lookups))
            .await
            .unwrap_or_else(|e| vec![Err(format!("resolving failed: {e}")); count]);
        tracing::debug!(count, failed = results.iter().filter(|r| r.is_err()).count(), elapsed = ?started.elapsed(), "executables resolved");
        results
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto::resolver::{Container, Runtime};

    use super::*;
    use crate::{inventory::VersionedInventory, source::StatusBoard};

    fn container(id: &str) -> Container {
        Container {
            id: id.into(),
            name: id.into(),
            runtime: Runtime::Containerd,
            namespace: "default".into(),
            labels: BTreeMap::new(),
            image: String::new(),
            pids: vec![1],
            cgroup_path: "/x".into(),
            cgroup_id: 5,
            netns_inode: 0,
            host_veths: vec![],
            host_network: false,
            addresses: Vec::new(),
            metadata_complete: true,
            readonly_rootfs: None,
        }
    }

    fn publish(shared: &Shared, id: &str) {
        let generation = {
            let mut inv = shared.inventory.write().unwrap();
            inv.set(&format!("default/{id}"), Some(container(id)));
            inv.generation()
        };
        shared.generation.send_replace(generation);
    }

    /// containerd's namespaces may each hold a container of the same id: a
    /// path is resolved in the root of the one the lookup names.
    #[test]
    fn an_executable_is_resolved_in_the_container_of_its_namespace() {
        let shared = Arc::new(Shared::new(
            VersionedInventory::new(1, 10, 16),
            StatusBoard::default(),
            "/sys/fs/cgroup".into(),
        ));
        let own_root = exe::root_of(&shared.proc_root, std::process::id()).expect("own root");
        // "a/web" has no live process; "b/web" is this process, on this root.
        for (namespace, pid) in [("a", u32::MAX - 1), ("b", std::process::id())] {
            let key = format!("{namespace}/web");
            let web = Container {
                namespace: namespace.into(),
                pids: vec![pid],
                ..container("web")
            };
            shared.inventory.write().unwrap().set(&key, Some(web));
            shared.roots.write().unwrap().insert(key, own_root);
        }
        let server = ResolverServer { shared };
        let this_binary = std::env::current_exe().expect("the test binary's path");
        let lookup = |namespace: &str| ExeLookup {
            namespace: namespace.into(),
            container_id: "web".into(),
            path: this_binary.to_str().expect("a UTF-8 path").into(),
            sha256: false,
        };
        let got = server.executables_blocking(&[lookup("b"), lookup("a"), lookup("c")]);
        let file = got[0].as_ref().expect("resolved in b/web's root");
        assert_eq!(
            file.file,
            exe::file_id(&std::fs::metadata(&this_binary).unwrap())
        );
        assert!(
            got[1].as_ref().unwrap_err().contains("no live process"),
            "a/web's own process was not asked: {:?}",
            got[1]
        );
        assert!(
            got[2]
                .as_ref()
                .unwrap_err()
                .contains("no container web is running in namespace c"),
            "{:?}",
            got[2]
        );
    }

    #[tokio::test]
    async fn a_snapshot_names_the_runtimes_not_listed_yet() {
        let shared = Arc::new(Shared::new(
            VersionedInventory::new(1, 10, 16),
            StatusBoard::default(),
            "/sys/fs/cgroup".into(),
        ));
        shared.sources.write().unwrap().insert("containerd".into());
        let server = ResolverServer {
            shared: shared.clone(),
        };
        assert_eq!(
            server
                .clone()
                .list(tarpc::context::current())
                .await
                .unlisted_sources,
            ["containerd"],
            "served before containerd's first listing: its containers are not gone"
        );
        // A watcher from another run gets a snapshot that says it too.
        match server.watch_inner(u64::MAX, 0).await {
            WatchReply::Resync { snapshot, .. } => {
                assert_eq!(snapshot.unlisted_sources, ["containerd"])
            }
            other => panic!("not a resync: {other:?}"),
        }
        shared.listed.send_modify(|l| {
            l.insert("containerd".into());
        });
        assert!(server
            .list(tarpc::context::current())
            .await
            .unlisted_sources
            .is_empty());
    }

    #[tokio::test]
    async fn watch_wakes_on_a_change_and_times_out_empty() {
        let shared = Arc::new(Shared::new(
            VersionedInventory::new(1, 10, 16),
            StatusBoard::default(),
            "/sys/fs/cgroup".into(),
        ));
        let server = ResolverServer {
            shared: shared.clone(),
        };

        // Nothing happens: an empty reply at the current generation.
        let started = tokio::time::Instant::now();
        let reply = server.watch_inner(10, 50).await;
        assert_eq!(
            reply,
            WatchReply::Changes {
                instance: 1,
                generation: 10,
                changes: vec![]
            }
        );
        assert!(started.elapsed() >= Duration::from_millis(50));

        // A change while waiting wakes the watcher at once.
        let waiting = tokio::spawn({
            let server = server.clone();
            async move { server.watch_inner(10, 10_000).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        publish(&shared, "a");
        let reply = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap();
        let WatchReply::Changes {
            generation,
            changes,
            ..
        } = reply
        else {
            panic!("expected changes")
        };
        assert_eq!((generation, changes.len()), (11, 1));

        // Already behind: answered without waiting.
        publish(&shared, "b");
        let WatchReply::Changes { changes, .. } = server.watch_inner(10, 10_000).await else {
            panic!("expected changes")
        };
        assert_eq!(
            changes.iter().map(|c| c.generation).collect::<Vec<_>>(),
            vec![11, 12]
        );
    }
}
