//! The egress program on crafted packets (BPF_PROG_TEST_RUN): it must find
//! the real transport header behind IPv4 options and IPv6 extension
//! headers, and judge later fragments without inventing ports; a header
//! it cannot read is a miss (denied, or audited in audit mode) and reported.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use bpf_loader::kernel::Kernel;
use common::{require_root, Allow, Rules};
use contain_common::program_names;
use kernel_model::{diff::MapDiff, state::Verdict};
use test_kit::{
    cleanup::RemoveOnDrop,
    packets::{self, Ext, ICMP, ICMPV6, TCP, UDP},
    testrun,
};

const ALLOWED4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ANYPORT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);
const ALLOWED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 9);

const LOOPBACK_IFINDEX: u32 = 1;
const MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);

#[test]
fn egress_parses_real_headers() {
    let Some(()) = require_root("egress_parses_real_headers") else {
        return;
    };
    let pins = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/contain-t-{}-parse",
        std::process::id()
    )));
    let (mut kernel, rings) = Kernel::load(&pins.0).expect("loading the eBPF object");
    let mut events = rings.events;
    let allow = |addr, proto, port: Option<u16>, icmp_type| Allow {
        policy: 1,
        class: 0,
        addr,
        proto,
        port,
        icmp_type,
    };
    let mut rules = Rules::default();
    rules
        .cgroup(
            test_kit::cgroup::own_cgroup_id().expect("own cgroup id"),
            1,
            false,
        )
        .allow(allow("198.18.0.1", TCP, Some(443), false))
        .allow(allow("198.18.0.1", UDP, Some(53), false))
        .allow(allow("198.18.0.1", ICMP, Some(8), true))
        .allow(allow("198.18.0.5", UDP, None, false))
        .allow(allow("127.0.0.1", UDP, Some(53), false))
        .allow(allow("2001:db8:77::1", TCP, Some(443), false))
        .allow(allow("2001:db8:77::1", ICMPV6, Some(128), true));
    let diff = MapDiff {
        unknown_verdict: Some(Verdict::Deny),
        ..MapDiff::between(kernel.generation(), kernel.state(), &rules.state)
    };
    kernel.apply(&diff).expect("apply");
    let egress = kernel
        .program_fd(program_names::EGRESS)
        .expect("egress program");

    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "v4 tcp syn allowed",
            packets::ipv4(ALLOWED4, TCP, 443, 0, 0),
            1,
        ),
        (
            "v4 tcp syn wrong port",
            packets::ipv4(ALLOWED4, TCP, 444, 0, 0),
            0,
        ),
        (
            "v4 tcp syn other host",
            packets::ipv4(OTHER4, TCP, 443, 0, 0),
            0,
        ),
        (
            "v4 with 8 bytes of options, allowed",
            packets::ipv4(ALLOWED4, TCP, 443, 8, 0),
            1,
        ),
        (
            "v4 with 40 bytes of options, wrong port",
            packets::ipv4(ALLOWED4, TCP, 444, 40, 0),
            0,
        ),
        ("v4 udp allowed", packets::ipv4(ALLOWED4, UDP, 53, 0, 0), 1),
        (
            "v4 udp allowed, through an allowed source route",
            with_v4_routes(packets::ipv4(ALLOWED4, UDP, 53, 16, 0), &[ALLOWED4]),
            1,
        ),
        (
            "v4 udp allowed, through a denied source route",
            with_v4_routes(packets::ipv4(ALLOWED4, UDP, 53, 16, 0), &[OTHER4]),
            0,
        ),
        (
            "v4 udp allowed, a second source route behind an allowed one",
            with_v4_routes(packets::ipv4(ALLOWED4, UDP, 53, 16, 0), &[ALLOWED4, OTHER4]),
            0,
        ),
        (
            "v4 udp wrong port",
            packets::ipv4(ALLOWED4, UDP, 54, 0, 0),
            0,
        ),
        (
            "v4 icmp echo request",
            packets::ipv4(ALLOWED4, ICMP, 8 << 8, 0, 0),
            1,
        ),
        (
            "v4 icmp timestamp request",
            packets::ipv4(ALLOWED4, ICMP, 13 << 8, 0, 0),
            0,
        ),
        (
            "v4 later fragment, port-specific rule only",
            packets::ipv4(ALLOWED4, TCP, 443, 0, 100),
            0,
        ),
        (
            "v4 later fragment, any-port rule",
            packets::ipv4(ANYPORT4, UDP, 0, 0, 100),
            1,
        ),
        ("v6 tcp allowed", packets::ipv6(ALLOWED6, TCP, 443, &[]), 1),
        (
            "v6 tcp wrong port",
            packets::ipv6(ALLOWED6, TCP, 444, &[]),
            0,
        ),
        (
            "v6 hop-by-hop + dest opts, allowed",
            packets::ipv6(ALLOWED6, TCP, 443, &[Ext::HopByHop, Ext::DestOpts]),
            1,
        ),
        (
            "v6 hop-by-hop + routing, wrong port",
            packets::ipv6(ALLOWED6, TCP, 444, &[Ext::HopByHop, Ext::Routing]),
            0,
        ),
        (
            "v6 first fragment, allowed",
            packets::ipv6(ALLOWED6, TCP, 443, &[Ext::Fragment(0)]),
            1,
        ),
        (
            "v6 first fragment, wrong port",
            packets::ipv6(ALLOWED6, TCP, 444, &[Ext::Fragment(0)]),
            0,
        ),
        (
            "v6 later fragment of tcp",
            packets::ipv6(ALLOWED6, TCP, 443, &[Ext::Fragment(10)]),
            0,
        ),
        (
            "v6 icmpv6 echo request",
            packets::ipv6(ALLOWED6, ICMPV6, 128 << 8, &[]),
            1,
        ),
        (
            "v6 icmpv6 other type",
            packets::ipv6(ALLOWED6, ICMPV6, 1 << 8, &[]),
            0,
        ),
        // Neighbour discovery and MLD from an unstamped (kernel) socket, as
        // the test run's is, with the hop limit receivers require: let out.
        (
            "v6 neighbour solicitation, hop limit 255",
            packets::with_hop_limit(packets::ipv6(OTHER6, ICMPV6, 135 << 8, &[]), 255),
            1,
        ),
        (
            "v6 neighbour advertisement, hop limit 255",
            packets::with_hop_limit(packets::ipv6(OTHER6, ICMPV6, 136 << 8, &[]), 255),
            1,
        ),
        (
            "v6 neighbour solicitation, hop limit 64",
            packets::ipv6(OTHER6, ICMPV6, 135 << 8, &[]),
            0,
        ),
        (
            "v6 MLDv2 report to ff02::16, hop limit 1",
            packets::with_hop_limit(packets::ipv6(MLDV2_ROUTERS, ICMPV6, 143 << 8, &[]), 1),
            1,
        ),
        (
            "v6 MLDv2 report to a global address, hop limit 1",
            packets::with_hop_limit(packets::ipv6(OTHER6, ICMPV6, 143 << 8, &[]), 1),
            0,
        ),
        (
            "v6 echo request, other host",
            packets::ipv6(OTHER6, ICMPV6, 128 << 8, &[]),
            0,
        ),
    ];
    let ifindex = testrun::egress_ifindex().expect("an interface to run packets through");
    let mut failures = Vec::new();
    for (name, packet, expected) in &cases {
        let run = testrun::run(egress, packet, 1, ifindex).expect("BPF_PROG_TEST_RUN");
        eprintln!("{name:<50} expected {expected} got {}", run.retval);
        if run.retval != *expected {
            failures.push(*name);
        }
    }
    // The same allowed packet leaving through the loopback device: a local
    // destination with a source that is neither loopback nor the
    // destination is forged, whatever the rules.
    let forged = &cases[0].1;
    let run = testrun::run(egress, forged, 1, LOOPBACK_IFINDEX).expect("BPF_PROG_TEST_RUN");
    eprintln!(
        "{:<50} expected 0 got {}",
        "v4 tcp syn allowed, forged over loopback", run.retval
    );
    if run.retval != 0 {
        failures.push("v4 tcp syn allowed, forged over loopback");
    }
    // A loopback destination the rules allow: over lo from a loopback
    // source it leaves; through any other device only a raw socket's own
    // header can name it, and it is denied.
    let loopback = packets::with_source(
        packets::ipv4(Ipv4Addr::LOCALHOST, UDP, 53, 0, 0),
        Ipv4Addr::LOCALHOST.into(),
    );
    for (name, through, expected) in [
        ("v4 udp to 127.0.0.1 over loopback", LOOPBACK_IFINDEX, 1),
        ("v4 udp to 127.0.0.1 through another device", ifindex, 0),
    ] {
        let run = testrun::run(egress, &loopback, 1, through).expect("BPF_PROG_TEST_RUN");
        eprintln!("{name:<50} expected {expected} got {}", run.retval);
        if run.retval != expected {
            failures.push(name);
        }
    }
    assert!(failures.is_empty(), "wrong verdicts: {failures:?}");

    // A header the parser cannot read (IPv4 header length 4) is denied like
    // a miss, and counted and reported as one: unparsed, denied for its
    // policy, one event.
    while events.next().is_some() {}
    let before = kernel.counters().expect("counters");
    let mut malformed = packets::ipv4(ALLOWED4, TCP, 443, 0, 0);
    malformed[14] = 0x44;
    let run = testrun::run(egress, &malformed, 1, ifindex).expect("BPF_PROG_TEST_RUN");
    assert_eq!(run.retval, 0, "a malformed header is denied");
    let after = kernel.counters().expect("counters");
    let denied = |c: &proto::loader::Counters| {
        c.policies
            .iter()
            .find(|p| p.policy_id == 1)
            .map_or(0, |p| p.denied)
    };
    assert_eq!(after.unparsed_packets - before.unparsed_packets, 1);
    assert_eq!(
        denied(&after) - denied(&before),
        1,
        "counted for its policy"
    );
    let verdicts = |events: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let mut verdicts = Vec::new();
        while let Some(record) = events.next() {
            let event = bpf_loader::events::decode(&record, 0, |_| None).expect("an event");
            verdicts.push(event.verdict);
        }
        verdicts
    };
    assert_eq!(
        verdicts(&mut events),
        [Verdict::Deny],
        "reported as one event"
    );

    // In audit mode the same packet passes, and is counted and reported as
    // audited: a malformed header is no way to probe unseen there either.
    let mut audit = Rules::default();
    audit.cgroup(
        test_kit::cgroup::own_cgroup_id().expect("own cgroup id"),
        1,
        true,
    );
    let diff = MapDiff {
        unknown_verdict: Some(Verdict::Deny),
        ..MapDiff::between(kernel.generation(), kernel.state(), &audit.state)
    };
    kernel.apply(&diff).expect("apply audit mode");
    let before = kernel.counters().expect("counters");
    let run = testrun::run(egress, &malformed, 1, ifindex).expect("BPF_PROG_TEST_RUN");
    assert_eq!(run.retval, 1, "audit mode passes a malformed header");
    let after = kernel.counters().expect("counters");
    let audited = |c: &proto::loader::Counters| {
        c.policies
            .iter()
            .find(|p| p.policy_id == 1)
            .map_or(0, |p| p.audited)
    };
    assert_eq!(after.unparsed_packets - before.unparsed_packets, 1);
    assert_eq!(
        (
            audited(&after) - audited(&before),
            denied(&after) - denied(&before)
        ),
        (1, 0),
        "counted as audited for its policy"
    );
    assert_eq!(
        verdicts(&mut events),
        [Verdict::Audit],
        "reported as one audit event"
    );
}

/// `frame` (16 bytes of IPv4 options) with, for each of `hops`, a NOP and
/// a loose source route of that one address (its pointer on it), then the
/// end of the options.
fn with_v4_routes(mut frame: Vec<u8>, hops: &[Ipv4Addr]) -> Vec<u8> {
    const OPTIONS: usize = 14 + 20;
    for (i, hop) in hops.iter().enumerate() {
        let at = OPTIONS + 8 * i;
        frame[at..at + 4].copy_from_slice(&[1, 131, 7, 4]);
        frame[at + 4..at + 8].copy_from_slice(&hop.octets());
    }
    if let Some(end) = frame.get_mut(OPTIONS + 8 * hops.len()) {
        *end = 0;
    }
    frame
}
