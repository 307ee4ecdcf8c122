//! Reading the real headers of an outgoing IP packet: IPv4 with options,
//! IPv6 with extension headers, fragments. A cgroup_skb program sees the
//! packet from its network header on.

use aya_ebpf::programs::SkBuffContext;
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
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up (a packet with more is judged
/// with the last header type seen and no ports).
const MAX_EXT_HEADERS: usize = 6;

#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Option<Flow> {
    // skb->protocol is in network byte order.
    match u16::from_be(ctx.skb.protocol() as u16) as u32 {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        _ => None,
    }
}

#[inline(always)]
fn parse_v4(ctx: &SkBuffContext) -> Option<Flow> {
    let hdr: [u8; 20] = ctx.load(0).ok()?;
    if hdr[0] >> 4 != 4 {
        return None;
    }
    let header_len = ((hdr[0] & 0x0f) as usize) * 4;
    if header_len < 20 {
        return None;
    }
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    let mut flow = Flow {
        daddr: v4_mapped([hdr[16], hdr[17], hdr[18], hdr[19]]),
        saddr: v4_mapped([hdr[12], hdr[13], hdr[14], hdr[15]]),
        family: 4,
        proto: hdr[9],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment: frag_offset != 0,
    };
    if !flow.later_fragment {
        read_transport(ctx, header_len, &mut flow);
    }
    Some(flow)
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext) -> Option<Flow> {
    let hdr: [u8; 40] = ctx.load(0).ok()?;
    if hdr[0] >> 4 != 6 {
        return None;
    }
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    saddr.copy_from_slice(&hdr[8..24]);
    daddr.copy_from_slice(&hdr[24..40]);
    let mut flow = Flow {
        daddr,
        saddr,
        family: 6,
        proto: hdr[6],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment: false,
    };
    let mut offset = 40usize;
    for _ in 0..MAX_EXT_HEADERS {
        match flow.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
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
                    return Some(flow);
                }
            }
            _ => break,
        }
    }
    read_transport(ctx, offset, &mut flow);
    Some(flow)
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
