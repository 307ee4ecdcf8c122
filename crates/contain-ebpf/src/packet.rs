//! Reading the real headers of an outgoing IP packet: IPv4 with options,
//! IPv6 with extension headers, fragments. A cgroup_skb program sees the
//! packet from its network header on.

use aya_ebpf::{bindings::__sk_buff, programs::SkBuffContext};
use contain_common::{proto, v4_mapped};

/// What the decision needs from a packet.
pub struct Flow {
    /// Destination as 16 key bytes (IPv4 v4-mapped).
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub family: u8,
    pub proto: u8,
    pub sport: u16,
    /// Destination port, or `type << 8 | code` for ICMP and ICMPv6.
    pub dport: u16,
    pub tcp_flags: u8,
    /// A non-first fragment: no transport header to read.
    pub later_fragment: bool,
    /// IPv6 hop limit or IPv4 TTL.
    pub hop_limit: u8,
    /// Further addresses a source route (an IPv6 routing header with
    /// segments left, an IPv4 LSRR/SSRR option) sends the packet to; each is
    /// judged like the destination.
    pub route: [[u8; 16]; MAX_ROUTE_ADDRS],
    pub route_len: usize,
    /// A source route naming more addresses than are judged, or one that
    /// cannot be read: never allowed.
    pub route_unjudgeable: bool,
}

/// Source-route addresses judged per packet. The kernel's own IPv6
/// segment routing from a socket (`IPV6_RTHDR` type 4 with one segment)
/// names two: the connected address and the first hop.
pub const MAX_ROUTE_ADDRS: usize = 2;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPV4_MAX_OPTIONS: usize = 40;

/// Extension headers walked before giving up (a packet with more is judged
/// with the last header type seen and no ports).
const MAX_EXT_HEADERS: usize = 6;

impl Flow {
    pub const EMPTY: Flow = Flow {
        daddr: [0; 16],
        saddr: [0; 16],
        family: 0,
        proto: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment: false,
        hop_limit: 0,
        route: [[0; 16]; MAX_ROUTE_ADDRS],
        route_len: 0,
        route_unjudgeable: false,
    };
}

/// Parses the packet into `flow`; false when it is not an IP packet this
/// can read. A BPF-to-BPF call writing the caller's `Flow` in place: the
/// parse and the decision do not both fit one 512-byte stack frame.
#[inline(never)]
pub fn parse(skb: *mut __sk_buff, flow: &mut Flow) -> bool {
    let ctx = SkBuffContext::new(skb);
    // skb->protocol is in network byte order.
    match u16::from_be(ctx.skb.protocol() as u16) as u32 {
        ETH_P_IP => parse_v4(&ctx, flow).is_some(),
        ETH_P_IPV6 => parse_v6(&ctx, flow).is_some(),
        _ => false,
    }
}

#[inline(always)]
fn parse_v4(ctx: &SkBuffContext, flow: &mut Flow) -> Option<()> {
    let hdr: [u8; 20] = ctx.load(0).ok()?;
    if hdr[0] >> 4 != 4 {
        return None;
    }
    let header_len = ((hdr[0] & 0x0f) as usize) * 4;
    if header_len < 20 {
        return None;
    }
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    flow.daddr = v4_mapped([hdr[16], hdr[17], hdr[18], hdr[19]]);
    flow.saddr = v4_mapped([hdr[12], hdr[13], hdr[14], hdr[15]]);
    flow.family = 4;
    flow.proto = hdr[9];
    flow.later_fragment = frag_offset != 0;
    flow.hop_limit = hdr[8];
    if header_len > 20 {
        read_v4_source_route(ctx.skb.skb, header_len - 20, flow);
    }
    if !flow.later_fragment {
        read_transport(ctx, header_len, flow);
    }
    Some(())
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext, flow: &mut Flow) -> Option<()> {
    let hdr: [u8; 8] = ctx.load(0).ok()?;
    if hdr[0] >> 4 != 6 {
        return None;
    }
    flow.saddr = ctx.load(8).ok()?;
    flow.daddr = ctx.load(24).ok()?;
    flow.family = 6;
    flow.proto = hdr[6];
    flow.hop_limit = hdr[7];
    let mut offset = 40usize;
    for _ in 0..MAX_EXT_HEADERS {
        match flow.proto {
            IPPROTO_ROUTING => {
                let ext: [u8; 8] = ctx.load(offset).ok()?;
                read_v6_routing_header(ctx, offset, &ext, flow);
                flow.proto = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => {
                let ext: [u8; 4] = ctx.load(offset).ok()?;
                flow.proto = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let ext: [u8; 4] = ctx.load(offset).ok()?;
                flow.proto = ext[0];
                offset += (ext[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let ext: [u8; 4] = ctx.load(offset).ok()?;
                flow.proto = ext[0];
                let frag_offset = u16::from_be_bytes([ext[2], ext[3]]) >> 3;
                offset += 8;
                if frag_offset != 0 {
                    flow.later_fragment = true;
                    return Some(());
                }
            }
            _ => break,
        }
    }
    read_transport(ctx, offset, flow);
    Some(())
}

/// The addresses of an IPv6 routing header that still has segments to
/// visit. Type 2 (mobile IPv6) carries one address, type 4 (segment
/// routing) `last_entry + 1`, type 0 (deprecated, but a raw socket can
/// write it) `hdr_ext_len / 2`.
#[inline(always)]
fn read_v6_routing_header(ctx: &SkBuffContext, offset: usize, ext: &[u8; 8], flow: &mut Flow) {
    let (hdr_ext_len, routing_type, segments_left) = (ext[1] as usize, ext[2], ext[3]);
    if segments_left == 0 {
        // Exhausted: the destination is the last address.
        return;
    }
    let count = match routing_type {
        2 => 1,
        4 => ext[4] as usize + 1,
        0 => hdr_ext_len / 2,
        _ => {
            flow.route_unjudgeable = true;
            return;
        }
    };
    if count == 0 || count > MAX_ROUTE_ADDRS || count * 2 > hdr_ext_len {
        flow.route_unjudgeable = true;
        return;
    }
    for i in 0..MAX_ROUTE_ADDRS {
        if i >= count {
            break;
        }
        match ctx.load::<[u8; 16]>(offset + 8 + 16 * i) {
            Ok(addr) => flow.route[i] = addr,
            Err(_) => {
                flow.route_unjudgeable = true;
                return;
            }
        }
    }
    flow.route_len = count;
}

/// The addresses of an IPv4 loose or strict source route option (the
/// kernel sends a socket's `IP_OPTIONS` route with the first hop as the
/// destination and the rest, the connected address last, in the option).
/// Options are read two bytes at a time, in a call of its own so the loop
/// is not unrolled into the caller's stack frame.
#[inline(never)]
fn read_v4_source_route(skb: *mut __sk_buff, options_len: usize, flow: &mut Flow) {
    let ctx = SkBuffContext::new(skb);
    let len = options_len.min(IPV4_MAX_OPTIONS);
    let mut at = 0usize;
    for _ in 0..IPV4_MAX_OPTIONS {
        if at >= len {
            return;
        }
        let Ok(head) = ctx.load::<[u8; 2]>(20 + at) else {
            flow.route_unjudgeable = true;
            return;
        };
        match head[0] {
            IPOPT_END => return,
            IPOPT_NOOP => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let opt_len = head[1] as usize;
        if opt_len < 2 {
            flow.route_unjudgeable = true;
            return;
        }
        if head[0] == IPOPT_LSRR || head[0] == IPOPT_SSRR {
            let count = opt_len.saturating_sub(3) / 4;
            if count == 0 || count > MAX_ROUTE_ADDRS || at + opt_len > len {
                flow.route_unjudgeable = true;
                return;
            }
            for i in 0..MAX_ROUTE_ADDRS {
                if i >= count {
                    break;
                }
                match ctx.load::<[u8; 4]>(20 + at + 3 + 4 * i) {
                    Ok(a) => flow.route[i] = v4_mapped(a),
                    Err(_) => {
                        flow.route_unjudgeable = true;
                        return;
                    }
                }
            }
            flow.route_len = count;
            return;
        }
        at += opt_len;
    }
}

#[inline(always)]
fn read_transport(ctx: &SkBuffContext, offset: usize, flow: &mut Flow) {
    match flow.proto {
        proto::TCP => {
            if let Ok(l4) = ctx.load::<[u8; 14]>(offset) {
                flow.sport = u16::from_be_bytes([l4[0], l4[1]]);
                flow.dport = u16::from_be_bytes([l4[2], l4[3]]);
                flow.tcp_flags = l4[13];
            }
        }
        proto::UDP => {
            if let Ok(l4) = ctx.load::<[u8; 4]>(offset) {
                flow.sport = u16::from_be_bytes([l4[0], l4[1]]);
                flow.dport = u16::from_be_bytes([l4[2], l4[3]]);
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            if let Ok(l4) = ctx.load::<[u8; 2]>(offset) {
                flow.dport = u16::from_be_bytes([l4[0], l4[1]]);
            }
        }
        _ => {}
    }
}
