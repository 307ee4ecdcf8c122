//! The programs contain is compared with: the floor (`baseline_pass`) and
//! the thesis-style linear scan (`thesis_scan`), from the baselines object
//! (crates/contain-ebpf/src/baselines.rs); and `established_via`, which
//! lets a test run show an established flow's packet. Each instance is its
//! own copy of the object, so each thesis has its own entry array.

use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{
    maps::Array,
    programs::{cgroup_skb::CgroupSkbAttachType, CgroupAttachMode, CgroupSkb},
    Ebpf, EbpfLoader,
};

use crate::rules::{thesis_entries, Rule, ThesisRule};

/// The baselines object, built by this crate's build script.
static BASELINES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baselines"));

/// Loads the object and its program `name`; `sockets` is the pin of
/// contain's socket map, for the programs that use it.
fn load(name: &str, sockets: Option<&Path>) -> Result<(Ebpf, RawFd)> {
    let mut loader = EbpfLoader::new();
    if let Some(pin) = sockets {
        loader.map_pin_path(contain_common::map_names::SOCKETS, pin);
    }
    let mut ebpf = loader
        .load(BASELINES)
        .context("loading the baselines eBPF object")?;
    let prog: &mut CgroupSkb = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the baselines object"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("loading (verifying) {name}"))?;
    let fd = prog.fd()?.as_fd().as_raw_fd();
    Ok((ebpf, fd))
}

/// A program that returns "pass" and nothing else.
pub struct Floor {
    _ebpf: Ebpf,
    pub fd: RawFd,
}

impl Floor {
    pub fn load() -> Result<Floor> {
        Floor::load_program("baseline_pass")
    }

    /// `baseline_storage`: the floor of a verdict kept with the socket
    /// (one socket-storage lookup).
    pub fn storage_lookup() -> Result<Floor> {
        Floor::load_program("baseline_storage")
    }

    fn load_program(name: &str) -> Result<Floor> {
        let (ebpf, fd) = load(name, None)?;
        Ok(Floor { _ebpf: ebpf, fd })
    }
}

/// `established_via` on contain's socket map: a test run of it hands each
/// repetition of its packet, on a socket that has storage, to the program
/// set with [`EstablishedVia::hand_to`].
pub struct EstablishedVia {
    ebpf: Ebpf,
    pub fd: RawFd,
    /// `baseline_pass` of this instance: the floor of the path.
    pub pass_fd: RawFd,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

impl EstablishedVia {
    /// `sockets`: where the loader pinned contain's socket map. It must be
    /// there: a missing pin would be made anew, a map of this instance's.
    pub fn load(sockets: &Path) -> Result<EstablishedVia> {
        if !sockets.exists() {
            anyhow::bail!(
                "contain's socket map is not pinned at {}",
                sockets.display()
            );
        }
        let (mut ebpf, fd) = load("established_via", Some(sockets))?;
        let pass: &mut CgroupSkb = ebpf
            .program_mut("baseline_pass")
            .context("program baseline_pass missing from the baselines object")?
            .try_into()?;
        pass.load().context("loading (verifying) baseline_pass")?;
        let pass_fd = pass.fd()?.as_fd().as_raw_fd();
        Ok(EstablishedVia { ebpf, fd, pass_fd })
    }

    /// Makes `prog` the program `established_via` hands packets to.
    pub fn hand_to(&self, prog: RawFd) -> Result<()> {
        let map = self
            .ebpf
            .map("ESTABLISHED_NEXT")
            .context("map ESTABLISHED_NEXT missing from the baselines object")?;
        let aya::maps::Map::ProgramArray(data) = map else {
            anyhow::bail!("ESTABLISHED_NEXT is not a program array");
        };
        let key = 0u32;
        let value = prog as u32;
        let mut attr = [0u64; 16];
        attr[0] = data.fd().as_fd().as_raw_fd() as u32 as u64;
        attr[1] = &key as *const u32 as u64;
        attr[2] = &value as *const u32 as u64;
        crate::sys::bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
            .context("setting ESTABLISHED_NEXT (BPF_MAP_UPDATE_ELEM)")?;
        Ok(())
    }
}

/// One thesis-style program with its own list.
pub struct Thesis {
    ebpf: Ebpf,
    program: &'static str,
    pub fd: RawFd,
}

/// Entries the bounded-loop variant scans at most.
pub const BOUNDED_MAX: usize = 512;

impl Thesis {
    /// `bounded`: the plain bounded loop (at most [`BOUNDED_MAX`] entries)
    /// instead of `bpf_loop`.
    pub fn load(rules: &[Rule], bounded: bool) -> Result<Thesis> {
        let program = if bounded {
            "thesis_scan_bounded"
        } else {
            "thesis_scan"
        };
        if bounded && rules.len() > BOUNDED_MAX {
            anyhow::bail!("{program} scans at most {BOUNDED_MAX} entries");
        }
        let (mut ebpf, fd) = load(program, None)?;
        let entries = thesis_entries(rules);
        {
            let mut array: Array<_, ThesisRule> =
                Array::try_from(ebpf.map_mut("THESIS_RULES").context("THESIS_RULES")?)?;
            for (i, e) in entries.iter().enumerate() {
                array.set(i as u32, *e, 0).context("filling THESIS_RULES")?;
            }
        }
        let mut len: Array<_, u32> =
            Array::try_from(ebpf.map_mut("THESIS_LEN").context("THESIS_LEN")?)?;
        len.set(0, entries.len() as u32, 0)?;
        Ok(Thesis { ebpf, program, fd })
    }

    /// Attaches the program to `cgroup`'s egress (a bpf_link, released when
    /// this instance is dropped).
    pub fn attach(&mut self, cgroup: &Path) -> Result<()> {
        let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let prog: &mut CgroupSkb = self
            .ebpf
            .program_mut(self.program)
            .context("thesis program")?
            .try_into()?;
        prog.attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {} to {}", self.program, cgroup.display()))?;
        Ok(())
    }
}
