//! The inventory as data: containers by key, a generation bumped by every
//! change, and a bounded log of changes for watchers. Pure: no I/O.

use std::collections::{BTreeMap, VecDeque};

use proto::resolver::{Change, ChangeKind, Container, Snapshot, WatchReply};

/// How many changes a watcher can fall behind before it must resync.
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

#[derive(Debug)]
pub struct VersionedInventory {
    instance: u64,
    generation: u64,
    containers: BTreeMap<String, Container>,
    log: VecDeque<Change>,
    log_capacity: usize,
}

impl VersionedInventory {
    /// An empty inventory at `first_generation`. Seed it from the wall clock
    /// so that a restarted resolver's generations are above its
    /// predecessor's, and watchers of the old run get a resync.
    pub fn new(instance: u64, first_generation: u64, log_capacity: usize) -> Self {
        VersionedInventory {
            instance,
            generation: first_generation,
            containers: BTreeMap::new(),
            log: VecDeque::new(),
            log_capacity: log_capacity.max(1),
        }
    }

    pub fn instance(&self) -> u64 {
        self.instance
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.containers.keys()
    }

    pub fn get(&self, key: &str) -> Option<&Container> {
        self.containers.get(key)
    }

    /// Makes `key` hold `value` (`None`: absent). If that is a change, bumps
    /// the generation, logs the change and returns it.
    pub fn set(&mut self, key: &str, value: Option<Container>) -> Option<Change> {
        let old = self.containers.get(key);
        if old == value.as_ref() {
            return None;
        }
        let kind = match (old, value) {
            (None, None) => return None,
            (None, Some(c)) => ChangeKind::Added { container: c },
            (Some(_), Some(c)) => ChangeKind::Updated { container: c },
            (Some(old), None) => ChangeKind::Removed {
                namespace: old.namespace.clone(),
                id: old.id.clone(),
                cgroup_id: old.cgroup_id,
            },
        };
        match &kind {
            ChangeKind::Added { container } | ChangeKind::Updated { container } => {
                self.containers.insert(key.to_string(), container.clone());
            }
            ChangeKind::Removed { .. } => {
                self.containers.remove(key);
            }
        }
        self.generation += 1;
        let change = Change {
            generation: self.generation,
            kind,
        };
        if self.log.len() == self.log_capacity {
            self.log.pop_front();
        }
        self.log.push_back(change.clone());
        Some(change)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            instance: self.instance,
            generation: self.generation,
            containers: self.containers.values().cloned().collect(),
            unlisted_sources: Vec::new(),
        }
    }

    /// What a watcher at `after` must apply to catch up: `None` if it is
    /// current (it should wait), the changes if the log still holds all of
    /// them, a resync snapshot otherwise.
    pub fn changes_after(&self, after: u64) -> Option<WatchReply> {
        if after == self.generation {
            return None;
        }
        if after > self.generation {
            return Some(self.resync(format!(
                "generation {after} is ahead of this resolver ({}): it restarted; take this snapshot",
                self.generation
            )));
        }
        // Generations are contiguous: the log holds first..=generation.
        let first = self
            .log
            .front()
            .map_or(self.generation + 1, |c| c.generation);
        if after + 1 < first {
            return Some(self.resync(format!(
                "changes after generation {after} are no longer kept (oldest kept: {first}); take this snapshot"
            )));
        }
        let skip = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
        Some(WatchReply::Changes {
            instance: self.instance,
            generation: self.generation,
            changes: self.log.iter().skip(skip).cloned().collect(),
        })
    }

    fn resync(&self, reason: String) -> WatchReply {
        WatchReply::Resync {
            snapshot: self.snapshot(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::resolver::{HostVeth, Runtime};

    fn container(id: &str, cgroup_id: u64, ifindex: u32) -> Container {
        Container {
            id: id.into(),
            name: format!("name-{id}"),
            runtime: Runtime::Containerd,
            namespace: "default".into(),
            labels: BTreeMap::new(),
            image: String::new(),
            pids: vec![1],
            cgroup_path: format!("/default/{id}"),
            cgroup_id,
            netns_inode: 99,
            host_veths: vec![HostVeth {
                ifindex,
                name: format!("veth{ifindex}"),
                peer_ifindex: 2,
            }],
            host_network: false,
            addresses: Vec::new(),
            metadata_complete: true,
            readonly_rootfs: None,
        }
    }

    #[test]
    fn every_change_bumps_the_generation_once() {
        let mut inv = VersionedInventory::new(1, 100, 16);
        let a = container("a", 10, 5);
        assert_eq!(
            inv.set("default/a", Some(a.clone())).unwrap().generation,
            101
        );
        assert!(
            inv.set("default/a", Some(a.clone())).is_none(),
            "same value is no change"
        );
        assert!(inv.set("default/zz", None).is_none(), "absent stays absent");
        let mut a2 = a.clone();
        a2.pids.push(2);
        let ch = inv.set("default/a", Some(a2)).unwrap();
        assert_eq!(ch.generation, 102);
        assert!(matches!(ch.kind, ChangeKind::Updated { .. }));
        let ch = inv.set("default/a", None).unwrap();
        assert_eq!(
            ch.kind,
            ChangeKind::Removed {
                namespace: "default".into(),
                id: "a".into(),
                cgroup_id: 10
            }
        );
        assert_eq!(inv.generation(), 103);
        assert!(inv.is_empty());
    }

    #[test]
    fn watcher_gets_exactly_the_changes_after_its_generation() {
        let mut inv = VersionedInventory::new(7, 0, 16);
        assert!(inv.changes_after(0).is_none(), "current: wait");
        inv.set("default/a", Some(container("a", 10, 5)));
        inv.set("default/b", Some(container("b", 11, 6)));
        inv.set("default/a", None);
        let Some(WatchReply::Changes {
            instance,
            generation,
            changes,
        }) = inv.changes_after(1)
        else {
            panic!("expected changes");
        };
        assert_eq!((instance, generation), (7, 3));
        assert_eq!(
            changes.iter().map(|c| c.generation).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(inv.changes_after(3).is_none());
    }

    #[test]
    fn too_old_or_future_generation_gets_a_resync() {
        let mut inv = VersionedInventory::new(7, 0, 2);
        for i in 0..5 {
            inv.set(
                &format!("default/c{i}"),
                Some(container(&format!("c{i}"), 10 + i, 5)),
            );
        }
        // Log keeps generations 4 and 5.
        assert!(matches!(
            inv.changes_after(3),
            Some(WatchReply::Changes { .. })
        ));
        let Some(WatchReply::Resync { snapshot, .. }) = inv.changes_after(2) else {
            panic!("expected resync");
        };
        assert_eq!(snapshot.generation, 5);
        assert_eq!(snapshot.containers.len(), 5);
        assert!(matches!(
            inv.changes_after(99),
            Some(WatchReply::Resync { .. })
        ));
        // A fresh inventory (no log) resyncs anyone behind it.
        let fresh = VersionedInventory::new(8, 1000, 2);
        assert!(matches!(
            fresh.changes_after(5),
            Some(WatchReply::Resync { .. })
        ));
    }

    #[test]
    fn a_client_applying_replies_converges() {
        let mut inv = VersionedInventory::new(7, 0, 3);
        let mut copy = BTreeMap::new();
        let mut at = 0;
        for round in 0..20u64 {
            let key = format!("default/c{}", round % 4);
            if round % 3 == 0 {
                inv.set(&key, None);
            } else {
                inv.set(&key, Some(container(&format!("c{}", round % 4), round, 5)));
            }
            // The client polls only every other round; sometimes it falls
            // out of the log and is resynced.
            if round % 2 == 1 {
                if let Some(reply) = inv.changes_after(at) {
                    at = reply.apply_to(&mut copy);
                }
                let server: BTreeMap<_, _> = inv
                    .snapshot()
                    .containers
                    .into_iter()
                    .map(|c| (c.key(), c))
                    .collect();
                assert_eq!(copy, server);
                assert_eq!(at, inv.generation());
            }
        }
    }
}
