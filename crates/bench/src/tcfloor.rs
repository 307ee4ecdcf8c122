//! The floor of a tc program: two instructions that return TC_ACT_UNSPEC
//! ("no opinion", what the veth backstop returns for a frame it passes),
//! loaded by a raw bpf(2) call and attached with tcx to both sides of a
//! device, where bpf-loader attaches the backstop's two programs
//! (`contain_veth` on ingress, `contain_veth_inbound` on egress). Next to
//! the backstop it splits the backstop's share of a round trip into the
//! hooks' own cost (running any tc program there) and the programs' work.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `struct bpf_insn`.
#[repr(C)]
struct Insn {
    code: u8,
    /// dst_reg (low nibble), src_reg (high nibble).
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = -1; exit`.
const PROGRAM: [Insn; 2] = [
    Insn {
        code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
        regs: 0,
        off: 0,
        imm: -1, // TC_ACT_UNSPEC
    },
    Insn {
        code: 0x95, // BPF_JMP | BPF_EXIT
        regs: 0,
        off: 0,
        imm: 0,
    },
];

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
pub struct TcFloor {
    prog: OwnedFd,
    links: Vec<OwnedFd>,
}

impl TcFloor {
    pub fn load() -> Result<TcFloor> {
        let license = b"GPL\0";
        let mut name = [0u8; 16];
        name[..13].copy_from_slice(b"cbench_tc_ok\0");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: PROGRAM.len() as u32,
            insns: PROGRAM.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..ProgLoadAttr::default()
        };
        let prog = bpf(BPF_PROG_LOAD, &mut attr).context("loading the tc floor program")?;
        Ok(TcFloor {
            prog,
            links: Vec::new(),
        })
    }

    /// Attaches to tc ingress and egress of `ifindex` in the calling
    /// thread's network namespace (tcx links, as bpf-loader makes for the
    /// backstop).
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
            let mut attr = LinkCreateAttr {
                prog_fd: self.prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type,
                ..LinkCreateAttr::default()
            };
            let link = bpf(BPF_LINK_CREATE, &mut attr)
                .with_context(|| format!("attaching the tc floor program to ifindex {ifindex}"))?;
            self.links.push(link);
        }
        Ok(())
    }
}
