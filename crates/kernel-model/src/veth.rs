//! The veth backstop's decision, replayed on a [`KernelState`]: what
//! `contain_veth` (tc ingress on the host side of a container's veth, the
//! container's egress) does with one frame, sorted by the socket the kernel
//! keeps on it ([`Origin`]); and what `contain_veth_inbound` (tc egress
//! there, into the container) does with one frame ([`admit_inbound`]).
//!
//! This mirrors `contain-ebpf/src/veth.rs` (`judge_frame` and what it
//! calls: `judge_source`, `source_of`, `source_allowed`,
//! `is_link_control`, `is_forwarded_dns`, `is_kernel_answer`,
//! `deny_forged`, `deny_frame`; `admit_inbound` and
//! `speaks_for_its_source`); the differential test
//! (`bpf-loader/tests/veth_differential.rs`) holds the two equal on random
//! states and frames, for the origins a test run can give a frame.
//!
//! Two inputs are not in [`KernelState`]: who sent the frame (the socket's
//! kind and cgroup, which the kernel reads from the packet) and whether its
//! destination sent packets into the container through this veth within
//! the UDP reply timeout (`VETH_PEERS`, which the kernel writes and the
//! loader never does).

use std::net::IpAddr;

use contain_common::{ip_proto, is_icmp_error, stat};

use crate::{
    decide::{
        governance, is_kernel_link_control, is_link_protocol, is_loopback, judge_route, Governance,
        Lookup, Packet,
    },
    state::{KernelState, Verdict, VethSource},
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;

/// No cgroup's id: its governance is the unknown-container verdict.
const UNKNOWN_CGROUP: u64 = 0;
const DNS_PORT: u16 = 53;

/// Who sent a frame: the socket the kernel keeps on it, which no frame can
/// forge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An IP socket (`AF_INET`, `AF_INET6`) of cgroup `cgroup_id`, which is
    /// or is below a cgroup contain's cgroup programs are attached to: they
    /// judged the packet, all but its source.
    Judged { cgroup_id: u64 },
    /// A packet socket (to the kernel: any socket not `AF_INET` or
    /// `AF_INET6`), made in `governed_cgroup` when that is one contain's
    /// cgroup programs run for, else outside them (`None`).
    PacketSocket { governed_cgroup: Option<u64> },
    /// No socket: what the container's namespace forwards, and the few
    /// answers the kernel sends without one.
    Socketless,
    /// An IP socket outside the cgroups contain's programs run for: the
    /// kernel's control sockets, or a host process's socket working in the
    /// container's namespace.
    Unattributed {
        /// A full TCP or UDP socket (dockerd's DNS forwarder is one): a
        /// host process's, not the kernel's.
        host_process: bool,
    },
}

/// One frame on the host side of a veth, as the kernel reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The packet's protocol (`skb->protocol`): the Ethernet type, or the
    /// one inside a VLAN tag the device took off.
    pub ethertype: u16,
    /// A VLAN tag the device took off into the packet's metadata
    /// (`vlan_present`).
    pub vlan_tagged: bool,
    /// For an IP ethertype, the source address where its header keeps it,
    /// of the ethertype's family, when those bytes are in the frame (read
    /// even when the header cannot be parsed); ignored for any other.
    pub source: Option<IpAddr>,
    /// The IP packet as the kernel's parser reads it, `None` when it cannot
    /// (truncated, the wrong version, an IPv4 header length under 20).
    /// The family of its header is the family of `packet.source`;
    /// `tcp_opening` and `over_loopback` do not matter here.
    pub packet: Option<Packet>,
    /// A TCP segment without data and without IPv6 extension headers (what
    /// the kernel sends without a socket: resets, time-wait ACKs).
    pub dataless_tcp: bool,
    /// The destination sent packets into the container through this veth
    /// within the UDP reply timeout (`VETH_PEERS`).
    pub dest_recent_peer: bool,
    /// The Ethernet source is the MAC of the veth's other end, the
    /// container's interface: what the kernel writes on every frame but a
    /// packet socket's.
    pub from_devices_mac: bool,
}

/// Why the veth program decided as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The veth is mapped to no container and no governed socket sent the
    /// frame: passed and counted as unowned.
    Unowned,
    /// An IP socket's packet the cgroup programs judged, whose source is
    /// the container's (or the veth has no container to check it against).
    Judged,
    /// No policy selects the container.
    Unrestricted,
    /// The kernel's ARP (never a packet socket's).
    Arp,
    /// Not IP: another ethertype, a VLAN tag, a packet socket's ARP.
    NotIp,
    /// An IP ethertype whose header the parser cannot read.
    Unparsable,
    /// A source none of the container's, or a packet socket's frame from
    /// another MAC than the container's interface.
    ForgedSource,
    /// Neighbour discovery, MLD or IGMP shaped as the kernel sends them
    /// (never a packet socket's).
    LinkControl,
    /// A loopback destination or a source route that cannot be read: never
    /// allowed.
    Unjudgeable,
    /// Every address of a source route judged by the rules.
    SourceRoute,
    /// The rules, with no process identity (container-wide rules only).
    Rules,
    /// A DNS query a host process forwards for a container whose policy
    /// allows Docker's DNS.
    ForwardedDns,
    /// The kernel's answer to an address that spoke into the container
    /// through this veth.
    KernelAnswer,
}

/// The veth program's decision on one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameVerdict {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The governance the frame was judged under, when a cgroup's was
    /// looked up.
    pub governance: Option<Governance>,
    /// The rule decision for the destination, when one was made.
    pub lookup: Option<Lookup>,
}

impl FrameVerdict {
    /// Whether the frame passes (an audited one does).
    pub fn passes(&self) -> bool {
        self.verdict != Verdict::Deny
    }

    /// The policy whose counter (`COUNTERS`) the kernel moves under
    /// `verdict`: every frame judged, not those let through unjudged.
    pub fn counted_policy(&self) -> Option<u32> {
        match self.reason {
            Reason::Unowned
            | Reason::Judged
            | Reason::Unrestricted
            | Reason::Arp
            | Reason::LinkControl => None,
            Reason::NotIp
            | Reason::Unparsable
            | Reason::ForgedSource
            | Reason::Unjudgeable
            | Reason::SourceRoute
            | Reason::Rules
            | Reason::ForwardedDns
            | Reason::KernelAnswer => self.governance.map(|g| g.policy_id),
        }
    }

    /// The `STATS` index the kernel bumps (`contain_common::stat`).
    pub fn stat(&self) -> Option<u32> {
        match self.reason {
            Reason::Unowned => Some(stat::VETH_UNOWNED),
            Reason::Unparsable => Some(stat::UNPARSED),
            Reason::ForgedSource => Some(stat::FORGED_SOURCE),
            _ => None,
        }
    }
}

/// What a frame's source is to the container behind the veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// One of its addresses (`VETH_SOURCES`), or IPv4's unspecified one.
    Own,
    /// IPv6 link-local or unspecified, not its own: only the kernel's link
    /// control may carry it.
    LinkScoped,
    Foreign,
}

/// `contain_veth`'s decision on `frame`, from `origin`, arriving on the
/// host-side veth `ifindex`: `judge_frame` in `contain-ebpf/src/veth.rs`,
/// step for step.
pub fn judge_frame(
    state: &KernelState,
    ifindex: u32,
    origin: Origin,
    frame: &Frame,
) -> FrameVerdict {
    judge_frame_on(state, ifindex, VethAge::Settled, origin, frame)
}

/// Whether the loader saw a veth appear while it ran, and its hold has not
/// ended (`NEW_VETHS`; `contain_common::DEFAULT_NEW_VETH_HOLD_SECS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VethAge {
    New,
    Settled,
}

/// [`judge_frame`] on a veth of age `age`: a new veth no container owns yet
/// holds frames of no socket (what a new container's namespace forwards)
/// and of the kernel's own sockets (its answers to a source forged on the
/// container's `lo`) to the unknown-container verdict, as the container's
/// own sockets are; the kernel's answers to peers that spoke first pass.
pub fn judge_frame_on(
    state: &KernelState,
    ifindex: u32,
    age: VethAge,
    origin: Origin,
    frame: &Frame,
) -> FrameVerdict {
    let pass = |reason, governance| FrameVerdict {
        verdict: Verdict::Allow,
        reason,
        governance,
        lookup: None,
    };
    if let Origin::Judged { cgroup_id } = origin {
        return judge_source(state, ifindex, cgroup_id, frame);
    }
    let owner = state.veths.get(&ifindex).copied();
    // A governed packet socket is judged under its own cgroup; anything
    // else under the container behind the veth.
    let cgroup_id = match (origin, owner) {
        (
            Origin::PacketSocket {
                governed_cgroup: Some(cgroup_id),
            },
            _,
        ) => cgroup_id,
        (_, Some(owner)) => owner,
        (
            Origin::Socketless
            | Origin::Unattributed {
                host_process: false,
            },
            None,
        ) if age == VethAge::New => UNKNOWN_CGROUP,
        (_, None) => return pass(Reason::Unowned, None),
    };
    let gov = governance(state, cgroup_id);
    if gov.unrestricted {
        return pass(Reason::Unrestricted, Some(gov));
    }
    let missed = |reason| FrameVerdict {
        verdict: gov.on_miss,
        reason,
        governance: Some(gov),
        lookup: None,
    };
    let packet_socket = matches!(origin, Origin::PacketSocket { .. });
    if frame.vlan_tagged || !is_ip(frame.ethertype) {
        if frame.ethertype == ETH_P_ARP && !frame.vlan_tagged && !packet_socket {
            return pass(Reason::Arp, Some(gov));
        }
        return missed(Reason::NotIp);
    }
    let Some(packet) = &frame.packet else {
        return missed(Reason::Unparsable);
    };
    // A neighbour's MAC would have the bridge hand that neighbour's
    // traffic to the container.
    if packet_socket && !frame.from_devices_mac {
        return missed(Reason::ForgedSource);
    }
    if owner.is_some() && !source_allowed(state, ifindex, packet, origin) {
        return missed(Reason::ForgedSource);
    }
    // The container's loopback traffic never crosses its veth; a packet
    // socket's neighbour discovery, MLD or IGMP would steer where its
    // neighbours send (no rule allows them).
    let unjudgeable = packet.unjudgeable
        || is_loopback(packet.dest)
        || (packet_socket && is_link_protocol(packet));
    let source_routed = !packet.route.is_empty() || unjudgeable;
    if !source_routed && is_link_control(packet, origin) {
        return pass(Reason::LinkControl, Some(gov));
    }
    if unjudgeable {
        return missed(Reason::Unjudgeable);
    }
    let (verdict, lookup) = judge_route(state, cgroup_id, None, packet);
    let judged = |verdict, reason| FrameVerdict {
        verdict,
        reason,
        governance: Some(gov),
        lookup: Some(lookup.clone()),
    };
    if verdict != Verdict::Allow && !source_routed {
        if is_forwarded_dns(state, packet, origin, cgroup_id) {
            return judged(Verdict::Allow, Reason::ForwardedDns);
        }
        if is_kernel_answer(frame, packet, origin) {
            return judged(Verdict::Allow, Reason::KernelAnswer);
        }
    }
    let reason = if source_routed {
        Reason::SourceRoute
    } else {
        Reason::Rules
    };
    judged(verdict, reason)
}

/// A packet the cgroup programs judged: only its source is left, under the
/// policy of the socket's cgroup, once the veth is mapped.
fn judge_source(state: &KernelState, ifindex: u32, cgroup_id: u64, frame: &Frame) -> FrameVerdict {
    let pass = |reason, governance| FrameVerdict {
        verdict: Verdict::Allow,
        reason,
        governance,
        lookup: None,
    };
    let source = match frame.source {
        Some(source) if is_ip(frame.ethertype) => source_of(state, ifindex, source),
        _ => Source::Foreign,
    };
    if source == Source::Own || !state.veths.contains_key(&ifindex) {
        return pass(Reason::Judged, None);
    }
    let gov = governance(state, cgroup_id);
    if gov.unrestricted {
        return pass(Reason::Unrestricted, Some(gov));
    }
    let judged = Origin::Judged { cgroup_id };
    let link_control = source == Source::LinkScoped
        && frame
            .packet
            .as_ref()
            .is_some_and(|p| source_allowed(state, ifindex, p, judged));
    if link_control {
        return pass(Reason::LinkControl, Some(gov));
    }
    FrameVerdict {
        verdict: gov.on_miss,
        reason: Reason::ForgedSource,
        governance: Some(gov),
        lookup: None,
    }
}

fn is_ip(ethertype: u16) -> bool {
    ethertype == ETH_P_IP || ethertype == ETH_P_IPV6
}

/// The family of a source is its header's: an IPv6 header's v4-mapped
/// source is none of the container's.
fn source_of(state: &KernelState, ifindex: u32, source: IpAddr) -> Source {
    match source {
        IpAddr::V4(s) if s.is_unspecified() => return Source::Own,
        IpAddr::V6(s) if s.to_ipv4_mapped().is_some() => return Source::Foreign,
        _ => {}
    }
    if state
        .veth_sources
        .contains(&VethSource::new(ifindex, source))
    {
        return Source::Own;
    }
    match source {
        IpAddr::V6(s) if s.segments()[0] & 0xffc0 == 0xfe80 || s.is_unspecified() => {
            Source::LinkScoped
        }
        _ => Source::Foreign,
    }
}

/// The container's own source, or a link-scoped one on link control.
fn source_allowed(state: &KernelState, ifindex: u32, packet: &Packet, origin: Origin) -> bool {
    match source_of(state, ifindex, packet.source) {
        Source::Own => true,
        Source::LinkScoped => {
            packet.route.is_empty() && !packet.unjudgeable && is_link_control(packet, origin)
        }
        Source::Foreign => false,
    }
}

/// Neighbour discovery and MLD (as the egress program exempts them) and
/// IGMP with TTL 1 to 224.0.0.0/24; never from a packet socket.
fn is_link_control(packet: &Packet, origin: Origin) -> bool {
    if packet.later_fragment || matches!(origin, Origin::PacketSocket { .. }) {
        return false;
    }
    let igmp = match (packet.source, packet.dest) {
        (IpAddr::V4(_), IpAddr::V4(d)) => {
            let d = d.octets();
            packet.proto == ip_proto::IGMP && packet.hop_limit == 1 && d[..3] == [224, 0, 0]
        }
        _ => false,
    };
    igmp || is_kernel_link_control(packet)
}

/// A DNS query a host process forwards for a container whose policy lets
/// it use Docker's DNS.
fn is_forwarded_dns(state: &KernelState, packet: &Packet, origin: Origin, cgroup_id: u64) -> bool {
    origin == (Origin::Unattributed { host_process: true })
        && !packet.later_fragment
        && packet.port == DNS_PORT
        && (packet.proto == ip_proto::UDP || packet.proto == ip_proto::TCP)
        && state
            .cgroups
            .get(&cgroup_id)
            .is_some_and(|c| c.forwarded_dns)
}

/// The kernel answering an address that spoke into the container through
/// this veth: from one of its control sockets, or without a socket a TCP
/// segment without data.
fn is_kernel_answer(frame: &Frame, packet: &Packet, origin: Origin) -> bool {
    let answer = match origin {
        Origin::Unattributed {
            host_process: false,
        } => true,
        Origin::Socketless => {
            frame.dataless_tcp && packet.proto == ip_proto::TCP && !packet.later_fragment
        }
        _ => false,
    };
    answer && frame.dest_recent_peer
}

/// How a frame into a container came to the host side of its veth, as
/// `contain_veth_inbound` tells from `ingress_ifindex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Through another device (another port of the bridge, a route), or
    /// sent by the host itself.
    Elsewhere,
    /// Sent back out of the port it came in on by a bridge in hairpin mode
    /// (`ingress_ifindex == ifindex`): a frame the container sent.
    Reflected {
        /// The destination MAC is a group address (multicast, broadcast:
        /// its first byte's low bit set), or its first byte cannot be read
        /// (which no test run's frame, at least an Ethernet header, is).
        to_group: bool,
        /// Who sent it, as [`judge_frame_on`] took it on its way out.
        origin: Origin,
    },
}

/// What `contain_veth_inbound` does with a frame into a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundVerdict {
    /// Passed on; else dropped (`TC_ACT_SHOT`).
    pub passes: bool,
    /// The source noted as a peer of the veth (`VETH_PEERS`), so that the
    /// kernel's answers to it pass ([`Frame::dest_recent_peer`]).
    pub noted: Option<IpAddr>,
}

/// `contain_veth_inbound`'s decision on `frame`, into a container through
/// veth `ifindex` of age `age`: `admit_inbound` in
/// `contain-ebpf/src/veth.rs`. A frame the bridge reflected is the
/// container's own and notes nothing: dropped when it goes to a group (the
/// kernel loops multicast and broadcast back itself) or a packet socket
/// sent it (it must not come back as if another host had sent it), passed
/// otherwise. Every other frame passes, its source noted when it spoke for
/// itself (`noted_source`).
pub fn admit_inbound(
    state: &KernelState,
    ifindex: u32,
    age: VethAge,
    arrival: Arrival,
    frame: &Frame,
) -> InboundVerdict {
    match arrival {
        Arrival::Reflected { to_group, origin } => InboundVerdict {
            passes: !to_group && !matches!(origin, Origin::PacketSocket { .. }),
            noted: None,
        },
        Arrival::Elsewhere => InboundVerdict {
            passes: true,
            noted: noted_source(state, ifindex, age, frame),
        },
    }
}

/// The source noted of `frame`, one not reflected: on a veth with an owner
/// or a new one (no other veth's peers are noted), a packet the parser
/// reads whole, not a later fragment, not an ICMP error (conntrack lets one
/// in from any host as related to a flow; its source never spoke), and on
/// a veth with an owner, addressed to one of the container's own addresses
/// (not to a neighbour whose MAC the container took over on the bridge).
fn noted_source(state: &KernelState, ifindex: u32, age: VethAge, frame: &Frame) -> Option<IpAddr> {
    let packet = frame.packet.as_ref()?;
    let owned = state.veths.contains_key(&ifindex);
    let spoke = (owned || age == VethAge::New)
        && is_ip(frame.ethertype)
        && !packet.unjudgeable
        && !packet.later_fragment
        && !is_icmp_error(packet.proto, (packet.port >> 8) as u8)
        && (!owned
            || state
                .veth_sources
                .contains(&VethSource::new(ifindex, packet.dest)));
    spoke.then_some(packet.source)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{
        prefix::{addr_key, Prefix},
        state::{CgroupEntry, DestPrefix, Entry, PortPrefix, ProcessKey, ProcessMatch},
    };

    const CT: u64 = 42;
    const OTHER_CT: u64 = 43;
    const VETH: u32 = 7;
    const OWN4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const OWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 2);
    const OWN_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
    const PEER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn entry(policy_id: u32) -> CgroupEntry {
        CgroupEntry {
            policy_id,
            audit: false,
            unrestricted: false,
            forwarded_dns: false,
        }
    }

    /// The container CT behind VETH, with its three addresses; policy 1
    /// allows TCP 443 to PEER4, and class 1 (a process's) any UDP there.
    fn state() -> KernelState {
        let mut s = KernelState::default();
        s.upsert(Entry::Cgroup {
            id: CT,
            value: entry(1),
        });
        s.upsert(Entry::Cgroup {
            id: OTHER_CT,
            value: entry(2),
        });
        s.upsert(Entry::Veth {
            ifindex: VETH,
            cgroup_id: CT,
        });
        for addr in [IpAddr::V4(OWN4), OWN6.into(), OWN_LL.into()] {
            s.upsert(Entry::VethSource {
                key: VethSource::new(VETH, addr),
            });
        }
        for (class, ruleset, proto, port, port_bits) in
            [(0, 1, ip_proto::TCP, 443, 16), (1, 2, ip_proto::UDP, 0, 0)]
        {
            s.upsert(Entry::Dest {
                key: DestPrefix {
                    policy_id: 1,
                    class,
                    addr: Prefix::new(addr_key(PEER4.into()), 128).key_bytes(),
                    prefix_len: 128,
                },
                ruleset,
            });
            s.upsert(Entry::Port {
                key: PortPrefix {
                    ruleset,
                    proto,
                    port,
                    port_bits,
                },
                rule_id: 9,
            });
        }
        s.upsert(Entry::Process {
            key: ProcessKey {
                policy_id: 1,
                process: ProcessMatch::Comm(5),
            },
            class: 1,
        });
        s
    }

    fn packet(source: IpAddr, dest: IpAddr, proto: u8, port: u16) -> Packet {
        Packet {
            source,
            dest,
            proto,
            port,
            tcp_opening: false,
            later_fragment: false,
            hop_limit: 64,
            route: Vec::new(),
            unjudgeable: false,
            over_loopback: false,
        }
    }

    fn frame(packet: Packet) -> Frame {
        Frame {
            ethertype: if packet.source.is_ipv4() {
                ETH_P_IP
            } else {
                ETH_P_IPV6
            },
            vlan_tagged: false,
            source: Some(packet.source),
            packet: Some(packet),
            dataless_tcp: false,
            dest_recent_peer: false,
            from_devices_mac: true,
        }
    }

    /// A TCP SYN from the container's IPv4 address.
    fn tcp4(dest: Ipv4Addr, port: u16) -> Frame {
        frame(packet(OWN4.into(), dest.into(), ip_proto::TCP, port))
    }

    fn not_ip(ethertype: u16) -> Frame {
        Frame {
            ethertype,
            vlan_tagged: false,
            source: None,
            packet: None,
            dataless_tcp: false,
            dest_recent_peer: false,
            from_devices_mac: true,
        }
    }

    /// Neighbour solicitation from `source` with `hop_limit`.
    fn solicitation(source: Ipv6Addr, hop_limit: u8) -> Frame {
        frame(Packet {
            hop_limit,
            ..packet(
                source.into(),
                "ff02::1:ff00:1".parse().unwrap(),
                ip_proto::ICMPV6,
                135 << 8,
            )
        })
    }

    const SOCKETLESS: Origin = Origin::Socketless;
    const KERNEL: Origin = Origin::Unattributed {
        host_process: false,
    };
    const HOST_PROCESS: Origin = Origin::Unattributed { host_process: true };
    const PACKET: Origin = Origin::PacketSocket {
        governed_cgroup: Some(CT),
    };
    const JUDGED: Origin = Origin::Judged { cgroup_id: CT };

    fn decided(v: &FrameVerdict) -> (Verdict, Reason) {
        (v.verdict, v.reason)
    }

    #[test]
    fn the_rules_judge_with_container_wide_rules_only() {
        let s = state();
        for origin in [SOCKETLESS, KERNEL, HOST_PROCESS, PACKET] {
            let v = judge_frame(&s, VETH, origin, &tcp4(PEER4, 443));
            assert_eq!(decided(&v), (Verdict::Allow, Reason::Rules), "{origin:?}");
            assert_eq!(v.counted_policy(), Some(1));
            assert_eq!(v.stat(), None);
            let v = judge_frame(&s, VETH, origin, &tcp4(PEER4, 444));
            assert_eq!(decided(&v), (Verdict::Deny, Reason::Rules), "{origin:?}");
            // Class 1's UDP rule is a process's: a frame has no process.
            let udp = frame(packet(OWN4.into(), PEER4.into(), ip_proto::UDP, 53));
            let v = judge_frame(&s, VETH, origin, &udp);
            assert_eq!(v.verdict, Verdict::Deny, "{origin:?}");
            assert_eq!(v.lookup.map(|l| l.class), Some(0));
        }
    }

    #[test]
    fn a_packet_sockets_frame_from_another_mac_is_forged() {
        let mut s = state();
        let allowed = Frame {
            from_devices_mac: false,
            ..tcp4(PEER4, 443)
        };
        let v = judge_frame(&s, VETH, PACKET, &allowed);
        assert_eq!(decided(&v), (Verdict::Deny, Reason::ForgedSource));
        assert_eq!(v.stat(), Some(stat::FORGED_SOURCE));
        // On an unmapped veth too: the MAC is the veth's other end's.
        s.veths.clear();
        let v = judge_frame(&s, VETH, PACKET, &allowed);
        assert_eq!(decided(&v), (Verdict::Deny, Reason::ForgedSource));
        // Audit mode passes it, reported.
        s.upsert(Entry::Cgroup {
            id: CT,
            value: CgroupEntry {
                audit: true,
                ..entry(1)
            },
        });
        let v = judge_frame(&s, VETH, PACKET, &allowed);
        assert_eq!(decided(&v), (Verdict::Audit, Reason::ForgedSource));
    }

    #[test]
    fn an_unmapped_veth_passes_what_no_governed_socket_sent() {
        let mut s = state();
        s.veths.clear();
        let denied = tcp4(PEER4, 444);
        for origin in [
            SOCKETLESS,
            KERNEL,
            Origin::PacketSocket {
                governed_cgroup: None,
            },
        ] {
            let v = judge_frame(&s, VETH, origin, &denied);
            assert_eq!(decided(&v), (Verdict::Allow, Reason::Unowned));
            assert_eq!(v.stat(), Some(stat::VETH_UNOWNED));
            assert_eq!(v.counted_policy(), None);
        }
        // A governed packet socket is its cgroup's, mapped veth or not,
        // with no source to check against.
        let forged = frame(packet(
            Ipv4Addr::new(198, 18, 0, 66).into(),
            PEER4.into(),
            ip_proto::TCP,
            443,
        ));
        let v = judge_frame(&s, VETH, PACKET, &forged);
        assert_eq!(decided(&v), (Verdict::Allow, Reason::Rules));
        assert_eq!(
            judge_frame(&s, VETH, PACKET, &denied).verdict,
            Verdict::Deny
        );
        // A judged packet passes whatever its source.
        let v = judge_frame(&s, VETH, JUDGED, &forged);
        assert_eq!(decided(&v), (Verdict::Allow, Reason::Judged));
        assert_eq!(v.stat(), None);
    }

    /// A new veth no container owns holds what no socket sent (a new
    /// container's forwarding) to the unknown-container verdict; ARP and
    /// the kernel's link control still pass, other origins are as on any
    /// unowned veth, and an owner or a settled veth ends the hold.
    #[test]
    fn a_new_unowned_veth_holds_frames_of_no_socket_and_the_kernels_to_the_unknown_verdict() {
        let mut s = state();
        s.veths.clear();
        let on_new = |s: &KernelState, origin, frame: &Frame| {
            judge_frame_on(s, VETH, VethAge::New, origin, frame)
        };
        let allowed_elsewhere = tcp4(PEER4, 443);
        let v = on_new(&s, SOCKETLESS, &allowed_elsewhere);
        assert_eq!(decided(&v), (Verdict::Deny, Reason::Rules));
        assert_eq!(
            v.governance.map(|g| g.policy_id),
            Some(contain_common::UNKNOWN_POLICY_ID)
        );
        assert_eq!(v.counted_policy(), Some(contain_common::UNKNOWN_POLICY_ID));
        // A forged source is no more than what the verdict already says.
        let forged = frame(packet(
            Ipv4Addr::new(203, 0, 113, 9).into(),
            PEER4.into(),
            ip_proto::UDP,
            9,
        ));
        assert_eq!(on_new(&s, SOCKETLESS, &forged).verdict, Verdict::Deny);
        assert_eq!(
            decided(&on_new(&s, SOCKETLESS, &not_ip(ETH_P_ARP))),
            (Verdict::Allow, Reason::Arp)
        );
        assert_eq!(
            decided(&on_new(&s, SOCKETLESS, &solicitation(OWN_LL, 255))),
            (Verdict::Allow, Reason::LinkControl)
        );
        // The kernel's echo reply to a source forged on the container's lo
        // is held; its answer to a peer that spoke first through the veth
        // passes.
        let reply = frame(packet(
            OWN4.into(),
            Ipv4Addr::new(203, 0, 113, 9).into(),
            ip_proto::ICMP,
            0,
        ));
        assert_eq!(
            decided(&on_new(&s, KERNEL, &reply)),
            (Verdict::Deny, Reason::Rules)
        );
        let answer = Frame {
            dest_recent_peer: true,
            ..reply.clone()
        };
        assert_eq!(
            decided(&on_new(&s, KERNEL, &answer)),
            (Verdict::Allow, Reason::KernelAnswer)
        );
        // A host process's socket in the namespace (another tool's
        // container, dockerd's DNS forwarder) and a packet socket outside
        // contain's cgroups are not held.
        for origin in [
            HOST_PROCESS,
            Origin::PacketSocket {
                governed_cgroup: None,
            },
        ] {
            assert_eq!(
                decided(&on_new(&s, origin, &allowed_elsewhere)),
                (Verdict::Allow, Reason::Unowned),
                "{origin:?}"
            );
        }
        s.unknown_verdict = Verdict::Allow;
        assert_eq!(on_new(&s, SOCKETLESS, &forged).verdict, Verdict::Allow);
        s.unknown_verdict = Verdict::Deny;
        assert_eq!(
            decided(&judge_frame(&s, VETH, SOCKETLESS, &forged)),
            (Verdict::Allow, Reason::Unowned),
            "a settled veth"
        );
        let owned = state();
        assert_eq!(
            decided(&on_new(&owned, SOCKETLESS, &allowed_elsewhere)),
            (Verdict::Allow, Reason::Rules),
            "owned: its container's rules"
        );
    }

    #[test]
    fn a_governed_packet_socket_is_judged_under_its_own_cgroup() {
        let s = state();
        let packet_socket = Origin::PacketSocket {
            governed_cgroup: Some(OTHER_CT),
        };
        // OTHER_CT's policy 2 allows nothing; the veth's owner would.
        let v = judge_frame(&s, VETH, packet_socket, &tcp4(PEER4, 443));
        assert_eq!(decided(&v), (Verdict::Deny, Reason::Rules));
        assert_eq!(v.counted_policy(), Some(2));
    }

    #[test]
    fn unrestricted_containers_pass_everything() {
        let mut s = state();
        s.upsert(Entry::Cgroup {
            id: CT,
            value: CgroupEntry {
                unrestricted: true,
                ..entry(0)
            },
        });
        let forged = frame(packet(
            Ipv4Addr::new(10, 0, 0, 9).into(),
            PEER4.into(),
            ip_proto::TCP,
            1,
        ));
        for origin in [SOCKETLESS, KERNEL, PACKET, JUDGED] {
            for f in [&forged, &not_ip(0x88cc), &tcp4(PEER4, 1)] {
                let v = judge_frame(&s, VETH, origin, f);
                assert_eq!(v.verdict, Verdict::Allow, "{origin:?} {f:?}");
                assert_ne!(v.reason, Reason::ForgedSource);
                assert_eq!(v.counted_policy(), None);
            }
        }
    }

    #[test]
    fn arp_passes_but_from_packet_sockets_and_other_ethertypes_do_not() {
        let s = state();
        for origin in [SOCKETLESS, KERNEL, HOST_PROCESS] {
            let v = judge_frame(&s, VETH, origin, &not_ip(ETH_P_ARP));
            assert_eq!(decided(&v), (Verdict::Allow, Reason::Arp));
            assert_eq!(v.counted_policy(), None);
        }
        let v = judge_frame(&s, VETH, PACKET, &not_ip(ETH_P_ARP));
        assert_eq!(decided(&v), (Verdict::Deny, Reason::NotIp));
        assert_eq!(v.counted_policy(), Some(1));
        for ethertype in [0x8100, 0x88cc, 0x8847] {
            let v = judge_frame(&s, VETH, SOCKETLESS, &not_ip(ethertype));
            assert_eq!(decided(&v), (Verdict::Deny, Reason::NotIp));
        }
        // A tag the device took off: dropped whatever it carries.
        for f in [not_ip(ETH_P_ARP), tcp4(PEER4, 443)] {
            let tagged = Frame {
                vlan_tagged: true,
                ..f
            };
            let v = judge_frame(&s, VETH, KERNEL, &tagged);
            assert_eq!(decided(&v), (Verdict::Deny, Reason::NotIp));
        }
    }

    #[test]
    fn unparsable_frames_get_the_miss_verdict_and_are_counted() {
        let mut s = state();
        let truncated = Frame {
            packet: None,
            ..tcp4(PEER4, 443)
        };
        let v = judge_frame(&s, VETH, KERNEL, &truncated);
        assert_eq!(decided(&v), (Verdict::Deny, Reason::Unparsable));
        assert_eq!(v.stat(), Some(stat::UNPARSED));
        s.upsert(Entry::Cgroup {
            id: CT,
            value: CgroupEntry {
                audit: true,
                ..entry(1)
            },
        });
        let v = judge_frame(&s, VETH, KERNEL, &truncated);
        assert_eq!(decided(&v), (Verdict::Audit, Reason::Unparsable));
        assert!(v.passes());
    }

    #[test]
    fn sources_must_be_the_containers_own() {
        let s = state();
        let from = |source: IpAddr| {
            let dest = if source.is_ipv4() {
                IpAddr::V4(PEER4)
            } else {
                "::ffff:198.18.0.1".parse().unwrap()
            };
            frame(packet(source, dest, ip_proto::TCP, 443))
        };
        let own = [
            IpAddr::V4(OWN4),
            Ipv4Addr::UNSPECIFIED.into(),
            OWN6.into(),
            OWN_LL.into(),
        ];
        let forged = [
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)),
            "2001:db8:77::3".parse().unwrap(),
            // An IPv6 header's v4-mapped source, even of its own IPv4.
            "::ffff:198.18.0.2".parse().unwrap(),
            "fe80::3".parse().unwrap(),
            Ipv6Addr::UNSPECIFIED.into(),
        ];
        for origin in [SOCKETLESS, KERNEL, PACKET] {
            for source in own {
                let v = judge_frame(&s, VETH, origin, &from(source));
                assert_eq!(v.reason, Reason::Rules, "{origin:?} from {source}");
            }
            for source in forged {
                let v = judge_frame(&s, VETH, origin, &from(source));
                assert_eq!(
                    decided(&v),
                    (Verdict::Deny, Reason::ForgedSource),
                    "{origin:?} from {source}"
                );
                assert_eq!(v.stat(), Some(stat::FORGED_SOURCE));
                assert_eq!(v.counted_policy(), Some(1));
            }
        }
        for source in own {
            let v = judge_frame(&s, VETH, JUDGED, &from(source));
            assert_eq!(decided(&v), (Verdict::Allow, Reason::Judged));
        }
        for source in forged {
            let v = judge_frame(&s, VETH, JUDGED, &from(source));
            assert_eq!(decided(&v), (Verdict::Deny, Reason::ForgedSource));
        }
        // Another veth's address is not this one's.
        let mut s = s;
        s.veth_sources.clear();
        s.upsert(Entry::VethSource {
            key: VethSource::new(VETH + 1, OWN4.into()),
        });
        let v = judge_frame(&s, VETH, KERNEL, &from(OWN4.into()));
        assert_eq!(v.reason, Reason::ForgedSource);
    }

    #[test]
    fn a_judged_packets_unreadable_source_is_forged_and_reported_as_such() {
        let s = state();
        let unparsable_own = Frame {
            packet: None,
            ..tcp4(PEER4, 443)
        };
        let v = judge_frame(&s, VETH, JUDGED, &unparsable_own);
        assert_eq!(decided(&v), (Verdict::Allow, Reason::Judged));
        let no_source = Frame {
            source: None,
            ..unparsable_own
        };
        let v = judge_frame(&s, VETH, JUDGED, &no_source);
        assert_eq!(decided(&v), (Verdict::Deny, Reason::ForgedSource));
        assert_eq!(v.stat(), Some(stat::FORGED_SOURCE));
        // An unknown cgroup's forged source gets the unknown verdict.
        let mut s = s;
        s.unknown_verdict = Verdict::Allow;
        let unknown = Origin::Judged { cgroup_id: 99 };
        let v = judge_frame(&s, VETH, unknown, &no_source);
        assert_eq!(decided(&v), (Verdict::Allow, Reason::ForgedSource));
        assert_eq!(v.counted_policy(), Some(contain_common::UNKNOWN_POLICY_ID));
    }

    #[test]
    fn link_scoped_sources_pass_only_on_the_kernels_link_control() {
        let s = state();
        let stranger: Ipv6Addr = "fe80::3".parse().unwrap();
        for source in [stranger, Ipv6Addr::UNSPECIFIED] {
            for origin in [SOCKETLESS, KERNEL, JUDGED] {
                let v = judge_frame(&s, VETH, origin, &solicitation(source, 255));
                assert_eq!(
                    decided(&v),
                    (Verdict::Allow, Reason::LinkControl),
                    "{origin:?}"
                );
                let v = judge_frame(&s, VETH, origin, &solicitation(source, 64));
                assert_eq!(v.reason, Reason::ForgedSource, "{origin:?}");
            }
            let v = judge_frame(&s, VETH, PACKET, &solicitation(source, 255));
            assert_eq!(v.reason, Reason::ForgedSource);
            // Not over a source route.
            let mut routed = solicitation(source, 255);
            if let Some(p) = routed.packet.as_mut() {
                p.route = vec![OWN6.into()];
            }
            let v = judge_frame(&s, VETH, KERNEL, &routed);
            assert_eq!(v.reason, Reason::ForgedSource);
        }
    }

    #[test]
    fn link_control_passes_unjudged_but_never_from_a_packet_socket() {
        let s = state();
        let mld = frame(Packet {
            hop_limit: 1,
            ..packet(
                OWN6.into(),
                "ff02::16".parse().unwrap(),
                ip_proto::ICMPV6,
                143 << 8,
            )
        });
        let igmp = |dest: Ipv4Addr, hop_limit| {
            frame(Packet {
                hop_limit,
                ..packet(OWN4.into(), dest.into(), ip_proto::IGMP, 0x2200)
            })
        };
        let report = igmp(Ipv4Addr::new(224, 0, 0, 22), 1);
        for f in [&solicitation(OWN6, 255), &mld, &report] {
            let v = judge_frame(&s, VETH, KERNEL, f);
            assert_eq!(decided(&v), (Verdict::Allow, Reason::LinkControl));
            assert_eq!(v.counted_policy(), None);
            let v = judge_frame(&s, VETH, PACKET, f);
            assert_eq!(decided(&v), (Verdict::Deny, Reason::Unjudgeable));
        }
        // A packet socket's: not even where the rules allow everything, nor
        // with another hop limit; the same rules let its echo request pass.
        let mut open = s.clone();
        open.upsert(Entry::Dest {
            key: DestPrefix {
                policy_id: 1,
                class: 0,
                addr: Prefix::new(addr_key(Ipv6Addr::UNSPECIFIED.into()), 0).key_bytes(),
                prefix_len: 0,
            },
            ruleset: 3,
        });
        open.upsert(Entry::Port {
            key: PortPrefix {
                ruleset: 3,
                proto: ip_proto::ANY,
                port: 0,
                port_bits: 0,
            },
            rule_id: 11,
        });
        let advertisement = |hop_limit| {
            frame(Packet {
                hop_limit,
                ..packet(
                    OWN6.into(),
                    "2001:db8:77::1".parse().unwrap(),
                    ip_proto::ICMPV6,
                    136 << 8,
                )
            })
        };
        for f in [
            &solicitation(OWN6, 255),
            &mld,
            &report,
            &advertisement(255),
            &advertisement(64),
        ] {
            let v = judge_frame(&open, VETH, PACKET, f);
            assert_eq!(decided(&v), (Verdict::Deny, Reason::Unjudgeable), "{f:?}");
        }
        let echo = frame(packet(
            OWN6.into(),
            "2001:db8:77::1".parse().unwrap(),
            ip_proto::ICMPV6,
            128 << 8,
        ));
        assert_eq!(
            decided(&judge_frame(&open, VETH, PACKET, &echo)),
            (Verdict::Allow, Reason::Rules)
        );
        for f in [
            igmp(Ipv4Addr::new(224, 0, 1, 22), 1),
            igmp(Ipv4Addr::new(224, 0, 0, 22), 2),
        ] {
            assert_eq!(
                judge_frame(&s, VETH, KERNEL, &f).reason,
                Reason::Rules,
                "{f:?}"
            );
        }
        // MLD to a unicast address is no link control.
        let mut unicast = mld.clone();
        if let Some(p) = unicast.packet.as_mut() {
            p.dest = "2001:db8:77::1".parse().unwrap();
        }
        assert_eq!(
            judge_frame(&s, VETH, KERNEL, &unicast).reason,
            Reason::Rules
        );
    }

    #[test]
    fn loopback_destinations_and_unreadable_routes_are_never_allowed() {
        let mut s = state();
        s.upsert(Entry::Dest {
            key: DestPrefix {
                policy_id: 1,
                class: 0,
                addr: [0; 16],
                prefix_len: 0,
            },
            ruleset: 3,
        });
        s.upsert(Entry::Port {
            key: PortPrefix {
                ruleset: 3,
                proto: ip_proto::ANY,
                port: 0,
                port_bits: 0,
            },
            rule_id: 1,
        });
        for dest in [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            Ipv6Addr::LOCALHOST.into(),
            "::ffff:127.0.0.1".parse().unwrap(),
        ] {
            let source = if dest.is_ipv4() {
                IpAddr::V4(OWN4)
            } else {
                OWN6.into()
            };
            let f = frame(packet(source, dest, ip_proto::UDP, 53));
            let v = judge_frame(&s, VETH, KERNEL, &f);
            assert_eq!(decided(&v), (Verdict::Deny, Reason::Unjudgeable), "{dest}");
            assert_eq!(v.counted_policy(), Some(1));
        }
        let mut f = tcp4(PEER4, 443);
        if let Some(p) = f.packet.as_mut() {
            p.unjudgeable = true;
        }
        let v = judge_frame(&s, VETH, KERNEL, &f);
        assert_eq!(decided(&v), (Verdict::Deny, Reason::Unjudgeable));
    }

    #[test]
    fn source_routes_are_judged_address_by_address() {
        let s = state();
        let routed = |hop: Ipv4Addr| {
            let mut f = tcp4(PEER4, 443);
            if let Some(p) = f.packet.as_mut() {
                p.route = vec![hop.into()];
            }
            f
        };
        let v = judge_frame(&s, VETH, KERNEL, &routed(PEER4));
        assert_eq!(decided(&v), (Verdict::Allow, Reason::SourceRoute));
        let v = judge_frame(&s, VETH, KERNEL, &routed(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(decided(&v), (Verdict::Deny, Reason::SourceRoute));
    }

    #[test]
    fn forwarded_dns_passes_only_from_a_host_process_when_the_policy_allows_it() {
        let mut s = state();
        let query = |proto| frame(packet(OWN4.into(), PEER4.into(), proto, 53));
        let v = judge_frame(&s, VETH, HOST_PROCESS, &query(ip_proto::UDP));
        assert_eq!(decided(&v), (Verdict::Deny, Reason::Rules));
        s.upsert(Entry::Cgroup {
            id: CT,
            value: CgroupEntry {
                forwarded_dns: true,
                ..entry(1)
            },
        });
        for proto in [ip_proto::UDP, ip_proto::TCP] {
            let v = judge_frame(&s, VETH, HOST_PROCESS, &query(proto));
            assert_eq!(decided(&v), (Verdict::Allow, Reason::ForwardedDns));
            assert_eq!(v.counted_policy(), Some(1));
        }
        for origin in [KERNEL, SOCKETLESS, PACKET] {
            let v = judge_frame(&s, VETH, origin, &query(ip_proto::UDP));
            assert_eq!(v.verdict, Verdict::Deny, "{origin:?}");
        }
        let mut fragment = query(ip_proto::UDP);
        if let Some(p) = fragment.packet.as_mut() {
            p.later_fragment = true;
        }
        let v = judge_frame(&s, VETH, HOST_PROCESS, &fragment);
        assert_eq!(v.verdict, Verdict::Deny);
    }

    #[test]
    fn the_kernel_answers_only_a_recent_peer() {
        let s = state();
        let other = Ipv4Addr::new(198, 18, 9, 9);
        let answer = |origin, dataless_tcp, dest_recent_peer| {
            let f = Frame {
                dataless_tcp,
                dest_recent_peer,
                ..tcp4(other, 80)
            };
            decided(&judge_frame(&s, VETH, origin, &f))
        };
        let allowed = (Verdict::Allow, Reason::KernelAnswer);
        let denied = (Verdict::Deny, Reason::Rules);
        assert_eq!(answer(KERNEL, false, true), allowed);
        assert_eq!(answer(KERNEL, false, false), denied);
        assert_eq!(answer(SOCKETLESS, true, true), allowed);
        assert_eq!(answer(SOCKETLESS, false, true), denied, "data: forwarded");
        assert_eq!(answer(SOCKETLESS, true, false), denied);
        assert_eq!(answer(HOST_PROCESS, true, true), denied);
        assert_eq!(answer(PACKET, true, true), denied);
        // Not over a source route.
        let mut routed = Frame {
            dest_recent_peer: true,
            ..tcp4(other, 80)
        };
        if let Some(p) = routed.packet.as_mut() {
            p.route = vec![other.into()];
        }
        let v = judge_frame(&s, VETH, KERNEL, &routed);
        assert_eq!(decided(&v), (Verdict::Deny, Reason::SourceRoute));
    }

    #[test]
    fn only_a_source_that_spoke_for_itself_is_noted() {
        let s = state();
        let notes_source = |f: &Frame| {
            let v = admit_inbound(&s, VETH, VethAge::Settled, Arrival::Elsewhere, f);
            assert!(v.passes, "a frame not reflected passes: {f:?}");
            v.noted
        };
        let peer = IpAddr::from(Ipv4Addr::new(198, 18, 9, 9));
        let peer6 = IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9));
        let into =
            |source: IpAddr, dest: IpAddr, proto, port| frame(packet(source, dest, proto, port));
        for (source, dest) in [(peer, IpAddr::from(OWN4)), (peer6, IpAddr::from(OWN6))] {
            assert_eq!(
                notes_source(&into(source, dest, ip_proto::UDP, 53)),
                Some(source)
            );
            assert_eq!(
                notes_source(&into(source, dest, ip_proto::TCP, 80)),
                Some(source)
            );
            let mut fragment = into(source, dest, ip_proto::UDP, 0);
            if let Some(p) = fragment.packet.as_mut() {
                p.later_fragment = true;
            }
            assert_eq!(notes_source(&fragment), None, "a later fragment");
            let mut unreadable = into(source, dest, ip_proto::UDP, 53);
            if let Some(p) = unreadable.packet.as_mut() {
                p.unjudgeable = true;
            }
            assert_eq!(notes_source(&unreadable), None, "an unreadable route");
            let mut unparsed = into(source, dest, ip_proto::UDP, 53);
            unparsed.packet = None;
            assert_eq!(notes_source(&unparsed), None, "an unparsed header");
        }
        // ICMP: errors (conntrack's related) are not the source speaking.
        for ty in [0u16, 8, 13, 14] {
            let f = into(peer, OWN4.into(), ip_proto::ICMP, ty << 8);
            assert_eq!(notes_source(&f), Some(peer), "ICMP type {ty}");
        }
        for ty in [3u16, 4, 5, 11, 12] {
            let f = into(peer, OWN4.into(), ip_proto::ICMP, ty << 8 | 1);
            assert_eq!(notes_source(&f), None, "ICMP error type {ty}");
        }
        for ty in [128u16, 129, 135] {
            let f = into(peer6, OWN6.into(), ip_proto::ICMPV6, ty << 8);
            assert_eq!(notes_source(&f), Some(peer6), "ICMPv6 type {ty}");
        }
        for ty in [1u16, 2, 3, 4, 127] {
            let f = into(peer6, OWN6.into(), ip_proto::ICMPV6, ty << 8);
            assert_eq!(notes_source(&f), None, "ICMPv6 error type {ty}");
        }
        // To a neighbour's address (its MAC taken over on the bridge): not
        // the container's own.
        let neighbour = IpAddr::from(Ipv4Addr::new(198, 18, 0, 9));
        assert_eq!(
            notes_source(&into(peer, neighbour, ip_proto::UDP, 53)),
            None
        );
        let to_own_ll = into(peer6, OWN_LL.into(), ip_proto::UDP, 53);
        assert_eq!(notes_source(&to_own_ll), Some(peer6));
        // A new veth with no owner notes its peers, its addresses unknown;
        // a settled one with no owner notes nothing.
        let mut unowned = s.clone();
        unowned.veths.clear();
        let f = into(peer, neighbour, ip_proto::UDP, 53);
        assert_eq!(
            admit_inbound(&unowned, VETH, VethAge::New, Arrival::Elsewhere, &f).noted,
            Some(peer)
        );
        assert_eq!(
            admit_inbound(&unowned, VETH, VethAge::Settled, Arrival::Elsewhere, &f).noted,
            None
        );
    }

    #[test]
    fn a_reflected_frame_is_dropped_to_a_group_or_from_a_packet_socket_and_never_noted() {
        let s = state();
        let mut unowned = s.clone();
        unowned.veths.clear();
        let peer = IpAddr::from(Ipv4Addr::new(198, 18, 9, 9));
        // A frame whose source is noted when it is not reflected.
        let f = frame(packet(peer, OWN4.into(), ip_proto::UDP, 53));
        assert_eq!(
            admit_inbound(&s, VETH, VethAge::Settled, Arrival::Elsewhere, &f),
            InboundVerdict {
                passes: true,
                noted: Some(peer)
            }
        );
        let ungoverned_packet = Origin::PacketSocket {
            governed_cgroup: None,
        };
        let dropped = InboundVerdict {
            passes: false,
            noted: None,
        };
        let passed = InboundVerdict {
            passes: true,
            noted: None,
        };
        for (origin, unicast) in [
            (SOCKETLESS, passed),
            (KERNEL, passed),
            (HOST_PROCESS, passed),
            (JUDGED, passed),
            (PACKET, dropped),
            (ungoverned_packet, dropped),
        ] {
            for (state, age) in [(&s, VethAge::Settled), (&unowned, VethAge::New)] {
                let reflected = |to_group| {
                    let arrival = Arrival::Reflected { to_group, origin };
                    admit_inbound(state, VETH, age, arrival, &f)
                };
                assert_eq!(reflected(true), dropped, "to a group, {origin:?} {age:?}");
                assert_eq!(reflected(false), unicast, "unicast, {origin:?} {age:?}");
            }
        }
    }

    #[test]
    fn audit_mode_passes_what_it_would_deny_and_counts_it() {
        let mut s = state();
        s.upsert(Entry::Cgroup {
            id: CT,
            value: CgroupEntry {
                audit: true,
                ..entry(1)
            },
        });
        let forged = frame(packet(
            Ipv4Addr::new(10, 0, 0, 9).into(),
            PEER4.into(),
            ip_proto::TCP,
            443,
        ));
        for (origin, f, reason) in [
            (KERNEL, tcp4(PEER4, 444), Reason::Rules),
            (KERNEL, forged.clone(), Reason::ForgedSource),
            (JUDGED, forged, Reason::ForgedSource),
            (PACKET, not_ip(ETH_P_ARP), Reason::NotIp),
        ] {
            let v = judge_frame(&s, VETH, origin, &f);
            assert_eq!(decided(&v), (Verdict::Audit, reason), "{origin:?}");
            assert!(v.passes());
            assert_eq!(v.counted_policy(), Some(1));
        }
    }
}
