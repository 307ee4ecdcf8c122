//! What runtime sources (containerd, or a test harness) tell the reconciler, and
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

/// Longest label (key and value) the inventory keeps. Selectors match short
/// labels (`egress=block`); a label this long is data, not a selector.
///
/// Dropping a label by its own size cannot open a hole: whoever set the
/// long value could as well have set one no selector matches (a run
/// label replaces the image's label of the same key, so an image cannot
/// lengthen the operator's). There is deliberately no cap on a container's
/// label bytes in all: dropping some labels to fit one would let an image
/// with many labels push out the operator's short `egress=block` and
/// leave the container unrestricted.
pub const MAX_LABEL_BYTES: usize = 1024;

/// Drops the labels over [`MAX_LABEL_BYTES`]. Returns the keys dropped
/// (cut to 64 bytes).
pub fn bound_labels(labels: &mut BTreeMap<String, String>) -> Vec<String> {
    let mut dropped = Vec::new();
    labels.retain(|key, value| {
        let keep = key.len() + value.len() <= MAX_LABEL_BYTES;
        if !keep {
            let end = key.floor_char_boundary(64);
            dropped.push(key[..end].to_string());
        }
        keep
    });
    dropped
}

/// `namespace/id`, as [`proto::resolver::Container::key`].
pub fn key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// What a source tells the reconciler.
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

    /// Still connected and following events, but a call failed (a full
    /// listing that timed out): the reason stays until the next listing.
    pub fn degraded(&self, name: &str, error: impl ToString) {
        self.with(name, |s| s.last_error = Some(error.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_labels_are_dropped_and_named() {
        let mut labels = BTreeMap::from([
            ("egress".to_string(), "block".to_string()),
            ("huge".to_string(), "x".repeat(MAX_LABEL_BYTES)),
        ]);
        assert_eq!(bound_labels(&mut labels), vec!["huge"]);
        assert_eq!(labels.keys().collect::<Vec<_>>(), vec!["egress"]);
    }

    /// An image's many labels, each within the limit and sorting before
    /// the operator's, must not push out the label a policy selects on.
    #[test]
    fn many_labels_never_crowd_out_a_selector() {
        let value = "v".repeat(MAX_LABEL_BYTES - 4);
        let mut labels: BTreeMap<String, String> = (0..100)
            .map(|i| (format!("a{i:03}"), value.clone()))
            .collect();
        labels.insert("egress".into(), "block".into());
        assert!(bound_labels(&mut labels).is_empty());
        assert_eq!(labels.get("egress").map(String::as_str), Some("block"));
        assert_eq!(labels.len(), 101);
    }
}
