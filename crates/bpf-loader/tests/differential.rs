//! The kernel's egress decision against the model's
//! (`kernel_model::decide::egress`): random kernel states, installed through
//! the real loader's diff and apply, and random packets run through the
//! egress program with BPF_PROG_TEST_RUN. Every verdict must be the
//! model's, including the special cases: the kernel's own neighbour
//! discovery and MLD, later fragments (no port), forged local sources over
//! loopback, source routes (judged hop by hop, or unjudgeable), unknown and
//! unrestricted cgroups, audit mode.
//!
//! A test run's socket is one no process created (no socket storage, not
//! TCP, not UDP), so the cases that need a process's socket (accepted
//! connections, UDP replies, per-process classes) are the datapath tests'
//! and the model's unit tests' to prove.
//!
//! `DIFFERENTIAL_SEED=N` replays a run; each run prints its seed.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bpf_loader::kernel::Kernel;
use common::{random_ipv6, require_root};
use contain_common::{ip_proto::ANY, program_names};
use kernel_model::{
    decide::{egress, Packet, Reason, Socket, SocketKind},
    diff::MapDiff,
    prefix::{addr_key, PortBlock, Prefix, V4_BLOCK_LEN},
    state::{
        CgroupEntry, DestPrefix, Entry, KernelState, PortPrefix, ProcessKey, ProcessMatch, Verdict,
    },
};
use test_kit::{
    cleanup::RemoveOnDrop,
    packets::{self, ICMP, ICMPV6, TCP, UDP},
    random::Rng,
    testrun,
};

const ROUNDS: usize = 150;
const PACKETS_PER_ROUND: usize = 300;
const LOOPBACK_IFINDEX: u32 = 1;
const GRE: u8 = 47;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    Ipv4Addr::new(a, b, c, d).into()
}

fn v6(text: &str) -> Ipv6Addr {
    text.parse().expect("an IPv6 address")
}

/// Destinations packets go to and rules are built around, so that they
/// meet often.
fn v4_universe() -> Vec<IpAddr> {
    vec![
        v4(198, 18, 0, 1),
        v4(198, 18, 0, 2), // the frames' source
        v4(198, 18, 0, 5),
        v4(198, 18, 1, 1),
        v4(198, 18, 9, 9),
        v4(10, 0, 0, 1),
        v4(127, 0, 0, 1),
    ]
}

fn v6_universe() -> Vec<Ipv6Addr> {
    [
        "2001:db8:77::1",
        "2001:db8:77::2", // the frames' source
        "2001:db8:77::5",
        "2001:db8:99::9",
        "ff02::16",
        "ff02::1:ff00:1",
        "::1",
        "::ffff:198.18.0.1",
    ]
    .into_iter()
    .map(v6)
    .collect()
}

fn random_state(rng: &mut Rng, own_cgroup: u64) -> KernelState {
    let mut s = KernelState {
        unknown_verdict: rng.pick(&[Verdict::Deny, Verdict::Allow, Verdict::Audit]),
        ..KernelState::default()
    };
    let entry = |policy_id, audit, unrestricted| CgroupEntry {
        policy_id,
        audit,
        unrestricted,
        forwarded_dns: false,
    };
    let own = match rng.below(12) {
        0 => None,
        1 => Some(entry(0, false, true)),
        2 => Some(entry(1, true, false)),
        3 => Some(entry(2, false, false)),
        // Ruleless: a cgroup containers under two policies share.
        4 => Some(CgroupEntry::ruleless(false)),
        5 => Some(CgroupEntry::ruleless(true)),
        _ => Some(entry(1, false, false)),
    };
    if let Some(value) = own {
        s.upsert(Entry::Cgroup {
            id: own_cgroup,
            value,
        });
    }
    // Other containers, which must not matter.
    for id in [own_cgroup + 1, own_cgroup + 2] {
        if rng.chance(50) {
            s.upsert(Entry::Cgroup {
                id,
                value: entry(rng.pick(&[1, 2]), rng.chance(30), false),
            });
        }
    }
    // Process classes: a socket no process created is in none of them.
    for class in 1..=rng.below(3) as u32 {
        s.upsert(Entry::Process {
            key: ProcessKey {
                policy_id: rng.pick(&[1, 2]),
                process: ProcessMatch::Comm(rng.next_u64()),
            },
            class,
        });
    }
    let addresses: Vec<u128> = v4_universe()
        .into_iter()
        .chain(v6_universe().into_iter().map(IpAddr::V6))
        .map(addr_key)
        .collect();
    for _ in 0..rng.below(14) {
        let addr = rng.pick(&addresses);
        let len = if Prefix::new(addr, 128).family() == kernel_model::prefix::Family::V4 {
            V4_BLOCK_LEN + rng.pick(&[0u8, 8, 16, 24, 31, 32])
        } else {
            rng.pick(&[0u8, 16, 32, 48, 64, 96, 112, 127, 128])
        };
        s.upsert(Entry::Dest {
            key: DestPrefix {
                policy_id: rng.pick(&[1, 1, 2]),
                class: if rng.chance(85) { 0 } else { 1 },
                addr: Prefix::new(addr, len).key_bytes(),
                prefix_len: len,
            },
            ruleset: 1 + rng.below(6) as u32,
        });
    }
    for ruleset in 1..=6u32 {
        for _ in 0..rng.below(5) {
            let proto = rng.pick(&[TCP, TCP, UDP, UDP, ICMP, ICMPV6, ANY, GRE]);
            let block = match proto {
                ANY => PortBlock::ALL,
                ICMP | ICMPV6 => {
                    let ty: u16 = rng.pick(&[0, 3, 8, 128, 133, 135, 136, 143]);
                    PortBlock::enclosing(ty << 8, rng.pick(&[0u8, 8, 8, 16]))
                }
                _ => PortBlock::enclosing(
                    rng.pick(&[53u16, 80, 443, 8080, 1024, 65535]),
                    rng.pick(&[0u8, 6, 8, 12, 16, 16, 16]),
                ),
            };
            s.upsert(Entry::Port {
                key: PortPrefix {
                    ruleset,
                    proto,
                    port: block.port,
                    port_bits: block.bits,
                },
                rule_id: 1 + rng.below(1000) as u32,
            });
        }
    }
    s
}

/// One random frame, the model's reading of it, and whether it leaves
/// through the loopback device.
fn random_packet(rng: &mut Rng) -> (Vec<u8>, Packet, bool) {
    let is_v6 = rng.chance(50);
    let over_loopback = rng.chance(12);
    let source = packets::source(is_v6);
    let proto = if is_v6 {
        rng.pick(&[TCP, UDP, ICMPV6, ICMPV6, GRE])
    } else {
        // ICMPv6 in an IPv4 header too: no neighbour discovery there.
        rng.pick(&[TCP, UDP, ICMP, GRE, ICMPV6])
    };
    let port: u16 = match proto {
        TCP | UDP => rng.pick(&[53, 80, 443, 444, 1025, 8080, 8081, 65535]),
        ICMP => rng.pick(&[0u16, 3, 8, 13]) << 8 | rng.pick(&[0u16, 0, 1]),
        ICMPV6 => rng.pick(&[128u16, 129, 130, 133, 134, 135, 136, 137, 143]) << 8,
        _ => 0,
    };
    let later_fragment = rng.chance(12);
    let mut model = Packet {
        source,
        dest: source,
        proto,
        port: if later_fragment { 0 } else { port },
        tcp_opening: proto == TCP && !later_fragment,
        later_fragment,
        hop_limit: 64,
        route: Vec::new(),
        unjudgeable: false,
        over_loopback,
    };
    let frame = if is_v6 {
        let dest = if over_loopback && rng.chance(30) {
            v6("2001:db8:77::2")
        } else {
            rng.pick(&v6_universe())
        };
        model.dest = dest.into();
        let packet = random_ipv6(rng, dest, (proto, port), later_fragment, &v6_universe(), 20);
        model.route = packet.route;
        model.unjudgeable = packet.unjudgeable;
        let frame = packet.bytes;
        let hop_limit = if proto == ICMPV6 {
            rng.pick(&[1u8, 64, 255])
        } else {
            64
        };
        model.hop_limit = hop_limit;
        packets::with_hop_limit(frame, hop_limit)
    } else {
        let dest = if over_loopback && rng.chance(30) {
            source
        } else {
            rng.pick(&v4_universe())
        };
        model.dest = dest;
        let IpAddr::V4(dest4) = dest else {
            unreachable!("the IPv4 universe holds IPv4 addresses")
        };
        let options = if rng.chance(15) { 8 } else { 0 };
        packets::ipv4(
            dest4,
            proto,
            port,
            options,
            if later_fragment { 100 } else { 0 },
        )
    };
    // Over loopback, the source decides whether the packet is forged: the
    // frames' own address (forged unless it is the destination), a
    // loopback address, or the destination itself.
    let frame = if over_loopback && rng.chance(50) {
        let source = if rng.chance(50) {
            model.dest
        } else if is_v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            v4(127, 0, 0, 1)
        };
        // An IPv4-mapped destination in an IPv6 frame is no IPv6 source.
        if is_v6 == source.is_ipv6() {
            model.source = source;
            packets::with_source(frame, source)
        } else {
            frame
        }
    } else {
        frame
    };
    (frame, model, over_loopback)
}

/// The rules' verdicts the kernel counted, summed over policies.
fn counted(kernel: &Kernel) -> [u64; 3] {
    let counters = kernel.counters().expect("the loader's counters");
    counters.policies.iter().fold([0; 3], |[a, d, u], p| {
        [a + p.allowed, d + p.denied, u + p.audited]
    })
}

#[test]
fn kernel_decides_as_the_model() {
    let Some(()) = require_root("kernel_decides_as_the_model") else {
        return;
    };
    let mut rng = Rng::from_env("DIFFERENTIAL_SEED");
    let seed = rng.seed();
    let pins = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/contain-t-{}-differential",
        std::process::id()
    )));
    let (mut kernel, _rings) = Kernel::load(&pins.0).expect("loading the eBPF object");
    let program = kernel
        .program_fd(program_names::EGRESS)
        .expect("egress program");
    let ifindex = testrun::egress_ifindex().expect("an interface to run packets through");
    // A test run's socket belongs to the cgroup of the process running it.
    let own_cgroup = test_kit::cgroup::own_cgroup_id().expect("own cgroup id");
    let socket = Socket::Unstamped {
        kind: SocketKind::Other,
    };

    let mut mismatches = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        let desired = random_state(&mut rng, own_cgroup);
        // From the previous round's state: the diff and its apply order are
        // under test too.
        let diff = MapDiff::between(kernel.generation(), kernel.state(), &desired);
        kernel.apply(&diff).expect("the loader applies the diff");
        assert_eq!(
            &kernel.read_state().expect("reading the maps back"),
            &desired,
            "round {round}: the maps as the kernel holds them"
        );
        // Pass or drop shows allow from deny; the counters show allow from
        // audit: every packet the rules judge counts once, under its verdict.
        let before = counted(&kernel);
        let mut expected = [0u64; 3];
        for _ in 0..PACKETS_PER_ROUND {
            let (frame, packet, over_loopback) = random_packet(&mut rng);
            let model = egress(&desired, own_cgroup, &socket, &packet);
            let through = if over_loopback {
                LOOPBACK_IFINDEX
            } else {
                ifindex
            };
            let run = testrun::run(program, &frame, 1, through).expect("BPF_PROG_TEST_RUN");
            let kernel_passes = run.retval == 1;
            if matches!(
                model.reason,
                Reason::Rules | Reason::SourceRoute | Reason::Unjudgeable
            ) {
                expected[match model.verdict {
                    Verdict::Allow => 0,
                    Verdict::Deny => 1,
                    Verdict::Audit => 2,
                }] += 1;
            }
            *seen
                .entry((format!("{:?}", model.reason), model.verdict))
                .or_insert(0u32) += 1;
            if kernel_passes != model.passes() && mismatches.len() < 20 {
                mismatches.push(format!(
                    "round {round}: kernel {} but the model says {:?} ({:?})\n  packet {packet:?}\n  cgroup {:?}\n  lookup {:?}",
                    if kernel_passes { "passes" } else { "drops" },
                    model.verdict,
                    model.reason,
                    desired.cgroups.get(&own_cgroup),
                    model.lookup,
                ));
            }
        }
        let after = counted(&kernel);
        let delta = [0, 1, 2].map(|i| after[i] - before[i]);
        if delta != expected && mismatches.len() < 20 {
            mismatches.push(format!(
                "round {round}: the kernel counted [allowed, denied, audited] = {delta:?}, the model {expected:?}"
            ));
        }
    }
    for ((reason, verdict), n) in &seen {
        eprintln!("{reason:<20} {verdict:<6} {n}");
    }
    // The run must have reached every case it claims to compare.
    for (reason, verdict) in [
        ("Rules", Verdict::Allow),
        ("Rules", Verdict::Deny),
        ("Rules", Verdict::Audit),
        ("Unrestricted", Verdict::Allow),
        ("KernelLinkControl", Verdict::Allow),
        ("Unjudgeable", Verdict::Deny),
        ("SourceRoute", Verdict::Allow),
        ("SourceRoute", Verdict::Deny),
    ] {
        assert!(
            seen.contains_key(&(reason.to_string(), verdict)),
            "no case of {reason} {verdict} was generated (seed {seed})"
        );
    }
    assert!(
        mismatches.is_empty(),
        "the kernel and the model disagree (DIFFERENTIAL_SEED={seed}):\n{}",
        mismatches.join("\n")
    );
}
