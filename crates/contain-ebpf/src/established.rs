//! A packet of an established flow, allowed before anything else: no
//! lookup of the socket's cgroup, no helper to read the headers (they are
//! read in place, in the packet's linear part).
//!
//! It allows exactly what the full path would allow, and nothing else:
//! - an outbound flow's packet by its socket's cached allow
//!   ([`allows_cached`]), which the egress program must have checked
//!   against the socket's own cgroup under the current cgroup epoch
//!   (`Config::cgroup_epoch`, which moves whenever an existing cgroup entry
//!   changes or goes, and with every rules epoch);
//! - a packet of an accepted TCP connection, or of one that predates
//!   contain ([`allows_accepted`]): the full path lets those through
//!   whatever the policy says;
//!
//! and only a packet the full path would judge by its destination and port
//! alone: no IPv4 options, no IPv6 extension header, not a fragment's later
//! part, its transport header all there, not a forged source to a local
//! address. Anything else falls through to the full path.

use aya_ebpf::bindings::{__sk_buff, bpf_sock};
use contain_common::{ip_proto, SockInfo, Verdict, CACHE_ALLOW, SOCK_OUTBOUND, UNKNOWN_POLICY_ID};

use crate::{
    cache,
    decide::{count, Epochs},
    packet::{ethertype, ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_SYN},
    unaligned, LOOPBACK_IFINDEX, SOCK_STREAM,
};

/// What the established path reads of a packet.
struct Headers {
    /// The destination as the 16 key bytes (IPv4 v4-mapped), in two
    /// little-endian words: compared with the cache a word at a time.
    daddr: [u64; 2],
    /// The destination port, or ICMP's `type << 8 | code`.
    port: u16,
    proto: u8,
    tcp_flags: u8,
}

/// `::1` as [`cache::words`] gives it.
const LOOPBACK6_WORDS: [u64; 2] = [0, 1 << 56];

/// [`crate::packet::is_loopback`] of an IPv6 packet's destination words:
/// `::1`, or `::ffff:127.x`.
#[inline(always)]
fn is_loopback_words(daddr: [u64; 2]) -> bool {
    let v4_mapped_127 = daddr[0] == 0 && daddr[1] & 0xff_ffff_ffff == 0x7f_ffff_0000;
    daddr == LOOPBACK6_WORDS || v4_mapped_127
}

/// The transport header from `l4` as the full path reads it: a TCP header
/// up to its flags, UDP's ports, ICMP's type and code. `None` when it is not
/// all in the linear part, or of another protocol.
#[inline(always)]
fn transport(l4: usize, end: usize, proto: u8) -> Option<(u16, u8)> {
    let p = l4 as *const u8;
    match proto {
        ip_proto::TCP => {
            if l4 + 14 > end {
                return None;
            }
            // SAFETY: 14 bytes from `l4` are within the packet.
            Some(unsafe { (unaligned::be16_at::<2>(p), *p.add(13)) })
        }
        ip_proto::UDP => {
            if l4 + 4 > end {
                return None;
            }
            // SAFETY: 4 bytes from `l4` are within the packet.
            Some((unsafe { unaligned::be16_at::<2>(p) }, 0))
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            if l4 + 2 > end {
                return None;
            }
            // SAFETY: 2 bytes from `l4` are within the packet.
            Some((unsafe { unaligned::be16_at::<0>(p) }, 0))
        }
        _ => None,
    }
}

/// The headers of a packet the full path would judge by destination and
/// port alone, or `None`.
#[inline(always)]
fn headers(skb: *mut __sk_buff) -> Option<Headers> {
    // SAFETY: the context is valid for the program's duration; `data` and
    // `data_end` bound the packet's linear part, which starts at the network
    // header in a cgroup_skb program.
    let (data, end, ifindex) = unsafe {
        (
            (*skb).data as usize,
            (*skb).data_end as usize,
            (*skb).ifindex,
        )
    };
    let ip = data as *const u8;
    match ethertype(skb) {
        ETH_P_IP => {
            if data + 20 > end {
                return None;
            }
            // SAFETY: 20 bytes from `data` are within the packet. The
            // addresses are little-endian loads: the first byte is the
            // lowest.
            let (ver_ihl, fragment_offset, proto, saddr, daddr) = unsafe {
                (
                    *ip,
                    unaligned::be16_at::<6>(ip) & 0x1fff,
                    *ip.add(9),
                    unaligned::u32_at::<12>(ip),
                    unaligned::u32_at::<16>(ip),
                )
            };
            if ver_ihl != 0x45 || fragment_offset != 0 {
                return None;
            }
            // A packet to a local address from a source that is neither a
            // loopback address nor the destination is forged; one to a
            // loopback address elsewhere than on `lo` is misrouted (a raw
            // socket's own header): both take the full path.
            let on_loopback = ifindex == LOOPBACK_IFINDEX;
            if on_loopback && saddr as u8 != 127 && saddr != daddr {
                return None;
            }
            if !on_loopback && daddr as u8 == 127 {
                return None;
            }
            let (port, tcp_flags) = transport(data + 20, end, proto)?;
            // v4-mapped: ten zero bytes, two 0xff, then the address.
            Some(Headers {
                daddr: [0, 0xffff_0000 | (daddr as u64) << 32],
                port,
                proto,
                tcp_flags,
            })
        }
        ETH_P_IPV6 => {
            if data + 40 > end {
                return None;
            }
            // SAFETY: 40 bytes from `data` are within the packet.
            let (version, proto, daddr) = unsafe {
                (
                    *ip >> 4,
                    *ip.add(6),
                    [unaligned::u64_at::<24>(ip), unaligned::u64_at::<32>(ip)],
                )
            };
            // The next header must be the transport itself: an extension
            // header (a routing header above all) takes the full path.
            if version != 6 {
                return None;
            }
            if ifindex != LOOPBACK_IFINDEX && is_loopback_words(daddr) {
                return None;
            }
            if ifindex == LOOPBACK_IFINDEX {
                // SAFETY: as above.
                let saddr = unsafe { [unaligned::u64_at::<8>(ip), unaligned::u64_at::<16>(ip)] };
                if saddr != LOOPBACK6_WORDS && saddr != daddr {
                    return None;
                }
            }
            let (port, tcp_flags) = transport(data + 40, end, proto)?;
            Some(Headers {
                daddr,
                port,
                proto,
                tcp_flags,
            })
        }
        _ => None,
    }
}

/// Whether the socket's cached verdict allows this packet without the full
/// path (counted as the full path counts it). A call of its own: inlined,
/// its locals would add to the egress program's frame, which every call
/// chain below it pays (kernel 6.1 refuses more than 512 bytes in all).
#[inline(never)]
pub fn allows_cached(skb: *mut __sk_buff, info: *mut SockInfo, epochs: &Epochs) -> bool {
    if info.is_null() {
        return false;
    }
    // Copied out before the headers are read, as a whole or not at all:
    // another CPU may be writing it for the same socket.
    // SAFETY: the helper's storage pointer, non-null.
    let Some(c) = (unsafe { cache::read(info) }) else {
        return false;
    };
    let policy_id = c.policy_id();
    if epochs.cgroup == 0
        || c.cgroup_epoch != epochs.cgroup
        || c.epoch != epochs.rules
        || policy_id == UNKNOWN_POLICY_ID
        || c.state() != CACHE_ALLOW
    {
        return false;
    }
    let Some(h) = headers(skb) else {
        return false;
    };
    if !c.is_state_of(h.daddr, h.port, h.proto, CACHE_ALLOW) {
        return false;
    }
    count(policy_id, Verdict::Allow);
    true
}

/// Whether this is a packet of an accepted TCP connection (never marked
/// outbound) or of one that predates contain, which the full path lets
/// through whatever the policy says. A call of its own, as
/// [`allows_cached`].
#[inline(never)]
pub fn allows_accepted(skb: *mut __sk_buff, full: *mut bpf_sock, info: *mut SockInfo) -> bool {
    // SAFETY: storage pointer from the helper, null or valid.
    if unsafe { info.as_ref() }.is_some_and(|i| i.flags & SOCK_OUTBOUND != 0) {
        return false;
    }
    // SAFETY: a full socket pointer from the helper, non-null.
    let (sock_type, sock_proto) = unsafe { ((*full).type_, (*full).protocol) };
    if sock_type != SOCK_STREAM || sock_proto != ip_proto::TCP as u32 {
        return false;
    }
    let Some(h) = headers(skb) else {
        return false;
    };
    let opening = h.tcp_flags & TCP_SYN != 0 && h.tcp_flags & TCP_ACK == 0;
    h.proto == ip_proto::TCP && !opening
}
