//! The tarpc face of the loader: thin, every call goes to [`Kernel`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use kernel_model::diff::MapDiff;
use proto::loader::{
    Attachment, Counters, EventBatch, Loader, LoaderError, LoaderInfo, StateSnapshot,
    VethAttachment,
};
use tarpc::context::Context;

use crate::{
    events::EventLog,
    kernel::{Kernel, KernelError},
    veths,
};

/// Longest a client may long-poll for events.
const MAX_EVENT_WAIT: Duration = Duration::from_secs(30);
const MAX_EVENT_BATCH: u32 = 10_000;

#[derive(Clone)]
pub struct LoaderServer {
    pub kernel: Arc<Mutex<Kernel>>,
    pub events: Arc<EventLog>,
}

/// The wire's error for a kernel error: the kinds a client acts on keep
/// their own variant, the rest is text.
fn to_wire(e: KernelError) -> LoaderError {
    match e {
        KernelError::GenerationMismatch { expected, actual } => {
            LoaderError::GenerationMismatch { expected, actual }
        }
        KernelError::InvalidDiff(e) => LoaderError::InvalidDiff(e.to_string()),
        KernelError::Unencodable(e) => LoaderError::InvalidDiff(e.to_string()),
        KernelError::Map { name, source } => LoaderError::Map {
            map: name.to_string(),
            reason: source.to_string(),
        },
        other => LoaderError::Internal(other.to_string()),
    }
}

/// Hands freed heap pages back to the kernel: a big diff or state dump is
/// megabytes of JSON once, and glibc would otherwise keep them resident.
fn release_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

impl Loader for LoaderServer {
    async fn version(self, _: Context) -> LoaderInfo {
        LoaderInfo {
            api_version: proto::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pin_dir: Kernel::lock(&self.kernel).pin_dir().display().to_string(),
        }
    }

    async fn attachments(self, _: Context) -> Vec<Attachment> {
        Kernel::lock(&self.kernel).attachments()
    }

    /// The veths whose hooks the kernel shows the backstop's programs
    /// first on: a veth this loader attached to is left out if its
    /// attachment is gone, or another program or filter runs before it
    /// (one that accepts a frame would end the hook before the backstop).
    async fn veth_attachments(self, _: Context) -> Vec<VethAttachment> {
        let coverage = match veths::coverage(&self.kernel).await {
            Ok(coverage) => coverage,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the backstop's program ids: no veth is reported as covered");
                return Vec::new();
            }
        };
        coverage
            .into_iter()
            .filter(|c| c.gaps.is_empty())
            .map(|c| VethAttachment {
                ifindex: c.ifindex,
                name: c.name,
            })
            .collect()
    }

    async fn apply(self, _: Context, diff: MapDiff) -> Result<u64, LoaderError> {
        let ops = diff.ops.len();
        let started = std::time::Instant::now();
        let result = Kernel::lock(&self.kernel).apply(&diff).map_err(to_wire);
        let applied = started.elapsed();
        drop(diff);
        release_memory();
        tracing::debug!(ops, apply = ?applied, release = ?(started.elapsed() - applied), "apply handled");
        match &result {
            Ok(generation) => tracing::info!(ops, generation, "applied diff"),
            Err(e) => tracing::warn!(ops, error = %e, "refused diff"),
        }
        result
    }

    async fn state(self, _: Context) -> Result<StateSnapshot, LoaderError> {
        // The snapshot is serialised after this returns; the memory it and
        // the last request took is handed back on the next call.
        release_memory();
        let kernel = Kernel::lock(&self.kernel);
        Ok(StateSnapshot {
            generation: kernel.generation(),
            state: kernel.state().clone(),
        })
    }

    async fn generation(self, _: Context) -> u64 {
        Kernel::lock(&self.kernel).generation()
    }

    async fn counters(self, _: Context) -> Result<Counters, LoaderError> {
        let mut counters = Kernel::lock(&self.kernel).counters().map_err(to_wire)?;
        counters.events_dropped_loader = self.events.dropped();
        Ok(counters)
    }

    async fn events(self, _: Context, after: u64, max: u32, wait_ms: u32) -> EventBatch {
        let wait = Duration::from_millis(wait_ms.into()).min(MAX_EVENT_WAIT);
        self.events
            .poll(after, max.min(MAX_EVENT_BATCH) as usize, wait)
            .await
    }
}
