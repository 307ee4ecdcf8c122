//! `contain-bench`: contain's benchmark suite. It measures and reports; it
//! asserts nothing (benchmarks are not tests). Needs root.
//!
//! ```text
//! sudo contain-bench run --out docs        # everything, then the report
//! sudo contain-bench run --phases prog     # one phase (prog, latency, throughput, control,
//!                                            # syscalls, flow, cold, scale)
//! contain-bench report --out docs          # re-render docs/benchmarks.md from the JSON
//! sudo contain-bench run --before docs/benchmarks.json   # and say what changed since then
//! ```
//!
//! `scripts/bench.sh` builds everything and runs the first form.

mod coldcache;
mod compare;
mod control;
mod flowcost;
mod lab;
mod latency;
mod progcost;
mod programs;
mod report;
mod rules;
mod scale;
mod sockcost;
mod svg;
mod sys;
mod throughput;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use test_kit::{process, repo_root};

#[derive(Parser, Debug)]
#[command(
    name = "contain-bench",
    about = "contain's benchmarks: program cost, latency, throughput, control plane, socket calls, \
             established flows, cache-cold decisions"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the suite (root), write DIR/benchmarks.json and the report.
    Run {
        /// Where benchmarks.json, benchmarks.md and the plots go.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Comma-separated: prog, latency, throughput, control, syscalls
        /// (connect() and sendto() per call), flow (an established flow's
        /// packet, by bpf_stats), cold (full decisions with cold caches: many
        /// containers, random destinations, by bpf_stats), scale (a
        /// container start on hosts of 10, 100 and 500 containers).
        #[arg(
            long,
            default_value = "prog,latency,throughput,control,syscalls,flow,cold,scale"
        )]
        phases: String,
        /// Rule counts.
        #[arg(long, default_value = "10,100,1000,10000,100000")]
        rules: String,
        /// Fewer rounds and samples: a smoke run of the whole suite.
        #[arg(long)]
        quick: bool,
        /// Rounds of the program-cost phase.
        #[arg(long, default_value_t = 7)]
        prog_rounds: usize,
        /// Rounds of the latency phase (each: every configuration once).
        #[arg(long, default_value_t = 10)]
        latency_rounds: usize,
        /// Echoes and request/responses per configuration per round.
        #[arg(long, default_value_t = 400)]
        latency_samples: usize,
        /// iperf3 runs per configuration of contain's and of the A/A
        /// control, each paired with an unfiltered run (the other filters'
        /// get at most 8).
        #[arg(long, default_value_t = 32)]
        iperf_rounds: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 1)]
        iperf_secs: u32,
        /// Directory with the release binaries bpf-loader, policyd and
        /// resolver (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// A previous run's benchmarks.json: the report compares this run's
        /// headline figures with its. Read before the run starts, so it may
        /// be DIR/benchmarks.json itself; its commit, date and figures are
        /// kept in the new benchmarks.json.
        #[arg(long, value_name = "FILE")]
        before: Option<PathBuf>,
    },
    /// Render DIR/benchmarks.md and the plots from DIR/benchmarks.json.
    Report {
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// A previous run's benchmarks.json to compare with, in place of
        /// the run's own --before (which DIR/benchmarks.json keeps, so
        /// `report` alone renders that comparison). For this rendering only:
        /// DIR/benchmarks.json is not changed.
        #[arg(long, value_name = "FILE")]
        before: Option<PathBuf>,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub date_utc: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub commit: String,
    /// Uncommitted changes in the work tree when the suite ran.
    pub dirty: bool,
    pub loadavg_before: String,
    pub command: String,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub prog_cost: Option<progcost::ProgCost>,
    pub latency: Option<latency::Latency>,
    pub throughput: Option<throughput::Throughput>,
    pub control: Option<control::Control>,
    /// connect() and sendto() per call, with and without contain's hooks.
    #[serde(default)]
    pub syscalls: Option<sockcost::SockCost>,
    /// A packet of an established flow, by bpf_stats, against the floor.
    #[serde(default)]
    pub flow: Option<flowcost::FlowCost>,
    /// Full decisions with cold caches: many containers, random
    /// destinations, by bpf_stats.
    #[serde(default)]
    pub cold: Option<coldcache::ColdCache>,
    /// One container start on hosts of 10, 100 and 500 containers.
    #[serde(default)]
    pub scale: Option<scale::Scale>,
    /// Where the latency and throughput phases had the veth backstop.
    #[serde(default)]
    pub veth_backstop: Vec<lab::Backstop>,
    /// What was not measured, and why.
    pub not_measured: Vec<String>,
    /// The run this one is compared against (`--before`): its identity
    /// and headline figures, so the report renders the comparison from
    /// this file alone.
    #[serde(default)]
    pub previous: Option<compare::Previous>,
}

fn meta() -> Meta {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default();
    let root = repo_root();
    let root = root.to_string_lossy();
    let git = |args: &[&str]| {
        let mut all = vec!["-C", &root];
        all.extend_from_slice(args);
        process::run("git", &all)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    Meta {
        date_utc: process::run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .unwrap_or_default()
            .trim()
            .into(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel: process::run("uname", &["-r"])
            .unwrap_or_default()
            .trim()
            .into(),
        commit: git(&["rev-parse", "--short=12", "HEAD"]),
        dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        loadavg_before: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seconds: 0.0,
    }
}

const PHASES: [&str; 8] = [
    "prog",
    "latency",
    "throughput",
    "control",
    "syscalls",
    "flow",
    "cold",
    "scale",
];

#[allow(clippy::too_many_arguments)]
fn run(
    out: &Path,
    phases: &str,
    counts: Vec<usize>,
    quick: bool,
    prog_rounds: usize,
    latency_rounds: usize,
    latency_samples: usize,
    iperf_rounds: usize,
    iperf_secs: u32,
    bin_dir: Option<PathBuf>,
    previous: Option<compare::Previous>,
) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "contain-bench run needs root (it loads BPF programs, creates namespaces and cgroups)"
        );
    }
    let started = Instant::now();
    let phases: Vec<&str> = phases.split(',').map(str::trim).collect();
    for p in &phases {
        if !PHASES.contains(p) {
            bail!("unknown phase {p:?} ({})", PHASES.join(", "));
        }
    }
    let has = |p: &str| phases.contains(&p);
    let (prog_rounds, latency_rounds, latency_samples, iperf_rounds, iperf_secs) = if quick {
        (2, 2, 50, 1, 1)
    } else {
        (
            prog_rounds,
            latency_rounds,
            latency_samples,
            iperf_rounds,
            iperf_secs,
        )
    };
    let mut results = Results {
        meta: meta(),
        previous,
        ..Results::default()
    };
    std::fs::create_dir_all(out)?;

    if ["prog", "latency", "throughput", "syscalls", "flow", "cold"]
        .iter()
        .any(|p| has(p))
    {
        let network = has("latency") || has("throughput") || has("syscalls") || has("flow");
        eprintln!(
            "contain-bench: setting up ({} rule counts{})",
            counts.len(),
            if network {
                ", namespaces and nftables"
            } else {
                ""
            }
        );
        let t = Instant::now();
        let mut lab = lab::Lab::new(&lab::Options {
            counts: counts.clone(),
            network,
        })?;
        eprintln!(
            "contain-bench: set up in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        results.veth_backstop = lab.backstop.clone();
        if has("prog") {
            eprintln!("contain-bench: program cost (BPF_PROG_TEST_RUN)");
            results.prog_cost = Some(progcost::measure(&lab, prog_rounds, 20)?);
        }
        if has("latency") {
            eprintln!("contain-bench: latency (ICMP echo, TCP request/response)");
            results.latency = Some(latency::measure(
                &lab,
                &latency::Params {
                    rounds: latency_rounds,
                    per_round: latency_samples,
                    budget: Duration::from_millis(1500),
                },
            )?);
        }
        if has("syscalls") {
            eprintln!("contain-bench: connect() and sendto() per call");
            results.syscalls = Some(sockcost::measure(
                &lab,
                &if quick {
                    sockcost::Params {
                        rounds: 2,
                        batches: 3,
                        calls: 1000,
                    }
                } else {
                    sockcost::Params {
                        rounds: latency_rounds,
                        batches: 10,
                        calls: 2000,
                    }
                },
            )?);
        }
        if has("flow") {
            eprintln!("contain-bench: a packet of an established flow (bpf_stats)");
            results.flow = Some(flowcost::measure(
                &lab,
                &flowcost::Params {
                    rounds: if quick { 2 } else { latency_rounds },
                    packets: if quick { 2000 } else { 20_000 },
                },
            )?);
        }
        if has("cold") {
            eprintln!("contain-bench: full decisions with cold caches (bpf_stats)");
            results.cold = Some(coldcache::measure(
                &mut lab,
                &coldcache::Params {
                    rounds: if quick { 2 } else { latency_rounds },
                    packets: if quick { 2000 } else { 20_000 },
                    thrashed_packets: if quick { 200 } else { 1000 },
                    containers: 100,
                },
            )?);
        }
        if has("throughput") {
            if process::run("iperf3", &["--version"]).is_err() {
                results
                    .not_measured
                    .push("throughput: iperf3 is not installed".into());
            } else {
                eprintln!("contain-bench: throughput (iperf3)");
                results.throughput = Some(throughput::measure(
                    &mut lab,
                    &counts,
                    iperf_rounds,
                    iperf_secs,
                    if quick {
                        throughput::Toggling::QUICK
                    } else {
                        throughput::Toggling::FULL
                    },
                )?);
            }
        }
        drop(lab);
    }
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    if has("control") {
        eprintln!("contain-bench: control plane (real daemons)");
        let (control, missing) = control::measure(&bin_dir, quick)?;
        results.control = Some(control);
        results.not_measured.extend(missing);
    }
    if has("scale") {
        eprintln!("contain-bench: scale in containers (real daemons, 10 to 500 containers)");
        match scale::measure(&bin_dir, quick) {
            Ok(scale) => results.scale = Some(scale),
            Err(e) => results
                .not_measured
                .push(format!("scale in containers: {e:#}")),
        }
    }
    results.meta.seconds = started.elapsed().as_secs_f64();
    let json = out.join("benchmarks.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("contain-bench: wrote {}", json.display());
    report::write(&results, out)?;
    eprintln!(
        "contain-bench: wrote {} ({:.0} s in all)",
        out.join("benchmarks.md").display(),
        results.meta.seconds
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            out,
            phases,
            rules,
            quick,
            prog_rounds,
            latency_rounds,
            latency_samples,
            iperf_rounds,
            iperf_secs,
            bin_dir,
            before,
        } => {
            // Before anything is measured: a wrong path fails at once, and
            // DIR/benchmarks.json is read before the run replaces it.
            let previous = before
                .as_deref()
                .map(|b| compare::read_previous(b, "HEAD"))
                .transpose()?;
            let mut counts: Vec<usize> = rules
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<_, _>>()
                .context("--rules: comma-separated numbers")?;
            counts.sort_unstable();
            counts.dedup();
            if counts.is_empty() || counts.len() > 40 || counts[0] < lab::needed_len() {
                bail!(
                    "--rules: 1 to 40 counts, each at least {}",
                    lab::needed_len()
                );
            }
            run(
                &out,
                &phases,
                counts,
                quick,
                prog_rounds,
                latency_rounds,
                latency_samples,
                iperf_rounds,
                iperf_secs,
                bin_dir,
                previous,
            )
        }
        Cmd::Report { out, before } => {
            let json = out.join("benchmarks.json");
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            let mut results: Results = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not a benchmarks.json this contain-bench can read",
                    json.display()
                )
            })?;
            // The measured results stay as the run wrote them: written
            // again, their floats would not all come back digit for digit.
            if let Some(before) = before {
                let own = results
                    .previous
                    .replace(compare::read_previous(&before, &results.meta.commit)?);
                eprintln!(
                    "contain-bench: compared with {} for this rendering only ({} is not changed; \
                     without --before, `report` renders {})",
                    before.display(),
                    json.display(),
                    if own.is_some() {
                        "the comparison the run was given"
                    } else {
                        "no comparison"
                    }
                );
            }
            report::write(&results, &out)
        }
    }
}
