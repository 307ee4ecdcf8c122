//! The loader's hold on the kernel: the loaded object, its pinned maps and
//! links, and the operations the service exposes (attach, detach, apply,
//! dump). Everything is pinned under one bpffs directory, so enforcement
//! outlives this process and a new loader adopts what an old one left.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, links::PinnedLink, CgroupAttachMode,
        CgroupSkb, CgroupSock, CgroupSockAddr, RawTracePoint, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use contain_common::{
    self as kern, map_names, program_names, CgroupPolicy, Config, DestValue, ExePath,
    PolicyCounters, PortValue, ProcessClass, VethOwner,
};
use kernel_model::{
    diff::{apply_order, MapDiff},
    repr::{self, LpmKey},
    state::{Entry, EntryKey, KernelState, MapOp},
    validate::validate,
};
use proto::loader::{Attachment, Counters, LoaderError, PolicyCounters as PolicyCountersDto};
use thiserror::Error;

use crate::{fs, tracefs, veths};

/// The eBPF object built by build.rs from crates/contain-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/contain.bpf.o"));

/// Bumped when a map's key or value layout changes: a loader with another
/// layout starts on fresh maps instead of misreading old ones.
const MAP_LAYOUT_VERSION: u32 = 4;

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
        source: aya::programs::ProgramError,
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
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<KernelError> for LoaderError {
    fn from(e: KernelError) -> Self {
        LoaderError::Internal(e.to_string())
    }
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
    exe_paths: HashMap<MapData, u64, ExePath>,
    veths: HashMap<MapData, u32, VethOwner>,
    /// Cgroup id → its level: where the cgroup programs are attached.
    attached_cgroups: HashMap<MapData, u64, u32>,
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
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> KernelError + '_ {
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
}

impl Kernel {
    /// Loads the object with every map pinned (or re-opened from its pin)
    /// under `pin_dir`, and loads every program. Returns the event ring
    /// buffer separately: it is drained on its own task.
    pub fn load(pin_dir: &Path) -> Result<(Kernel, RingBuf<MapData>), KernelError> {
        let bpffs_root = pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
        fs::ensure_mounted("bpf", bpffs_root)?;
        let maps_dir = pin_dir.join(format!("maps-v{MAP_LAYOUT_VERSION}"));
        std::fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
        let cgroup_root = fs::cgroup2_mount()?;
        let offsets = TraceOffsets::read()?;
        let exec = ExecOffsets::read(&crate::btf::Btf::from_sys_fs()?)?;

        let map_paths: Vec<(&str, PathBuf)> = map_names::ALL
            .iter()
            .map(|&name| (name, maps_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .override_global("BPRM_FILE_OFFSET", &exec.bprm_file, true)
            .override_global("BPRM_FILENAME_OFFSET", &exec.bprm_filename, true)
            .override_global("FILE_INODE_OFFSET", &exec.file_inode, true)
            .override_global("INODE_SB_OFFSET", &exec.inode_sb, true)
            .override_global("INODE_INO_OFFSET", &exec.inode_ino, true)
            .override_global("INODE_CTIME_SEC_OFFSET", &exec.inode_ctime_sec, true)
            .override_global("INODE_CTIME_NSEC_OFFSET", &exec.inode_ctime_nsec, true)
            .override_global("SB_DEV_OFFSET", &exec.sb_dev, true)
            .override_global("NEWTASK_PID_OFFSET", &offsets.newtask_pid, true)
            .override_global(
                "NEWTASK_CLONE_FLAGS_OFFSET",
                &offsets.newtask_clone_flags,
                true,
            );
        let mut ebpf = loader.load(OBJECT)?;

        for &name in program_names::CGROUP {
            load_program(&mut ebpf, name)?;
        }
        for &(name, _, _) in program_names::TRACEPOINTS {
            load_program(&mut ebpf, name)?;
        }
        for &(name, _) in program_names::RAW_TRACEPOINTS {
            load_program(&mut ebpf, name)?;
        }
        for (name, _) in veths::PROGRAMS {
            load_program(&mut ebpf, name)?;
        }

        let maps = PolicyMaps {
            cgroups: take(&mut ebpf, map_names::CGROUPS)?,
            processes: take(&mut ebpf, map_names::PROCESSES)?,
            dests: take(&mut ebpf, map_names::DESTS)?,
            hosts: take(&mut ebpf, map_names::HOSTS)?,
            ports: take(&mut ebpf, map_names::PORTS)?,
            exact_ports: take(&mut ebpf, map_names::EXACT_PORTS)?,
            config: take(&mut ebpf, map_names::CONFIG)?,
            counters: take(&mut ebpf, map_names::COUNTERS)?,
            stats: take(&mut ebpf, map_names::STATS)?,
            exe_paths: take(&mut ebpf, map_names::EXE_PATHS)?,
            veths: take(&mut ebpf, map_names::VETHS)?,
            attached_cgroups: take(&mut ebpf, map_names::ATTACHED_CGROUPS)?,
        };
        let events: RingBuf<MapData> = take(&mut ebpf, map_names::EVENTS)?;
        let instance = format!(
            "{}-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id()
        );
        let mut kernel = Kernel {
            ebpf,
            maps,
            pin_dir: pin_dir.to_owned(),
            cgroup_root,
            instance,
            mirror: KernelState::default(),
            attachments: BTreeMap::new(),
            veths: BTreeMap::new(),
            exe_key: [0, 0],
        };
        kernel.exe_key = kernel.ensure_exe_key()?;
        kernel.mirror = kernel.read_state()?;
        Ok((kernel, events))
    }

    /// The fd of a loaded program, for BPF_PROG_TEST_RUN.
    pub fn program_fd(&self, name: &str) -> Option<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog = self.ebpf.program(name)?;
        let fd = match prog {
            aya::programs::Program::CgroupSkb(p) => p.fd().ok()?,
            aya::programs::Program::CgroupSock(p) => p.fd().ok()?,
            aya::programs::Program::CgroupSockAddr(p) => p.fd().ok()?,
            aya::programs::Program::TracePoint(p) => p.fd().ok()?,
            aya::programs::Program::SchedClassifier(p) => p.fd().ok()?,
            _ => return None,
        };
        Some(fd.as_fd().as_raw_fd())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    /// Attaches the exec/newtask/exit tracepoints, pinning their links, then
    /// lets go of a predecessor's.
    pub fn attach_tracepoints(&mut self) -> Result<(), KernelError> {
        let group = self.links_dir().join("tracepoints");
        let dir = group.join(&self.instance);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for &(name, category, tracepoint) in program_names::TRACEPOINTS {
            let prog: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            let id = prog
                .attach(category, tracepoint)
                .map_err(|source| KernelError::Program { name, source })?;
            let link = prog
                .take_link(id)
                .map_err(|source| KernelError::Program { name, source })?;
            let fd_link: FdLink =
                link.try_into()
                    .map_err(|e: aya::programs::links::LinkError| KernelError::Pin {
                        path: dir.join(name),
                        reason: e.to_string(),
                    })?;
            pin(fd_link, &dir.join(name))?;
        }
        for &(name, tracepoint) in program_names::RAW_TRACEPOINTS {
            let prog: &mut RawTracePoint = program_mut(&mut self.ebpf, name)?;
            let id = prog
                .attach(tracepoint)
                .map_err(|source| KernelError::Program { name, source })?;
            let link = prog
                .take_link(id)
                .map_err(|source| KernelError::Program { name, source })?;
            let fd_link = FdLink::from(link);
            pin(fd_link, &dir.join(name))?;
        }
        release_other_instances(&group, &self.instance)
    }

    /// Attaches every cgroup program to `cgroup` with BPF_F_ALLOW_MULTI and
    /// pins the links; a predecessor's links on the same cgroup are released
    /// only after the new ones are in place, so there is no gap.
    pub fn attach(&mut self, cgroup: &str) -> Result<Attachment, KernelError> {
        let path = fs::resolve_cgroup(&self.cgroup_root, cgroup)?;
        let relative = path
            .strip_prefix(&self.cgroup_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroup_id = fs::cgroup_id(&path)?;
        let group = self
            .links_dir()
            .join("cgroups")
            .join(fs::pin_name_for(&relative));
        let dir = group.join(&self.instance);
        if self.attachments.contains_key(&relative) && dir.exists() {
            return Ok(self.attachments[&relative].clone());
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let cgroup_dir = File::open(&path).map_err(io_err(&path))?;
        for &name in program_names::CGROUP {
            let link = attach_cgroup_program(&mut self.ebpf, name, &cgroup_dir)?;
            pin(link, &dir.join(name))?;
        }
        release_other_instances(&group, &self.instance)?;
        // The veth backstop passes the packets of sockets under this cgroup:
        // these programs judged them.
        let level = relative.split('/').filter(|c| !c.is_empty()).count() as u32;
        self.maps
            .attached_cgroups
            .insert(cgroup_id, level, 0)
            .map_err(map_err(map_names::ATTACHED_CGROUPS))?;
        let attachment = Attachment {
            cgroup: path.to_string_lossy().into_owned(),
            cgroup_path: format!("/{relative}"),
            cgroup_id,
            programs: program_names::CGROUP
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        self.attachments.insert(relative, attachment.clone());
        Ok(attachment)
    }

    /// Re-attaches to every cgroup a predecessor attached to (found from its
    /// pins), replacing its links with this loader's programs.
    pub fn adopt(&mut self) -> Result<Vec<Attachment>, KernelError> {
        let cgroups_dir = self.links_dir().join("cgroups");
        let Ok(entries) = std::fs::read_dir(&cgroups_dir) else {
            return Ok(Vec::new());
        };
        let mut adopted = Vec::new();
        for entry in entries.flatten() {
            let relative = fs::cgroup_for_pin_name(&entry.file_name().to_string_lossy());
            if !self.cgroup_root.join(&relative).is_dir() {
                tracing::info!(cgroup = %relative, "cgroup is gone; releasing its links");
                release_other_instances(&entry.path(), "")?;
                let _ = std::fs::remove_dir(entry.path());
                continue;
            }
            adopted.push(self.attach(&relative)?);
        }
        Ok(adopted)
    }

    /// Forgets attachment records no attachment of this loader backs (a
    /// predecessor's cgroups it did not adopt). Called once every
    /// attachment is in place.
    pub fn prune_attached_cgroups(&mut self) -> Result<(), KernelError> {
        let attached: std::collections::BTreeSet<u64> =
            self.attachments.values().map(|a| a.cgroup_id).collect();
        let stale: Vec<u64> = self
            .maps
            .attached_cgroups
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !attached.contains(id))
            .collect();
        for id in stale {
            self.maps
                .attached_cgroups
                .remove(&id)
                .map_err(map_err(map_names::ATTACHED_CGROUPS))?;
        }
        Ok(())
    }

    /// Attaches the veth backstop to host-side veth `ifindex` (`name`),
    /// unless this loader already has. Returns whether it attached.
    pub fn attach_veth(&mut self, ifindex: u32, name: &str) -> Result<bool, KernelError> {
        if self.veths.get(&ifindex).is_some_and(|n| n == name) {
            return Ok(false);
        }
        let links = veths::attach(&mut self.ebpf, name)?;
        if !links.is_empty() {
            let group = veths::pin_group(&self.links_dir(), ifindex);
            let dir = group.join(&self.instance);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            for (program, link) in links {
                pin(link, &dir.join(program))?;
            }
            release_other_instances(&group, &self.instance)?;
        }
        self.veths.insert(ifindex, name.to_owned());
        Ok(true)
    }

    /// A veth left this namespace (deleted, or moved into a container's):
    /// its pinned link, if any, is released.
    pub fn veth_gone(&mut self, ifindex: u32) {
        self.veths.remove(&ifindex);
        let group = veths::pin_group(&self.links_dir(), ifindex);
        if group.exists() {
            if let Err(e) = release_other_instances(&group, "") {
                tracing::warn!(ifindex, error = %e, "cannot release a gone veth's link");
            }
            let _ = std::fs::remove_dir(&group);
        }
    }

    /// Releases the pinned links of veths that no longer exist (a
    /// predecessor's, for veths deleted while no loader ran).
    pub fn release_gone_veths(&mut self, present: &[u32]) {
        let Ok(entries) = std::fs::read_dir(self.links_dir().join("veths")) else {
            return;
        };
        let gone: Vec<u32> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
            .filter(|ifindex| !present.contains(ifindex))
            .collect();
        for ifindex in gone {
            self.veth_gone(ifindex);
        }
    }

    /// The host-side veths the backstop is attached to.
    pub fn attached_veths(&self) -> &BTreeMap<u32, String> {
        &self.veths
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.attachments.values().cloned().collect()
    }

    pub fn generation(&self) -> u64 {
        self.maps
            .config
            .get(&0, 0)
            .map_or(0, |c| c.generation as u64)
    }

    /// The key of the kernel's exe ids: drawn from the kernel's random pool
    /// the first time the maps are used (so once per boot, as the maps live
    /// in bpffs), kept in the pinned config after that.
    fn ensure_exe_key(&mut self) -> Result<[u64; 2], KernelError> {
        let mut config = self.maps.config.get(&0, 0).unwrap_or_default();
        if config.exe_key != [0, 0] {
            return Ok(config.exe_key);
        }
        let mut bytes = [0u8; 16];
        while bytes == [0u8; 16] {
            let urandom = Path::new("/dev/urandom");
            std::io::Read::read_exact(
                &mut File::open(urandom).map_err(io_err(urandom))?,
                &mut bytes,
            )
            .map_err(io_err(urandom))?;
        }
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        config.exe_key = [word(&bytes[..8]), word(&bytes[8..])];
        self.maps
            .config
            .set(0, config, 0)
            .map_err(map_err(map_names::CONFIG))?;
        Ok(config.exe_key)
    }

    /// Sets the kernel's runtime limits (not policy: the generation stays).
    pub fn set_limits(&mut self, limits: &Limits) -> Result<(), KernelError> {
        let mut config = self.maps.config.get(&0, 0).unwrap_or_default();
        config.udp_reply_timeout_ns = u64::try_from(limits.udp_reply_timeout.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        config.events_per_second = limits.events_per_second.max(1);
        self.maps
            .config
            .set(0, config, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    pub fn state(&self) -> &KernelState {
        &self.mirror
    }

    /// Applies a diff all or nothing: on any failure the operations already
    /// written are undone from the mirror's previous values.
    pub fn apply(&mut self, diff: &MapDiff) -> Result<u64, LoaderError> {
        let current = self.generation();
        if diff.from_generation != current {
            return Err(LoaderError::GenerationMismatch {
                expected: diff.from_generation,
                actual: current,
            });
        }
        let mut ops = diff.ops.clone();
        ops.sort_by_key(apply_order);
        validate(&self.mirror, &ops).map_err(|e| LoaderError::InvalidDiff(e.to_string()))?;
        let rules_changed = changes_rules(&self.mirror, diff);
        let mut undo: Vec<MapOp> = Vec::with_capacity(ops.len());
        for op in &ops {
            let key = match op {
                MapOp::Upsert { entry } => entry.key(),
                MapOp::Delete { key } => *key,
            };
            let previous = self.mirror.get(&key);
            if let Err(e) = self.write(op) {
                for back in undo.iter().rev() {
                    if let Err(undo_err) = self.write(back) {
                        tracing::error!(error = %undo_err, "undoing a failed diff failed; the maps may be inconsistent until the next apply");
                    }
                }
                return Err(e);
            }
            undo.push(match previous {
                Some(entry) => MapOp::Upsert { entry },
                None => MapOp::Delete { key },
            });
        }
        self.mirror.apply_ops(&ops);
        let mut config = self.maps.config.get(&0, 0).unwrap_or_default();
        if let Some(v) = diff.unknown_verdict {
            config.unknown_verdict = repr::verdict(v) as u8;
            self.mirror.unknown_verdict = v;
        }
        config.generation = config.generation.wrapping_add(1);
        if rules_changed {
            config.rules_epoch = config.rules_epoch.wrapping_add(1);
        }
        self.maps
            .config
            .set(0, config, 0)
            .map_err(|e| LoaderError::Map {
                map: map_names::CONFIG.into(),
                reason: e.to_string(),
            })?;
        Ok(config.generation as u64)
    }

    fn write(&mut self, op: &MapOp) -> Result<(), LoaderError> {
        let invalid = |e: repr::EncodeError| LoaderError::InvalidDiff(e.to_string());
        let failed = |map: &'static str| {
            move |e: MapError| LoaderError::Map {
                map: map.to_string(),
                reason: e.to_string(),
            }
        };
        let exe_key = self.exe_key;
        let m = &mut self.maps;
        match *op {
            MapOp::Upsert { entry } => match entry {
                Entry::Cgroup { id, value } => m
                    .cgroups
                    .insert(id, repr::cgroup_value(&value).map_err(invalid)?, 0)
                    .map_err(failed(map_names::CGROUPS)),
                Entry::Process { key, class } => m
                    .processes
                    .insert(
                        repr::process_key(&key, exe_key).map_err(invalid)?,
                        repr::process_value(&key, class),
                        0,
                    )
                    .map_err(failed(map_names::PROCESSES)),
                Entry::Dest { key, ruleset } => {
                    let encoded = repr::dest_key(&key).map_err(invalid)?;
                    let value = DestValue { ruleset, _pad: 0 };
                    if repr::dest_is_host(&key) {
                        m.hosts
                            .insert(encoded.data, value, 0)
                            .map_err(failed(map_names::HOSTS))
                    } else {
                        m.dests
                            .insert(&lpm(encoded), value, 0)
                            .map_err(failed(map_names::DESTS))
                    }
                }
                Entry::Port { key, rule_id } => {
                    let encoded = repr::port_key(&key).map_err(invalid)?;
                    let value = PortValue { rule_id, _pad: 0 };
                    if repr::port_is_exact(&key) {
                        m.exact_ports
                            .insert(encoded.data, value, 0)
                            .map_err(failed(map_names::EXACT_PORTS))
                    } else {
                        m.ports
                            .insert(&lpm(encoded), value, 0)
                            .map_err(failed(map_names::PORTS))
                    }
                }
                Entry::Veth { ifindex, cgroup_id } => m
                    .veths
                    .insert(ifindex, VethOwner { cgroup_id }, 0)
                    .map_err(failed(map_names::VETHS)),
            },
            MapOp::Delete { key } => match key {
                EntryKey::Cgroup { id } => {
                    m.cgroups.remove(&id).map_err(failed(map_names::CGROUPS))
                }
                EntryKey::Process { key } => m
                    .processes
                    .remove(&repr::process_key(&key, exe_key).map_err(invalid)?)
                    .map_err(failed(map_names::PROCESSES)),
                EntryKey::Dest { key } => {
                    let encoded = repr::dest_key(&key).map_err(invalid)?;
                    if repr::dest_is_host(&key) {
                        m.hosts
                            .remove(&encoded.data)
                            .map_err(failed(map_names::HOSTS))
                    } else {
                        m.dests
                            .remove(&lpm(encoded))
                            .map_err(failed(map_names::DESTS))
                    }
                }
                EntryKey::Port { key } => {
                    let encoded = repr::port_key(&key).map_err(invalid)?;
                    if repr::port_is_exact(&key) {
                        m.exact_ports
                            .remove(&encoded.data)
                            .map_err(failed(map_names::EXACT_PORTS))
                    } else {
                        m.ports
                            .remove(&lpm(encoded))
                            .map_err(failed(map_names::PORTS))
                    }
                }
                EntryKey::Veth { ifindex } => {
                    m.veths.remove(&ifindex).map_err(failed(map_names::VETHS))
                }
            },
        }
    }

    /// Reads the policy maps back from the kernel.
    fn read_state(&self) -> Result<KernelState, KernelError> {
        let m = &self.maps;
        let mut state = KernelState::default();
        for item in m.cgroups.iter() {
            let (id, value) = item.map_err(map_err(map_names::CGROUPS))?;
            state.upsert(Entry::Cgroup {
                id,
                value: repr::cgroup_entry(&value),
            });
        }
        for item in m.processes.iter() {
            let (key, class) = item.map_err(map_err(map_names::PROCESSES))?;
            match repr::process_key_back(&key, &class) {
                Ok(key) => state.upsert(Entry::Process {
                    key,
                    class: class.class,
                }),
                Err(e) => tracing::warn!(error = %e, "ignoring an undecodable process entry"),
            }
        }
        for item in m.dests.iter() {
            let (key, value) = item.map_err(map_err(map_names::DESTS))?;
            state.upsert(Entry::Dest {
                key: repr::dest_key_back(&unlpm(&key)),
                ruleset: value.ruleset,
            });
        }
        for item in m.hosts.iter() {
            let (data, value) = item.map_err(map_err(map_names::HOSTS))?;
            let key = LpmKey {
                prefix_len: kern::DEST_KEY_FIXED_BITS + 128,
                data,
            };
            state.upsert(Entry::Dest {
                key: repr::dest_key_back(&key),
                ruleset: value.ruleset,
            });
        }
        for item in m.exact_ports.iter() {
            let (key, value) = item.map_err(map_err(map_names::EXACT_PORTS))?;
            let key = LpmKey {
                prefix_len: kern::PORT_KEY_FIXED_BITS + 16,
                data: key,
            };
            state.upsert(Entry::Port {
                key: repr::port_key_back(&key),
                rule_id: value.rule_id,
            });
        }
        for item in m.ports.iter() {
            let (key, value) = item.map_err(map_err(map_names::PORTS))?;
            state.upsert(Entry::Port {
                key: repr::port_key_back(&unlpm(&key)),
                rule_id: value.rule_id,
            });
        }
        for item in m.veths.iter() {
            let (ifindex, owner) = item.map_err(map_err(map_names::VETHS))?;
            state.upsert(Entry::Veth {
                ifindex,
                cgroup_id: owner.cgroup_id,
            });
        }
        let config = m.config.get(&0, 0).unwrap_or_default();
        state.unknown_verdict = repr::verdict_back(config.unknown_verdict);
        Ok(state)
    }

    pub fn counters(&self) -> Result<Counters, KernelError> {
        let m = &self.maps;
        let mut policies = Vec::new();
        for policy_id in 0..kern::MAX_POLICIES {
            let per_cpu = m
                .counters
                .get(&policy_id, 0)
                .map_err(map_err(map_names::COUNTERS))?;
            let mut sum = PolicyCountersDto {
                policy_id,
                ..Default::default()
            };
            for c in per_cpu.iter() {
                sum.allowed += c.allowed;
                sum.denied += c.denied;
                sum.audited += c.audited;
            }
            if sum.allowed + sum.denied + sum.audited > 0 {
                policies.push(sum);
            }
        }
        let dropped = m
            .stats
            .get(&kern::stat::EVENTS_DROPPED, 0)
            .map_err(map_err(map_names::STATS))?
            .iter()
            .sum();
        let stat = |index: u32| -> Result<u64, KernelError> {
            Ok(m.stats
                .get(&index, 0)
                .map_err(map_err(map_names::STATS))?
                .iter()
                .sum())
        };
        Ok(Counters {
            policies,
            events_dropped_kernel: dropped,
            events_dropped_loader: 0,
            events_rate_limited: stat(kern::stat::EVENTS_RATE_LIMITED)?,
            unstamped_sockets: stat(kern::stat::UNSTAMPED_SOCKETS)?,
        })
    }

    /// The path an exe hash stands for, if the kernel saw that exec.
    pub fn exe_path(&self, hash: u64) -> Option<String> {
        let path = self.maps.exe_paths.get(&hash, 0).ok()?;
        let end = path
            .path
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(path.path.len());
        Some(String::from_utf8_lossy(&path.path[..end]).into_owned())
    }
}

/// Whether `diff` changes what an entry already in the maps decides, so
/// the kernel's cached verdicts must be judged again. Adding or removing a
/// container's cgroup does not: a socket's cache also holds the policy id it
/// was decided under, which a new or removed cgroup entry changes. Container
/// churn thus leaves every other socket's cache (and UDP reply allowance)
/// alone.
pub fn changes_rules(current: &KernelState, diff: &MapDiff) -> bool {
    if diff
        .unknown_verdict
        .is_some_and(|v| v != current.unknown_verdict)
    {
        return true;
    }
    diff.ops.iter().any(|op| match op {
        MapOp::Upsert {
            entry: entry @ Entry::Cgroup { .. },
        } => current.get(&entry.key()).is_some_and(|old| old != *entry),
        MapOp::Delete {
            key: EntryKey::Cgroup { .. },
        } => false,
        // Which container a veth belongs to decides no cached verdict.
        MapOp::Upsert {
            entry: Entry::Veth { .. },
        }
        | MapOp::Delete {
            key: EntryKey::Veth { .. },
        } => false,
        _ => true,
    })
}

struct TraceOffsets {
    newtask_pid: u32,
    newtask_clone_flags: u32,
}

impl TraceOffsets {
    fn read() -> Result<TraceOffsets, KernelError> {
        let root = fs::tracefs()?;
        let field = |event: &str, field: &'static str| -> Result<u32, KernelError> {
            let path = root.join("events").join(event).join("format");
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            tracefs::field_offset(&text, field).ok_or(KernelError::TraceFormat { path, field })
        };
        Ok(TraceOffsets {
            newtask_pid: field("task/task_newtask", "pid")?,
            newtask_clone_flags: field("task/task_newtask", "clone_flags")?,
        })
    }
}

/// Where the exec program finds the executed file's identity, from the
/// kernel's BTF. The inode change time moved between kernels: a
/// `timespec64 i_ctime` (6.1), `__i_ctime` (6.6), then `i_ctime_sec` and
/// `i_ctime_nsec` (6.11).
struct ExecOffsets {
    bprm_file: u32,
    bprm_filename: u32,
    file_inode: u32,
    inode_sb: u32,
    inode_ino: u32,
    inode_ctime_sec: u32,
    inode_ctime_nsec: u32,
    sb_dev: u32,
}

impl ExecOffsets {
    fn read(btf: &crate::btf::Btf) -> Result<ExecOffsets, crate::btf::BtfError> {
        let (inode_ctime_sec, inode_ctime_nsec) = if btf.has_member("inode", "i_ctime_sec") {
            (
                btf.member_offset("inode", "i_ctime_sec")?,
                btf.member_offset("inode", "i_ctime_nsec")?,
            )
        } else {
            let ctime = btf
                .member_offset("inode", "__i_ctime")
                .or_else(|_| btf.member_offset("inode", "i_ctime"))?;
            (
                ctime + btf.member_offset("timespec64", "tv_sec")?,
                ctime + btf.member_offset("timespec64", "tv_nsec")?,
            )
        };
        Ok(ExecOffsets {
            bprm_file: btf.member_offset("linux_binprm", "file")?,
            bprm_filename: btf.member_offset("linux_binprm", "filename")?,
            file_inode: btf.member_offset("file", "f_inode")?,
            inode_sb: btf.member_offset("inode", "i_sb")?,
            inode_ino: btf.member_offset("inode", "i_ino")?,
            inode_ctime_sec,
            inode_ctime_nsec,
            sb_dev: btf.member_offset("super_block", "s_dev")?,
        })
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|source| KernelError::Program { name, source })
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), KernelError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?;
    let result = match prog {
        aya::programs::Program::CgroupSkb(p) => p.load(),
        aya::programs::Program::CgroupSock(p) => p.load(),
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        aya::programs::Program::TracePoint(p) => p.load(),
        aya::programs::Program::RawTracePoint(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        _ => return Err(KernelError::MissingProgram(name)),
    };
    result.map_err(|source| KernelError::Program { name, source })
}

fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, KernelError> {
    // Since 5.7 aya attaches with a bpf_link, which the kernel always runs in
    // BPF_F_ALLOW_MULTI mode and which refuses the flag itself; before,
    // it uses BPF_PROG_ATTACH, which needs the flag.
    let mode = if aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 7, 0))
    {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    };
    let err = |source| KernelError::Program { name, source };
    let pin_err = |e: aya::programs::links::LinkError| KernelError::Pin {
        path: PathBuf::from(name),
        reason: e.to_string(),
    };
    match name {
        program_names::EGRESS | program_names::INGRESS => {
            let kind = if name == program_names::EGRESS {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            let prog: &mut CgroupSkb = program_mut(ebpf, name)?;
            let id = prog.attach(cgroup, kind, mode).map_err(err)?;
            prog.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
        program_names::SOCK_CREATE => {
            let prog: &mut CgroupSock = program_mut(ebpf, name)?;
            let id = prog.attach(cgroup, mode).map_err(err)?;
            prog.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
        _ => {
            let prog: &mut CgroupSockAddr = program_mut(ebpf, name)?;
            let id = prog.attach(cgroup, mode).map_err(err)?;
            prog.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
    }
}

fn pin(link: FdLink, path: &Path) -> Result<(), KernelError> {
    if path.exists() {
        release(path)?;
    }
    link.pin(path).map(drop).map_err(|e| KernelError::Pin {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Unpins one link; when this was its last reference the kernel detaches it.
fn release(path: &Path) -> Result<(), KernelError> {
    let link = PinnedLink::from_pin(path).map_err(|e| KernelError::Pin {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    link.unpin().map(drop).map_err(io_err(path))
}

/// Releases every instance directory under `group` but `keep`.
fn release_other_instances(group: &Path, keep: &str) -> Result<(), KernelError> {
    let Ok(instances) = std::fs::read_dir(group) else {
        return Ok(());
    };
    for instance in instances.flatten() {
        if instance.file_name().to_string_lossy() == keep {
            continue;
        }
        let dir = instance.path();
        if let Ok(links) = std::fs::read_dir(&dir) {
            for link in links.flatten() {
                release(&link.path())?;
            }
        }
        std::fs::remove_dir(&dir).map_err(io_err(&dir))?;
    }
    Ok(())
}

/// The model's trie key as aya's.
fn lpm<K: aya::Pod>(k: LpmKey<K>) -> aya::maps::lpm_trie::Key<K> {
    aya::maps::lpm_trie::Key::new(k.prefix_len, k.data)
}

/// Aya's trie key as the model's.
fn unlpm<K: aya::Pod>(k: &aya::maps::lpm_trie::Key<K>) -> LpmKey<K> {
    LpmKey {
        prefix_len: k.prefix_len(),
        data: k.data(),
    }
}

#[cfg(test)]
mod tests {
    use kernel_model::state::{CgroupEntry, PortPrefix, Verdict};

    use super::*;

    fn cgroup(id: u64, policy_id: u32) -> Entry {
        Entry::Cgroup {
            id,
            value: CgroupEntry {
                policy_id,
                audit: false,
                unrestricted: false,
                forwarded_dns: false,
            },
        }
    }

    fn diff(ops: Vec<MapOp>, unknown_verdict: Option<Verdict>) -> MapDiff {
        MapDiff {
            from_generation: 0,
            unknown_verdict,
            ops,
        }
    }

    fn state_with(entries: &[Entry]) -> KernelState {
        let mut state = KernelState::default();
        for e in entries {
            state.upsert(*e);
        }
        state
    }

    #[test]
    fn container_churn_keeps_the_rules_epoch() {
        let current = state_with(&[cgroup(1, 7)]);
        let start = MapOp::Upsert {
            entry: cgroup(2, 7),
        };
        let stop = MapOp::Delete {
            key: EntryKey::Cgroup { id: 1 },
        };
        assert!(!changes_rules(&current, &diff(vec![start, stop], None)));
        let same_again = MapOp::Upsert {
            entry: cgroup(1, 7),
        };
        assert!(!changes_rules(&current, &diff(vec![same_again], None)));
        // A container's veth comes and goes with it.
        let veth = MapOp::Upsert {
            entry: Entry::Veth {
                ifindex: 9,
                cgroup_id: 2,
            },
        };
        let veth_gone = MapOp::Delete {
            key: EntryKey::Veth { ifindex: 9 },
        };
        assert!(!changes_rules(&current, &diff(vec![veth, veth_gone], None)));
    }

    #[test]
    fn a_changed_rule_cgroup_or_unknown_verdict_bumps_it() {
        let current = state_with(&[cgroup(1, 7)]);
        let moved = MapOp::Upsert {
            entry: cgroup(1, 8),
        };
        assert!(changes_rules(&current, &diff(vec![moved], None)));
        let rule = MapOp::Upsert {
            entry: Entry::Port {
                key: PortPrefix {
                    ruleset: 1,
                    proto: 6,
                    port: 443,
                    port_bits: 16,
                },
                rule_id: 3,
            },
        };
        assert!(changes_rules(&current, &diff(vec![rule], None)));
        assert!(changes_rules(&current, &diff(vec![], Some(Verdict::Audit))));
        assert!(!changes_rules(
            &current,
            &diff(vec![], Some(current.unknown_verdict))
        ));
    }
}
