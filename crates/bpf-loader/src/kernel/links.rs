//! Links: the tracepoints, the cgroup programs and the veth backstop,
//! each pinned under an instance directory so a new loader attaches its own
//! before it releases a predecessor's (no gap), and adopts what an old
//! loader left.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSock,
        CgroupSockAddr, CgroupSockopt, RawTracePoint, SchedClassifier, TcAttachType, TracePoint,
    },
    Ebpf,
};
use contain_common::{map_names, program_names};
use proto::loader::Attachment;

use super::{io_err, map_err, object::program_mut, pin_err, program_err, Kernel, KernelError};
use crate::{fs, veths};

impl Kernel {
    /// Attaches the exec/newtask/exit tracepoints, pinning their links, then
    /// lets go of a predecessor's.
    pub fn attach_tracepoints(&mut self) -> Result<(), KernelError> {
        let group = self.links_dir().join("tracepoints");
        let dir = group.join(&self.instance);
        crate::fs::private_dir(&dir)?;
        for &(name, category, tracepoint) in program_names::TRACEPOINTS {
            let path = dir.join(name);
            let prog: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            let id = prog
                .attach(category, tracepoint)
                .map_err(program_err(name))?;
            let link = prog.take_link(id).map_err(program_err(name))?;
            pin(link.try_into().map_err(pin_err(&path))?, &path)?;
        }
        for &(name, tracepoint) in program_names::RAW_TRACEPOINTS {
            let prog: &mut RawTracePoint = program_mut(&mut self.ebpf, name)?;
            let id = prog.attach(tracepoint).map_err(program_err(name))?;
            let link = prog.take_link(id).map_err(program_err(name))?;
            pin(link.into(), &dir.join(name))?;
        }
        release_other_instances(&group, &self.instance)
    }

    /// Attaches every cgroup program to `cgroup` with BPF_F_ALLOW_MULTI and
    /// pins the links; a predecessor's links on the same cgroup are released
    /// only after the new ones are in place, so there is no gap.
    pub fn attach(&mut self, cgroup: &str) -> Result<Attachment, KernelError> {
        let CgroupLinks {
            path,
            relative,
            group,
        } = self.cgroup_links(cgroup)?;
        let cgroup_id = fs::cgroup_id(&path)?;
        let dir = group.join(&self.instance);
        if self.attachments.contains_key(&relative) && dir.exists() {
            return Ok(self.attachments[&relative].clone());
        }
        crate::fs::private_dir(&dir)?;
        let cgroup_dir = File::open(&path).map_err(io_err(&path))?;
        for &name in program_names::CGROUP {
            let path = dir.join(name);
            if name == program_names::SETSOCKOPT {
                attach_setsockopt_pinned(&mut self.ebpf, &cgroup_dir, &path)?;
            } else {
                let link = attach_cgroup_program(&mut self.ebpf, name, &cgroup_dir)?;
                pin(link, &path)?;
            }
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

    /// Takes contain's cgroup programs off `cgroup` (every loader's pinned
    /// links there). The service never does (a cgroup's programs stay until
    /// it is gone); the benchmarks measure what the programs cost against
    /// none within one connection. The backstop stops taking the cgroup's
    /// sockets as judged before their programs go, so nothing passes
    /// unjudged in between, or if a release fails.
    #[cfg(feature = "baselines")]
    pub fn detach(&mut self, cgroup: &str) -> Result<(), KernelError> {
        let links = self.cgroup_links(cgroup)?;
        let Some(attachment) = self.attachments.get(&links.relative) else {
            return Ok(());
        };
        self.maps
            .attached_cgroups
            .remove(&attachment.cgroup_id)
            .map_err(map_err(map_names::ATTACHED_CGROUPS))?;
        release_other_instances(&links.group, "")?;
        let _ = std::fs::remove_dir(&links.group);
        self.attachments.remove(&links.relative);
        Ok(())
    }

    fn cgroup_links(&self, cgroup: &str) -> Result<CgroupLinks, KernelError> {
        let path = fs::resolve_cgroup(&self.cgroup_root, cgroup)?;
        let relative = path
            .strip_prefix(&self.cgroup_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let group = self
            .links_dir()
            .join("cgroups")
            .join(fs::pin_name_for(&relative));
        Ok(CgroupLinks {
            path,
            relative,
            group,
        })
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
        let attached: BTreeSet<u64> = self.attachments.values().map(|a| a.cgroup_id).collect();
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
        if self.veth_on_record(ifindex, name) {
            return Ok(false);
        }
        let links = veths::attach(&mut self.ebpf, name)?;
        if self.pin_veth_links(ifindex, links)? {
            let group = veths::pin_group(&self.links_dir(), ifindex);
            release_other_instances(&group, &self.instance)?;
        }
        self.veths.insert(ifindex, name.to_owned());
        Ok(true)
    }

    /// Attaches the backstop's programs again to the `hooks` of recorded
    /// veth `ifindex` where the kernel no longer has them (only those: the
    /// kernel takes a program once per hook). A tcx link is pinned where
    /// the lost one was.
    pub fn reattach_veth(
        &mut self,
        ifindex: u32,
        name: &str,
        hooks: &[TcAttachType],
    ) -> Result<(), KernelError> {
        let links = veths::attach_hooks(&mut self.ebpf, name, hooks)?;
        self.pin_veth_links(ifindex, links).map(drop)
    }

    /// Pins veth `ifindex`'s tcx `links` under this loader's instance
    /// directory; whether there were any (clsact filters need no pin).
    fn pin_veth_links(
        &self,
        ifindex: u32,
        links: Vec<(&str, FdLink)>,
    ) -> Result<bool, KernelError> {
        if links.is_empty() {
            return Ok(false);
        }
        let dir = veths::pin_group(&self.links_dir(), ifindex).join(&self.instance);
        crate::fs::private_dir(&dir)?;
        for (program, link) in links {
            pin(link, &dir.join(program))?;
        }
        Ok(true)
    }

    /// Whether the backstop is on record on veth `ifindex` under `name`.
    pub fn veth_on_record(&self, ifindex: u32, name: &str) -> bool {
        self.veths.get(&ifindex).is_some_and(|n| n == name)
    }

    /// Marks veth `ifindex` as one that appeared while the loader ran: its
    /// frames of no socket are held to the unknown-container verdict for
    /// [`Limits::new_veth_hold`](super::Limits) while no container owns it.
    /// Marked before the backstop is attached, so that its first frame
    /// finds the mark.
    pub fn mark_new_veth(&mut self, ifindex: u32) {
        if self.new_veth_hold.is_zero() {
            return;
        }
        let Some(now) = monotonic_ns() else {
            tracing::warn!(ifindex, "cannot read the clock: the new veth's frames of no socket are not held until policyd names its container");
            return;
        };
        let hold = u64::try_from(self.new_veth_hold.as_nanos()).unwrap_or(u64::MAX);
        let until = now.saturating_add(hold);
        if self.maps.new_veths.insert(ifindex, until, 0).is_ok() {
            return;
        }
        // Full: holds that ended make room (a veth's own goes with it).
        let ended: Vec<u32> = self
            .maps
            .new_veths
            .iter()
            .flatten()
            .filter(|&(_, until)| until <= now)
            .map(|(ifindex, _)| ifindex)
            .collect();
        for ended in ended {
            let _ = self.maps.new_veths.remove(&ended);
        }
        if let Err(e) = self.maps.new_veths.insert(ifindex, until, 0) {
            tracing::warn!(ifindex, error = %e, "cannot mark the veth as new: its frames of no socket are not held until policyd names its container");
        }
    }

    /// A veth left this namespace (deleted, or moved into a container's):
    /// its pinned link, if any, is released, and its hold ends.
    pub fn veth_gone(&mut self, ifindex: u32) {
        self.veths.remove(&ifindex);
        // Absent already for most: only veths that appeared are marked.
        let _ = self.maps.new_veths.remove(&ifindex);
        let group = veths::pin_group(&self.links_dir(), ifindex);
        if group.exists() {
            if let Err(e) = release_other_instances(&group, "") {
                tracing::warn!(ifindex, error = %e, "cannot release a gone veth's link");
            }
            let _ = std::fs::remove_dir(&group);
        }
    }

    /// Forgets veths that no longer exist (a lost delete event) and
    /// releases their pinned links (a predecessor's too, for veths deleted
    /// while no loader ran).
    pub fn release_gone_veths(&mut self, present: &[u32]) {
        let pinned = std::fs::read_dir(self.links_dir().join("veths"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok());
        let gone: BTreeSet<u32> = (self.veths.keys().copied().chain(pinned))
            .filter(|ifindex| !present.contains(ifindex))
            .collect();
        for ifindex in gone {
            self.veth_gone(ifindex);
        }
    }

    /// The host-side veths the backstop is attached to, by this loader's
    /// record (what the kernel runs there: [`veths::backstop_first_on`]).
    pub fn attached_veths(&self) -> &BTreeMap<u32, String> {
        &self.veths
    }

    /// The kernel's ids of the backstop's programs, with the hook each
    /// belongs on.
    pub fn backstop_program_ids(&self) -> Result<Vec<(TcAttachType, u32)>, KernelError> {
        veths::PROGRAMS
            .iter()
            .map(|&(name, attach_type)| {
                let prog: &SchedClassifier = self
                    .ebpf
                    .program(name)
                    .ok_or(KernelError::MissingProgram(name))?
                    .try_into()
                    .map_err(program_err(name))?;
                Ok((attach_type, prog.info().map_err(program_err(name))?.id()))
            })
            .collect()
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.attachments.values().cloned().collect()
    }
}

/// A cgroup as the links of its programs are kept: resolved, relative to
/// the cgroup root (the attachments' key), and where the links are pinned.
struct CgroupLinks {
    path: PathBuf,
    relative: String,
    group: PathBuf,
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
    let err = program_err(name);
    let pin_err = pin_err(Path::new(name));
    match name {
        program_names::EGRESS | program_names::INGRESS => {
            let kind = if name == program_names::EGRESS {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            let prog: &mut CgroupSkb = program_mut(ebpf, name)?;
            let id = prog.attach(cgroup, kind, mode).map_err(&err)?;
            prog.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
        program_names::SOCK_CREATE => {
            let prog: &mut CgroupSock = program_mut(ebpf, name)?;
            let id = prog.attach(cgroup, mode).map_err(&err)?;
            prog.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
        _ => {
            let prog: &mut CgroupSockAddr = program_mut(ebpf, name)?;
            let id = prog.attach(cgroup, mode).map_err(&err)?;
            prog.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
    }
}

/// Attaches `contain_setsockopt` to `cgroup` with a bpf_link pinned at
/// `path`. aya 0.14 gives no `FdLink` of a sockopt program's link (nothing
/// to pin), so the link is made and pinned with the two bpf(2) calls
/// themselves; the pin then behaves as every other link's.
fn attach_setsockopt_pinned(
    ebpf: &mut Ebpf,
    cgroup: &File,
    path: &Path,
) -> Result<(), KernelError> {
    use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    let name = program_names::SETSOCKOPT;
    let prog: &mut CgroupSockopt = program_mut(ebpf, name)?;
    let prog_fd = prog.fd().map_err(program_err(name))?.as_fd().as_raw_fd();
    let failed = |call: &str| pin_err(path)(format!("{call}: {}", std::io::Error::last_os_error()));
    // SAFETY: a plain C union, valid zeroed (what the kernel wants of every
    // field a call does not use).
    let mut attr = unsafe { std::mem::zeroed::<bpf_attr>() };
    attr.link_create.__bindgen_anon_1.prog_fd = prog_fd as u32;
    attr.link_create.__bindgen_anon_2.target_fd = cgroup.as_raw_fd() as u32;
    attr.link_create.attach_type = bpf_attach_type::BPF_CGROUP_SETSOCKOPT as u32;
    // SAFETY: a BPF_LINK_CREATE attribute of the size passed.
    let link = unsafe { bpf_syscall(bpf_cmd::BPF_LINK_CREATE, &mut attr) };
    if link < 0 {
        return Err(failed("BPF_LINK_CREATE"));
    }
    // SAFETY: the kernel returned a new file descriptor, owned from here.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
    if path.exists() {
        release(path)?;
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| pin_err(path)("the path holds a NUL byte"))?;
    // SAFETY: as above.
    let mut attr = unsafe { std::mem::zeroed::<bpf_attr>() };
    attr.__bindgen_anon_4.pathname = c_path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = link.as_raw_fd() as u32;
    // SAFETY: a BPF_OBJ_PIN attribute of the size passed; `pathname` points
    // at a C string that outlives the call.
    if unsafe { bpf_syscall(bpf_cmd::BPF_OBJ_PIN, &mut attr) } < 0 {
        return Err(failed("BPF_OBJ_PIN"));
    }
    // The pin holds the link now: closing `link` leaves it attached.
    Ok(())
}

/// bpf(2) with `attr`, for the commands aya does not wrap the way the
/// loader needs (a sockopt link, a cheap program query).
///
/// # Safety
/// `attr` must be a valid attribute for `cmd`, its pointers valid for the
/// call.
pub(crate) unsafe fn bpf_syscall(
    cmd: aya_obj::generated::bpf_cmd,
    attr: &mut aya_obj::generated::bpf_attr,
) -> i64 {
    // SAFETY: per the caller's contract.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<aya_obj::generated::bpf_attr>(),
        )
    }
}

/// The ids of the programs attached to `target` (a cgroup's fd, or a
/// device's ifindex for a tcx hook: the same field) at `attach_type`, in
/// the kernel's order: `BPF_PROG_QUERY`, without opening any program.
pub(crate) fn query_program_ids(
    target: u32,
    attach_type: aya_obj::generated::bpf_attach_type,
) -> std::io::Result<Vec<u32>> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    let mut ids = vec![0u32; 64];
    // SAFETY: a plain C union, valid zeroed (what the kernel wants of every
    // field this call does not use).
    let mut attr = unsafe { std::mem::zeroed::<bpf_attr>() };
    attr.query.__bindgen_anon_1.target_ifindex = target;
    attr.query.attach_type = attach_type as u32;
    attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    // SAFETY: a BPF_PROG_QUERY attribute; `prog_ids` points at `prog_cnt`
    // u32s that outlive the call, and the kernel writes at most that many.
    let ret = unsafe { bpf_syscall(bpf_cmd::BPF_PROG_QUERY, &mut attr) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote the count back.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
    ids.truncate(count.min(ids.len()));
    Ok(ids)
}

fn pin(link: FdLink, path: &Path) -> Result<(), KernelError> {
    if path.exists() {
        release(path)?;
    }
    link.pin(path).map(drop).map_err(pin_err(path))
}

/// Unpins one link. The pin is its last reference (a loader holds none of
/// its own once it has pinned a link), so the kernel detaches it once
/// bpffs lets go of it, moments later.
fn release(path: &Path) -> Result<(), KernelError> {
    std::fs::remove_file(path).map_err(io_err(path))
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

/// `CLOCK_MONOTONIC` in nanoseconds: `bpf_ktime_get_ns`'s clock.
fn monotonic_ns() -> Option<u64> {
    crate::events::clock_ns(nix::time::ClockId::CLOCK_MONOTONIC).map(|ns| ns as u64)
}
