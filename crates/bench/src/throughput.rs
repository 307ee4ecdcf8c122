//! TCP throughput through the filtered veth: iperf3 from a configuration's
//! namespace and cgroup to the server in the peer namespace, short runs,
//! each next to an unfiltered run, configurations round-robin.
//!
//! A throughput figure on 2 shared cores moves by several per cent from run
//! to run, more than contain can cost, so the phase also says how far it
//! can be trusted and where the time goes:
//! - an A/A control: the unfiltered configuration paired with itself, the
//!   same way as every filter; its spread is the measurement's own;
//! - for each median of paired ratios, the interval the population median
//!   lies in with at least 90 % confidence (order statistics of the pairs);
//! - the CPU time contain's programs themselves take, from the kernel's
//!   per-program statistics (`BPF_ENABLE_STATS`): what they can take from
//!   a stream bound by one CPU, measured, not inferred. The statistics add
//!   two clock reads to every run of every program, a cost contain does
//!   not have in service, so they are on only for runs of their own after
//!   the pairs.
//!
//! iperf3's client and server are pinned to different CPUs (`-A`), so
//! runs do not differ by where the scheduler put them.

use std::{
    os::fd::RawFd,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use contain_common::program_names;
use serde::{Deserialize, Serialize};

use test_kit::lab as netlab;

use crate::{
    flowcost::prog_stats,
    lab::{peer_veth, Kind, Lab, IPERF_PORT},
    sys,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub kind: Kind,
    pub rules: usize,
    /// The A/A control: the unfiltered configuration paired with itself.
    #[serde(default)]
    pub control: bool,
    /// Receiver-side Gbit/s of each run.
    pub gbps: Vec<f64>,
    pub median_gbps: f64,
    /// Median of (this run ÷ the unfiltered run next to it): less
    /// sensitive to the machine's drifts than the ratio of medians.
    #[serde(default)]
    pub median_ratio_to_none: f64,
    /// Each pair's ratio (filtered ÷ unfiltered), in measuring order.
    #[serde(default)]
    pub ratios: Vec<f64>,
    /// An interval holding the median of the ratios' population with at
    /// least `interval_coverage` confidence: (low, high).
    #[serde(default)]
    pub ratio_interval: Option<(f64, f64)>,
    #[serde(default)]
    pub interval_coverage: f64,
    pub retransmits: Vec<u64>,
    /// Frames (skbs: GSO packets count once) and bytes that came in on the
    /// host side of the configuration's veth during each run: what a tc
    /// ingress program there (the veth backstop) runs on.
    #[serde(default)]
    pub frames: Vec<u64>,
    #[serde(default)]
    pub frame_bytes: Vec<u64>,
    /// Frames that left by the host side towards the client during each
    /// run (the ACKs): what a tc egress program there runs on.
    #[serde(default)]
    pub frames_back: Vec<u64>,
    /// Seconds iperf3's receiver measured, each run.
    #[serde(default)]
    pub seconds: Vec<f64>,
    /// Run time of contain's programs (egress, ingress, both veth
    /// programs) during each of the statistics' runs, ns (bpf_stats, its
    /// own cost included).
    #[serde(default)]
    pub program_ns: Vec<u64>,
    /// Their runs, each run.
    #[serde(default)]
    pub program_runs: Vec<u64>,
    /// Each program's run time and runs over the statistics' runs.
    #[serde(default)]
    pub by_program: Vec<ProgramTime>,
    /// Seconds iperf3's receiver measured in each of the statistics' runs
    /// (empty in results from before they were separate: then the pairs'
    /// runs were the statistics' too).
    #[serde(default)]
    pub program_seconds: Vec<f64>,
}

/// One program's share of the runs (bpf_stats).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgramTime {
    pub name: String,
    pub ns: u64,
    pub runs: u64,
}

impl Row {
    /// Mean size of the frames on the veth, bytes.
    pub fn mean_frame_bytes(&self) -> Option<f64> {
        let frames: u64 = self.frames.iter().sum();
        (frames > 0).then(|| self.frame_bytes.iter().sum::<u64>() as f64 / frames as f64)
    }

    /// Frames a second at the median rate, from the mean frame size.
    pub fn frames_per_second(&self) -> Option<f64> {
        self.mean_frame_bytes()
            .map(|size| self.median_gbps * 1e9 / 8.0 / size)
    }

    /// Seconds of the runs the program times come from.
    pub fn program_secs(&self) -> f64 {
        if self.program_seconds.is_empty() {
            self.seconds.iter().sum()
        } else {
            self.program_seconds.iter().sum()
        }
    }

    /// The share of one CPU contain's programs took during their runs.
    pub fn program_cpu_share(&self) -> Option<f64> {
        let secs = self.program_secs();
        (secs > 0.0 && !self.program_ns.is_empty())
            .then(|| self.program_ns.iter().sum::<u64>() as f64 / 1e9 / secs)
    }

    /// Mean run time of contain's programs per run, ns.
    pub fn program_ns_per_run(&self) -> Option<f64> {
        let runs: u64 = self.program_runs.iter().sum();
        (runs > 0).then(|| self.program_ns.iter().sum::<u64>() as f64 / runs as f64)
    }

    /// Frames back (ACKs) per frame in.
    pub fn back_per_frame(&self) -> Option<f64> {
        let frames: u64 = self.frames.iter().sum();
        (frames > 0 && !self.frames_back.is_empty())
            .then(|| self.frames_back.iter().sum::<u64>() as f64 / frames as f64)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Throughput {
    pub seconds_per_run: u32,
    /// Pairs of contain's configurations and of the A/A control.
    pub rounds: usize,
    /// Pairs of the other filters'.
    #[serde(default)]
    pub comparison_rounds: usize,
    /// Runs of each of contain's configurations with the statistics on.
    #[serde(default)]
    pub stats_runs: usize,
    pub rows: Vec<Row>,
    /// contain's programs taken off and put back within single
    /// connections.
    #[serde(default)]
    pub toggled: Vec<Toggled>,
    pub seconds: f64,
}

/// What contain's programs cost inside one connection: a long iperf3 run
/// on a configuration with the backstop, whose programs are taken off and
/// put back between windows of [`TOGGLE_WINDOW`]; each pair of adjacent
/// windows (one with, one without, which goes first alternating) gives a
/// ratio. A run's throughput scatters by about 6 % from run to run, the
/// windows of one run far less: what differs from run to run is the
/// connection's, not the filter's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Toggled {
    /// The configuration (`contain-veth@N`).
    pub name: String,
    pub rules: usize,
    pub toggle: Toggle,
    pub runs: usize,
    pub seconds_per_run: u32,
    pub window_ms: u64,
    /// Each pair's ratio (with ÷ without), in measuring order.
    pub ratios: Vec<f64>,
    /// Pairs in each run, in order (the odd runs' first windows are
    /// without the programs).
    #[serde(default)]
    pub pairs_per_run: Vec<usize>,
    pub median_ratio: f64,
    /// An interval holding the median of the ratios' population with at
    /// least `interval_coverage` confidence: (low, high).
    pub ratio_interval: Option<(f64, f64)>,
    pub interval_coverage: f64,
}

/// What a toggled run takes off and puts back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Toggle {
    /// Every one of contain's programs: the cgroup programs and the
    /// backstop.
    All,
    /// The veth backstop alone; the cgroup programs stay.
    Backstop,
    /// The A/A control: the same windows and pairs, nothing taken off.
    Nothing,
}

/// Pairs of the other filters' configurations: they are far from
/// unfiltered, and a few pairs tell by how much. contain's are near it, and
/// a run's throughput scatters by about 6 % (as much over 5 s as over 1 s:
/// the work per byte differs from run to run, with the sending CPU busy
/// throughout), so telling 98 % from 100 % takes dozens of pairs.
pub const COMPARISON_ROUNDS: usize = 8;

/// Runs of each of contain's configurations with the kernel's per-program
/// statistics on: each has some 60 000 runs of every program a second, so a
/// few runs give their mean run time to well under a nanosecond.
pub const STATS_RUNS: usize = 4;

/// Long runs per configuration with contain's programs toggled in them,
/// and their length.
#[derive(Clone, Copy)]
pub struct Toggling {
    pub runs: usize,
    pub secs: u32,
}

impl Toggling {
    /// Some 15 pairs of windows a run.
    pub const FULL: Toggling = Toggling { runs: 5, secs: 10 };
    /// A smoke run's: a few pairs.
    pub const QUICK: Toggling = Toggling { runs: 1, secs: 4 };
}

/// One window of a toggled run: long enough that the time a read of the
/// counters takes is nothing to it, short enough for many pairs.
const TOGGLE_WINDOW: Duration = Duration::from_millis(250);
/// The start of a toggled run that is not measured (the connection's slow
/// start), and its end (iperf3 winds the test down).
const TOGGLE_WARMUP: Duration = Duration::from_secs(1);
const TOGGLE_TAIL: Duration = Duration::from_secs(1);
/// Left unmeasured after each toggle: what a release or an attach leaves
/// to do (links freed after a grace period) stays out of the windows.
const TOGGLE_SETTLE: Duration = Duration::from_millis(50);

/// Which configurations get an iperf3 run (the others cost time and say
/// little more).
pub fn selected(kind: Kind, rules: usize, counts: &[usize]) -> bool {
    let lo = counts.first().copied().unwrap_or(10);
    let hi = counts.last().copied().unwrap_or(100_000);
    match kind {
        Kind::None => true,
        Kind::Contain | Kind::ContainVeth => rules == lo || rules == hi,
        Kind::NftSet => rules == hi,
        Kind::Thesis | Kind::NftLinear => rules == 100.max(lo) || rules == 10_000.min(hi),
        Kind::ContainTcFloor => rules == hi,
        Kind::ThesisBounded => false,
    }
}

/// Counters of the host side of configuration `idx`'s veth: packets and
/// bytes received (from the client), packets sent (to it).
fn counters(lab: &Lab, idx: usize) -> Result<(u64, u64, u64)> {
    let c = test_kit::lab::link_counters(&lab.peer_ns, &peer_veth(idx + 1))?;
    Ok((c.rx_packets, c.rx_bytes, c.tx_packets))
}

struct Run {
    gbps: f64,
    seconds: f64,
    retransmits: u64,
    frames: u64,
    bytes: u64,
    frames_back: u64,
    /// Each program's (run time, runs) during the run.
    programs: Vec<(u64, u64)>,
}

impl Run {
    fn program_total(&self) -> (u64, u64) {
        self.programs
            .iter()
            .fold((0, 0), |(ns, runs), p| (ns + p.0, runs + p.1))
    }
}

/// Run time and runs of each program so far (bpf_stats).
fn programs_so_far(programs: &[(&str, RawFd)]) -> Result<Vec<(u64, u64)>> {
    programs.iter().map(|&(_, fd)| prog_stats(fd)).collect()
}

/// iperf3's client on one CPU, the server (for this test) on another.
fn affinity() -> String {
    let client = sys::measuring_cpu();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{client},{}", (client + 1) % cpus)
}

/// iperf3's client for configuration `idx`, started in its namespace and
/// cgroup.
fn start_client(lab: &Lab, idx: usize, secs: u32) -> Result<std::process::Child> {
    let t = &lab.targets[idx];
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &t.peer.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "3000"])
        .args(["-A", &affinity()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(test_kit::lab::spawn_in(cmd, Some(&t.ns), Some(&t.cgroup))?)
}

/// The client's report, once it has ended.
fn client_report(lab: &Lab, idx: usize, child: std::process::Child) -> Result<serde_json::Value> {
    let out = child.wait_with_output()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json.get("error") {
        bail!("iperf3 from {}: {e}", lab.targets[idx].name());
    }
    Ok(json)
}

fn iperf(lab: &Lab, idx: usize, secs: u32, programs: &[(&str, RawFd)]) -> Result<Run> {
    let before = counters(lab, idx)?;
    let prog_before = programs_so_far(programs)?;
    let child = start_client(lab, idx, secs)?;
    let json = client_report(lab, idx, child)?;
    let prog_after = programs_so_far(programs)?;
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")?;
    let seconds = end["sum_received"]["seconds"]
        .as_f64()
        .context("iperf3: no end.sum_received.seconds")?;
    let retr = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let after = counters(lab, idx)?;
    Ok(Run {
        gbps: bps / 1e9,
        seconds,
        retransmits: retr,
        frames: after.0.saturating_sub(before.0),
        bytes: after.1.saturating_sub(before.1),
        frames_back: after.2.saturating_sub(before.2),
        programs: prog_after
            .iter()
            .zip(&prog_before)
            .map(|(a, b)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
            .collect(),
    })
}

/// One measured configuration: a target, or the unfiltered one again as
/// the A/A control.
#[derive(Clone, Copy)]
struct Slot {
    target: usize,
    control: bool,
}

pub fn measure(
    lab: &mut Lab,
    counts: &[usize],
    rounds: usize,
    secs: u32,
    toggling: Toggling,
) -> Result<Throughput> {
    let started = Instant::now();
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = test_kit::lab::spawn_in(server, Some(&lab.peer_ns.clone()), None)?;
    let server_pid = server.id();
    lab.adopt_child(server);
    std::thread::sleep(Duration::from_millis(300));
    let none = lab
        .targets
        .iter()
        .position(|t| t.kind == Kind::None)
        .context("the unfiltered configuration")?;
    let mut slots = vec![Slot {
        target: none,
        control: true,
    }];
    slots.extend(
        (0..lab.targets.len())
            .filter(|&i| i != none && selected(lab.targets[i].kind, lab.targets[i].rules, counts))
            .map(|target| Slot {
                target,
                control: false,
            }),
    );
    let programs = [
        (program_names::EGRESS, lab.egress_fd()?),
        (
            program_names::INGRESS,
            lab.kernel
                .program_fd(program_names::INGRESS)
                .context("contain's ingress program")?,
        ),
        (program_names::VETH, lab.veth_fd()?),
        (program_names::VETH_INBOUND, lab.veth_inbound_fd()?),
    ];
    let mut runs: Vec<Vec<Run>> = (0..slots.len()).map(|_| Vec::new()).collect();
    let mut ratios = vec![Vec::new(); slots.len()];
    let mut none_runs = Vec::new();
    // Each configuration is run right next to an unfiltered run (which
    // one goes first alternates), and judged by the ratio of the pair.
    let comparison_rounds = rounds.min(COMPARISON_ROUNDS);
    let rounds_of = |slot: &Slot| {
        let kind = lab.targets[slot.target].kind;
        if kind.has_contain() || kind == Kind::None {
            rounds
        } else {
            comparison_rounds
        }
    };
    for round in 0..rounds {
        for i in 0..slots.len() {
            let j = (i + round * 3) % slots.len();
            if round >= rounds_of(&slots[j]) {
                continue;
            }
            let filtered_first = round % 2 == 1;
            let mut got = [0.0; 2];
            for (k, got) in got.iter_mut().enumerate() {
                let filtered = (k == 0) == filtered_first;
                let idx = if filtered { slots[j].target } else { none };
                let run = iperf(lab, idx, secs, &[])?;
                *got = run.gbps;
                if filtered {
                    runs[j].push(run);
                } else {
                    none_runs.push(run);
                }
            }
            let (filtered, unfiltered) = if filtered_first {
                (got[0], got[1])
            } else {
                (got[1], got[0])
            };
            ratios[j].push(filtered / unfiltered);
        }
        eprint!(".");
    }
    eprintln!();
    // Statistics on while the returned fd is open.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("BPF_ENABLE_STATS: {e}"))?;
    let mut stats_runs: Vec<Vec<Run>> = (0..slots.len()).map(|_| Vec::new()).collect();
    for (j, slot) in slots.iter().enumerate() {
        if slot.control || !lab.targets[slot.target].kind.has_contain() {
            continue;
        }
        for _ in 0..STATS_RUNS {
            stats_runs[j].push(iperf(lab, slot.target, secs, &programs)?);
        }
    }
    drop(stats);
    let toggled = toggle_programs(lab, counts, server_pid, toggling)?;
    let row =
        |t: &crate::lab::Target, control: bool, runs: &[Run], stats: &[Run], ratios: Vec<f64>| {
            let gbps: Vec<f64> = runs.iter().map(|r| r.gbps).collect();
            let interval = sys::median_interval(&ratios, 0.9);
            Row {
                name: t.name(),
                kind: t.kind,
                rules: t.rules,
                control,
                median_gbps: sys::median(&gbps),
                median_ratio_to_none: if ratios.is_empty() {
                    1.0
                } else {
                    sys::median(&ratios)
                },
                ratio_interval: interval.map(|i| (i.low, i.high)),
                interval_coverage: interval.map_or(0.0, |i| i.coverage),
                ratios,
                gbps,
                retransmits: runs.iter().map(|r| r.retransmits).collect(),
                frames: runs.iter().map(|r| r.frames).collect(),
                frame_bytes: runs.iter().map(|r| r.bytes).collect(),
                frames_back: runs.iter().map(|r| r.frames_back).collect(),
                seconds: runs.iter().map(|r| r.seconds).collect(),
                program_ns: stats.iter().map(|r| r.program_total().0).collect(),
                program_runs: stats.iter().map(|r| r.program_total().1).collect(),
                program_seconds: stats.iter().map(|r| r.seconds).collect(),
                by_program: programs
                    .iter()
                    .enumerate()
                    .map(|(p, (name, _))| ProgramTime {
                        name: (*name).into(),
                        ns: stats.iter().map(|r| r.programs[p].0).sum(),
                        runs: stats.iter().map(|r| r.programs[p].1).sum(),
                    })
                    .collect(),
            }
        };
    let mut rows = vec![row(&lab.targets[none], false, &none_runs, &[], Vec::new())];
    for (j, slot) in slots.iter().enumerate() {
        rows.push(row(
            &lab.targets[slot.target],
            slot.control,
            &runs[j],
            &stats_runs[j],
            std::mem::take(&mut ratios[j]),
        ));
    }
    Ok(Throughput {
        seconds_per_run: secs,
        rounds,
        comparison_rounds,
        stats_runs: STATS_RUNS,
        rows,
        toggled,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// contain's programs toggled inside long runs: all of them on each
/// configuration with the backstop that has paired runs, the backstop
/// alone and the A/A control on the first. Only where the backstop is
/// attached by tcx links, which a loader takes off by unpinning (clsact
/// filters it does not take off).
fn toggle_programs(
    lab: &mut Lab,
    counts: &[usize],
    server_pid: u32,
    toggling: Toggling,
) -> Result<Vec<Toggled>> {
    if !bpf_loader::veths::uses_tcx() {
        return Ok(Vec::new());
    }
    let veths: Vec<usize> = (0..lab.targets.len())
        .filter(|&i| {
            let t = &lab.targets[i];
            t.kind == Kind::ContainVeth && t.host_ifindex != 0 && selected(t.kind, t.rules, counts)
        })
        .collect();
    let Some(&first) = veths.first() else {
        return Ok(Vec::new());
    };
    let plan: Vec<(usize, Toggle)> = veths
        .iter()
        .map(|&i| (i, Toggle::All))
        .chain([(first, Toggle::Backstop), (first, Toggle::Nothing)])
        .collect();
    // The counters are read and the programs toggled from the server's
    // CPU, not from the sender's, which bounds the stream; on a thread of
    // its own, so the pinning ends with it.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reader_cpu = (sys::measuring_cpu() + 1) % cpus;
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::pin_thread(reader_cpu);
            let mut out = Vec::new();
            for (idx, toggle) in plan {
                let runs = toggled_runs(lab, idx, server_pid, toggle, toggling)?;
                let pairs_per_run = runs.iter().map(Vec::len).collect();
                let ratios: Vec<f64> = runs.into_iter().flatten().collect();
                let interval = sys::median_interval(&ratios, 0.9);
                let t = &lab.targets[idx];
                out.push(Toggled {
                    name: t.name(),
                    rules: t.rules,
                    toggle,
                    runs: toggling.runs,
                    seconds_per_run: toggling.secs,
                    window_ms: TOGGLE_WINDOW.as_millis() as u64,
                    median_ratio: sys::median(&ratios),
                    ratio_interval: interval.map(|i| (i.low, i.high)),
                    interval_coverage: interval.map_or(0.0, |i| i.coverage),
                    ratios,
                    pairs_per_run,
                });
                eprint!(".");
            }
            eprintln!();
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the toggling thread panicked"))?
    })
}

/// The pairs' ratios (with the programs ÷ without) of configuration
/// `idx`'s toggled runs, each run's apart. Every connection opens with the
/// programs on, as a container's does (its sockets stamped, its flow's
/// verdict cached); every other run takes them off after the warm-up, so
/// that what happens at a fixed time into a run (iperf3 slows for a moment
/// some 10 s in) falls as often in either state. Each pair's second window
/// follows a toggle, so the next pair starts with the other state; after
/// every toggle [`TOGGLE_SETTLE`] passes unmeasured.
fn toggled_runs(
    lab: &mut Lab,
    idx: usize,
    server_pid: u32,
    toggle: Toggle,
    toggling: Toggling,
) -> Result<Vec<Vec<f64>>> {
    let device = peer_veth(idx + 1);
    let measured = Duration::from_secs(toggling.secs.into()) - TOGGLE_WARMUP - TOGGLE_TAIL;
    let mut runs = Vec::new();
    for run in 0..toggling.runs {
        set_programs(lab, idx, toggle, true)?;
        let client = start_client(lab, idx, toggling.secs)?;
        let mut ratios = Vec::new();
        let mut on = true;
        let mut pairs = || -> Result<()> {
            std::thread::sleep(TOGGLE_WARMUP);
            let started = Instant::now();
            if run % 2 == 1 {
                set_programs(lab, idx, toggle, false)?;
                on = false;
                std::thread::sleep(TOGGLE_SETTLE);
            }
            while started.elapsed() + 2 * (TOGGLE_WINDOW + TOGGLE_SETTLE) <= measured {
                let first = window_rate(server_pid, &device)?;
                set_programs(lab, idx, toggle, !on)?;
                on = !on;
                std::thread::sleep(TOGGLE_SETTLE);
                let second = window_rate(server_pid, &device)?;
                ratios.push(if on { second / first } else { first / second });
            }
            Ok(())
        };
        let measuring = pairs();
        // At rest the programs are on, whatever happened.
        let restored = set_programs(lab, idx, toggle, true);
        let ended = client_report(lab, idx, client);
        measuring?;
        restored?;
        ended?;
        runs.push(ratios);
    }
    Ok(runs)
}

/// Bytes a second the peer's end of the veth received over one window.
fn window_rate(server_pid: u32, device: &str) -> Result<f64> {
    let (before, from) = (rx_bytes(server_pid, device)?, Instant::now());
    std::thread::sleep(TOGGLE_WINDOW);
    let (after, to) = (rx_bytes(server_pid, device)?, Instant::now());
    Ok(after.saturating_sub(before) as f64 / (to - from).as_secs_f64())
}

/// Bytes `device` has received, from `/proc/PID/net/dev` of a process in
/// its namespace: a file read, where `ip -s link` would be a process on
/// some CPU every window.
fn rx_bytes(pid: u32, device: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/net/dev");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    received_bytes(&text, device)
        .with_context(|| format!("no received bytes of {device} in {path}"))
}

/// `device`'s received bytes in the text of `/proc/net/dev`: its line's
/// first counter.
fn received_bytes(net_dev: &str, device: &str) -> Option<u64> {
    net_dev
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim() == device)
        .and_then(|(_, counters)| counters.split_whitespace().next()?.parse().ok())
}

/// Puts `toggle`'s programs on configuration `idx` (its veth, and the
/// cgroup contain is attached to) or takes them off, and returns once the
/// kernel runs all of them or none (a released link is detached moments
/// after its pin goes). The cgroup programs go on before the backstop and
/// off after it: the backstop passes the frames of sockets they judged.
fn set_programs(lab: &mut Lab, idx: usize, toggle: Toggle, on: bool) -> Result<()> {
    match (toggle, on) {
        // The control does the same queries, and finds everything on.
        (Toggle::Nothing, _) | (Toggle::All, true) => {
            set_cgroup_programs(lab, true)?;
            set_backstop(lab, idx, true)
        }
        (Toggle::Backstop, _) => set_backstop(lab, idx, on),
        (Toggle::All, false) => {
            set_backstop(lab, idx, false)?;
            set_cgroup_programs(lab, false)
        }
    }
}

fn set_backstop(lab: &mut Lab, idx: usize, on: bool) -> Result<()> {
    let (device, ifindex) = (peer_veth(idx + 1), lab.targets[idx].host_ifindex);
    let peer_ns = lab.peer_ns.clone();
    let kernel = &mut lab.kernel;
    if on {
        netlab::with_netns(&peer_ns, || {
            kernel
                .attach_veth(ifindex, &device)
                .map_err(|e| anyhow::anyhow!("attaching the backstop to {device}: {e}"))
        })?;
    } else {
        // What the loader does when a veth leaves: its links released.
        kernel.veth_gone(ifindex);
    }
    let ours = kernel
        .backstop_program_ids()
        .map_err(|e| anyhow::anyhow!("the backstop's program ids: {e}"))?;
    settled(&format!("the backstop on {device}"), on, || {
        let running = netlab::with_netns(&peer_ns, || {
            ours.iter()
                .map(|&(hook, id)| {
                    bpf_loader::veths::tcx_program_ids(ifindex, hook)
                        .map(|ids| ids.contains(&id))
                        .with_context(|| format!("querying the tcx hooks of {device}"))
                })
                .collect::<Result<Vec<bool>>>()
        })?;
        Ok(running)
    })
}

fn set_cgroup_programs(lab: &mut Lab, on: bool) -> Result<()> {
    let cgroup = lab.contain_cgroup();
    if on {
        lab.kernel.attach(&cgroup).map(drop)
    } else {
        lab.kernel.detach(&cgroup)
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "{} contain on {cgroup}: {e}",
            if on { "attaching" } else { "detaching" }
        )
    })?;
    let path = lab.contain_cgroup_path();
    settled(
        &format!("contain's cgroup programs on {cgroup}"),
        on,
        || {
            let missing = bpf_loader::attached::missing_cgroup_programs(&path)?;
            Ok(program_names::CGROUP
                .iter()
                .map(|p| !missing.contains(p))
                .collect())
        },
    )
}

/// Waits until every program `running` reports is running (`on`) or none
/// is, for at most two seconds.
fn settled(what: &str, on: bool, running: impl Fn() -> Result<Vec<bool>>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if running()?.iter().all(|&r| r == on) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: still {} 2 s after it was {}",
                if on { "missing" } else { "running" },
                if on { "attached" } else { "released" }
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_devices_received_bytes_are_its_lines_first_counter() {
        let net_dev = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1200      12    0    0    0     0          0         0     1200      12    0    0    0     0       0          0
    p1: 987654321  4242    0    0    0     0          0         0  5555555    3131    0    0    0     0       0          0
   p11:      77       1    0    0    0     0          0         0       0       0    0    0    0     0       0          0
";
        assert_eq!(received_bytes(net_dev, "p1"), Some(987_654_321));
        assert_eq!(received_bytes(net_dev, "p11"), Some(77));
        assert_eq!(received_bytes(net_dev, "p2"), None);
        assert_eq!(received_bytes(net_dev, "face |bytes"), None);
    }
}
