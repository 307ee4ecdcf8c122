//! The backstop on the host side of each container's veth (tc ingress
//! there is the container's egress). Packet sockets (AF_PACKET, AF_XDP)
//! send whole frames that never pass a cgroup hook; here every frame is
//! sorted by the socket that sent it, which the kernel keeps on the packet
//! across the veth and a process cannot forge:
//!
//! - an IP socket in a cgroup contain's programs are attached to: already
//!   judged by `cgroup_skb/egress`, but for its source address;
//! - a packet socket: judged here under the policy of the cgroup that made
//!   it (or, for a socket from outside contain's cgroups, the veth's
//!   owner's), with no process identity, so only container-wide rules can
//!   allow it;
//! - no socket, or the socket of a host process or the kernel in the
//!   container's namespace: judged under the veth owner's policy, with the
//!   kernel's neighbour discovery exempt by content and dockerd's forwarded
//!   DNS queries by the policy's DNS setting.
//!
//! The kernel's own ARP passes (it reaches only the container's link), and
//! so do its replies (echo replies, resets, ICMP errors) to addresses that
//! sent packets into the container through its veth, which
//! `contain_veth_inbound` (tc egress, the container's inbound side) notes
//! (not the source of an ICMP error or a later fragment, which any host
//! can send as related to a flow).
//! A packet socket gets no exemption: its ARP, neighbour discovery or
//! IGMP would carry whatever it writes to the container's neighbours. Any
//! other ethertype and any VLAN-tagged frame of a governed container is
//! dropped.
//!
//! Whatever sent it, an IP frame of a governed container must carry as its
//! source one of the container's addresses (`VETH_SOURCES`, from the
//! resolver through policyd, its link-local ones included) or IPv4's
//! unspecified address; an IPv6 link-local or unspecified source that is
//! not its own passes only on the kernel's neighbour discovery and MLD. A raw
//! socket's header, a transparent or free-bind socket's bound address and
//! a packet socket's frame can name any source; a forged one would have
//! the answer to the packet sent to someone the rules deny (the host's
//! routing reflects a packet to the container's own address back to it).
//! The check starts once the veth is mapped: policyd writes its sources
//! before the veth's owner.
//!
//! A packet socket's frame must also carry as its Ethernet source the MAC
//! of the veth's other end, the container's interface (as the kernel writes
//! it on every other frame): with a neighbour's, the bridge would learn
//! that neighbour's MAC on the container's port and hand it the traffic
//! meant for the neighbour.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{
        bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_sk_fullsock,
        bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use contain_common::{
    ip_proto, is_icmp_error, stat, Hook, Verdict, VethAddrKey, CGROUP_FORWARDED_DNS,
    EVENT_FORGED_SOURCE, EVENT_LINK_LAYER, EVENT_UNATTRIBUTED, MAX_CGROUP_DEPTH,
};

use crate::{
    decide::{
        bump_stat, count, decide, governance, report, udp_reply_timeout_ns, with_event_scratch,
        Decision, Governance, Identity, Target,
    },
    decide_source_routed,
    maps::{
        ATTACHED_CGROUPS, CGROUPS, GOVERNED_LEVEL_HINT, LAST_NOTED_PEER, NEW_VETHS, VETHS,
        VETH_PEERS, VETH_SOURCES,
    },
    packet::{self, Flow, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, L3_AFTER_ETHERNET},
};

/// Continue with the next tc program (or the stack): tc's "no opinion",
/// so a program attached after contain's still runs.
const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const DNS_PORT: u16 = 53;

static NOBODY: Identity = Identity::UNKNOWN;

/// Who sent a frame that no cgroup program judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// An IP socket of a cgroup contain's cgroup programs run for: judged
    /// by them, all but its source.
    Judged,
    /// A packet socket of some process: the content is the sender's.
    PacketSocket,
    /// No socket at all: what the container's namespace forwards, and the
    /// few answers the kernel sends without one.
    Socketless,
    /// A socket of the kernel's or of a host process's.
    Unattributed {
        /// A full TCP or UDP socket of a host process (dockerd's DNS
        /// forwarder is one): not the kernel's.
        host_process: bool,
    },
}

#[inline(always)]
pub fn judge_frame(skb: *mut __sk_buff) -> i32 {
    // SAFETY: the context is valid for the program's duration.
    let (sk, ifindex, vlan_present) = unsafe {
        (
            (*skb).__bindgen_anon_2.sk,
            (*skb).ifindex,
            (*skb).vlan_present,
        )
    };
    let (origin, governed) = if sk.is_null() {
        (Origin::Socketless, false)
    } else {
        // SAFETY: a socket pointer from the context; `family` is readable
        // on every kind of socket.
        let family = unsafe { (*sk).family };
        let governed = socket_is_governed(skb);
        if family != AF_INET && family != AF_INET6 {
            (Origin::PacketSocket, governed)
        } else if governed {
            (Origin::Judged, true)
        } else {
            let host_process = is_host_process_socket(sk);
            (Origin::Unattributed { host_process }, false)
        }
    };
    if origin == Origin::Judged {
        return judge_source(skb, ifindex);
    }
    // SAFETY: copied out at once.
    let mapped = unsafe { VETHS.get(ifindex) }.map(|owner| owner.cgroup_id);
    // A packet socket of a governed cgroup is judged under that cgroup: the
    // kernel's record of who made the socket, which no frame can forge, and
    // more precise than the veth when containers share a namespace (a pod
    // whose sandbox no policy selects). Anything else is judged under the
    // container behind the veth.
    let cgroup_id = if governed {
        // SAFETY: skb context.
        unsafe { bpf_skb_cgroup_id(skb) }
    } else {
        match mapped {
            Some(owner) => owner,
            // A new container's namespace may forward (an `AF_PACKET` frame
            // written to its `lo`), and its kernel answer a source forged
            // there, before policyd has named it: held to the
            // unknown-container verdict, as its sockets are. The kernel's
            // answers to peers that spoke first still pass
            // (`is_kernel_answer`: `admit_inbound` notes a new veth's peers).
            None if held_while_new(origin) && is_new_veth(ifindex) => UNKNOWN_CGROUP,
            None => {
                bump_stat(stat::VETH_UNOWNED);
                return PASS;
            }
        }
    };
    let gov = governance(cgroup_id);
    if gov.unrestricted {
        return PASS;
    }
    let flags = match origin {
        Origin::PacketSocket => EVENT_LINK_LAYER,
        Origin::Judged | Origin::Socketless | Origin::Unattributed { .. } => EVENT_UNATTRIBUTED,
    };
    let ethertype = packet::ethertype(skb);
    if origin == Origin::PacketSocket && checksum_pending(skb) {
        // Its bytes change after this judgement (see `checksum_pending`):
        // what would leave cannot be judged.
        bump_stat(stat::UNPARSED);
        return deny_frame(cgroup_id, &gov, ethertype, flags);
    }
    if vlan_present != 0 || (ethertype != ETH_P_IP && ethertype != ETH_P_IPV6) {
        if ethertype == ETH_P_ARP && vlan_present == 0 && origin != Origin::PacketSocket {
            return PASS;
        }
        return deny_frame(cgroup_id, &gov, ethertype, flags);
    }
    let mut slot = MaybeUninit::uninit();
    let flow = Flow::zeroed_in(&mut slot);
    if !packet::parse::<L3_AFTER_ETHERNET>(skb, flow) {
        bump_stat(stat::UNPARSED);
        return deny_frame(cgroup_id, &gov, ethertype, flags);
    }
    let flow: &Flow = flow;
    if origin == Origin::PacketSocket && !carries_its_devices_mac(skb) {
        return deny_forged(cgroup_id, &gov, flow, flags);
    }
    if mapped.is_some() && !source_allowed(ifindex, flow, origin) {
        return deny_forged(cgroup_id, &gov, flow, flags);
    }
    // The container's loopback traffic never crosses its veth: a frame to a
    // loopback address is forged, and the rules' loopback allowance must not
    // carry it to the bridge. A packet socket's neighbour discovery, MLD or
    // IGMP would steer where its neighbours send: no rule allows them.
    let unjudgeable = flow.unjudgeable
        || packet::is_loopback(&flow.daddr)
        || (origin == Origin::PacketSocket && packet::is_link_protocol(flow));
    let source_routed = flow.route_len != 0 || unjudgeable;
    if !source_routed && is_link_control(flow, origin) {
        return PASS;
    }
    let target = Target {
        daddr: flow.daddr,
        proto: flow.proto,
        port: flow.dport,
        portless: flow.later_fragment,
    };
    let mut decision = if unjudgeable {
        Decision::new(gov.on_miss, 0)
    } else if source_routed {
        decide_source_routed(skb, &gov, &NOBODY, flow)
    } else {
        decide(&gov, &NOBODY, &target)
    };
    if decision.verdict() != Verdict::Allow
        && !source_routed
        && (is_forwarded_dns(flow, origin, cgroup_id)
            || is_kernel_answer(skb, flow, origin, ifindex))
    {
        decision = Decision::new(Verdict::Allow, 0);
    }
    count(gov.policy_id, decision.verdict());
    if decision.verdict() != Verdict::Allow {
        report_frame(cgroup_id, &gov, &decision, flow, flags);
    }
    if decision.verdict() == Verdict::Deny {
        DROP
    } else {
        PASS
    }
}

/// No cgroup's id: `governance` of it is the unknown-container verdict.
const UNKNOWN_CGROUP: u64 = 0;

/// Frames a new veth holds while no container owns it: those of no socket
/// and those of the kernel's own sockets, whose content a container's
/// namespace can steer. A host process's socket working in the namespace
/// (dockerd's DNS forwarder; another tool's container) is not held.
#[inline(always)]
fn held_while_new(origin: Origin) -> bool {
    matches!(
        origin,
        Origin::Socketless
            | Origin::Unattributed {
                host_process: false
            }
    )
}

/// Whether `ifindex` appeared while the loader ran, and its hold has not
/// ended (`NEW_VETHS`).
#[inline(always)]
fn is_new_veth(ifindex: u32) -> bool {
    // SAFETY: copied out at once.
    match unsafe { NEW_VETHS.get(ifindex) } {
        // SAFETY: a helper with no arguments.
        Some(&until) => until > unsafe { bpf_ktime_get_ns() },
        None => false,
    }
}

/// A packet a cgroup program judged: its source is the one thing left to
/// check, under the policy of the socket's cgroup, once the veth is mapped.
/// The container's own source costs one lookup; the rest is the rare path
/// of a forged one, parsed whole only to report it.
#[inline(always)]
fn judge_source(skb: *mut __sk_buff, ifindex: u32) -> i32 {
    let source = match packet::source_address::<L3_AFTER_ETHERNET>(skb) {
        Some((family, saddr)) => source_of(ifindex, family, &saddr),
        None => Source::Foreign,
    };
    if source == Source::Own {
        return PASS;
    }
    // SAFETY: presence only.
    if unsafe { VETHS.get(ifindex) }.is_none() {
        return PASS;
    }
    // SAFETY: skb context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let gov = governance(cgroup_id);
    if gov.unrestricted {
        return PASS;
    }
    let mut slot = MaybeUninit::uninit();
    let flow = Flow::zeroed_in(&mut slot);
    // Unparsed, the report shows what was read, zeros for the rest.
    let parsed = packet::parse::<L3_AFTER_ETHERNET>(skb, flow);
    let flow: &Flow = flow;
    if parsed && source == Source::LinkScoped && source_allowed(ifindex, flow, Origin::Judged) {
        return PASS;
    }
    deny_forged(cgroup_id, &gov, flow, 0)
}

/// What a frame's source is to the container behind the veth.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// One of its addresses (`VETH_SOURCES`), or IPv4's unspecified address
    /// (a DHCP client, IGMP before an address), which is a martian to every
    /// router and answered by no one.
    Own,
    /// An IPv6 link-local or unspecified address not known as its own:
    /// the kernel's neighbour discovery (before the resolver has read the
    /// container's link-local address, and duplicate address detection)
    /// may carry it, nothing else. A host forwards a packet back out of the
    /// port it came from whatever its link-local source, so another
    /// neighbour's link-local address is as forged as any.
    LinkScoped,
    Foreign,
}

#[inline(always)]
fn source_of(ifindex: u32, family: u8, addr: &[u8; 16]) -> Source {
    if family == 4 && addr[12..] == [0; 4] {
        return Source::Own;
    }
    if family == 6 && packet::is_v4_mapped(addr) {
        // An IPv6 header's v4-mapped source is none of the container's.
        return Source::Foreign;
    }
    let key = VethAddrKey {
        ifindex,
        _pad: 0,
        addr: *addr,
    };
    // SAFETY: presence only.
    if unsafe { VETH_SOURCES.get(key) }.is_some() {
        return Source::Own;
    }
    if family == 6 && ((addr[0] == 0xfe && addr[1] & 0xc0 == 0x80) || *addr == [0; 16]) {
        Source::LinkScoped
    } else {
        Source::Foreign
    }
}

/// Whether a parsed frame's source is one the container may send it from:
/// its own, or a link-scoped one on the kernel's link control.
#[inline(always)]
fn source_allowed(ifindex: u32, flow: &Flow, origin: Origin) -> bool {
    match source_of(ifindex, flow.family, &flow.saddr) {
        Source::Own => true,
        Source::LinkScoped => {
            flow.route_len == 0 && !flow.unjudgeable && is_link_control(flow, origin)
        }
        Source::Foreign => false,
    }
}

/// A frame whose source is none of the container's: refused (in audit
/// mode passed), counted and reported, whatever its destination.
#[inline(always)]
fn deny_forged(cgroup_id: u64, gov: &Governance, flow: &Flow, flags: u8) -> i32 {
    bump_stat(stat::FORGED_SOURCE);
    let decision = Decision::new(gov.on_miss, 0);
    count(gov.policy_id, decision.verdict());
    report_frame(cgroup_id, gov, &decision, flow, flags | EVENT_FORGED_SOURCE);
    if decision.verdict() == Verdict::Deny {
        DROP
    } else {
        PASS
    }
}

/// Reports a frame the veth program did not let through as allowed.
#[inline(always)]
fn report_frame(cgroup_id: u64, gov: &Governance, decision: &Decision, flow: &Flow, flags: u8) {
    with_event_scratch(|event| {
        event.hook = Hook::Veth as u8;
        event.socket_cookie = 0;
        event.flags = flags;
        event.saddr = flow.saddr;
        event.daddr = flow.daddr;
        event.sport = flow.sport;
        event.dport = flow.dport;
        event.family = flow.family;
        event.proto = flow.proto;
        report(cgroup_id, gov, &NOBODY, decision, event)
    });
}

/// Whether the packet's socket is in a cgroup contain's cgroup programs
/// run for (one they are attached to, or below one): the socket's cgroup
/// and its ancestors, from the root down, after the level where this CPU
/// last found one (one lookup on the common path).
#[inline(always)]
fn socket_is_governed(skb: *mut __sk_buff) -> bool {
    let hint = GOVERNED_LEVEL_HINT.get_ptr_mut(0);
    if let Some(hint) = hint {
        // SAFETY: per-CPU map value, this program's alone while it runs.
        let level = unsafe { *hint };
        if level < MAX_CGROUP_DEPTH && attached_ancestor(skb, level) == Some(true) {
            return true;
        }
    }
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        match attached_ancestor(skb, level) {
            None => return false,
            Some(false) => level += 1,
            Some(true) => {
                if let Some(hint) = hint {
                    // SAFETY: as above.
                    unsafe { *hint = level };
                }
                return true;
            }
        }
    }
    false
}

/// Whether the socket's ancestor cgroup at `level` is one contain's cgroup
/// programs are attached to; `None` past the socket's own level (or
/// without a full socket).
#[inline(always)]
fn attached_ancestor(skb: *mut __sk_buff, level: u32) -> Option<bool> {
    // SAFETY: skb context.
    let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
    // SAFETY: presence only.
    (id != 0).then(|| unsafe { ATTACHED_CGROUPS.get(id) }.is_some())
}

/// A full TCP or UDP socket (a host process's; the kernel's control
/// sockets are raw ones, its time-wait and request sockets not full).
#[inline(always)]
fn is_host_process_socket(sk: *mut bpf_sock) -> bool {
    // SAFETY: a socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return false;
    }
    // SAFETY: a full socket.
    let sock_type = unsafe { (*full).type_ };
    sock_type == SOCK_STREAM || sock_type == SOCK_DGRAM
}

/// Link control the kernel sends for the container's link: neighbour
/// discovery with hop limit 255 (to any neighbour address, RFC 4861), MLD
/// with hop limit 1 to link-scope multicast, IGMP with TTL 1 to
/// 224.0.0.0/24. Never from a packet socket, which writes what it likes.
#[inline(always)]
fn is_link_control(flow: &Flow, origin: Origin) -> bool {
    if flow.later_fragment || origin == Origin::PacketSocket {
        return false;
    }
    let d = &flow.daddr;
    if packet::is_neighbour_discovery(flow) {
        return flow.hop_limit == 255;
    }
    if packet::is_mld(flow) {
        return flow.hop_limit == 1 && d[0] == 0xff && d[1] == 0x02;
    }
    flow.family == 4
        && flow.proto == ip_proto::IGMP
        && flow.hop_limit == 1
        && d[12] == 224
        && d[13] == 0
        && d[14] == 0
}

/// A DNS query a host process (dockerd's embedded DNS) forwards from
/// inside the container's namespace, for a container whose policy lets it
/// use that DNS.
#[inline(always)]
fn is_forwarded_dns(flow: &Flow, origin: Origin, cgroup_id: u64) -> bool {
    if origin != (Origin::Unattributed { host_process: true }) {
        return false;
    }
    if flow.dport != DNS_PORT || (flow.proto != ip_proto::UDP && flow.proto != ip_proto::TCP) {
        return false;
    }
    // SAFETY: copied out at once.
    unsafe { CGROUPS.get(cgroup_id) }.is_some_and(|c| c.flags & CGROUP_FORWARDED_DNS != 0)
}

/// A packet of the kernel's own to an address that sent packets into the
/// container through this veth recently: its echo reply, reset or ICMP
/// error from one of its control sockets (not a host process's), or,
/// without a socket, a TCP segment without data (an IPv6 reset or
/// time-wait acknowledgement, a netfilter reset). The address spoke first;
/// a packet forged inside the container (over `lo`) never passed the veth,
/// so the kernel's answer to it stays judged. Anything else without a
/// socket is what the container's namespace forwards (a frame written on
/// `lo` to a remote address, say), which the rules judge.
#[inline(always)]
fn is_kernel_answer(skb: *mut __sk_buff, flow: &Flow, origin: Origin, ifindex: u32) -> bool {
    let answer = match origin {
        Origin::Unattributed {
            host_process: false,
        } => true,
        Origin::Socketless => is_dataless_tcp(skb, flow),
        _ => false,
    };
    if !answer {
        return false;
    }
    let key = VethAddrKey {
        ifindex,
        _pad: 0,
        addr: flow.daddr,
    };
    // SAFETY: copied out at once.
    let Some(seen) = (unsafe { VETH_PEERS.get(key) }).copied() else {
        return false;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    now.wrapping_sub(seen) <= udp_reply_timeout_ns()
}

/// A TCP segment that carries no data, with no IPv6 extension header: what
/// the kernel sends without a socket (a SYN-ACK under syncookies too, which
/// echoes the SYN's IPv4 options). Read with the helper: this is the rare
/// path of a frame no socket sent.
#[inline(always)]
fn is_dataless_tcp(skb: *mut __sk_buff, flow: &Flow) -> bool {
    if flow.proto != ip_proto::TCP || flow.later_fragment {
        return false;
    }
    let ctx = SkBuffContext::new(skb);
    let l3 = L3_AFTER_ETHERNET;
    let (ip_payload_len, l4) = if flow.family == 4 {
        let Ok(hdr) = ctx.load::<[u8; 4]>(l3) else {
            return false;
        };
        let header_len = usize::from(hdr[0] & 0x0f) * 4;
        if hdr[0] >> 4 != 4 || header_len < 20 {
            return false;
        }
        let total = u16::from_be_bytes([hdr[2], hdr[3]]);
        (total.wrapping_sub(header_len as u16), l3 + header_len)
    } else {
        let Ok(hdr) = ctx.load::<[u8; 8]>(l3) else {
            return false;
        };
        if hdr[6] != ip_proto::TCP {
            return false;
        }
        (u16::from_be_bytes([hdr[4], hdr[5]]), l3 + 40)
    };
    let Ok(data_offset) = ctx.load::<u8>(l4 + 12) else {
        return false;
    };
    let header_len = u16::from(data_offset >> 4) * 4;
    header_len >= 20 && ip_payload_len == header_len
}

/// How often a peer's entry is refreshed: once a second is enough for
/// expiry measured in tens of seconds, and spares a map update per packet.
const PEER_REFRESH_NS: u64 = 1_000_000_000;

/// What the host sends into a container through its veth (tc egress on the
/// host side). A frame the bridge reflects back to the port it came from
/// (hairpin mode) is the container's own: multicast and broadcast never
/// need that (the kernel loops them itself), and a packet socket's frame
/// must not come back as if another host had sent it; neither is noted as
/// a peer. Every other source that spoke for itself
/// ([`speaks_for_its_source`]) is noted, so the kernel may answer it.
#[inline(always)]
pub fn admit_inbound(skb: *mut __sk_buff) -> i32 {
    // SAFETY: the context is valid for the program's duration.
    let (ifindex, ingress_ifindex, sk) = unsafe {
        (
            (*skb).ifindex,
            (*skb).ingress_ifindex,
            (*skb).__bindgen_anon_2.sk,
        )
    };
    let ctx = SkBuffContext::new(skb);
    if ingress_ifindex == ifindex {
        let group_address = ctx.load::<u8>(0).map_or(true, |b| b & 1 != 0);
        // SAFETY: a socket pointer from the context; `family` is readable
        // on every kind of socket.
        let packet_socket = !sk.is_null() && !matches!(unsafe { (*sk).family }, AF_INET | AF_INET6);
        return if group_address || packet_socket {
            DROP
        } else {
            PASS
        };
    }
    let Some((_, addr)) = packet::source_address::<L3_AFTER_ETHERNET>(skb) else {
        return PASS;
    };
    let key = VethAddrKey {
        ifindex,
        _pad: 0,
        addr,
    };
    // The coarse clock (the last tick's time, no clock read): it lags the
    // precise one `is_kernel_answer` reads by at most a tick, so an entry
    // never looks younger than it is.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let memo = LAST_NOTED_PEER.get_ptr_mut(0);
    if let Some(memo) = memo {
        // SAFETY: per-CPU map value, this program's alone while it runs.
        let memo = unsafe { &*memo };
        if memo.is_fresh(&key, now) {
            return PASS;
        }
    }
    // SAFETY: copied out at once.
    let seen = unsafe { VETH_PEERS.get(key) }
        .copied()
        .filter(|&seen| now.wrapping_sub(seen) < PEER_REFRESH_NS);
    // A fresh entry is left as it is, whoever owns the veth now: the common
    // path (a peer of the container's flow) is the memo, or this one
    // lookup. Only an entry to write asks whether the veth is a
    // container's, or a new one that holds the kernel's answers; an
    // unowned veth's peers are never noted.
    let noted = match seen {
        Some(seen) => Some(seen),
        None => {
            // SAFETY: presence only.
            let owned = unsafe { VETHS.get(ifindex) }.is_some();
            ((owned || is_new_veth(ifindex)) && speaks_for_its_source(skb, ifindex, owned))
                .then(|| VETH_PEERS.insert(key, now, 0).is_ok().then_some(now))
                .flatten()
        }
    };
    if let (Some(memo), Some(seen)) = (memo, noted) {
        // SAFETY: as above.
        unsafe { *memo = NotedPeer { key, seen } };
    }
    PASS
}

/// Whether a packet into the container shows that its source spoke to it:
/// a packet the parser reads whole, not an ICMP error (conntrack lets one
/// in as related to a flow whoever sends it, so noting its source would let
/// the kernel answer any host on the Internet), not a later fragment (whose
/// first may have been one), and, on a veth with an owner, addressed to one
/// of the container's own addresses (a frame meant for a neighbour whose
/// MAC a packet socket took over on the bridge notes nothing). Read on the
/// rare path only: a peer's first packet, then one a second.
#[inline(always)]
fn speaks_for_its_source(skb: *mut __sk_buff, ifindex: u32, owned: bool) -> bool {
    let mut slot = MaybeUninit::uninit();
    let flow = Flow::zeroed_in(&mut slot);
    if !packet::parse::<L3_AFTER_ETHERNET>(skb, flow)
        || flow.unjudgeable
        || flow.later_fragment
        || is_icmp_error(flow.proto, (flow.dport >> 8) as u8)
    {
        return false;
    }
    let own = VethAddrKey {
        ifindex,
        _pad: 0,
        addr: flow.daddr,
    };
    // SAFETY: presence only.
    !owned || unsafe { VETH_SOURCES.get(own) }.is_some()
}

/// A peer `admit_inbound` found fresh in `VETH_PEERS` or noted there, with
/// the time its entry holds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NotedPeer {
    key: VethAddrKey,
    seen: u64,
}

impl NotedPeer {
    /// Whether this is `key`'s entry and young enough not to be refreshed.
    /// Compared as words: the program has no `memcmp`.
    #[inline(always)]
    fn is_fresh(&self, key: &VethAddrKey, now: u64) -> bool {
        self.key.ifindex == key.ifindex
            && crate::cache::words(&self.key.addr) == crate::cache::words(&key.addr)
            && now.wrapping_sub(self.seen) < PEER_REFRESH_NS
    }
}

/// The bit offset of `ip_summed` in the kernel's `struct sk_buff`, read by
/// the loader from the kernel's BTF and patched in at load time.
#[no_mangle]
static SKB_IP_SUMMED_BIT: u32 = 0;

/// The kernel's `CHECKSUM_PARTIAL`: a checksum still to be written.
const CHECKSUM_PARTIAL: u8 = 3;

/// Whether the frame asks for a checksum to be written later, at an offset
/// its sender chose: a packet socket with a `virtio_net_hdr`
/// (`PACKET_VNET_HDR`) or an AF_XDP socket with transmit metadata. A device
/// without checksum offload (the kernel's fallback) or the NIC then writes
/// 16 bits of the sender's choosing over a port or an address this program
/// judged. `contain_setsockopt` refuses the options, but a 32-bit
/// `setsockopt` (`int $0x80`) never reaches that hook; this check holds
/// either way. The context a tc program gets is the kernel's `sk_buff`.
#[inline(always)]
fn checksum_pending(skb: *mut __sk_buff) -> bool {
    let bit = crate::read_config(&SKB_IP_SUMMED_BIT);
    // SAFETY: a read of one byte of the context's sk_buff; the helper
    // checks the access, and a failed read counts as pending.
    match unsafe { bpf_probe_read_kernel(skb.cast::<u8>().add((bit / 8) as usize)) } {
        Ok(byte) => (byte >> (bit % 8)) & 3 == CHECKSUM_PARTIAL,
        Err(_) => true,
    }
}

/// Where the MAC address of the veth's other end is, from the kernel's BTF,
/// patched in at load time: `sk_buff`'s `dev` (the host-side veth, at tc
/// ingress), the offset of `netdev_priv` plus that of `struct veth_priv`'s
/// `peer` (the container's interface), `net_device`'s `dev_addr`, and
/// whether that is a pointer (from 5.17) or the bytes themselves. Zero
/// offsets (the loader could not tell) fail every check.
#[no_mangle]
pub(crate) static SKB_DEV_OFFSET: u32 = 0;
#[no_mangle]
static VETH_PEER_OFFSET: u32 = 0;
#[no_mangle]
static NETDEV_DEV_ADDR_OFFSET: u32 = 0;
#[no_mangle]
static NETDEV_DEV_ADDR_IS_POINTER: u32 = 0;

/// Whether a frame's Ethernet source is the MAC of the veth's other end:
/// read from the kernel at each frame, so a MAC set after the loader saw
/// the veth (Docker sets it once the interface is in the container's
/// namespace) is the one compared. A read that fails counts as another MAC.
#[inline(always)]
fn carries_its_devices_mac(skb: *mut __sk_buff) -> bool {
    let (dev_at, peer_at, addr_at) = (
        crate::read_config(&SKB_DEV_OFFSET),
        crate::read_config(&VETH_PEER_OFFSET),
        crate::read_config(&NETDEV_DEV_ADDR_OFFSET),
    );
    if dev_at == 0 || peer_at == 0 || addr_at == 0 {
        return false;
    }
    let Some(source) = packet::ethernet_source(skb) else {
        return false;
    };
    // SAFETY: reads of kernel memory through the helper, which checks each
    // access: the context's sk_buff, its device, that device's private
    // part (a veth's, where this program is attached) and the peer's MAC.
    let mac = unsafe {
        let Ok(dev) = bpf_probe_read_kernel(skb.cast::<u8>().add(dev_at as usize).cast::<u64>())
        else {
            return false;
        };
        let Ok(peer) = bpf_probe_read_kernel((dev + u64::from(peer_at)) as *const u64) else {
            return false;
        };
        if peer == 0 {
            return false;
        }
        let mut addr = peer + u64::from(addr_at);
        if crate::read_config(&NETDEV_DEV_ADDR_IS_POINTER) != 0 {
            let Ok(pointed) = bpf_probe_read_kernel(addr as *const u64) else {
                return false;
            };
            addr = pointed;
        }
        bpf_probe_read_kernel(addr as *const [u8; 6])
    };
    // Compared as words: the program has no `memcmp`.
    let word = |m: [u8; 6]| {
        u64::from(u32::from_ne_bytes([m[0], m[1], m[2], m[3]])) << 16
            | u64::from(u16::from_ne_bytes([m[4], m[5]]))
    };
    mac.is_ok_and(|mac| word(mac) == word(source))
}

/// A frame that is not IP (or not readable as IP): reported with its
/// ethertype as the "port".
#[inline(always)]
fn deny_frame(cgroup_id: u64, gov: &Governance, ethertype: u32, flags: u8) -> i32 {
    let verdict = gov.on_miss;
    count(gov.policy_id, verdict);
    with_event_scratch(|event| {
        event.hook = Hook::Veth as u8;
        event.socket_cookie = 0;
        event.flags = flags;
        event.saddr = [0; 16];
        event.daddr = [0; 16];
        event.sport = 0;
        event.dport = ethertype as u16;
        event.family = 0;
        event.proto = 0;
        report(cgroup_id, gov, &NOBODY, &Decision::new(verdict, 0), event)
    });
    if verdict == Verdict::Deny {
        DROP
    } else {
        PASS
    }
}
