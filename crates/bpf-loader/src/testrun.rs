//! BPF_PROG_TEST_RUN: runs a loaded program on a packet in the kernel,
//! without attaching it. Used to test packet parsing on crafted packets and
//! to measure per-packet cost.

use std::{io, os::fd::RawFd};

/// `union bpf_attr`'s `test` member (kernel ABI, stable since 4.12; the
/// fields used here are all in the original layout or appended since).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// What one test run reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (cgroup_skb: 1 pass, 0 drop).
    pub retval: u32,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs program `prog_fd` `repeat` times on `packet` (for skb programs: an
/// Ethernet frame; the kernel strips the Ethernet header for cgroup_skb).
pub fn run(prog_fd: RawFd, packet: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; the packet
    // buffer outlives the call and the kernel only reads it (no data_out).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}
