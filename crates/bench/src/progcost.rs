//! Per-packet program cost with BPF_PROG_TEST_RUN: contain's egress
//! program (the full decision: the test run's dummy socket has no socket
//! storage, so nothing is cached), contain's veth backstop, the
//! thesis-style scan, and the floor, at each rule count, interleaved round
//! by round in one run.
//!
//! contain's policy is chosen by the cgroup of the dummy socket, which is
//! the cgroup of the calling process: the bench moves itself into the
//! cgroup of each rule count before running its packets.
//!
//! An established flow's packet is test-run too, behind `established_via`
//! (see `programs::EstablishedVia`): it gives the dummy socket storage, so
//! of a run's repetitions, all on that one socket, the first is judged in
//! full and every later one finds the cached verdict, as a packet of an
//! established flow does. Measured for a TCP segment and a UDP datagram on
//! contain's egress program, and on `baseline_pass` behind the same
//! hand-over (its floor): the difference is what contain's established
//! path adds to a pass-only program, with no statistics in the way.
//!
//! `contain_veth` (a tc program) gets the same kind of dummy socket, in the
//! caller's cgroup, with the IP family of the frame: it can never see a
//! frame without a socket here. Its paths: *governed* (the bench in the
//! container's cgroup: the socket's ancestor walk finds the cgroup
//! contain's programs are attached to, and the frame passes: what every
//! packet of a container's own IP sockets costs), and, with the bench in
//! the root cgroup (a socket outside contain's cgroups, the shortest
//! walk), *unowned* (a veth `CONTAIN_VETHS` has no container for: pass)
//! and *judged* (a veth mapped to the container's cgroup: its policy
//! decides, with no process identity). `contain_veth_inbound` (tc egress
//! of the host side, what the container receives) on the container's veth
//! (the source is compared with the peer last noted on this CPU, as every
//! run after the first finds it, else looked up in, and once a second
//! refreshed in, `CONTAIN_VETH_PEERS`: every packet into a container) and on an unowned
//! one. The device is a veth of the bench's test-run namespace: the kernel
//! looks the context's ifindex up in the caller's namespace, so these runs
//! are made from a thread there.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use test_kit::testrun;

use crate::{
    lab::{Kind, Lab, PREFIX_RULE, RR_PORT, TESTRUN_UNOWNED, UDP_SINK_PORT},
    rules::{TCP, UDP},
    sys,
};

/// The address of the container behind the test-run veth: the source of
/// what the program-cost phase's frames send, the destination of what they
/// receive.
pub const FRAME_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// A SYN from the container's address to `dst`.
pub fn tcp_syn(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp_frame(FRAME_SOURCE, dst, 40000, dport, TCP_SYN)
}

/// An ACK from the container's address to `dst`: a segment of a flow it
/// opened.
pub fn tcp_ack_out(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp_frame(FRAME_SOURCE, dst, 40000, dport, TCP_ACK)
}

/// An ACK from `peer` into the container (to its address, as every packet
/// of a container's flow comes in).
pub fn tcp_ack_in(peer: Ipv4Addr, sport: u16) -> Vec<u8> {
    tcp_frame(peer, FRAME_SOURCE, sport, 40000, TCP_ACK)
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A hand-built Ethernet frame with an IPv4 TCP segment (the kernel strips
/// the Ethernet header for cgroup_skb).
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    ipv4_frame(src, dst, TCP, &tcp)
}

/// A hand-built Ethernet frame with an IPv4 UDP datagram of 8 bytes.
fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut udp = [0u8; 16];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&16u16.to_be_bytes());
    ipv4_frame(src, dst, UDP, &udp)
}

/// `l4` (protocol `proto`) in an IPv4 header with no options, in an
/// Ethernet frame.
fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub rules: usize,
    /// Median over rounds, ns per run; raw per-round values below.
    pub contain_allow_host_ns: f64,
    pub contain_allow_prefix_ns: f64,
    pub contain_deny_ns: f64,
    pub thesis_allow_ns: f64,
    pub thesis_deny_ns: f64,
    /// The bounded-loop variant, where the list fits (≤ 512 entries).
    pub thesis_bounded_allow_ns: Option<f64>,
    pub thesis_bounded_deny_ns: Option<f64>,
    pub floor_ns: f64,
    /// `contain_veth`: a socket under contain's cgroups (pass after the
    /// ancestor walk).
    #[serde(default)]
    pub veth_governed_ns: Option<f64>,
    /// A socket outside them, on a veth mapped to no container (pass).
    #[serde(default)]
    pub veth_unowned_ns: Option<f64>,
    /// A socket outside them, on the container's veth: judged by its
    /// policy.
    #[serde(default)]
    pub veth_allow_host_ns: Option<f64>,
    #[serde(default)]
    pub veth_allow_prefix_ns: Option<f64>,
    #[serde(default)]
    pub veth_deny_ns: Option<f64>,
    /// `contain_veth_inbound` on the container's veth (pass, the peer
    /// noted).
    #[serde(default)]
    pub veth_inbound_ns: Option<f64>,
    /// … on a veth mapped to no container (pass).
    #[serde(default)]
    pub veth_inbound_unowned_ns: Option<f64>,
    /// An established flow's packet: `established_via` handing it to
    /// contain's egress program (a TCP segment, a UDP datagram), and to
    /// `baseline_pass` (the floor of that path, which the two include).
    #[serde(default)]
    pub established_tcp_ns: Option<f64>,
    #[serde(default)]
    pub established_udp_ns: Option<f64>,
    #[serde(default)]
    pub established_floor_ns: Option<f64>,
    pub raw: BTreeMap<String, Vec<u32>>,
}

impl Row {
    /// What contain's established path adds to a pass-only program, per
    /// packet: (TCP segment, UDP datagram), each less the floor behind the
    /// same hand-over.
    pub fn established_added_ns(&self) -> Option<(f64, f64)> {
        let floor = self.established_floor_ns?;
        Some((
            self.established_tcp_ns? - floor,
            self.established_udp_ns? - floor,
        ))
    }
}

#[cfg(test)]
impl Row {
    /// A row of `rules` rules with contain's three paths and the floor as
    /// given, a thesis-style scan of 40 and 50 ns, and no veth column.
    pub fn sample(rules: usize, host: f64, prefix: f64, deny: f64, floor: f64) -> Row {
        Row {
            rules,
            contain_allow_host_ns: host,
            contain_allow_prefix_ns: prefix,
            contain_deny_ns: deny,
            thesis_allow_ns: 40.0,
            thesis_deny_ns: 50.0,
            thesis_bounded_allow_ns: None,
            thesis_bounded_deny_ns: None,
            floor_ns: floor,
            veth_governed_ns: None,
            veth_unowned_ns: None,
            veth_allow_host_ns: None,
            veth_allow_prefix_ns: None,
            veth_deny_ns: None,
            veth_inbound_ns: None,
            veth_inbound_unowned_ns: None,
            established_tcp_ns: None,
            established_udp_ns: None,
            established_floor_ns: None,
            raw: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgCost {
    pub rounds: usize,
    /// Each measurement is one BPF_PROG_TEST_RUN call of about this long.
    pub target_ms: u64,
    pub floor_ns: f64,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

/// tc verdicts as the test run reports them: TC_ACT_UNSPEC (-1, "no
/// opinion": pass on) and TC_ACT_SHOT.
const TC_PASS: u32 = u32::MAX;
const TC_DROP: u32 = 2;

/// One measurement: the kernel's mean ns per run over a call of about
/// `target_ms` (the packet as if on device `ifindex` of the calling
/// thread's namespace), checking the verdict.
fn measure_one(
    fd: i32,
    packet: &[u8],
    ifindex: u32,
    expected: u32,
    target_ms: u64,
    what: &str,
) -> Result<u32> {
    let probe =
        testrun::run(fd, packet, 64, ifindex).with_context(|| format!("test run of {what}"))?;
    if probe.retval != expected {
        bail!(
            "{what}: verdict {} where {expected} was expected",
            probe.retval
        );
    }
    let per_run = u64::from(probe.duration_ns.max(1));
    let repeat = (target_ms * 1_000_000 / per_run).clamp(100, 5_000_000) as u32;
    let run =
        testrun::run(fd, packet, repeat, ifindex).with_context(|| format!("test run of {what}"))?;
    Ok(run.duration_ns)
}

pub fn measure(lab: &Lab, rounds: usize, target_ms: u64) -> Result<ProgCost> {
    let started = Instant::now();
    let egress = lab.egress_fd()?;
    let veth = lab.veth_fd()?;
    let inbound = lab.veth_inbound_fd()?;
    let out_ifindex = testrun::egress_ifindex()?;
    let denied = tcp_syn(Ipv4Addr::new(198, 18, 255, 9), 443);
    let prefix_hit = tcp_syn(
        Ipv4Addr::from(u32::from(PREFIX_RULE.addr) | 7),
        PREFIX_RULE.port,
    );
    let contain: Vec<_> = lab
        .targets
        .iter()
        .filter(|t| t.kind == Kind::Contain)
        .collect();
    let mut raw: BTreeMap<usize, BTreeMap<String, Vec<u32>>> = BTreeMap::new();
    let mut push = |rules: usize, key: &str, v: u32| {
        raw.entry(rules)
            .or_default()
            .entry(key.to_string())
            .or_default()
            .push(v)
    };
    for round in 0..rounds {
        for i in 0..contain.len() {
            let t = contain[(i + round) % contain.len()];
            let allowed = tcp_syn(t.peer, RR_PORT);
            // Every configuration has its own peer address (and list).
            let peer_of = |kind: Kind| {
                lab.targets
                    .iter()
                    .find(|x| x.kind == kind && x.rules == t.rules)
                    .map(|x| x.peer)
            };
            let thesis_allowed = tcp_syn(
                peer_of(Kind::Thesis).context("a thesis configuration per rule count")?,
                RR_PORT,
            );
            let thesis = lab
                .thesis
                .get(&(Kind::Thesis, t.rules))
                .context("a thesis instance per rule count")?;
            let bounded = lab.thesis.get(&(Kind::ThesisBounded, t.rules));
            let veth_dev = *lab
                .testrun_veths
                .get(&t.rules)
                .context("a test-run veth per rule count")?;
            lab.enter(Some(t))?;
            let m = |fd, pkt: &[u8], verdict, what: &str| {
                measure_one(fd, pkt, out_ifindex, verdict, target_ms, what)
            };
            let on_dev = |fd, dev, pkt: &[u8], verdict, what: &str| {
                test_kit::lab::with_netns(&lab.testrun_ns, || {
                    measure_one(fd, pkt, dev, verdict, target_ms, what)
                })
            };
            let on_veth =
                |dev, pkt: &[u8], verdict, what: &str| on_dev(veth, dev, pkt, verdict, what);
            let floor = m(lab.floor.fd, &allowed, 1, "baseline_pass")?;
            let via = &lab.established;
            let segment = tcp_ack_out(t.peer, RR_PORT);
            let datagram = udp_frame(FRAME_SOURCE, t.peer, 40000, UDP_SINK_PORT);
            via.hand_to(egress)?;
            let est_tcp = m(via.fd, &segment, 1, "established_via, contain, TCP")?;
            let est_udp = m(via.fd, &datagram, 1, "established_via, contain, UDP")?;
            via.hand_to(via.pass_fd)?;
            let est_floor = m(via.fd, &segment, 1, "established_via, baseline_pass")?;
            let allow_host = m(egress, &allowed, 1, "contain, allowed host")?;
            let allow_prefix = m(egress, &prefix_hit, 1, "contain, allowed prefix")?;
            let deny = m(egress, &denied, 0, "contain, denied")?;
            // The frames of the two early exits go where the policy denies:
            // the verdict shows the exit was taken, not a judgement.
            let v_governed = on_veth(veth_dev, &denied, TC_PASS, "veth, governed socket")?;
            // Into the container: from the peer to the container's
            // address (only such a packet notes its source, and so finds
            // it noted at the next).
            let into = tcp_ack_in(t.peer, RR_PORT);
            let v_in = on_dev(inbound, veth_dev, &into, TC_PASS, "veth inbound")?;
            let v_in_unowned = on_dev(
                inbound,
                TESTRUN_UNOWNED,
                &into,
                TC_PASS,
                "veth inbound, unowned",
            )?;
            let t_allow = m(thesis.fd, &thesis_allowed, 1, "thesis scan, allowed")?;
            let t_deny = m(thesis.fd, &denied, 0, "thesis scan, denied")?;
            if let (Some(b), Some(peer)) = (bounded, peer_of(Kind::ThesisBounded)) {
                let allowed = tcp_syn(peer, RR_PORT);
                let v = m(b.fd, &allowed, 1, "bounded thesis scan, allowed")?;
                push(t.rules, "thesis_bounded_allow", v);
                let v = m(b.fd, &denied, 0, "bounded thesis scan, denied")?;
                push(t.rules, "thesis_bounded_deny", v);
            }
            // A socket outside contain's cgroups, as the veth program sees
            // the frames no cgroup program judged.
            lab.enter_root()?;
            let v_unowned = on_veth(TESTRUN_UNOWNED, &denied, TC_PASS, "veth, unowned")?;
            let v_host = on_veth(veth_dev, &allowed, TC_PASS, "veth, judged, allowed host")?;
            let v_prefix = on_veth(
                veth_dev,
                &prefix_hit,
                TC_PASS,
                "veth, judged, allowed prefix",
            )?;
            let v_deny = on_veth(veth_dev, &denied, TC_DROP, "veth, judged, denied")?;
            lab.enter(None)?;
            push(t.rules, "veth_governed", v_governed);
            push(t.rules, "veth_unowned", v_unowned);
            push(t.rules, "veth_allow_host", v_host);
            push(t.rules, "veth_allow_prefix", v_prefix);
            push(t.rules, "veth_deny", v_deny);
            push(t.rules, "veth_inbound", v_in);
            push(t.rules, "veth_inbound_unowned", v_in_unowned);
            push(t.rules, "floor", floor);
            push(t.rules, "established_tcp", est_tcp);
            push(t.rules, "established_udp", est_udp);
            push(t.rules, "established_floor", est_floor);
            push(t.rules, "contain_allow_host", allow_host);
            push(t.rules, "contain_allow_prefix", allow_prefix);
            push(t.rules, "contain_deny", deny);
            push(t.rules, "thesis_allow", t_allow);
            push(t.rules, "thesis_deny", t_deny);
        }
        eprint!(".");
    }
    eprintln!();
    let med = |v: &[u32]| sys::median(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
    let mut all_floor = Vec::new();
    let rows = raw
        .into_iter()
        .map(|(rules, series)| {
            all_floor.extend(series["floor"].iter().map(|&x| f64::from(x)));
            Row {
                rules,
                contain_allow_host_ns: med(&series["contain_allow_host"]),
                contain_allow_prefix_ns: med(&series["contain_allow_prefix"]),
                contain_deny_ns: med(&series["contain_deny"]),
                thesis_allow_ns: med(&series["thesis_allow"]),
                thesis_deny_ns: med(&series["thesis_deny"]),
                thesis_bounded_allow_ns: series.get("thesis_bounded_allow").map(|v| med(v)),
                thesis_bounded_deny_ns: series.get("thesis_bounded_deny").map(|v| med(v)),
                floor_ns: med(&series["floor"]),
                veth_governed_ns: series.get("veth_governed").map(|v| med(v)),
                veth_unowned_ns: series.get("veth_unowned").map(|v| med(v)),
                veth_allow_host_ns: series.get("veth_allow_host").map(|v| med(v)),
                veth_allow_prefix_ns: series.get("veth_allow_prefix").map(|v| med(v)),
                veth_deny_ns: series.get("veth_deny").map(|v| med(v)),
                veth_inbound_ns: series.get("veth_inbound").map(|v| med(v)),
                veth_inbound_unowned_ns: series.get("veth_inbound_unowned").map(|v| med(v)),
                established_tcp_ns: series.get("established_tcp").map(|v| med(v)),
                established_udp_ns: series.get("established_udp").map(|v| med(v)),
                established_floor_ns: series.get("established_floor").map(|v| med(v)),
                raw: series,
            }
        })
        .collect();
    Ok(ProgCost {
        rounds,
        target_ms,
        floor_ns: sys::median(&all_floor),
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}
