//! contain's full decision when the CPU's caches do not hold what it looks
//! up. The program-cost phase repeats one packet (every lookup a cache
//! hit) and the flow phase times the socket's cached verdict; here many
//! containers send to destinations drawn at random from the rule list, so
//! every packet misses its socket's verdict cache and takes the whole path
//! (the cgroup's entry, the destination's hash or LPM entry, the port's)
//! through memory the packets before it did not touch.
//!
//! The traffic: SYN-shaped TCP headers from raw sockets
//! (`socket(AF_INET, SOCK_RAW, IPPROTO_TCP)`). No socket hook judges a raw
//! socket's send (the kernel runs the sendmsg hooks for UDP sockets, not
//! raw ones; `sock_create` only stamps the socket), so contain's egress
//! program judges each packet, and the socket's verdict cache holds one
//! destination: its last. Destinations are the synthetic
//! rules of 10.0.0.0/8 (TCP, one port each; a random address inside a /30
//! or /28): each packet's rule drawn uniformly, never the rule of its
//! socket's previous packet nor of the packet before it; every tenth packet
//! goes to its rule's address on a port the rule does not allow (denied:
//! EPERM). They leave through a veth of the phase's own namespace pair
//! (`cbench-<pid>-cold`, 198.19.0.2, with 10.0.0.0/8 routed to
//! `cbench-<pid>-coldpeer`, 198.19.0.1, whose blackhole route drops them).
//!
//! The containers: for each rule count measured (the smallest and the
//! largest), `containers` cgroups under contain's attach point, each with
//! its own CGROUPS entry pointing at that rule count's policy (shared, as
//! identical policies would be) and one raw socket created from inside it
//! (a socket's cgroup is its creator's at creation).
//!
//! The cases, timed by the kernel's bpf_stats as the flow phase times them
//! (`run_time_ns` ÷ `run_cnt` around a batch, the sender pinned to one CPU):
//! - cold: a random container's socket per packet, random destinations;
//! - thrashed (largest list, and the floor): the same, with a buffer far
//!   larger than the L2 cache read between packets (an L3 larger than the
//!   buffer may still hold contain's maps: the report says how large);
//! - warm: one container, ten destinations in turn (the same shape: every
//!   packet a full decision, every tenth denied), every lookup warm;
//! - cached: one container, one allowed destination: after its first
//!   packet the socket's cached verdict (the established path).
//!
//! The floor (`baseline_pass`, attached to a cgroup of its own for this
//! phase) on the cold and the thrashed traffic, from as many cgroups, so
//! the ratios come from one run. Configurations go in rotating order each
//! round; each figure is the median over the rounds.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use kernel_model::{diff::MapDiff, state::KernelState};
use serde::{Deserialize, Serialize};
use test_kit::{
    cgroup::{self, Cgroup},
    lab::{self as netlab, Netns, VethEnd},
};

use crate::{
    flowcost::{prog_stats, programs, Attached},
    lab::{self, Kind, Lab},
    progcost::tcp_syn,
    rules::{Rng, Rule},
    sys,
};

/// Packets sent before each batch's statistics are read.
const WARMUP: usize = 200;
/// Every tenth packet is denied.
pub const DENY_EVERY: usize = 10;
/// The buffer read between packets in the thrashed case.
pub const THRASH_BYTES: usize = 32 << 20;
/// The warm case's destinations, in turn.
const WARM_DESTINATIONS: usize = 10;

const CLIENT_ADDR: &str = "198.19.0.2/24";
const PEER: &str = "198.19.0.1";
const CLIENT_MAC: &str = "02:cb:ff:00:00:02";
const PEER_MAC: &str = "02:cb:ff:00:00:01";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// Many containers, random destinations.
    Cold,
    /// The same, with the L2 cache flushed by a buffer read between packets.
    Thrashed,
    /// One container, ten destinations in turn: full decisions, warm caches.
    Warm,
    /// One container, one destination: the socket's cached verdict.
    Cached,
    /// Cold, to the destinations of /32 rules only (a hash lookup).
    ColdHosts,
    /// Cold, to the destinations of /30 and /28 rules only (a hash miss,
    /// then the LPM trie).
    ColdPrefixes,
}

pub const CASES: [Case; 6] = [
    Case::Cold,
    Case::Thrashed,
    Case::Warm,
    Case::Cached,
    Case::ColdHosts,
    Case::ColdPrefixes,
];

impl Case {
    pub fn label(self) -> &'static str {
        match self {
            Case::Cold => "cold: many containers, random destinations",
            Case::Thrashed => "thrashed: cold, a buffer read between packets",
            Case::Warm => "warm: one container, ten destinations in turn",
            Case::Cached => "cached: one container, one destination",
            Case::ColdHosts => "/32 rules only: a hash lookup (`HOSTS`)",
            Case::ColdPrefixes => {
                "/30 and /28 rules only: a hash miss, then the LPM trie (`DESTS`)"
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// `floor`, or `contain@N`.
    pub name: String,
    pub rules: usize,
    pub case: Case,
    /// Median over rounds of run time ÷ runs in the round.
    pub ns_per_packet: f64,
    /// Each round's ns per packet, in measuring order.
    pub round_ns: Vec<f64>,
    /// Program runs counted in all.
    pub runs: u64,
    /// Packets sent in the measured batches (each must have run the program).
    pub packets: u64,
    /// Of those, refused with EPERM (denied by contain).
    pub refused: u64,
}

/// What the phase sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets per configuration and round (after a warm-up of 200).
    pub packets_per_round: usize,
    /// … in the thrashed case (each after a read of the whole buffer).
    pub thrashed_packets_per_round: usize,
    /// Cgroups per rule count, and for the floor: each with its own
    /// CGROUPS entry (contain's) and one raw socket created inside it.
    pub containers: usize,
    /// Every this many packets one is denied.
    pub deny_every: usize,
    /// The buffer read between packets in the thrashed case.
    pub thrash_bytes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColdCache {
    pub rounds: usize,
    pub traffic: Traffic,
    /// The measuring CPU's caches, as sysfs describes them (`L2 unified
    /// 2048K`, …): what the thrashed case evicts, and what it cannot.
    pub cpu_caches: Vec<String>,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

pub struct Params {
    pub rounds: usize,
    pub packets: usize,
    pub thrashed_packets: usize,
    pub containers: usize,
}

/// One packet: which socket sends it, where, and whether contain denies it.
#[derive(Clone, Copy)]
struct Packet {
    socket: usize,
    to: libc::sockaddr_in,
    tcp: [u8; 20],
    denied: bool,
}

impl Packet {
    fn new(socket: usize, addr: Ipv4Addr, port: u16, denied: bool) -> Packet {
        let frame = tcp_syn(addr, port);
        let mut tcp = [0u8; 20];
        tcp.copy_from_slice(&frame[frame.len() - 20..]);
        Packet {
            socket,
            to: libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(addr).to_be(),
                },
                sin_zero: [0; 8],
            },
            tcp,
            denied,
        }
    }

    /// Sends the header; the errno when the kernel refused it.
    fn send(&self, fd: RawFd) -> Option<i32> {
        // SAFETY: a valid buffer and sockaddr_in of the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd,
                self.tcp.as_ptr().cast(),
                self.tcp.len(),
                0,
                (&self.to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        (sent < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// An address of `rule` (a random one inside a prefix) and its port, or a
/// port the rule does not allow. Every synthetic rule's destination is a
/// /28 block of its own with that one rule, so any other port is denied.
fn destination(rule: &Rule, rng: &mut Rng, denied: bool) -> (Ipv4Addr, u16) {
    let host_bits = 32 - u32::from(rule.prefix);
    let host = if host_bits == 0 {
        0
    } else {
        (rng.next() as u32) & ((1u32 << host_bits) - 1)
    };
    let port = if denied { rule.port ^ 1 } else { rule.port };
    (Ipv4Addr::from(u32::from(rule.addr) | host), port)
}

fn is_denied(i: usize) -> bool {
    i % DENY_EVERY == DENY_EVERY - 1
}

/// `count` packets from random sockets of `sockets` to random rules, never
/// the rule of the socket's previous packet nor of the packet before it
/// (`rules` holds at least three).
fn cold_schedule(rules: &[Rule], sockets: usize, count: usize, seed: u64) -> Vec<Packet> {
    let mut rng = Rng(seed | 1);
    let mut last = vec![usize::MAX; sockets];
    let mut previous = usize::MAX;
    (0..count)
        .map(|i| {
            let socket = (rng.next() % sockets as u64) as usize;
            let rule = loop {
                let r = (rng.next() % rules.len() as u64) as usize;
                if r != last[socket] && r != previous {
                    break r;
                }
            };
            last[socket] = rule;
            previous = rule;
            let (addr, port) = destination(&rules[rule], &mut rng, is_denied(i));
            Packet::new(socket, addr, port, is_denied(i))
        })
        .collect()
}

/// Socket 0 to [`WARM_DESTINATIONS`] fixed destinations in turn (fewer
/// rules: each rule's address allowed, then denied), `count` packets.
fn warm_schedule(rules: &[Rule], count: usize) -> Vec<Packet> {
    let mut rng = Rng(0x5eed_c01d);
    let mut picks: Vec<usize> = Vec::new();
    let k = rules.len().min(WARM_DESTINATIONS);
    while picks.len() < k {
        let r = (rng.next() % rules.len() as u64) as usize;
        if !picks.contains(&r) {
            picks.push(r);
        }
    }
    let cycle: Vec<Packet> = (0..WARM_DESTINATIONS)
        .map(|i| {
            let (addr, port) = destination(&rules[picks[i % k]], &mut rng, is_denied(i));
            Packet::new(0, addr, port, is_denied(i))
        })
        .collect();
    cycle.iter().copied().cycle().take(count).collect()
}

/// Socket 0 to one allowed destination, `count` times.
fn cached_schedule(rules: &[Rule], count: usize) -> Vec<Packet> {
    let (addr, port) = destination(&rules[0], &mut Rng(1), false);
    vec![Packet::new(0, addr, port, false); count]
}

/// The rules a case draws its destinations from.
fn of_kind(rules: &[Rule], case: Case) -> Vec<Rule> {
    let keep = |r: &&Rule| match case {
        Case::ColdHosts => r.prefix == 32,
        Case::ColdPrefixes => r.prefix < 32,
        _ => true,
    };
    rules.iter().filter(keep).copied().collect()
}

/// Reads one byte of every cache line of `buf`.
fn read_through(buf: &[u8]) {
    let mut sum = 0u64;
    for b in buf.iter().step_by(64) {
        sum = sum.wrapping_add(u64::from(*b));
    }
    std::hint::black_box(sum);
}

/// One batch's program statistics and what the kernel made of the sends.
struct Batch {
    run_time_ns: u64,
    runs: u64,
    packets: u64,
    refused: u64,
    /// Refusals of allowed packets, or passes of denied ones: not the case
    /// this phase claims to measure.
    unexpected: u64,
    /// An errno other than EPERM, if any.
    other_errno: Option<i32>,
}

/// Sends `schedule` (its first [`WARMUP`] packets before the statistics
/// are read) on the measuring CPU; `judged`: contain's program, which
/// refuses the denied packets.
fn batch(
    sockets: &[OwnedFd],
    schedule: &[Packet],
    prog: RawFd,
    judged: bool,
    thrash: Option<&[u8]>,
) -> Result<Batch> {
    sys::pin_thread(sys::measuring_cpu());
    let warmup = schedule.len().min(WARMUP);
    for p in &schedule[..warmup] {
        let _ = p.send(sockets[p.socket].as_raw_fd());
    }
    let mut b = Batch {
        run_time_ns: 0,
        runs: 0,
        packets: 0,
        refused: 0,
        unexpected: 0,
        other_errno: None,
    };
    let (t0, c0) = prog_stats(prog)?;
    for p in &schedule[warmup..] {
        if let Some(buf) = thrash {
            read_through(buf);
        }
        let errno = p.send(sockets[p.socket].as_raw_fd());
        b.packets += 1;
        match errno {
            Some(libc::EPERM) => b.refused += 1,
            Some(e) => b.other_errno = Some(e),
            None => {}
        }
        if errno.is_some() != (judged && p.denied) {
            b.unexpected += 1;
        }
    }
    let (t1, c1) = prog_stats(prog)?;
    b.run_time_ns = t1.saturating_sub(t0);
    b.runs = c1.saturating_sub(c0);
    Ok(b)
}

/// The phase's namespace pair: the client, with 10.0.0.0/8 routed over a
/// veth to the peer, which drops it (a blackhole route; forwarding is off
/// there too, so no ICMP error comes back).
fn network(lab: &Lab) -> Result<(Netns, Netns)> {
    let client = Netns::new(&format!("{}-cold", lab.name))?;
    let peer = Netns::new(&format!("{}-coldpeer", lab.name))?;
    let (c, p) = (client.name(), peer.name());
    for ns in [c, p] {
        netlab::disable_ipv6(ns)?;
        netlab::link_up(ns, "lo")?;
    }
    netlab::add_veth(
        VethEnd::new(c, "vc").mac(CLIENT_MAC),
        VethEnd::new(p, "vp").mac(PEER_MAC),
    )?;
    netlab::add_addr(c, "vc", CLIENT_ADDR)?;
    netlab::add_addr(p, "vp", &format!("{PEER}/24"))?;
    netlab::link_up(c, "vc")?;
    netlab::link_up(p, "vp")?;
    netlab::add_neighbour(c, "vc", PEER, PEER_MAC)?;
    netlab::add_route(c, "10.0.0.0/8", PEER, "vc")?;
    netlab::add_blackhole_route(p, "10.0.0.0/8")?;
    Ok((client, peer))
}

fn raw_socket() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("socket(AF_INET, SOCK_RAW, IPPROTO_TCP)");
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One raw socket in namespace `ns` created from inside each cgroup; this
/// process is back home afterwards, whatever happened.
fn sockets_in(lab: &Lab, cgroups: &[Cgroup], ns: &str) -> Result<Vec<OwnedFd>> {
    let made = (|| -> Result<Vec<OwnedFd>> {
        let mut sockets = Vec::with_capacity(cgroups.len());
        for c in cgroups {
            cgroup::enter(c.path())?;
            sockets.push(test_kit::lab::in_netns(ns, raw_socket)?);
        }
        Ok(sockets)
    })();
    lab.enter(None)?;
    made
}

/// The containers of one rule count (or the floor's): their cgroups,
/// sockets, the rules their destinations come from, the program timed.
struct Fleet {
    name: String,
    rules: usize,
    prog: RawFd,
    judged: bool,
    list: Vec<Rule>,
    sockets: Vec<OwnedFd>,
    cgroups: Vec<Cgroup>,
}

/// The measuring CPU's caches (`L2 unified 2048K`, …).
fn cpu_caches(cpu: usize) -> Vec<String> {
    let dir = std::path::PathBuf::from(format!("/sys/devices/system/cpu/cpu{cpu}/cache"));
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("index"))
        .map(|e| {
            let p = e.path();
            format!(
                "L{} {} {}",
                read(p.join("level")),
                read(p.join("type")).to_lowercase(),
                read(p.join("size"))
            )
        })
        .collect();
    out.sort();
    out
}

/// Measures contain's egress program at the smallest and the largest rule
/// count (of those with at least three synthetic rules), and the floor.
pub fn measure(lab: &mut Lab, p: &Params) -> Result<ColdCache> {
    let started = Instant::now();
    let synthetic = |rules: usize, peer| -> Vec<Rule> {
        crate::rules::list(rules, &lab::needed(peer))
            .into_iter()
            .filter(|r| r.addr.octets()[0] == 10)
            .collect()
    };
    let mut counts: Vec<(usize, Ipv4Addr, std::path::PathBuf)> = lab
        .targets
        .iter()
        .filter(|t| t.kind == Kind::Contain && synthetic(t.rules, t.peer).len() >= 3)
        .map(|t| (t.rules, t.peer, t.cgroup.clone()))
        .collect();
    counts.sort_by_key(|c| c.0);
    if counts.len() > 2 {
        counts.drain(1..counts.len() - 1);
    }
    let Some(largest) = counts.last().cloned() else {
        bail!("no rule count with three synthetic rules or more (--rules 10 or more)");
    };
    let egress = lab.egress_fd()?;
    let (client, peer) = network(lab)?;
    let original: KernelState = lab.kernel.state().clone();
    let mut fleets: Vec<Fleet> = Vec::new();
    let parent = lab.base.join("contain");
    for (rules, peer_addr, policy_cgroup) in &counts {
        let entry = *original
            .cgroups
            .get(&cgroup::cgroup_id(policy_cgroup)?)
            .with_context(|| format!("the CGROUPS entry of contain@{rules}"))?;
        let cgroups = (0..p.containers)
            .map(|i| Cgroup::create(&parent.join(format!("cold{rules}-{i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut desired = lab.kernel.state().clone();
        for c in &cgroups {
            desired.cgroups.insert(cgroup::cgroup_id(c.path())?, entry);
        }
        let diff = MapDiff::between(lab.kernel.generation(), lab.kernel.state(), &desired);
        lab.kernel
            .apply(&diff)
            .map_err(|e| anyhow::anyhow!("mapping the cold phase's cgroups: {e:?}"))?;
        let sockets = sockets_in(lab, &cgroups, client.name())?;
        fleets.push(Fleet {
            name: format!("contain@{rules}"),
            rules: *rules,
            prog: egress,
            judged: true,
            list: synthetic(*rules, *peer_addr),
            sockets,
            cgroups,
        });
    }
    // The floor's cgroups: outside contain's attach point, the floor on
    // their parent.
    let floor_parent = Cgroup::create(&lab.base.join("cold-floor"))?;
    let floor_cgroups = (0..p.containers)
        .map(|i| Cgroup::create(&floor_parent.path().join(format!("c{i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let floor_sockets = sockets_in(lab, &floor_cgroups, client.name())?;
    fleets.push(Fleet {
        name: "floor".into(),
        rules: 0,
        prog: lab.floor.fd,
        judged: false,
        list: synthetic(largest.0, largest.1),
        sockets: floor_sockets,
        cgroups: floor_cgroups,
    });
    let floor_fleet = fleets.len() - 1;
    let floor = Attached::new(floor_parent.path(), lab.floor.fd)?;

    // (fleet, case)
    let mut configs: Vec<(usize, Case)> = Vec::new();
    for (f, fleet) in fleets.iter().enumerate() {
        let cases: &[Case] = if f == floor_fleet {
            &[Case::Cold, Case::Thrashed]
        } else if fleet.rules == largest.0 {
            &CASES
        } else {
            &[Case::Cold, Case::Warm, Case::Cached]
        };
        configs.extend(
            cases
                .iter()
                .filter(|&&c| of_kind(&fleet.list, c).len() >= 3)
                .map(|&c| (f, c)),
        );
    }
    let thrash_buf = vec![1u8; THRASH_BYTES];
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("BPF_ENABLE_STATS: {e}"))?;
    let n = configs.len();
    let mut rounds = vec![Vec::<f64>::new(); n];
    let mut totals = vec![(0u64, 0u64, 0u64); n];
    let result = (|| -> Result<()> {
        for round in 0..p.rounds {
            for i in 0..n {
                let slot = (i + round * 3) % n;
                let (f, case) = configs[slot];
                let fleet = &fleets[f];
                let seed = 0x9e37_79b9 ^ ((round as u64) << 32) ^ slot as u64;
                let schedule = match case {
                    Case::Cold | Case::ColdHosts | Case::ColdPrefixes => cold_schedule(
                        &of_kind(&fleet.list, case),
                        fleet.sockets.len(),
                        WARMUP + p.packets,
                        seed,
                    ),
                    Case::Thrashed => cold_schedule(
                        &fleet.list,
                        fleet.sockets.len(),
                        WARMUP + p.thrashed_packets,
                        seed,
                    ),
                    Case::Warm => warm_schedule(&fleet.list, WARMUP + p.packets),
                    Case::Cached => cached_schedule(&fleet.list, WARMUP + p.packets),
                };
                let thrash = (case == Case::Thrashed).then_some(thrash_buf.as_slice());
                let b = std::thread::scope(|s| {
                    s.spawn(|| batch(&fleet.sockets, &schedule, fleet.prog, fleet.judged, thrash))
                        .join()
                })
                .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?
                .with_context(|| format!("{}, {}", fleet.name, case.label()))?;
                let what = format!("{}, {}", fleet.name, case.label());
                if let Some(e) = b.other_errno {
                    bail!(
                        "{what}: a send failed: {}",
                        std::io::Error::from_raw_os_error(e)
                    );
                }
                if b.unexpected != 0 {
                    bail!(
                        "{what}: {} of {} packets were not judged as the phase expects \
                         (allowed ones refused, or denied ones sent)",
                        b.unexpected,
                        b.packets
                    );
                }
                if b.runs < b.packets {
                    bail!(
                        "{what}: the program ran {} times for {} packets (bpf_stats off?)",
                        b.runs,
                        b.packets
                    );
                }
                rounds[slot].push(b.run_time_ns as f64 / b.runs as f64);
                totals[slot].0 += b.runs;
                totals[slot].1 += b.packets;
                totals[slot].2 += b.refused;
            }
            eprint!(".");
        }
        Ok(())
    })();
    eprintln!();
    drop(stats);
    drop(floor);
    let names: Vec<(String, usize)> = fleets.iter().map(|f| (f.name.clone(), f.rules)).collect();
    // Sockets first (they hold their cgroups), then the map entries, then
    // the cgroups.
    for f in &mut fleets {
        f.sockets.clear();
    }
    let restore = MapDiff::between(lab.kernel.generation(), lab.kernel.state(), &original);
    let restored = lab
        .kernel
        .apply(&restore)
        .map_err(|e| anyhow::anyhow!("removing the cold phase's cgroups from the maps: {e:?}"));
    for f in &mut fleets {
        f.cgroups.clear();
    }
    drop(floor_parent);
    drop((client, peer));
    result?;
    restored?;
    let rows = configs
        .iter()
        .enumerate()
        .map(|(slot, &(f, case))| Row {
            name: names[f].0.clone(),
            rules: names[f].1,
            case,
            ns_per_packet: sys::median(&rounds[slot]),
            round_ns: std::mem::take(&mut rounds[slot]),
            runs: totals[slot].0,
            packets: totals[slot].1,
            refused: totals[slot].2,
        })
        .collect();
    Ok(ColdCache {
        rounds: p.rounds,
        traffic: Traffic {
            packets_per_round: p.packets,
            thrashed_packets_per_round: p.thrashed_packets,
            containers: p.containers,
            deny_every: DENY_EVERY,
            thrash_bytes: THRASH_BYTES,
        },
        cpu_caches: cpu_caches(sys::measuring_cpu()),
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The report's section.
pub fn render(md: &mut String, c: &ColdCache) {
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "## Cache-cold decisions: many containers, random destinations (bpf_stats)\n"
    );
    let _ = writeln!(
        md,
        "The program-cost table repeats one packet, so every lookup hits the CPU's caches, and \
         the established flow's packet takes the socket's cached verdict. Here contain's egress \
         program judges packets whose every lookup is somewhere else: {} containers (cgroups \
         under contain's attach point, each with its own CGROUPS entry for the rule count's \
         policy, each with a raw socket) send SYN-shaped TCP headers to destinations drawn \
         uniformly from the list's synthetic rules (10.0.0.0/8, TCP to one port each), never \
         the same rule twice in a row for a socket nor for the whole stream, so each packet \
         misses the socket's verdict cache and takes the full decision (no connect or sendmsg \
         hook judges a raw socket's send: the egress program judges every packet). Every {}th packet goes to its \
         rule's address on another port: denied (EPERM). Timed as the flow phase times a \
         packet: the kernel's per-program statistics (`run_time_ns` ÷ `run_cnt`) around {} \
         packets per configuration and round, {} rounds in rotating order; each cell is the \
         median over the rounds.\n",
        c.traffic.containers, c.traffic.deny_every, c.traffic.packets_per_round, c.rounds
    );
    let _ = writeln!(
        md,
        "*Warm* is the same shape from one container to ten destinations in turn (still a full \
         decision every packet, every lookup warm); *cached* is one container to one allowed \
         destination (the socket's cached verdict). *Thrashed* is the cold traffic with a {} MB \
         buffer read between packets ({} packets per round): it evicts the L1 and L2 caches, \
         not an L3 larger than the buffer (this CPU: {}). The floor is `baseline_pass` on the \
         same cold traffic from as many cgroups of its own; both programs' figures include \
         the statistics' own cost.\n",
        c.traffic.thrash_bytes >> 20,
        c.traffic.thrashed_packets_per_round,
        if c.cpu_caches.is_empty() {
            "not known".to_string()
        } else {
            c.cpu_caches.join(", ")
        }
    );
    let _ = writeln!(
        md,
        "A denied packet's event: in the cold case each container stays within its event rate, \
         so each denial tries the ring buffer (nothing reads it here: it soon fills, and the \
         reservation fails); in the warm case the one container's events are soon \
         rate-limited, so most denials skip it. The denied tenth's path differs by that \
         besides the caches.\n"
    );
    let cell = |name: &str, case: Case| {
        c.rows
            .iter()
            .find(|r| r.name == name && r.case == case)
            .map(|r| r.ns_per_packet)
    };
    let fmt_ns = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1} ns"));
    let fmt_ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2} ×", a / b),
        _ => "—".into(),
    };
    let _ = writeln!(
        md,
        "| program | {} | ÷ floor | {} | ÷ floor | {} | cold ÷ warm | {} |",
        Case::Cold.label(),
        Case::Thrashed.label(),
        Case::Warm.label(),
        Case::Cached.label()
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, label) in programs(c.rows.iter().map(|r| (r.name.as_str(), r.rules))) {
        let name = name.as_str();
        let cold = cell(name, Case::Cold);
        let thrashed = cell(name, Case::Thrashed);
        let warm = cell(name, Case::Warm);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_ns(cold),
            fmt_ratio(cold, cell("floor", Case::Cold)),
            fmt_ns(thrashed),
            fmt_ratio(thrashed, cell("floor", Case::Thrashed)),
            fmt_ns(warm),
            fmt_ratio(cold, warm),
            fmt_ns(cell(name, Case::Cached)),
        );
    }
    let _ = writeln!(md);
    let Some(largest) = c
        .rows
        .iter()
        .filter(|r| r.case == Case::ColdPrefixes)
        .max_by_key(|r| r.rules)
    else {
        return;
    };
    let _ = writeln!(
        md,
        "Where the cold decision's time goes at {} rules: the same cold traffic to the \
         destinations of one kind of rule only (a /32 rule's destination is found in a hash \
         table; any other in the LPM trie, after a miss in the hash table).\n",
        largest.rules
    );
    let _ = writeln!(
        md,
        "| destinations | ns per packet | ÷ floor |\n|---|---:|---:|"
    );
    for case in [Case::Cold, Case::ColdHosts, Case::ColdPrefixes] {
        let v = cell(&largest.name, case);
        let label = if case == Case::Cold {
            "every synthetic rule's (as above)"
        } else {
            case.label()
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} |",
            fmt_ns(v),
            fmt_ratio(v, cell("floor", Case::Cold))
        );
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(n: u8) -> Vec<Rule> {
        (0..n)
            .map(|i| Rule {
                addr: Ipv4Addr::new(10, 0, i, 0),
                prefix: if i % 2 == 0 { 32 } else { 28 },
                proto: crate::rules::TCP,
                port: 2000 + u16::from(i),
            })
            .collect()
    }

    fn dest(p: &Packet) -> (u32, [u8; 2]) {
        (u32::from_be(p.to.sin_addr.s_addr), [p.tcp[2], p.tcp[3]])
    }

    #[test]
    fn a_socket_never_sends_to_its_previous_destination() {
        let list = rules(5);
        let s = cold_schedule(&list, 3, 2000, 7);
        let mut last = [None; 3];
        for (i, p) in s.iter().enumerate() {
            assert_ne!(last[p.socket], Some(dest(p)), "packet {i}");
            last[p.socket] = Some(dest(p));
            assert_eq!(p.denied, i % DENY_EVERY == DENY_EVERY - 1);
        }
        assert!((0..3).all(|k| s.iter().any(|p| p.socket == k)));
    }

    #[test]
    fn destinations_stay_inside_their_rule_and_denied_ones_change_the_port() {
        let list = rules(4);
        let mut rng = Rng(3);
        for r in &list {
            for denied in [false, true] {
                let (addr, port) = destination(r, &mut rng, denied);
                let mask = u32::MAX << (32 - u32::from(r.prefix));
                assert_eq!(u32::from(addr) & mask, u32::from(r.addr));
                assert_eq!(port == r.port, !denied);
            }
        }
    }

    #[test]
    fn the_warm_cycle_changes_destination_every_packet() {
        for n in [5, 40] {
            let s = warm_schedule(&rules(n), 100);
            assert!(s.iter().all(|p| p.socket == 0));
            for (i, w) in s.windows(2).enumerate() {
                assert_ne!(dest(&w[0]), dest(&w[1]), "packets {i} and {}", i + 1);
            }
            assert_eq!(s.iter().filter(|p| p.denied).count(), 10);
        }
    }

    #[test]
    fn the_section_shows_ratios_to_the_floor_and_to_warm() {
        let row = |name: &str, rules, case, ns| Row {
            name: name.into(),
            rules,
            case,
            ns_per_packet: ns,
            round_ns: vec![ns],
            runs: 1,
            packets: 1,
            refused: 0,
        };
        let c = ColdCache {
            rounds: 1,
            traffic: Traffic {
                packets_per_round: 1,
                thrashed_packets_per_round: 1,
                containers: 100,
                deny_every: DENY_EVERY,
                thrash_bytes: THRASH_BYTES,
            },
            cpu_caches: vec!["L2 unified 2048K".into()],
            rows: vec![
                row("floor", 0, Case::Cold, 20.0),
                row("contain@100000", 100_000, Case::Cold, 150.0),
                row("contain@100000", 100_000, Case::Warm, 100.0),
            ],
            seconds: 0.0,
        };
        let mut md = String::new();
        render(&mut md, &c);
        assert!(
            md.contains("| contain's egress, 100000 rules | 150.0 ns | 7.50 × | — | — | 100.0 ns | 1.50 × | — |"),
            "{md}"
        );
    }
}
