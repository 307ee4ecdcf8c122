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

/// Bytes of `struct __sk_buff` passed as the test run's context: up to and
/// including `ingress_ifindex` (offset 36), `ifindex` (offset 40) and
/// `tc_index`, which the kernel requires to be zero.
const SKB_CTX_LEN: usize = 48;
const SKB_CTX_INGRESS_IFINDEX: usize = 36;
const SKB_CTX_IFINDEX: usize = 40;

/// Runs program `prog_fd` `repeat` times on `packet` (for skb programs: an
/// Ethernet frame; the kernel strips the Ethernet header for cgroup_skb), as
/// if it left through interface `ifindex` of this network namespace. Without
/// one the kernel uses the loopback device, where contain's egress program
/// treats a packet that is not from a loopback address to another address
/// as forged.
pub fn run(prog_fd: RawFd, packet: &[u8], repeat: u32, ifindex: u32) -> io::Result<TestRun> {
    run_from(prog_fd, packet, repeat, ifindex, 0)
}

/// [`run`] on a packet that came into the host through interface
/// `ingress_ifindex` (the kernel's `skb_iif`, which a tc program reads as
/// `__sk_buff.ingress_ifindex`; 0 for one the host sent). A bridge in
/// hairpin mode sends a frame back out of the port it came in on: a frame
/// leaving through `ifindex` that came in through it.
pub fn run_from(
    prog_fd: RawFd,
    packet: &[u8],
    repeat: u32,
    ifindex: u32,
    ingress_ifindex: u32,
) -> io::Result<TestRun> {
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[SKB_CTX_INGRESS_IFINDEX..SKB_CTX_INGRESS_IFINDEX + 4]
        .copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ctx_size_in: SKB_CTX_LEN as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; the packet
    // and context buffers outlive the call and the kernel only reads them
    // (no data_out, no ctx_out).
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

/// An interface of this network namespace other than loopback, for test
/// runs of packets that leave the host.
pub fn egress_ifindex() -> io::Result<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net")? {
        let path = entry?.path().join("ifindex");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(index) = text.trim().parse::<u32>() {
                found.push(index);
            }
        }
    }
    found.sort_unstable();
    found.into_iter().find(|&i| i > 1).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no network interface but loopback in this namespace: a test run needs one to send packets through (add one, e.g. `ip link add contain-tr type dummy`)",
        )
    })
}
