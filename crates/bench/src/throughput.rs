//! TCP throughput through the filtered veth: iperf3 from a configuration's
//! namespace and cgroup to the server in the peer namespace, short runs,
//! each next to an unfiltered run, configurations round-robin.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use test_kit::process;

use crate::{
    lab::{peer_veth, Kind, Lab, IPERF_PORT},
    sys,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub kind: Kind,
    pub rules: usize,
    /// Receiver-side Gbit/s of each run.
    pub gbps: Vec<f64>,
    pub median_gbps: f64,
    /// Median of (this run ÷ the unfiltered run next to it): less
    /// sensitive to the machine's drifts than the ratio of medians.
    #[serde(default)]
    pub median_ratio_to_none: f64,
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
    pub rounds: usize,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

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
    let dev = peer_veth(idx + 1);
    let out = process::run(
        "ip",
        &["-n", &lab.peer_ns, "-s", "-j", "link", "show", "dev", &dev],
    )?;
    let json: serde_json::Value = serde_json::from_str(&out).context("`ip -s -j link` output")?;
    let rx = &json[0]["stats64"]["rx"];
    let tx = &json[0]["stats64"]["tx"];
    Ok((
        rx["packets"]
            .as_u64()
            .with_context(|| format!("rx packets of {dev}"))?,
        rx["bytes"]
            .as_u64()
            .with_context(|| format!("rx bytes of {dev}"))?,
        tx["packets"]
            .as_u64()
            .with_context(|| format!("tx packets of {dev}"))?,
    ))
}

struct Run {
    gbps: f64,
    retransmits: u64,
    frames: u64,
    bytes: u64,
    frames_back: u64,
}

fn iperf(lab: &Lab, idx: usize, secs: u32) -> Result<Run> {
    let t = &lab.targets[idx];
    let before = counters(lab, idx)?;
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &t.peer.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = test_kit::lab::spawn_in(cmd, Some(&t.ns), Some(&t.cgroup))?;
    let out = child.wait_with_output()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json.get("error") {
        bail!("iperf3 from {}: {e}", t.name());
    }
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")?;
    let retr = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let after = counters(lab, idx)?;
    Ok(Run {
        gbps: bps / 1e9,
        retransmits: retr,
        frames: after.0.saturating_sub(before.0),
        bytes: after.1.saturating_sub(before.1),
        frames_back: after.2.saturating_sub(before.2),
    })
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
    let chosen: Vec<usize> = (0..lab.targets.len())
        .filter(|&i| i != none && selected(lab.targets[i].kind, lab.targets[i].rules, counts))
        .collect();
    let mut runs: Vec<Vec<Run>> = (0..chosen.len()).map(|_| Vec::new()).collect();
    let mut ratios = vec![Vec::new(); chosen.len()];
    let mut none_runs = Vec::new();
    // Each configuration is run right next to an unfiltered run (which
    // one goes first alternates), and judged by the ratio of the pair.
    for round in 0..rounds {
        for i in 0..chosen.len() {
            let j = (i + round * 3) % chosen.len();
            let pair = if round % 2 == 0 {
                [none, chosen[j]]
            } else {
                [chosen[j], none]
            };
            let mut got = [0.0; 2];
            for (k, &idx) in pair.iter().enumerate() {
                let run = iperf(lab, idx, secs)?;
                got[k] = run.gbps;
                if idx == none {
                    none_runs.push(run);
                } else {
                    runs[j].push(run);
                }
            }
            let (filtered, unfiltered) = if pair[0] == none {
                (got[1], got[0])
            } else {
                (got[0], got[1])
            };
            ratios[j].push(filtered / unfiltered);
        }
        eprint!(".");
    }
    eprintln!();
    let row = |t: &crate::lab::Target, runs: &[Run], ratio: f64| {
        let gbps: Vec<f64> = runs.iter().map(|r| r.gbps).collect();
        Row {
            name: t.name(),
            kind: t.kind,
            rules: t.rules,
            median_gbps: sys::median(&gbps),
            median_ratio_to_none: ratio,
            gbps,
            retransmits: runs.iter().map(|r| r.retransmits).collect(),
            frames: runs.iter().map(|r| r.frames).collect(),
            frame_bytes: runs.iter().map(|r| r.bytes).collect(),
            frames_back: runs.iter().map(|r| r.frames_back).collect(),
        }
    };
    let mut rows = vec![row(&lab.targets[none], &none_runs, 1.0)];
    for (j, &i) in chosen.iter().enumerate() {
        rows.push(row(&lab.targets[i], &runs[j], sys::median(&ratios[j])));
    }
    Ok(Throughput {
        seconds_per_run: secs,
        rounds,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}
