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
    pub seconds: f64,
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

fn iperf(lab: &Lab, idx: usize, secs: u32, programs: &[(&str, RawFd)]) -> Result<Run> {
    let t = &lab.targets[idx];
    let before = counters(lab, idx)?;
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &t.peer.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "3000"])
        .args(["-A", &affinity()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let prog_before = programs_so_far(programs)?;
    let child = test_kit::lab::spawn_in(cmd, Some(&t.ns), Some(&t.cgroup))?;
    let out = child.wait_with_output()?;
    let prog_after = programs_so_far(programs)?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json.get("error") {
        bail!("iperf3 from {}: {e}", t.name());
    }
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

pub fn measure(lab: &mut Lab, counts: &[usize], rounds: usize, secs: u32) -> Result<Throughput> {
    let started = Instant::now();
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = test_kit::lab::spawn_in(server, Some(&lab.peer_ns.clone()), None)?;
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
        seconds: started.elapsed().as_secs_f64(),
    })
}
