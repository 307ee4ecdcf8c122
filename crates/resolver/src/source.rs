//! What runtime sources (containerd, or a test harness) tell the engine, and
//! the board where every source reports its health.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use proto::resolver::{Runtime, SourceStatus};

/// A container as its runtime describes it, before the resolver has looked
/// at its processes, cgroup and network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeContainer {
    pub runtime: Runtime,
    pub namespace: String,
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    /// Init process of the running task; 0 when no task runs.
    pub pid: u32,
    /// See `proto::resolver::Container::metadata_complete`.
    pub metadata_complete: bool,
    /// See `proto::resolver::Container::readonly_rootfs`.
    pub readonly_rootfs: Option<bool>,
}

impl RuntimeContainer {
    pub fn key(&self) -> String {
        key(&self.namespace, &self.id)
    }
}

/// `namespace/id`, as [`proto::resolver::Container::key`].
pub fn key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// What a source tells the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// Everything `source` knows, replacing all it said before (after a
    /// (re)connection or a periodic re-list).
    Snapshot {
        source: String,
        containers: Vec<RuntimeContainer>,
    },
    /// A container was created, started or changed.
    Upsert {
        source: String,
        container: RuntimeContainer,
    },
    /// A container stopped or was deleted.
    Remove {
        source: String,
        namespace: String,
        id: String,
    },
    /// Something about a container's processes changed (an exec): read its
    /// processes again.
    Refresh { namespace: String, id: String },
}

/// Health of every source, shared with the service.
#[derive(Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
}

impl StatusBoard {
    fn with<R>(&self, name: &str, f: impl FnOnce(&mut SourceStatus) -> R) -> R {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name.to_string()).or_insert_with(|| SourceStatus {
            name: name.to_string(),
            connected: false,
            last_error: None,
            resyncs: 0,
        });
        f(entry)
    }

    pub fn connected(&self, name: &str) {
        self.with(name, |s| {
            s.connected = true;
            s.last_error = None;
        })
    }

    pub fn resynced(&self, name: &str) {
        self.with(name, |s| s.resyncs += 1)
    }

    pub fn failed(&self, name: &str, error: impl ToString) {
        self.with(name, |s| {
            s.connected = false;
            s.last_error = Some(error.to_string());
        })
    }

    pub fn register(&self, name: &str) {
        self.with(name, |_| ())
    }

    pub fn all(&self) -> Vec<SourceStatus> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
