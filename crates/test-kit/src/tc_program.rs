//! A two-instruction tc program (`r0 = VERDICT; exit`), loaded by a raw
//! bpf(2) call and attached with tcx (kernels 6.6 and later) to a device:
//! the bench's floor of a tc hook next to the veth backstop (it returns
//! TC_ACT_UNSPEC, "no opinion", what the backstop returns for a frame it
//! passes), and the tests' program that runs before the backstop and
//! accepts everything (TCX_PASS), which `policyd status` must notice.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::{Error, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// `BPF_F_BEFORE`: with no relative program, in front of every other.
const BPF_F_BEFORE: u32 = 1 << 3;

/// What the program returns for every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// TC_ACT_UNSPEC (TCX_NEXT): no opinion, the next program decides.
    NoOpinion = -1,
    /// TCX_PASS: accepted, and no program after it runs.
    Accept = 0,
}

/// Where on the hook the program goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// After the programs already there.
    Last,
    /// Before every program already there.
    First,
}

/// `struct bpf_insn`.
#[repr(C)]
struct Insn {
    code: u8,
    /// dst_reg (low nibble), src_reg (high nibble).
    regs: u8,
    off: i16,
    imm: i32,
}

fn program(verdict: Verdict) -> [Insn; 2] {
    [
        Insn {
            code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
            regs: 0,
            off: 0,
            imm: verdict as i32,
        },
        Insn {
            code: 0x95, // BPF_JMP | BPF_EXIT
            regs: 0,
            off: 0,
            imm: 0,
        },
    ]
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE with the `tcx` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a valid bpf_attr prefix of the size passed, and every
    // pointer in it outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel returned, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The loaded program and its attachments (detached when dropped).
pub struct TcProgram {
    prog: OwnedFd,
    links: Vec<OwnedFd>,
}

impl Verdict {
    /// The kernel's name of the program that returns this verdict.
    pub fn program_name(self) -> &'static str {
        match self {
            Verdict::NoOpinion => "ckit_tc_unspec",
            Verdict::Accept => "ckit_tc_accept",
        }
    }
}

impl TcProgram {
    pub fn load(verdict: Verdict) -> Result<TcProgram> {
        let license = b"GPL\0";
        let mut name = [0u8; 16];
        let label = verdict.program_name().as_bytes();
        name[..label.len()].copy_from_slice(label);
        let insns = program(verdict);
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..ProgLoadAttr::default()
        };
        let prog = bpf(BPF_PROG_LOAD, &mut attr)
            .map_err(|e| Error::Setup(format!("loading a two-instruction tc program: {e}")))?;
        Ok(TcProgram {
            prog,
            links: Vec::new(),
        })
    }

    /// Attaches to tc ingress and egress of `ifindex` in the calling
    /// thread's network namespace (tcx links, as bpf-loader makes for the
    /// backstop).
    pub fn attach(&mut self, ifindex: u32, placement: Placement) -> Result<()> {
        for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
            let mut attr = LinkCreateAttr {
                prog_fd: self.prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type,
                flags: match placement {
                    Placement::Last => 0,
                    Placement::First => BPF_F_BEFORE,
                },
                ..LinkCreateAttr::default()
            };
            let link = bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| {
                Error::Setup(format!("attaching a tc program to ifindex {ifindex}: {e}"))
            })?;
            self.links.push(link);
        }
        Ok(())
    }

    /// Detaches it from every device it is on.
    pub fn detach(&mut self) {
        self.links.clear();
    }
}
