//! TCP throughput through the filtered veth: iperf3 from a configuration's
//! namespace and cgroup to the server in the peer namespace, short runs,
//! each next to an unfiltered run, configurations round-robin.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    lab::{Kind, Lab, IPERF_PORT},
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
        Kind::Contain => rules == lo || rules == hi,
        Kind::NftSet => rules == hi,
        Kind::Thesis | Kind::NftLinear => rules == 100.max(lo) || rules == 10_000.min(hi),
        Kind::ThesisBounded => false,
    }
}

fn iperf(lab: &Lab, idx: usize, secs: u32) -> Result<(f64, u64)> {
    let t = &lab.targets[idx];
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &t.peer.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = sys::spawn_in(cmd, Some(&t.ns), Some(&t.cgroup))?;
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
    Ok((bps / 1e9, retr))
}

pub fn measure(lab: &mut Lab, counts: &[usize], rounds: usize, secs: u32) -> Result<Throughput> {
    let started = Instant::now();
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = sys::spawn_in(server, Some(&lab.peer_ns.clone()), None)?;
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
    let mut gbps = vec![Vec::new(); chosen.len()];
    let mut retr = vec![Vec::new(); chosen.len()];
    let mut ratios = vec![Vec::new(); chosen.len()];
    let (mut none_gbps, mut none_retr) = (Vec::new(), Vec::new());
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
                let (g, r) = iperf(lab, idx, secs)?;
                got[k] = g;
                if idx == none {
                    none_gbps.push(g);
                    none_retr.push(r);
                } else {
                    gbps[j].push(g);
                    retr[j].push(r);
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
    let t = &lab.targets[none];
    let mut rows = vec![Row {
        name: t.name(),
        kind: t.kind,
        rules: t.rules,
        median_gbps: sys::median(&none_gbps),
        median_ratio_to_none: 1.0,
        gbps: none_gbps,
        retransmits: none_retr,
    }];
    for (j, &i) in chosen.iter().enumerate() {
        let t = &lab.targets[i];
        rows.push(Row {
            name: t.name(),
            kind: t.kind,
            rules: t.rules,
            median_gbps: sys::median(&gbps[j]),
            median_ratio_to_none: sys::median(&ratios[j]),
            gbps: std::mem::take(&mut gbps[j]),
            retransmits: std::mem::take(&mut retr[j]),
        });
    }
    Ok(Throughput {
        seconds_per_run: secs,
        rounds,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}
