//! An in-memory stand-in for bpf-loader that keeps the loader's contract
//! (all-or-nothing apply at `from_generation`, the same validation, generation bumps, state
//! snapshots, the attachments it reports) without BPF: for tests and
//! benchmarks of the daemon over real sockets, unprivileged.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
};

use kernel_model::{diff::MapDiff, state::KernelState, validate::validate};
use proto::{
    loader::{
        Attachment, Counters, Event, EventBatch, Loader, LoaderError, LoaderInfo, StateSnapshot,
        VethAttachment,
    },
    transport,
};
use tarpc::context::Context;

#[derive(Debug, Default)]
pub struct Maps {
    pub generation: u64,
    pub state: KernelState,
    /// Diffs applied so far.
    pub applies: usize,
    /// Cgroups "attached" to, keyed by their path relative to the cgroup2
    /// mount.
    pub attachments: BTreeMap<String, Attachment>,
    /// Veths the backstop is "attached" to, by ifindex.
    pub veths: BTreeMap<u32, String>,
    /// Events "the kernel" reported, numbered from 1 as the loader does.
    pub events: Vec<Event>,
    /// What `counters` answers.
    pub counters: Counters,
}

/// Where the in-memory loader pretends the cgroup2 hierarchy is mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// A cgroup given as the real loader takes it (absolute under the mount,
/// or relative to it) as a path relative to the mount: `/contain.slice`.
fn hierarchy_path(cgroup: &str) -> String {
    let relative = cgroup.strip_prefix(CGROUP_MOUNT).unwrap_or(cgroup);
    format!("/{}", relative.trim_matches('/'))
}

#[derive(Clone, Debug, Default)]
pub struct MemoryLoader {
    pub maps: Arc<Mutex<Maps>>,
}

impl MemoryLoader {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock poisons it; the maps are still
        // consistent (every update is a single assignment), so carry on.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (generation, state, applies) now.
    pub fn snapshot(&self) -> (u64, KernelState, usize) {
        let m = self.maps();
        (m.generation, m.state.clone(), m.applies)
    }

    /// Records an attachment to `cgroup` (absolute under the pretend mount,
    /// or relative to it), as the real loader reports one; no program runs.
    pub fn attach_cgroup(&self, cgroup: &str) -> Attachment {
        let cgroup_path = hierarchy_path(cgroup);
        let attachment = Attachment {
            cgroup: format!("{CGROUP_MOUNT}{}", cgroup_path.trim_end_matches('/')),
            cgroup_path,
            cgroup_id: 0,
            programs: Vec::new(),
        };
        self.maps()
            .attachments
            .insert(attachment.cgroup_path.clone(), attachment.clone());
        attachment
    }

    /// Records the backstop on veth `ifindex` (`name`), as the real loader
    /// reports one; no program runs.
    pub fn attach_veth(&self, ifindex: u32, name: &str) {
        self.maps().veths.insert(ifindex, name.to_owned());
    }

    /// Reports `event` as the real loader reports one from the kernel,
    /// with the next sequence number.
    pub fn push_event(&self, mut event: Event) {
        let mut m = self.maps();
        event.seq = m.events.len() as u64 + 1;
        m.events.push(event);
    }

    /// Sets what `counters` answers.
    pub fn set_counters(&self, counters: Counters) {
        self.maps().counters = counters;
    }

    fn events_after(&self, after: u64, max: u32) -> EventBatch {
        let m = self.maps();
        EventBatch {
            events: m
                .events
                .iter()
                .filter(|e| e.seq > after)
                .take(max as usize)
                .cloned()
                .collect(),
            missed: 0,
            last_seq: m.events.len() as u64,
        }
    }

    /// Serves the loader service on `socket` (root only, like the real one)
    /// from the current tokio runtime.
    pub fn serve(&self, socket: &Path) -> std::io::Result<()> {
        crate::serve_root_only!(socket, transport::Service::Loader, self.clone().serve())
    }
}

impl Loader for MemoryLoader {
    async fn version(self, _: Context) -> LoaderInfo {
        LoaderInfo {
            api_version: proto::API_VERSION,
            version: "memory".into(),
            pin_dir: String::new(),
        }
    }
    async fn attachments(self, _: Context) -> Vec<Attachment> {
        self.maps().attachments.values().cloned().collect()
    }
    async fn veth_attachments(self, _: Context) -> Vec<VethAttachment> {
        self.maps()
            .veths
            .iter()
            .map(|(&ifindex, name)| VethAttachment {
                ifindex,
                name: name.clone(),
            })
            .collect()
    }
    async fn apply(self, _: Context, diff: MapDiff) -> Result<u64, LoaderError> {
        let mut m = self.maps();
        if diff.from_generation != m.generation {
            return Err(LoaderError::GenerationMismatch {
                expected: diff.from_generation,
                actual: m.generation,
            });
        }
        // Refused exactly as the real loader refuses it.
        validate(&m.state, &diff.ops).map_err(|e| LoaderError::InvalidDiff(e.to_string()))?;
        if let Some(v) = diff.unknown_verdict {
            m.state.unknown_verdict = v;
        }
        m.state.apply_ops(&diff.ops);
        m.generation += 1;
        m.applies += 1;
        Ok(m.generation)
    }
    async fn state(self, _: Context) -> Result<StateSnapshot, LoaderError> {
        let m = self.maps();
        Ok(StateSnapshot {
            generation: m.generation,
            state: m.state.clone(),
        })
    }
    async fn generation(self, _: Context) -> u64 {
        self.maps().generation
    }
    async fn counters(self, _: Context) -> Result<Counters, LoaderError> {
        Ok(self.maps().counters.clone())
    }
    /// The pushed events; with none new, waits out the long poll (checking
    /// now and then) as the real one does.
    async fn events(self, _: Context, after: u64, max: u32, wait_ms: u32) -> EventBatch {
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(u64::from(wait_ms.min(30_000)));
        loop {
            let batch = self.events_after(after, max);
            if !batch.events.is_empty() || tokio::time::Instant::now() >= deadline {
                return batch;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
