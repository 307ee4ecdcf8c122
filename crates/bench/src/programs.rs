//! The programs contain is compared with: the floor (`baseline_pass`) and
//! the thesis-style linear scan (`thesis_scan`), from the baselines object
//! (crates/contain-ebpf/src/baselines.rs). Each thesis instance is its own
//! copy of the object, so it has its own entry array.

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

fn load(name: &str) -> Result<(Ebpf, RawFd)> {
    let mut ebpf = EbpfLoader::new()
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
        let (ebpf, fd) = load(name)?;
        Ok(Floor { _ebpf: ebpf, fd })
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
        let (mut ebpf, fd) = load(program)?;
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
