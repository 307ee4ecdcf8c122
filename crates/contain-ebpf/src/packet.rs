//! Reading the real headers of an outgoing IP packet: IPv4 with options,
//! IPv6 with extension headers, fragments. A cgroup_skb program sees the
//! packet from its network header on ([`L3_AT_START`]), a tc program from
//! its Ethernet header ([`L3_AFTER_ETHERNET`]).

use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::__sk_buff, helpers::generated::bpf_skb_load_bytes, programs::SkBuffContext,
};
use contain_common::{ip_proto, v4_mapped};

use crate::unaligned;

/// What the decision needs from a packet. 8-aligned, addresses first: it is
/// zeroed and filled with word stores (see [`Flow::zeroed_in`]).
#[repr(C, align(8))]
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
    /// segments left, an IPv4 LSRR/SSRR option) sends the packet to, each
    /// judged like the destination: `route_len` addresses from
    /// `route_offset` in the packet (kept as an offset, not copied: a bigger
    /// `Flow` is zeroed with a `memset` call that kernel 6.1's verifier
    /// refuses).
    pub route_offset: u16,
    pub route_len: u8,
    /// Never allowed, never cached: a source route naming more addresses
    /// than are judged or that cannot be read, more extension headers than
    /// are walked, a first fragment too short for its transport header.
    pub unjudgeable: bool,
}

/// Source-route addresses judged per packet. The kernel's own IPv6
/// segment routing from a socket (`IPV6_RTHDR` type 4 with one segment)
/// names two: the connected address and the first hop.
pub const MAX_ROUTE_ADDRS: usize = 2;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

pub const ETH_P_IP: u32 = 0x0800;
pub const ETH_P_IPV6: u32 = 0x86DD;
pub const ETH_P_ARP: u32 = 0x0806;

/// Where the network header starts in a cgroup_skb program's packet.
pub const L3_AT_START: usize = 0;
/// Where it starts in a tc program's frame.
pub const L3_AFTER_ETHERNET: usize = 14;

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
/// Options (NOPs included) walked before giving up; each step is a verifier
/// path, and real packets carry one or two.
const IPV4_OPTIONS_WALKED: usize = 8;

/// Extension headers walked before giving up (a packet with more is judged
/// with the last header type seen and no ports).
const MAX_EXT_HEADERS: usize = 6;

/// Writes `::ffff:a.b.c.d` into `dst` byte by byte. Volatile stores, so
/// LLVM does not turn the zero run into a call to `memset`: kernel 6.1's
/// verifier refuses that call in a BPF-to-BPF subprogram (the routine
/// leaves a stack pointer in R0).
#[inline(always)]
pub fn write_v4_mapped(dst: &mut [u8; 16], octets: [u8; 4]) {
    let key = v4_mapped(octets);
    let p = dst.as_mut_ptr();
    for (i, b) in key.iter().enumerate() {
        // SAFETY: i < 16, within `dst`.
        unsafe { p.add(i).write_volatile(*b) };
    }
}

impl Flow {
    /// A zeroed `Flow` in `slot`, written as 64-bit words. Zeroing it as a
    /// value makes LLVM call `memset`, which for BPF is a byte loop (and,
    /// in a BPF-to-BPF subprogram, refused by kernel 6.1's verifier: the
    /// routine leaves a stack pointer in R0).
    #[inline(always)]
    pub fn zeroed_in(slot: &mut MaybeUninit<Flow>) -> &mut Flow {
        let words = slot.as_mut_ptr().cast::<u64>();
        for i in 0..size_of::<Flow>() / 8 {
            // SAFETY: within the slot, which is 8-aligned and a whole number
            // of words (checked below at compile time).
            unsafe { words.add(i).write_volatile(0) };
        }
        // SAFETY: every field is an integer, array of integers or bool, for
        // which all-zero bytes are a valid value.
        unsafe { slot.assume_init_mut() }
    }

    /// Sets both addresses of an IPv4 packet as `::ffff:a.b.c.d` key bytes,
    /// with word stores for the same reason.
    #[inline(always)]
    fn set_v4_addresses(&mut self, daddr: [u8; 4], saddr: [u8; 4]) {
        let mapped_prefix = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        let d = self.daddr.as_mut_ptr().cast::<u32>();
        let s = self.saddr.as_mut_ptr().cast::<u32>();
        // SAFETY: both arrays are 16 bytes at 4-aligned offsets of an
        // 8-aligned struct; words 0 and 1 are already zero.
        unsafe {
            d.add(2).write_volatile(mapped_prefix);
            d.add(3).write_volatile(u32::from_ne_bytes(daddr));
            s.add(2).write_volatile(mapped_prefix);
            s.add(3).write_volatile(u32::from_ne_bytes(saddr));
        }
    }
}

const _: () =
    assert!(size_of::<Flow>().is_multiple_of(8) && core::mem::offset_of!(Flow, saddr) == 16);

/// Parses the packet into `flow`, which must be zeroed; false when it is not
/// an IP packet this can read. A BPF-to-BPF call writing the caller's `Flow` in place: the
/// parse and the decision do not both fit one 512-byte stack frame.
/// `L3` is where the network header starts ([`L3_AT_START`] or
/// [`L3_AFTER_ETHERNET`]); the route offset it records counts from the
/// packet's start.
#[inline(never)]
pub fn parse<const L3: usize>(skb: *mut __sk_buff, flow: &mut Flow) -> bool {
    let ctx = SkBuffContext::new(skb);
    match ethertype(skb) {
        ETH_P_IP => parse_v4::<L3>(&ctx, flow).is_some(),
        ETH_P_IPV6 => parse_v6::<L3>(&ctx, flow).is_some(),
        _ => false,
    }
}

/// The linear part of the packet from the network header at `L3`:
/// `(start, end)` addresses for direct packet access.
#[inline(always)]
fn linear<const L3: usize>(skb: *mut __sk_buff) -> (usize, usize) {
    // SAFETY: the context is valid for the program's duration; `data` and
    // `data_end` bound the linear part.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    (data + L3, end)
}

/// `N` bytes copied out of the packet, 8-aligned so that their fields are
/// read with the same loads as in place: the verifier refuses a misaligned
/// load from the stack, and each field is aligned to its size here.
#[repr(C, align(8))]
struct Copied<const N: usize>([u8; N]);

/// Where the `N` bytes at `offset` from the packet's start can be read: in
/// place when they are in the linear part (each field then one load, no
/// helper call, no copy), else in `copy`, filled by `bpf_skb_load_bytes`,
/// which also reaches the paged part. Read its fields with `unaligned`'s
/// loads at offsets aligned to their size.
#[inline(always)]
fn header<const N: usize>(
    skb: *mut __sk_buff,
    offset: usize,
    copy: &mut MaybeUninit<Copied<N>>,
) -> Option<*const u8> {
    let (data, end) = linear::<0>(skb);
    if data + offset + N <= end {
        return Some((data + offset) as *const u8);
    }
    let buf = copy.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` has room for `N` bytes; the helper fills them or fails.
    let rc = unsafe { bpf_skb_load_bytes(skb.cast(), offset as u32, buf.cast(), N as u32) };
    (rc == 0).then_some(buf.cast_const())
}

/// `N` bytes at `offset` from the packet's start, copied: read in place
/// when they are in the linear part, else by `bpf_skb_load_bytes`.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &SkBuffContext, offset: usize) -> Option<[u8; N]> {
    let (data, end) = linear::<0>(ctx.skb.skb);
    if data + offset + N <= end {
        // SAFETY: N bytes from `data + offset` are within the linear part.
        Some(unsafe { ((data + offset) as *const [u8; N]).read_unaligned() })
    } else {
        ctx.load::<[u8; N]>(offset).ok()
    }
}

/// Whether the packet is surely not a UDP datagram, read in place: IPv4's
/// protocol field (every fragment carries it), or IPv6's next header when
/// it is TCP or ICMPv6 itself. `false` when it cannot be told this cheaply
/// (a UDP datagram, an extension header, a header outside the linear
/// part); a frame that is not IP is not UDP.
#[inline(always)]
pub fn surely_not_udp<const L3: usize>(skb: *mut __sk_buff) -> bool {
    let (ip, end) = linear::<L3>(skb);
    match ethertype(skb) {
        ETH_P_IP => {
            if ip + 20 > end {
                return false;
            }
            // SAFETY: 20 bytes from `ip` are within the packet.
            unsafe { *(ip as *const u8).add(9) != ip_proto::UDP }
        }
        ETH_P_IPV6 => {
            if ip + 40 > end {
                return false;
            }
            // SAFETY: 40 bytes from `ip` are within the packet.
            let next = unsafe { *(ip as *const u8).add(6) };
            next == ip_proto::TCP || next == ip_proto::ICMPV6
        }
        _ => true,
    }
}

/// The Ethernet source address of a frame whose data starts at its
/// Ethernet header (tc on a veth).
#[inline(always)]
pub fn ethernet_source(skb: *mut __sk_buff) -> Option<[u8; 6]> {
    bytes_at::<6>(&SkBuffContext::new(skb), 6)
}

/// Whether 16 key bytes are a loopback address: `::1`, or 127.0.0.0/8
/// v4-mapped (an IPv4 packet's, or an IPv6 packet's to `::ffff:127.x`).
#[inline(always)]
pub fn is_loopback(addr: &[u8; 16]) -> bool {
    (is_v4_mapped(addr) && addr[12] == 127) || *addr == crate::LOOPBACK6
}

/// Whether 16 key bytes are `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// The packet's IP version and source address as 16 key bytes (IPv4
/// v4-mapped), read in place when the header is in the linear part, else
/// copied out.
#[inline(always)]
pub fn source_address<const L3: usize>(skb: *mut __sk_buff) -> Option<(u8, [u8; 16])> {
    let (ip, end) = linear::<L3>(skb);
    let ctx = SkBuffContext::new(skb);
    match ethertype(skb) {
        ETH_P_IP => {
            let a = if ip + 20 <= end {
                // SAFETY: 20 bytes from `ip` are within the packet.
                unsafe { (ip as *const u8).add(12).cast::<[u8; 4]>().read_unaligned() }
            } else {
                ctx.load::<[u8; 4]>(L3 + 12).ok()?
            };
            let mut addr = [0u8; 16];
            write_v4_mapped(&mut addr, a);
            Some((4, addr))
        }
        ETH_P_IPV6 => Some((
            6,
            if ip + 40 <= end {
                // SAFETY: 40 bytes from `ip` are within the packet.
                unsafe { (ip as *const u8).add(8).cast::<[u8; 16]>().read_unaligned() }
            } else {
                ctx.load::<[u8; 16]>(L3 + 8).ok()?
            },
        )),
        _ => None,
    }
}

/// An ICMPv6 message of neighbour discovery (router and neighbour
/// solicitation and advertisement, redirect), whatever its hop limit.
#[inline(always)]
pub fn is_neighbour_discovery(flow: &Flow) -> bool {
    flow.family == 6
        && flow.proto == ip_proto::ICMPV6
        && !flow.later_fragment
        && matches!(flow.dport >> 8, 133..=137)
}

/// An ICMPv6 message of MLD (query, reports, done), whatever its hop limit.
#[inline(always)]
pub fn is_mld(flow: &Flow) -> bool {
    flow.family == 6
        && flow.proto == ip_proto::ICMPV6
        && !flow.later_fragment
        && matches!(flow.dport >> 8, 130..=132 | 143)
}

/// Neighbour discovery, MLD or IGMP, whatever its hop limit: the link's own
/// protocols, which steer what neighbours send where.
#[inline(always)]
pub fn is_link_protocol(flow: &Flow) -> bool {
    let igmp = flow.family == 4 && flow.proto == ip_proto::IGMP;
    is_mld(flow) || igmp || is_neighbour_discovery(flow)
}

/// The packet's protocol (`skb->protocol`, in network byte order there).
#[inline(always)]
pub fn ethertype(skb: *mut __sk_buff) -> u32 {
    u16::from_be(SkBuffContext::new(skb).skb.protocol() as u16) as u32
}

#[inline(always)]
fn parse_v4<const L3: usize>(ctx: &SkBuffContext, flow: &mut Flow) -> Option<()> {
    let mut copy = MaybeUninit::uninit();
    let hdr = header::<20>(ctx.skb.skb, L3, &mut copy)?;
    // SAFETY: 20 bytes from `hdr` are readable, each field aligned to its
    // size in a copy.
    let (ver_ihl, frag, ttl, proto, saddr, daddr) = unsafe {
        (
            *hdr,
            unaligned::be16_at::<6>(hdr),
            *hdr.add(8),
            *hdr.add(9),
            unaligned::u32_at::<12>(hdr),
            unaligned::u32_at::<16>(hdr),
        )
    };
    if ver_ihl >> 4 != 4 {
        return None;
    }
    let header_len = ((ver_ihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return None;
    }
    // Little-endian loads: the bytes in their order.
    flow.set_v4_addresses(daddr.to_le_bytes(), saddr.to_le_bytes());
    flow.family = 4;
    flow.proto = proto;
    flow.later_fragment = frag & 0x1fff != 0;
    flow.hop_limit = ttl;
    if header_len > 20 {
        flow.unjudgeable = !read_v4_source_route::<L3>(ctx.skb.skb, header_len - 20, flow);
    }
    if !flow.later_fragment {
        read_transport(ctx, L3 + header_len, flow);
    }
    Some(())
}

#[inline(always)]
fn parse_v6<const L3: usize>(ctx: &SkBuffContext, flow: &mut Flow) -> Option<()> {
    let hdr: [u8; 8] = bytes_at(ctx, L3)?;
    if hdr[0] >> 4 != 6 {
        return None;
    }
    flow.saddr = bytes_at(ctx, L3 + 8)?;
    flow.daddr = bytes_at(ctx, L3 + 24)?;
    flow.family = 6;
    flow.proto = hdr[6];
    flow.hop_limit = hdr[7];
    let mut offset = L3 + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match flow.proto {
            IPPROTO_ROUTING => {
                let ext: [u8; 8] = ctx.load(offset).ok()?;
                read_v6_routing_header(offset, &ext, flow);
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
    if matches!(
        flow.proto,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS
    ) {
        // More extension headers than are walked: a routing header may hide
        // behind them.
        flow.unjudgeable = true;
        return Some(());
    }
    read_transport(ctx, offset, flow);
    Some(())
}

/// The addresses of an IPv6 routing header that still has segments to
/// visit. Type 2 (mobile IPv6) carries one address, type 4 (segment
/// routing) `last_entry + 1`, type 0 (deprecated, but a raw socket can
/// write it) `hdr_ext_len / 2`.
#[inline(always)]
fn read_v6_routing_header(offset: usize, ext: &[u8; 8], flow: &mut Flow) {
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
            flow.unjudgeable = true;
            return;
        }
    };
    // Routers follow Segments Left, not Last Entry: a route that visits
    // more segments than it lists is not judgeable.
    if count == 0
        || count > MAX_ROUTE_ADDRS
        || count * 2 > hdr_ext_len
        || segments_left as usize > count
        || flow.route_len != 0
    {
        flow.unjudgeable = true;
        return;
    }
    flow.route_offset = (offset + 8) as u16;
    flow.route_len = count as u8;
}

/// Loads the `index`th address of the packet's source route into `addr`,
/// as key bytes; false when it cannot be read.
#[inline(always)]
pub fn load_route_address(
    skb: *mut __sk_buff,
    flow: &Flow,
    index: usize,
    addr: &mut [u8; 16],
) -> bool {
    let ctx = SkBuffContext::new(skb);
    if flow.family == 4 {
        let Ok(a) = ctx.load::<[u8; 4]>(flow.route_offset as usize + 4 * index) else {
            return false;
        };
        write_v4_mapped(addr, a);
        true
    } else {
        let Ok(a) = ctx.load::<[u8; 16]>(flow.route_offset as usize + 16 * index) else {
            return false;
        };
        *addr = a;
        true
    }
}

/// The addresses of an IPv4 loose or strict source route option (the
/// kernel sends a socket's `IP_OPTIONS` route with the first hop as the
/// destination and the rest, the connected address last, in the option).
/// Every option is walked: one route option judged, a second unjudgeable.
/// Options are read two bytes at a time, in a call of its own so the loop
/// is not unrolled into the caller's stack frame. False when the options
/// cannot be judged. (A BPF-to-BPF call returns a value: kernel 6.1's
/// verifier refuses one that leaves a stack pointer in R0.)
#[inline(never)]
fn read_v4_source_route<const L3: usize>(
    skb: *mut __sk_buff,
    options_len: usize,
    flow: &mut Flow,
) -> bool {
    let ctx = SkBuffContext::new(skb);
    let len = options_len.min(IPV4_MAX_OPTIONS);
    let mut at = 0usize;
    for _ in 0..IPV4_OPTIONS_WALKED {
        if at >= len {
            return true;
        }
        let Ok(head) = ctx.load::<[u8; 2]>(L3 + 20 + at) else {
            return false;
        };
        match head[0] {
            IPOPT_END => return true,
            IPOPT_NOOP => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let opt_len = head[1] as usize;
        if opt_len < 2 {
            return false;
        }
        if head[0] == IPOPT_LSRR || head[0] == IPOPT_SSRR {
            let count = opt_len.saturating_sub(3) / 4;
            // Forwarders read the next hop at the option's pointer, which
            // must fall on an address of the list for the list to be what
            // is judged.
            let Ok(pointer) = ctx.load::<u8>(L3 + 20 + at + 2) else {
                return false;
            };
            // A second route option would be read by no one the same way
            // (Linux refuses it; another stack may follow either): it
            // cannot be judged.
            if flow.route_len != 0
                || count == 0
                || count > MAX_ROUTE_ADDRS
                || at + opt_len > len
                || !(opt_len - 3).is_multiple_of(4)
                || pointer < 4
                || pointer % 4 != 0
            {
                return false;
            }
            flow.route_offset = (L3 + 20 + at + 3) as u16;
            flow.route_len = count as u8;
        }
        at += opt_len;
    }
    // More options than are walked (padding can hide a route behind them)
    // cannot be judged.
    at >= len
}

#[inline(always)]
fn read_transport(ctx: &SkBuffContext, offset: usize, flow: &mut Flow) {
    match flow.proto {
        // A header that is not all there would be judged as port 0: such a
        // packet cannot be judged.
        ip_proto::TCP => {
            let mut copy = MaybeUninit::uninit();
            match header::<14>(ctx.skb.skb, offset, &mut copy) {
                // SAFETY: 14 bytes from `l4` are readable, fields aligned.
                Some(l4) => unsafe {
                    flow.sport = unaligned::be16_at::<0>(l4);
                    flow.dport = unaligned::be16_at::<2>(l4);
                    flow.tcp_flags = *l4.add(13);
                },
                None => flow.unjudgeable = true,
            }
        }
        ip_proto::UDP => {
            let mut copy = MaybeUninit::uninit();
            match header::<4>(ctx.skb.skb, offset, &mut copy) {
                // SAFETY: 4 bytes from `l4` are readable, fields aligned.
                Some(l4) => unsafe {
                    flow.sport = unaligned::be16_at::<0>(l4);
                    flow.dport = unaligned::be16_at::<2>(l4);
                },
                None => flow.unjudgeable = true,
            }
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let mut copy = MaybeUninit::uninit();
            match header::<2>(ctx.skb.skb, offset, &mut copy) {
                // SAFETY: 2 bytes from `l4` are readable.
                Some(l4) => flow.dport = unsafe { unaligned::be16_at::<0>(l4) },
                None => flow.unjudgeable = true,
            }
        }
        _ => {}
    }
}
