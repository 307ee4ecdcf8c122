//! Loading the eBPF object: maps pinned (or re-opened from their pins) under
//! one bpffs directory, every program loaded, the config map's per-boot
//! exe key and runtime limits.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{MapData, MapError, RingBuf},
    Ebpf, EbpfLoader,
};
use contain_common::{map_names, program_names};
use kernel_model::{repr, state::KernelState};

use super::{
    io_err, map_err,
    offsets::{ExecOffsets, TraceOffsets, VethOffsets},
    program_err, Kernel, KernelError, Limits, PolicyMaps,
};
use crate::{fs, veths};

/// The eBPF object build.rs built from crates/contain-ebpf (its `contain`
/// binary).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/contain"));

/// The ring buffers the programs report on.
pub struct EventRings {
    /// Deny and audit events, revoked flows' excepted.
    pub events: RingBuf<MapData>,
    /// Revoked flows' events, whose sockets the loader aborts: on a ring of
    /// their own, which a flood of denials cannot fill.
    pub revoked_flows: RingBuf<MapData>,
}

/// Bumped when a map's key or value layout changes: a loader with another
/// layout starts on fresh maps instead of misreading old ones.
const MAP_LAYOUT_VERSION: u32 = 6;

impl Kernel {
    /// Where map `name` is pinned: the bench loads its programs against
    /// the loader's own maps.
    #[cfg(feature = "baselines")]
    pub fn map_pin(&self, name: &str) -> std::path::PathBuf {
        self.pin_dir
            .join(format!("maps-v{MAP_LAYOUT_VERSION}"))
            .join(name)
    }

    /// Loads the object with every map pinned (or re-opened from its pin)
    /// under `pin_dir`, and loads every program. Returns the event ring
    /// buffers separately: each is drained on a task of its own.
    pub fn load(pin_dir: &Path) -> Result<(Kernel, EventRings), KernelError> {
        let bpffs_root = pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
        fs::ensure_mounted("bpf", bpffs_root)?;
        let maps_dir = pin_dir.join(format!("maps-v{MAP_LAYOUT_VERSION}"));
        fs::private_dir(pin_dir)?;
        fs::private_tree(pin_dir)?;
        fs::private_dir(&maps_dir)?;
        let cgroup_root = fs::cgroup2_mount()?;
        let offsets = TraceOffsets::read()?;
        let btf = crate::btf::Btf::from_sys_fs(&["veth"])?;
        let exec = ExecOffsets::read(&btf)?;
        let veth = VethOffsets::read(&btf)?;
        drop(btf);
        if veth.veth_peer_from_btf {
            tracing::info!(offset = veth.veth_peer, "veth_priv.peer read from BTF");
        } else {
            tracing::info!(
                offset = veth.veth_peer,
                "struct veth_priv is in no BTF (veth not loaded yet, or built without BTF): peer taken as its first member"
            );
        }

        let globals = [
            ("BPRM_FILE_OFFSET", exec.bprm_file),
            ("BPRM_FILENAME_OFFSET", exec.bprm_filename),
            ("FILE_INODE_OFFSET", exec.file_inode),
            ("INODE_SB_OFFSET", exec.inode_sb),
            ("INODE_INO_OFFSET", exec.inode_ino),
            ("INODE_CTIME_SEC_OFFSET", exec.inode_ctime_sec),
            ("INODE_CTIME_NSEC_OFFSET", exec.inode_ctime_nsec),
            ("SB_DEV_OFFSET", exec.sb_dev),
            ("SKB_IP_SUMMED_BIT", veth.skb_ip_summed_bit),
            ("SKB_DEV_OFFSET", veth.skb_dev),
            ("VETH_PEER_OFFSET", veth.veth_peer),
            ("NETDEV_DEV_ADDR_OFFSET", veth.dev_addr),
            ("NETDEV_DEV_ADDR_IS_POINTER", veth.dev_addr_is_pointer),
            ("NETDEV_TYPE_OFFSET", veth.dev_type),
            ("SKB_CB_OFFSET", veth.skb_cb),
            ("IPCB_FRAG_MAX_SIZE_OFFSET", veth.ipcb_frag_max_size),
            ("IP6CB_FRAG_MAX_SIZE_OFFSET", veth.ip6cb_frag_max_size),
            ("NEWTASK_PID_OFFSET", offsets.newtask_pid),
            ("NEWTASK_CLONE_FLAGS_OFFSET", offsets.newtask_clone_flags),
        ];
        let mut loader = EbpfLoader::new();
        for &name in map_names::ALL {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader.load(OBJECT)?;

        let programs = (program_names::CGROUP.iter().copied())
            .chain(program_names::TRACEPOINTS.iter().map(|&(name, _, _)| name))
            .chain(program_names::RAW_TRACEPOINTS.iter().map(|&(name, _)| name))
            .chain(veths::PROGRAMS.map(|(name, _)| name));
        for name in programs {
            load_program(&mut ebpf, name)?;
        }
        // This object loads here: an older layout's maps, and maps an
        // earlier object had beside this one's, are not needed for a way
        // back.
        unpin_other_layouts(pin_dir, &maps_dir);
        unpin_retired_maps(&maps_dir);

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
            refused_sockopts: take(&mut ebpf, map_names::REFUSED_SOCKOPTS)?,
            exe_paths: take(&mut ebpf, map_names::EXE_PATHS)?,
            veths: take(&mut ebpf, map_names::VETHS)?,
            veth_sources: take(&mut ebpf, map_names::VETH_SOURCES)?,
            attached_cgroups: take(&mut ebpf, map_names::ATTACHED_CGROUPS)?,
            new_veths: take(&mut ebpf, map_names::NEW_VETHS)?,
        };
        let rings = EventRings {
            events: take(&mut ebpf, map_names::EVENTS)?,
            revoked_flows: take(&mut ebpf, map_names::REVOKED_FLOWS)?,
        };
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
            new_veth_hold: std::time::Duration::from_secs(
                contain_common::DEFAULT_NEW_VETH_HOLD_SECS,
            ),
        };
        kernel.exe_key = kernel.ensure_exe_key()?;
        kernel.mirror = kernel.read_state()?;
        // Maps an older loader pinned have no flag yet: without it the
        // programs would give every process the container-wide rules.
        let process_classes = repr::process_classes(&kernel.mirror);
        kernel.update_config(|c| {
            c.process_classes = process_classes;
            // A predecessor killed between its last map write and the
            // closing epoch bump left the maps ahead of the epochs: a
            // verdict cached under the rules it removed would stand for
            // good. Every flow is judged again instead.
            c.rules_epoch = c.rules_epoch.wrapping_add(1);
            c.cgroup_epoch = c.cgroup_epoch.wrapping_add(1);
        })?;
        Ok((kernel, rings))
    }
    /// The fd of a loaded program, for BPF_PROG_TEST_RUN.
    pub fn program_fd(&self, name: &str) -> Option<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        Some(self.ebpf.program(name)?.fd().ok()?.as_fd().as_raw_fd())
    }
    /// The key of the kernel's exe ids: drawn from the kernel's random pool
    /// the first time the maps are used (so once per boot, as the maps live
    /// in bpffs), kept in the pinned config after that.
    fn ensure_exe_key(&mut self) -> Result<[u64; 2], KernelError> {
        let config = self
            .maps
            .config
            .get(&0, 0)
            .map_err(map_err(map_names::CONFIG))?;
        if config.exe_key != [0, 0] {
            return Ok(config.exe_key);
        }
        let mut bytes = [0u8; 16];
        while bytes == [0u8; 16] {
            let urandom = Path::new("/dev/urandom");
            File::open(urandom)
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(io_err(urandom))?;
        }
        let key = u128::from_le_bytes(bytes);
        let config = self.update_config(|c| c.exe_key = [key as u64, (key >> 64) as u64])?;
        Ok(config.exe_key)
    }

    /// Sets the kernel's runtime limits (not policy: the generation stays).
    pub fn set_limits(&mut self, limits: &Limits) -> Result<(), KernelError> {
        self.update_config(|config| {
            config.udp_reply_timeout_ns = u64::try_from(limits.udp_reply_timeout.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            config.events_per_second = limits.events_per_second.max(1);
        })?;
        self.new_veth_hold = limits.new_veth_hold;
        Ok(())
    }
}

/// Removes the pins of maps of an earlier layout (an upgrade that changed
/// one): nothing reads them again. Programs still attached from the earlier
/// loader keep their maps until this loader replaces them; a failure only
/// leaves the pins (and their memory) until the next boot.
fn unpin_other_layouts(pin_dir: &Path, current: &Path) {
    for entry in std::fs::read_dir(pin_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with("maps-v")) && path != current {
            let removed = std::fs::remove_dir_all(&path);
            log_unpin(removed, &path, "the maps of an earlier layout");
        }
    }
}

/// Removes the pins of maps this object no longer has (an upgrade that
/// replaced one without changing the others' layout, as `EVENT_RATES`
/// replaced `EVENT_BUDGETS`), as [`unpin_other_layouts`] does whole
/// layouts.
fn unpin_retired_maps(maps_dir: &Path) {
    for entry in std::fs::read_dir(maps_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| map_names::ALL.contains(&n)) {
            let path = entry.path();
            let removed = std::fs::remove_file(&path);
            log_unpin(removed, &path, "a map this loader no longer has");
        }
    }
}

fn log_unpin(removed: std::io::Result<()>, path: &Path, what: &str) {
    match removed {
        Ok(()) => tracing::info!(path = %path.display(), "unpinned {what}"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot unpin {what}"),
    }
}

pub(crate) fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?;
    prog.try_into().map_err(program_err(name))
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), KernelError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?;
    let result = match prog {
        aya::programs::Program::CgroupSkb(p) => p.load(),
        aya::programs::Program::CgroupSock(p) => p.load(),
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        aya::programs::Program::CgroupSockopt(p) => p.load(),
        aya::programs::Program::TracePoint(p) => p.load(),
        aya::programs::Program::RawTracePoint(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        _ => return Err(KernelError::MissingProgram(name)),
    };
    result.map_err(program_err(name))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}
