//! `cgroup/setsockopt`: refuses the socket options that let a packet
//! socket's frame change after the veth backstop has judged it.
//!
//! A frame sent with a `virtio_net_hdr` (`PACKET_VNET_HDR`,
//! `PACKET_VNET_HDR_SZ`) or with AF_XDP transmit metadata (a umem
//! registered with `tx_metadata_len`) may ask for checksum offload at any
//! offset from byte 20 of the frame on: the kernel (on a device without
//! checksum offload) or the NIC later writes 16 bits there, of a value the
//! sender chooses through the bytes it covers. `contain_veth` judges the
//! bytes as they cross the container's veth, before that write, and the
//! context has no view of a pending one; so a governed container may not
//! ask for it. An unrestricted container, or one in audit mode, keeps every
//! option.

use aya_ebpf::programs::SockoptContext;
use contain_common::Verdict;

use crate::{current_cgroup, decide::governance, maps::REFUSED_SOCKOPTS, ALLOW, REJECT};

const SOL_PACKET: i32 = 263;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_VNET_HDR_SZ: i32 = 24;
const SOL_XDP: i32 = 283;
const XDP_UMEM_REG: i32 = 4;
/// `struct xdp_umem_reg`'s `tx_metadata_len` (after addr, len, chunk_size,
/// headroom and flags); a registration shorter than that has none.
const TX_METADATA_LEN_AT: usize = 28;
/// The kernel shows a program at most a page of an option's value.
const PAGE_SIZE: i32 = 4096;

/// Whether the call asks for a frame's bytes to be written after it is
/// sent. `optval` is the kernel's copy of the value, which the option's
/// handler then uses (the program leaves `optlen` as it is).
#[inline(always)]
fn asks_for_late_writes(ctx: &SockoptContext, level: i32, optname: i32, optlen: i32) -> bool {
    match (level, optname) {
        (SOL_PACKET, PACKET_VNET_HDR | PACKET_VNET_HDR_SZ) => true,
        (SOL_XDP, XDP_UMEM_REG) => {
            // Past a page the handler reads the caller's buffer itself,
            // after this program: a value too long to check is refused.
            if optlen > PAGE_SIZE {
                return true;
            }
            // SAFETY: the context is valid for the program's duration;
            // `optval..optval_end` is the kernel's copy of the value.
            let (optval, end) = unsafe {
                let s = &*ctx.sockopt;
                (
                    s.__bindgen_anon_2.optval as usize,
                    s.__bindgen_anon_3.optval_end as usize,
                )
            };
            if optlen < (TX_METADATA_LEN_AT + 4) as i32 {
                return false;
            }
            if optval + TX_METADATA_LEN_AT + 4 > end {
                // Shorter than it says (cannot happen below a page): refused.
                return true;
            }
            // SAFETY: 4 bytes at the offset are within the value.
            let tx_metadata_len =
                unsafe { ((optval + TX_METADATA_LEN_AT) as *const u32).read_unaligned() };
            tx_metadata_len != 0
        }
        _ => false,
    }
}

#[aya_ebpf::macros::cgroup_sockopt(setsockopt)]
pub fn contain_setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the context is valid for the program's duration.
    let (level, optname, optlen) = unsafe {
        let s = &*ctx.sockopt;
        (s.level, s.optname, s.optlen)
    };
    if asks_for_late_writes(&ctx, level, optname, optlen) {
        let gov = governance(current_cgroup());
        if !gov.unrestricted && gov.on_miss == Verdict::Deny {
            if let Some(refused) = REFUSED_SOCKOPTS.get_ptr_mut(0) {
                // SAFETY: per-CPU slot.
                unsafe { *refused += 1 };
            }
            return REJECT;
        }
    }
    if optlen > PAGE_SIZE {
        // The kernel shows no program more than a page: without this, a
        // 6.1 kernel fails the call with EFAULT (later ones ignore it).
        // SAFETY: the context is valid; `optlen` is writable here.
        unsafe { (*ctx.sockopt).optlen = 0 };
    }
    ALLOW
}
