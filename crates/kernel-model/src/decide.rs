//! The kernel's decision, replayed on a [`KernelState`]: which policy
//! governs a cgroup, which process class a sender is in, which rule allows
//! a (destination, protocol, port), and what the egress program does with
//! a packet before and around that lookup (the kernel's own neighbour
//! discovery, accepted connections, UDP replies, forged local sources,
//! source routes, later fragments).
//!
//! This mirrors `contain-ebpf/src/decide.rs` and the egress program in
//! `contain-ebpf/src/main.rs`; the differential test
//! (`bpf-loader/tests/differential.rs`) holds the two equal on random
//! states and packets. `policyd explain` answers from it. The veth
//! backstop's decision on a frame (`contain-ebpf/src/veth.rs`) is
//! [`crate::veth`]'s, built on this one's rule lookup.

use std::net::IpAddr;

use contain_common::{comm_hash, ip_proto, UNKNOWN_POLICY_ID};

use crate::{
    prefix::{addr_key, PortBlock, Prefix},
    state::{
        CgroupEntry, DestPrefix, FileId, KernelState, PortPrefix, ProcessKey, ProcessMatch, Verdict,
    },
};

/// What the kernel stamped on a socket when a process created it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Creator {
    /// The file the process executed, when known.
    pub file: Option<FileId>,
    /// Its comm (up to the kernel's 15 bytes).
    pub comm: Option<Vec<u8>>,
}

impl Creator {
    /// The process entries that could name it, in the kernel's order.
    fn candidates(&self) -> impl Iterator<Item = ProcessMatch> + '_ {
        let file = self.file.map(ProcessMatch::File);
        let comm = self
            .comm
            .as_deref()
            .filter(|c| c.first().is_some_and(|&b| b != 0))
            .map(|c| ProcessMatch::Comm(comm_hash(c)));
        file.into_iter().chain(comm)
    }
}

/// How a cgroup is governed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Governance {
    /// Its entry, or `None` for a cgroup the maps do not know.
    pub cgroup: Option<CgroupEntry>,
    pub policy_id: u32,
    /// What happens when no rule allows.
    pub on_miss: Verdict,
    pub unrestricted: bool,
}

pub fn governance(state: &KernelState, cgroup_id: u64) -> Governance {
    match state.cgroups.get(&cgroup_id) {
        Some(&entry) => Governance {
            cgroup: Some(entry),
            policy_id: entry.policy_id,
            on_miss: if entry.audit {
                Verdict::Audit
            } else {
                Verdict::Deny
            },
            unrestricted: entry.unrestricted,
        },
        None => Governance {
            cgroup: None,
            policy_id: UNKNOWN_POLICY_ID,
            on_miss: state.unknown_verdict,
            unrestricted: false,
        },
    }
}

/// Every lookup of one rule decision, and its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub governance: Governance,
    pub class: u32,
    pub class_match: Option<ProcessMatch>,
    pub dest: Option<(DestPrefix, u32)>,
    pub port: Option<(PortPrefix, u32)>,
    pub verdict: Verdict,
}

/// The flow a rule decision is about. `port` holds `type << 8 | code` for
/// ICMP; a later fragment has no port, so only rules that allow any port
/// of its protocol (or any protocol) can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub dest: IpAddr,
    pub proto: u8,
    pub port: u16,
    pub later_fragment: bool,
}

/// The rule decision (the kernel's `decide`): one cgroup lookup, the
/// sender's process class, the longest destination prefix of that class,
/// then the longest port block of the protocol, else any protocol.
pub fn lookup(
    state: &KernelState,
    cgroup_id: u64,
    creator: Option<&Creator>,
    target: &Target,
) -> Lookup {
    let gov = governance(state, cgroup_id);
    let mut out = Lookup {
        governance: gov,
        class: 0,
        class_match: None,
        dest: None,
        port: None,
        verdict: gov.on_miss,
    };
    if gov.unrestricted {
        out.verdict = Verdict::Allow;
        return out;
    }
    if gov.policy_id == UNKNOWN_POLICY_ID {
        return out;
    }
    let policy_id = gov.policy_id;
    if let Some((process, &class)) =
        creator
            .into_iter()
            .flat_map(Creator::candidates)
            .find_map(|process| {
                state
                    .processes
                    .get(&ProcessKey { policy_id, process })
                    .map(|class| (process, class))
            })
    {
        out.class = class;
        out.class_match = Some(process);
    }
    let addr = addr_key(target.dest);
    out.dest = (0..=128u8).rev().find_map(|len| {
        let key = DestPrefix {
            policy_id,
            class: out.class,
            addr: Prefix::new(addr, len).key_bytes(),
            prefix_len: len,
        };
        state.dests.get(&key).map(|&ruleset| (key, ruleset))
    });
    let Some((_, ruleset)) = out.dest else {
        return out;
    };
    let port_entry = |proto, block: PortBlock| {
        let key = PortPrefix {
            ruleset,
            proto,
            port: block.port,
            port_bits: block.bits,
        };
        state.ports.get(&key).map(|&rule| (key, rule))
    };
    let longest_bits = if target.later_fragment { 0 } else { 16 };
    out.port = (0..=longest_bits)
        .rev()
        .find_map(|bits| port_entry(target.proto, PortBlock::enclosing(target.port, bits)))
        .or_else(|| port_entry(ip_proto::ANY, PortBlock::ALL));
    if out.port.is_some() {
        out.verdict = Verdict::Allow;
    }
    out
}

/// The socket a packet leaves by, as the egress program sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Socket {
    /// A full socket a process created while contain ran, stamped with
    /// its creator.
    Stamped { creator: Creator, kind: SocketKind },
    /// A full socket without storage: the kernel's own control sockets, one
    /// that predates contain (until its connect stamps it), or one whose
    /// storage could not be made.
    Unstamped { kind: SocketKind },
    /// A request or time-wait socket: the handshake of an inbound
    /// connection, or the tail of a closed one.
    Minimal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// A TCP stream socket; `outbound` once its connect (or a Fast Open
    /// SYN) was judged.
    Tcp { outbound: bool },
    /// A UDP datagram socket; `peer_spoke_first` when the packet's
    /// destination sent this socket a datagram within the reply timeout,
    /// under the current rules.
    Udp { peer_spoke_first: bool },
    /// Any other socket (raw, ICMP, ...).
    Other,
}

/// One packet on the egress hook, as the kernel's parser reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub source: IpAddr,
    pub dest: IpAddr,
    pub proto: u8,
    /// Destination port, or `type << 8 | code` for ICMP.
    pub port: u16,
    /// A TCP SYN without ACK.
    pub tcp_opening: bool,
    pub later_fragment: bool,
    pub hop_limit: u8,
    /// Further addresses a source route sends it to.
    pub route: Vec<IpAddr>,
    /// A source route the parser cannot follow.
    pub unjudgeable: bool,
    /// Leaving through the loopback device.
    pub over_loopback: bool,
}

/// Why the egress program decided as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No policy selects the container.
    Unrestricted,
    /// Neighbour discovery or MLD the kernel itself sends.
    KernelLinkControl,
    /// A request or time-wait socket.
    MinimalSocket,
    /// A TCP connection the peer opened, or one that predates contain.
    AcceptedConnection,
    /// A UDP reply to a peer that spoke first.
    UdpReply,
    /// A forged local source, an unreadable source route, a process's
    /// neighbour discovery or a TCP opening from a socket without storage:
    /// no rule allows it; the miss verdict decides (deny, audit mode's
    /// audit, or the unknown-container verdict).
    Unjudgeable,
    /// Every address of a source route judged by the rules.
    SourceRoute,
    /// The rules.
    Rules,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The rule decision for the destination, when one was made.
    pub lookup: Option<Lookup>,
}

impl Egress {
    /// Whether the packet leaves (an audited one does).
    pub fn passes(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}

/// The egress program's decision for one packet of a socket in cgroup
/// `cgroup_id` (with no cached verdict: a cache replays this).
pub fn egress(state: &KernelState, cgroup_id: u64, socket: &Socket, packet: &Packet) -> Egress {
    let gov = governance(state, cgroup_id);
    let done = |verdict, reason| Egress {
        verdict,
        reason,
        lookup: None,
    };
    if gov.unrestricted {
        return done(Verdict::Allow, Reason::Unrestricted);
    }
    let unstamped = !matches!(socket, Socket::Stamped { .. });
    // A process's neighbour discovery would redirect its neighbours'
    // traffic (an advertisement of another's address, a router
    // advertisement): no rule allows it.
    let unjudgeable = packet.unjudgeable
        || is_forged_local(packet)
        || is_misrouted_loopback(packet)
        || (!unstamped && is_neighbour_discovery(packet));
    let source_routed = !packet.route.is_empty() || unjudgeable;
    let kind = match socket {
        Socket::Stamped { kind, .. } | Socket::Unstamped { kind } => Some(*kind),
        Socket::Minimal => None,
    };
    let mut udp_reply = false;
    // A connection opened from a socket no connect() hook stamped (a Fast
    // Open sendto() whose storage could not be made) could not be marked
    // outbound: its later segments would pass as an accepted connection's.
    let mut untracked_opening = false;
    if !source_routed {
        if unstamped && is_kernel_link_control(packet) {
            return done(Verdict::Allow, Reason::KernelLinkControl);
        }
        let Some(kind) = kind else {
            return done(Verdict::Allow, Reason::MinimalSocket);
        };
        match kind {
            SocketKind::Tcp { outbound }
                if packet.proto == ip_proto::TCP
                    && !packet.tcp_opening
                    && (unstamped || !outbound) =>
            {
                return done(Verdict::Allow, Reason::AcceptedConnection);
            }
            SocketKind::Tcp { .. } => {
                untracked_opening =
                    unstamped && packet.proto == ip_proto::TCP && packet.tcp_opening;
            }
            SocketKind::Udp { peer_spoke_first } => {
                udp_reply = peer_spoke_first && packet.proto == ip_proto::UDP;
            }
            _ => {}
        }
    }
    if udp_reply {
        return done(Verdict::Allow, Reason::UdpReply);
    }
    if unjudgeable || untracked_opening {
        return done(gov.on_miss, Reason::Unjudgeable);
    }
    let creator = match socket {
        Socket::Stamped { creator, .. } => Some(creator),
        _ => None,
    };
    let (verdict, first) = judge_route(state, cgroup_id, creator, packet);
    Egress {
        verdict,
        reason: if source_routed {
            Reason::SourceRoute
        } else {
            Reason::Rules
        },
        lookup: Some(first),
    }
}

/// The rules' verdict on a packet: its destination, then each address of
/// its source route while none is denied (the worst verdict wins), and the
/// destination's lookup.
pub(crate) fn judge_route(
    state: &KernelState,
    cgroup_id: u64,
    creator: Option<&Creator>,
    packet: &Packet,
) -> (Verdict, Lookup) {
    let judge = |dest| {
        lookup(
            state,
            cgroup_id,
            creator,
            &Target {
                dest,
                proto: packet.proto,
                port: packet.port,
                later_fragment: packet.later_fragment,
            },
        )
    };
    let first = judge(packet.dest);
    let mut verdict = first.verdict;
    for &hop in &packet.route {
        if verdict == Verdict::Deny {
            break;
        }
        let v = judge(hop).verdict;
        if v != Verdict::Allow {
            verdict = v;
        }
    }
    (verdict, first)
}

/// A packet to a local address whose source is neither a loopback address
/// nor the destination itself: only a forged packet looks like that, and
/// the kernel's answer to it would carry the container's data anywhere.
fn is_forged_local(packet: &Packet) -> bool {
    if !packet.over_loopback {
        return false;
    }
    let loopback_source = match packet.source {
        IpAddr::V4(s) => s.octets()[0] == 127,
        IpAddr::V6(s) => s.is_loopback(),
    };
    !loopback_source && addr_key(packet.source) != addr_key(packet.dest)
}

/// A packet to a loopback address (`::1`, 127.0.0.0/8, v4-mapped or not)
/// leaving through another device than `lo`: only a raw socket's own
/// header routed by its `sendto` address looks like that, and the rules'
/// loopback allowance must not carry it to a neighbour.
fn is_misrouted_loopback(packet: &Packet) -> bool {
    !packet.over_loopback && is_loopback(packet.dest)
}

/// `::1` or 127.0.0.0/8, v4-mapped or not.
pub(crate) fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

/// An ICMPv6 message of neighbour discovery (router and neighbour
/// solicitation and advertisement, redirect), whatever its hop limit.
pub(crate) fn is_neighbour_discovery(packet: &Packet) -> bool {
    packet.dest.is_ipv6()
        && packet.proto == ip_proto::ICMPV6
        && !packet.later_fragment
        && matches!(packet.port >> 8, 133..=137)
}

/// An ICMPv6 message of MLD (query, reports, done), whatever its hop
/// limit.
fn is_mld(packet: &Packet) -> bool {
    packet.dest.is_ipv6()
        && packet.proto == ip_proto::ICMPV6
        && !packet.later_fragment
        && matches!(packet.port >> 8, 130..=132 | 143)
}

/// Neighbour discovery, MLD or IGMP, whatever its hop limit: the link's
/// own protocols, which steer what neighbours send where.
pub(crate) fn is_link_protocol(packet: &Packet) -> bool {
    let igmp = packet.dest.is_ipv4() && packet.proto == ip_proto::IGMP;
    is_mld(packet) || igmp || is_neighbour_discovery(packet)
}

/// Neighbour discovery (any destination, hop limit 255) and MLD (link-scope
/// multicast, hop limit 1), which the kernel sends from sockets no process
/// created. (ICMPv6 in an IPv4 header is neither.)
pub(crate) fn is_kernel_link_control(packet: &Packet) -> bool {
    let IpAddr::V6(dest) = packet.dest else {
        return false;
    };
    if is_neighbour_discovery(packet) {
        return packet.hop_limit == 255;
    }
    is_mld(packet) && packet.hop_limit == 1 && dest.octets()[..2] == [0xff, 0x02]
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::state::Entry;

    const CGROUP: u64 = 42;
    const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    /// Policy 1 on cgroup 42: TCP 443 and any UDP to 198.18.0.1.
    fn state() -> KernelState {
        let mut s = KernelState::default();
        s.upsert(Entry::Cgroup {
            id: CGROUP,
            value: CgroupEntry {
                policy_id: 1,
                audit: false,
                unrestricted: false,
                forwarded_dns: false,
            },
        });
        s.upsert(Entry::Dest {
            key: DestPrefix {
                policy_id: 1,
                class: 0,
                addr: Prefix::new(addr_key(HOST.into()), 128).key_bytes(),
                prefix_len: 128,
            },
            ruleset: 1,
        });
        for (proto, port, port_bits) in [(ip_proto::TCP, 443, 16), (ip_proto::UDP, 0, 0)] {
            s.upsert(Entry::Port {
                key: PortPrefix {
                    ruleset: 1,
                    proto,
                    port,
                    port_bits,
                },
                rule_id: 9,
            });
        }
        s
    }

    fn packet(dest: IpAddr, proto: u8, port: u16) -> Packet {
        Packet {
            source: match dest {
                IpAddr::V4(_) => Ipv4Addr::new(198, 18, 0, 2).into(),
                IpAddr::V6(_) => "2001:db8::2".parse().unwrap(),
            },
            dest,
            proto,
            port,
            tcp_opening: proto == ip_proto::TCP,
            later_fragment: false,
            hop_limit: 64,
            route: Vec::new(),
            unjudgeable: false,
            over_loopback: false,
        }
    }

    fn other() -> Socket {
        Socket::Unstamped {
            kind: SocketKind::Other,
        }
    }

    #[test]
    fn rules_decide_ports_and_later_fragments() {
        let s = state();
        let v = |p: &Packet| egress(&s, CGROUP, &other(), p).verdict;
        assert_eq!(v(&packet(HOST.into(), ip_proto::TCP, 443)), Verdict::Allow);
        assert_eq!(v(&packet(HOST.into(), ip_proto::TCP, 444)), Verdict::Deny);
        let mut fragment = packet(HOST.into(), ip_proto::TCP, 443);
        fragment.later_fragment = true;
        assert_eq!(
            v(&fragment),
            Verdict::Deny,
            "a port-specific rule needs a port"
        );
        let mut fragment = packet(HOST.into(), ip_proto::UDP, 53);
        fragment.later_fragment = true;
        assert_eq!(v(&fragment), Verdict::Allow, "an any-port rule does not");
    }

    /// A TCP socket without storage could never be marked outbound: its
    /// opening is not judged by the rules, which would let its flow pass
    /// ever after as an accepted connection's, past revocation.
    #[test]
    fn a_tcp_opening_from_a_socket_without_storage_passes_no_rule() {
        let s = state();
        let syn = packet(HOST.into(), ip_proto::TCP, 443);
        let unstamped = Socket::Unstamped {
            kind: SocketKind::Tcp { outbound: false },
        };
        let e = egress(&s, CGROUP, &unstamped, &syn);
        assert_eq!((e.verdict, e.reason), (Verdict::Deny, Reason::Unjudgeable));
        let stamped = Socket::Stamped {
            creator: Creator::default(),
            kind: SocketKind::Tcp { outbound: false },
        };
        let e = egress(&s, CGROUP, &stamped, &syn);
        assert_eq!(
            (e.verdict, e.reason),
            (Verdict::Allow, Reason::Rules),
            "the same opening from a stamped socket"
        );
        let later = Packet {
            tcp_opening: false,
            ..syn
        };
        assert_eq!(
            egress(&s, CGROUP, &unstamped, &later).reason,
            Reason::AcceptedConnection,
            "a later segment of a connection contain did not see opened"
        );
    }

    #[test]
    fn the_kernels_neighbour_discovery_passes_only_unstamped_and_well_formed() {
        let s = state();
        let ns = |hop_limit| Packet {
            hop_limit,
            ..packet("2001:db8::9".parse().unwrap(), ip_proto::ICMPV6, 135 << 8)
        };
        let e = egress(&s, CGROUP, &other(), &ns(255));
        assert_eq!(
            (e.verdict, e.reason),
            (Verdict::Allow, Reason::KernelLinkControl)
        );
        assert_eq!(egress(&s, CGROUP, &other(), &ns(64)).verdict, Verdict::Deny);
        let stamped = Socket::Stamped {
            creator: Creator::default(),
            kind: SocketKind::Other,
        };
        assert_eq!(
            egress(&s, CGROUP, &stamped, &ns(255)).verdict,
            Verdict::Deny
        );
        let mld = Packet {
            hop_limit: 1,
            ..packet(
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16).into(),
                ip_proto::ICMPV6,
                143 << 8,
            )
        };
        assert_eq!(egress(&s, CGROUP, &other(), &mld).verdict, Verdict::Allow);
        // The same ICMPv6 message in an IPv4 header is judged by the rules.
        let in_ipv4 = Packet {
            hop_limit: 255,
            ..packet(
                Ipv4Addr::new(198, 18, 7, 7).into(),
                ip_proto::ICMPV6,
                135 << 8,
            )
        };
        assert_eq!(
            egress(&s, CGROUP, &other(), &in_ipv4).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn a_processs_neighbour_discovery_is_allowed_by_no_rule() {
        // Policy 1 allows any ICMPv6 to the neighbour.
        let neighbour: IpAddr = "2001:db8::1".parse().unwrap();
        let mut s = state();
        s.upsert(Entry::Dest {
            key: DestPrefix {
                policy_id: 1,
                class: 0,
                addr: Prefix::new(addr_key(neighbour), 128).key_bytes(),
                prefix_len: 128,
            },
            ruleset: 2,
        });
        s.upsert(Entry::Port {
            key: PortPrefix {
                ruleset: 2,
                proto: ip_proto::ICMPV6,
                port: 0,
                port_bits: 0,
            },
            rule_id: 10,
        });
        let stamped = Socket::Stamped {
            creator: Creator::default(),
            kind: SocketKind::Other,
        };
        let icmp6 = |icmp_type: u16| Packet {
            hop_limit: 255,
            ..packet(neighbour, ip_proto::ICMPV6, icmp_type << 8)
        };
        for nd in 133..=137 {
            let e = egress(&s, CGROUP, &stamped, &icmp6(nd));
            assert_eq!(
                (e.verdict, e.reason),
                (Verdict::Deny, Reason::Unjudgeable),
                "type {nd}"
            );
        }
        let echo = egress(&s, CGROUP, &stamped, &icmp6(128));
        assert_eq!((echo.verdict, echo.reason), (Verdict::Allow, Reason::Rules));
        // In audit mode, reported and let through as every miss is.
        s.upsert(Entry::Cgroup {
            id: CGROUP,
            value: CgroupEntry {
                policy_id: 1,
                audit: true,
                unrestricted: false,
                forwarded_dns: false,
            },
        });
        assert_eq!(
            egress(&s, CGROUP, &stamped, &icmp6(136)).verdict,
            Verdict::Audit
        );
    }

    #[test]
    fn udp_replies_pass_only_to_a_peer_that_spoke_first() {
        let s = state();
        let udp = |peer_spoke_first| Socket::Stamped {
            creator: Creator::default(),
            kind: SocketKind::Udp { peer_spoke_first },
        };
        let to = packet(Ipv4Addr::new(198, 18, 7, 7).into(), ip_proto::UDP, 5353);
        assert_eq!(egress(&s, CGROUP, &udp(false), &to).verdict, Verdict::Deny);
        let e = egress(&s, CGROUP, &udp(true), &to);
        assert_eq!((e.verdict, e.reason), (Verdict::Allow, Reason::UdpReply));
        // Not over a source route: every hop is judged.
        let routed = Packet {
            route: vec![Ipv4Addr::new(198, 18, 8, 8).into()],
            ..to
        };
        assert_eq!(
            egress(&s, CGROUP, &udp(true), &routed).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn forged_local_sources_and_source_routes_are_judged_whole() {
        let s = state();
        let forged = Packet {
            over_loopback: true,
            ..packet(HOST.into(), ip_proto::TCP, 443)
        };
        assert_eq!(
            egress(&s, CGROUP, &other(), &forged).reason,
            Reason::Unjudgeable
        );
        assert_eq!(egress(&s, CGROUP, &other(), &forged).verdict, Verdict::Deny);
        let routed = |hop: Ipv4Addr| Packet {
            route: vec![hop.into()],
            ..packet(HOST.into(), ip_proto::TCP, 443)
        };
        assert_eq!(
            egress(&s, CGROUP, &other(), &routed(HOST)).verdict,
            Verdict::Allow
        );
        assert_eq!(
            egress(&s, CGROUP, &other(), &routed(Ipv4Addr::new(10, 0, 0, 1))).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn loopback_destinations_leave_only_over_loopback() {
        let mut s = state();
        // The loopback allowance every policy gets: any protocol.
        for dest in [
            IpAddr::from(Ipv4Addr::new(127, 0, 0, 0)),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let prefix_len = if dest.is_ipv4() { 104 } else { 128 };
            s.upsert(Entry::Dest {
                key: DestPrefix {
                    policy_id: 1,
                    class: 0,
                    addr: Prefix::new(addr_key(dest), prefix_len).key_bytes(),
                    prefix_len,
                },
                ruleset: 2,
            });
        }
        s.upsert(Entry::Port {
            key: PortPrefix {
                ruleset: 2,
                proto: ip_proto::ANY,
                port: 0,
                port_bits: 0,
            },
            rule_id: 7,
        });
        // From the destination itself: over lo, any other source is forged.
        let to = |dest: IpAddr, over_loopback| Packet {
            over_loopback,
            source: dest,
            ..packet(dest, ip_proto::UDP, 53)
        };
        for dest in [
            IpAddr::from(Ipv4Addr::new(127, 0, 0, 1)),
            Ipv4Addr::new(127, 9, 9, 9).into(),
            Ipv6Addr::LOCALHOST.into(),
            "::ffff:127.0.0.1".parse().unwrap(),
        ] {
            let e = egress(&s, CGROUP, &other(), &to(dest, true));
            assert_eq!(e.verdict, Verdict::Allow, "{dest} over lo");
            let e = egress(&s, CGROUP, &other(), &to(dest, false));
            assert_eq!(
                (e.verdict, e.reason),
                (Verdict::Deny, Reason::Unjudgeable),
                "{dest} through another device"
            );
        }
    }

    #[test]
    fn accepted_connections_pass_and_outbound_ones_are_judged() {
        let s = state();
        let tcp = |outbound| Socket::Stamped {
            creator: Creator::default(),
            kind: SocketKind::Tcp { outbound },
        };
        let ack = Packet {
            tcp_opening: false,
            ..packet(Ipv4Addr::new(10, 0, 0, 1).into(), ip_proto::TCP, 80)
        };
        assert_eq!(
            egress(&s, CGROUP, &tcp(false), &ack).verdict,
            Verdict::Allow
        );
        assert_eq!(egress(&s, CGROUP, &tcp(true), &ack).verdict, Verdict::Deny);
    }

    #[test]
    fn unknown_cgroups_get_the_unknown_verdict() {
        let mut s = state();
        s.unknown_verdict = Verdict::Audit;
        let e = egress(&s, 7, &other(), &packet(HOST.into(), ip_proto::TCP, 443));
        assert_eq!(e.verdict, Verdict::Audit);
    }
}
