//! The loader's hold on the kernel: the loaded object and its pinned maps
//! ([`object`]), links and their adoption ([`links`]), the map transaction
//! ([`transaction`]), reading the maps back ([`readback`]) and the counters
//! ([`counters`]). Everything is pinned under one bpffs directory, so
//! enforcement outlives this process and a new loader adopts what an old
//! one left. Errors are [`KernelError`]; the service maps them to the wire's.

mod counters;
mod links;
mod object;
mod offsets;
mod readback;
mod transaction;

pub(crate) use links::query_program_ids;
pub(crate) use object::program_mut;
pub use object::EventRings;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray},
    programs::ProgramError,
    Ebpf,
};
use contain_common::{
    self as kern, CgroupPolicy, Config, DestValue, ExePath, PolicyCounters, PortValue,
    ProcessClass, VethOwner,
};
use kernel_model::{repr::EncodeError, state::KernelState, validate::InvalidDiff};
use proto::loader::Attachment;
use thiserror::Error;

use crate::fs;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(transparent)]
    Fs(#[from] fs::FsError),
    #[error("loading the eBPF object: {0} (is this root with CAP_BPF/CAP_SYS_ADMIN, on a kernel with BTF?)")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("pinning {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] crate::btf::BtfError),
    #[error("tracepoint format {path}: field {field} not found")]
    TraceFormat { path: PathBuf, field: &'static str },
    #[error("the diff was computed against generation {expected}, the loader is at {actual}")]
    GenerationMismatch { expected: u64, actual: u64 },
    #[error(transparent)]
    InvalidDiff(#[from] InvalidDiff),
    #[error(transparent)]
    Unencodable(#[from] EncodeError),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct PolicyMaps {
    cgroups: HashMap<MapData, u64, CgroupPolicy>,
    processes: HashMap<MapData, kern::ProcessKey, ProcessClass>,
    dests: LpmTrie<MapData, kern::DestKey, DestValue>,
    hosts: HashMap<MapData, kern::DestKey, DestValue>,
    ports: LpmTrie<MapData, kern::PortKey, PortValue>,
    exact_ports: HashMap<MapData, kern::PortKey, PortValue>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, PolicyCounters>,
    stats: PerCpuArray<MapData, u64>,
    refused_sockopts: PerCpuArray<MapData, u64>,
    exe_paths: HashMap<MapData, u64, ExePath>,
    veths: HashMap<MapData, u32, VethOwner>,
    veth_sources: HashMap<MapData, kern::VethAddrKey, u8>,
    /// Cgroup id → its level: where the cgroup programs are attached.
    attached_cgroups: HashMap<MapData, u64, u32>,
    /// Veth ifindex → until when its frames of no socket are held, for
    /// veths that appeared while this loader ran.
    new_veths: HashMap<MapData, u32, u64>,
}

pub struct Kernel {
    ebpf: Ebpf,
    maps: PolicyMaps,
    pin_dir: PathBuf,
    cgroup_root: PathBuf,
    /// Distinguishes this loader's link pins from a predecessor's.
    instance: String,
    /// What the policy maps hold, kept in step with every write.
    mirror: KernelState,
    attachments: BTreeMap<String, Attachment>,
    /// Host-side veths the backstop is attached to: ifindex → name.
    veths: BTreeMap<u32, String>,
    /// The key of the kernel's exe ids (`CONFIG.exe_key`).
    exe_key: [u64; 2],
    /// See [`Limits::new_veth_hold`].
    new_veth_hold: std::time::Duration,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

pub(crate) fn program_err(name: &'static str) -> impl Fn(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

/// A link that could not be made into a pinnable one, or pinned, at `path`.
pub(crate) fn pin_err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> KernelError + '_ {
    move |e| KernelError::Pin {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runtime limits of the kernel side, from the loader's command line.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a UDP socket may answer a peer after the peer's last
    /// datagram to it.
    pub udp_reply_timeout: std::time::Duration,
    /// Deny/audit events one cgroup may report per second.
    pub events_per_second: u32,
    /// How long a veth that appears holds frames of no socket to the
    /// unknown-container verdict while no container owns it (zero: not
    /// at all).
    pub new_veth_hold: std::time::Duration,
}

impl Kernel {
    /// The kernel behind `shared`, taken also when a panic poisoned the lock.
    pub fn lock(shared: &Mutex<Kernel>) -> MutexGuard<'_, Kernel> {
        shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    pub fn generation(&self) -> u64 {
        self.maps.config.get(&0, 0).map_or(0, |c| c.generation)
    }

    pub fn state(&self) -> &KernelState {
        &self.mirror
    }
}
