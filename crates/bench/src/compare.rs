//! A run's headline figures, and how they moved since a previous run: what
//! the report's "Since the previous report" section renders.
//!
//! `--before FILE` reads the previous run's benchmarks.json once and keeps
//! its identity and headline figures in the new results ([`Previous`]), so
//! `contain-bench report` renders the same section again from the new JSON
//! alone, after FILE is gone or overwritten (docs/benchmarks.json is, by
//! the very run that compares against it).

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    coldcache::{self, CASES},
    flowcost::{self, FLOWS},
    lab::Kind,
    report::count,
    sockcost::{self, CALLS},
    sys,
    throughput::Toggle,
    Meta, Results,
};

/// A change larger than this, relative to the previous figure, is marked
/// better or worse.
pub const MARK_THRESHOLD: f64 = 0.05;

/// The suite's phase a figure comes from (as `--phases` names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Prog,
    Latency,
    Throughput,
    Control,
    Syscalls,
    Flow,
    Cold,
    Scale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    Ns,
    /// Microseconds a filter adds to a round trip: a difference of two
    /// medians, so it can be negative.
    AddedUs,
    Ms,
    Mb,
    /// A fraction of the unfiltered throughput (or, within one
    /// connection, of the throughput without contain's programs).
    ShareOfUnfiltered,
}

/// Which way a figure improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    Lower,
    Higher,
}

/// One headline figure of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// What joins the figure to the same one of another run: the phase,
    /// what was measured and where (`prog/contain-deny@100000`). Labels may
    /// be reworded; keys stay.
    pub key: String,
    pub phase: Phase,
    /// What it is, for a reader, with the unit of its value.
    pub label: String,
    pub unit: Unit,
    pub better: Better,
    pub value: f64,
}

/// The run a report is compared against.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Previous {
    pub meta: Meta,
    pub figures: Vec<Figure>,
    /// The commits between that run's and this one's that touched what
    /// the figures measure ([`code_changes`]), read when the comparison
    /// was made: the report lists them as what changed, each subject
    /// saying why.
    #[serde(default)]
    pub code_changes: Vec<String>,
}

impl Previous {
    pub fn of(results: &Results) -> Previous {
        Previous {
            meta: results.meta.clone(),
            figures: headline(results),
            code_changes: Vec::new(),
        }
    }
}

/// What the figures measure: the code and the build, not the docs.
pub const MEASURED_PATHS: [&str; 5] = ["crates", "scripts", "Cargo.toml", "Cargo.lock", ".cargo"];

/// The commits after `before` up to `now` that touched [`MEASURED_PATHS`],
/// oldest first, one `<hash> <subject>` line each; empty where git cannot
/// say (no checkout here, or a commit it does not have).
pub fn code_changes(before: &str, now: &str) -> Vec<String> {
    let root = test_kit::repo_root();
    let range = format!("{before}..{now}");
    let mut args = vec![
        "-C".to_string(),
        root.display().to_string(),
        "log".into(),
        "--reverse".into(),
        "--no-merges".into(),
        "--format=%h %s".into(),
        range,
        "--".into(),
    ];
    args.extend(MEASURED_PATHS.map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    test_kit::process::run("git", &args)
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Reads the previous run's benchmarks.json (`--before`), with the commits
/// from its run's to `now` ([`code_changes`]).
pub fn read_previous(path: &Path, now: &str) -> Result<Previous> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--before {}: cannot read the previous results; give the benchmarks.json of an \
             earlier run (e.g. `git show HEAD:docs/benchmarks.json > /tmp/before.json`), or \
             leave --before out",
            path.display()
        )
    })?;
    let results: Results = serde_json::from_str(&text).with_context(|| {
        format!(
            "--before {}: not a benchmarks.json this contain-bench can read; give the \
             benchmarks.json an earlier `contain-bench run` wrote, or leave --before out",
            path.display()
        )
    })?;
    let mut previous = Previous::of(&results);
    previous.code_changes = code_changes(&previous.meta.commit, now);
    Ok(previous)
}

/// The figures of a run, in the order the comparison lists them.
struct Figures(Vec<Figure>);

impl Figures {
    /// Adds a figure; one that could not be computed (NaN: no samples)
    /// is left out, as if not measured.
    fn add(&mut self, phase: Phase, what: &str, label: String, unit: Unit, value: f64) {
        if !value.is_finite() {
            return;
        }
        let better = match unit {
            Unit::ShareOfUnfiltered => Better::Higher,
            Unit::Ns | Unit::AddedUs | Unit::Ms | Unit::Mb => Better::Lower,
        };
        self.0.push(Figure {
            key: format!("{}/{what}", json_name(phase)),
            phase,
            label,
            unit,
            better,
            value,
        });
    }
}

/// The name the JSON gives a variant (`prog`, `tcp-rr`, `connect-allowed`):
/// the parts of a key that say which phase, flow, call or case.
pub fn json_name<T: Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Every headline figure of a run: what a later run is compared on.
pub fn headline(r: &Results) -> Vec<Figure> {
    let mut f = Figures(Vec::new());
    if let Some(p) = &r.prog_cost {
        prog(&mut f, p);
    }
    if let Some(flow) = &r.flow {
        established_flow(&mut f, flow);
    }
    if let Some(l) = &r.latency {
        latency(&mut f, l);
    }
    if let Some(t) = &r.throughput {
        throughput(&mut f, t);
    }
    if let Some(c) = &r.control {
        control(&mut f, c);
    }
    if let Some(s) = &r.syscalls {
        syscalls(&mut f, s);
    }
    if let Some(c) = &r.cold {
        cold(&mut f, c);
    }
    if let Some(s) = &r.scale {
        scale(&mut f, s);
    }
    f.0
}

/// The per-packet costs at the largest rule count, and the floor.
fn prog(f: &mut Figures, p: &crate::progcost::ProgCost) {
    let Some(row) = p.rows.iter().max_by_key(|r| r.rules) else {
        return;
    };
    let rules = row.rules;
    let n = count(rules);
    for (what, path, value) in [
        (
            "contain-allow-host",
            "allowed host",
            row.contain_allow_host_ns,
        ),
        (
            "contain-allow-prefix",
            "allowed prefix",
            row.contain_allow_prefix_ns,
        ),
        ("contain-deny", "denied", row.contain_deny_ns),
    ] {
        f.add(
            Phase::Prog,
            &format!("{what}@{rules}"),
            format!("egress program, full decision, {path}, {n} rules: per packet (test run)"),
            Unit::Ns,
            value,
        );
    }
    f.add(
        Phase::Prog,
        "floor",
        "the floor, a program that returns \"pass\": per packet (test run)".into(),
        Unit::Ns,
        p.floor_ns,
    );
    if let Some((tcp, udp)) = row.established_added_ns() {
        for (what, flow, value) in [("tcp", "TCP", tcp), ("udp", "UDP", udp)] {
            f.add(
                Phase::Prog,
                &format!("established-{what}@{rules}"),
                format!(
                    "egress program, established flow ({flow}), {n} rules: added to a pass-only program (test run)"
                ),
                Unit::Ns,
                value,
            );
        }
    }
    for (what, label, value) in [
        (
            "veth-governed",
            "`contain_veth`, a container's own socket",
            row.veth_governed_ns,
        ),
        (
            "veth-unowned",
            "`contain_veth`, a veth of no container",
            row.veth_unowned_ns,
        ),
        (
            "veth-allow-host",
            "`contain_veth`, judged, allowed host",
            row.veth_allow_host_ns,
        ),
        (
            "veth-allow-prefix",
            "`contain_veth`, judged, allowed prefix",
            row.veth_allow_prefix_ns,
        ),
        (
            "veth-deny",
            "`contain_veth`, judged, denied",
            row.veth_deny_ns,
        ),
        (
            "veth-inbound",
            "`contain_veth_inbound`, into a container",
            row.veth_inbound_ns,
        ),
        (
            "veth-inbound-unowned",
            "`contain_veth_inbound`, a veth of no container",
            row.veth_inbound_unowned_ns,
        ),
    ] {
        if let Some(value) = value {
            f.add(
                Phase::Prog,
                &format!("{what}@{rules}"),
                format!("veth backstop, {label}, {n} rules: per frame (test run)"),
                Unit::Ns,
                value,
            );
        }
    }
}

/// A packet of an established flow at the largest rule count, and the
/// floor's, for each kind of flow.
fn established_flow(f: &mut Figures, c: &flowcost::FlowCost) {
    let Some(rules) = c
        .rows
        .iter()
        .filter(|r| r.is_contain())
        .map(|r| r.rules)
        .max()
    else {
        return;
    };
    for flow in FLOWS {
        let flow_key = json_name(flow);
        if let Some(row) = c
            .rows
            .iter()
            .find(|r| r.is_contain() && r.rules == rules && r.flow == flow)
        {
            f.add(
                Phase::Flow,
                &format!("contain/{flow_key}@{rules}"),
                format!(
                    "egress program, established flow ({}), {} rules: per packet (bpf_stats)",
                    flow.label(),
                    count(rules)
                ),
                Unit::Ns,
                row.ns_per_packet,
            );
        }
        if let Some(row) = c.rows.iter().find(|r| r.name == "floor" && r.flow == flow) {
            f.add(
                Phase::Flow,
                &format!("floor/{flow_key}"),
                format!(
                    "the floor, established flow ({}): per packet (bpf_stats)",
                    flow.label()
                ),
                Unit::Ns,
                row.ns_per_packet,
            );
        }
    }
}

/// Rule counts of a configuration's rows, the smallest and the largest
/// (one, if it ran at one count).
fn smallest_and_largest(mut rules: Vec<usize>) -> Vec<usize> {
    rules.sort_unstable();
    rules.dedup();
    match (rules.first(), rules.last()) {
        (Some(&lo), Some(&hi)) if lo != hi => vec![lo, hi],
        (Some(&lo), _) => vec![lo],
        _ => Vec::new(),
    }
}

/// The round trip contain, and contain with the veth backstop, add to no
/// filter's, at the smallest and largest rule counts.
fn latency(f: &mut Figures, l: &crate::latency::Latency) {
    let Some(none) = l.rows.iter().find(|x| x.kind == Kind::None) else {
        return;
    };
    for (kind, kind_key) in [
        (Kind::Contain, "contain"),
        (Kind::ContainVeth, "contain-veth"),
    ] {
        let rows: Vec<_> = l.rows.iter().filter(|x| x.kind == kind).collect();
        for rules in smallest_and_largest(rows.iter().map(|x| x.rules).collect()) {
            let Some(row) = rows.iter().find(|x| x.rules == rules) else {
                continue;
            };
            for (test, test_key, with, without) in [
                ("ping", "ping", row.ping.median_us, none.ping.median_us),
                (
                    "TCP request/response",
                    "tcp-rr",
                    row.tcp_rr.median_us,
                    none.tcp_rr.median_us,
                ),
            ] {
                f.add(
                    Phase::Latency,
                    &format!("{kind_key}/{test_key}@{rules}"),
                    format!(
                        "{test} round trip added by {}, {} rules: median against no filter",
                        kind.label(),
                        count(rules)
                    ),
                    Unit::AddedUs,
                    with - without,
                );
            }
        }
    }
}

/// Throughput against unfiltered, of contain and of contain with the veth
/// backstop, at the smallest and largest rule counts.
fn throughput(f: &mut Figures, t: &crate::throughput::Throughput) {
    for (kind, kind_key) in [
        (Kind::Contain, "contain"),
        (Kind::ContainVeth, "contain-veth"),
    ] {
        let rows: Vec<_> = t
            .rows
            .iter()
            .filter(|x| x.kind == kind && !x.control)
            .collect();
        for rules in smallest_and_largest(rows.iter().map(|x| x.rules).collect()) {
            let Some(row) = rows.iter().find(|x| x.rules == rules) else {
                continue;
            };
            f.add(
                Phase::Throughput,
                &format!("{kind_key}@{rules}"),
                format!(
                    "TCP throughput with {}, {} rules: of unfiltered (median of paired ratios)",
                    kind.label(),
                    count(rules)
                ),
                Unit::ShareOfUnfiltered,
                row.median_ratio_to_none,
            );
        }
    }
    for row in t
        .toggled
        .iter()
        .filter(|x| x.toggle == Toggle::All && !x.ratios.is_empty())
    {
        f.add(
            Phase::Throughput,
            &format!("toggled-all@{}", row.rules),
            format!(
                "TCP throughput with all of contain's programs, {} rules, within one connection: with ÷ without (median of paired windows)",
                count(row.rules)
            ),
            Unit::ShareOfUnfiltered,
            row.median_ratio,
        );
    }
}

/// Reload and `nft -f` times, memory, and container create → in force.
fn control(f: &mut Figures, c: &crate::control::Control) {
    let rules = c.rules;
    let n = count(rules);
    for (what, label, wall) in [
        (
            "install",
            format!("`policyd reload` of {n} rules, from empty"),
            &c.install.wall_ms,
        ),
        (
            "one-rule",
            format!("`policyd reload`, a one-rule change in {n} rules"),
            &c.one_rule.wall_ms,
        ),
        (
            "unchanged",
            format!("`policyd reload`, {n} rules, file unchanged"),
            &c.unchanged.wall_ms,
        ),
    ] {
        f.add(
            Phase::Control,
            &format!("{what}@{rules}"),
            format!("{label}: median wall time"),
            Unit::Ms,
            sys::median(wall),
        );
    }
    if let Some(nft) = &c.nft {
        for (what, label, wall) in [
            ("nft-install", "from empty", &nft.install_ms),
            ("nft-replace", "replacing the table", &nft.replace_ms),
        ] {
            f.add(
                Phase::Control,
                &format!("{what}@{rules}"),
                format!("`nft -f` of the same {n} rules, {label}: median wall time"),
                Unit::Ms,
                sys::median(wall),
            );
        }
    }
    let kb_to_mb = |kb: u64| kb as f64 / 1024.0;
    for rss in &c.rss {
        for (what, when, kb) in [
            ("rss-installed", "at rest", rss.installed_kb),
            ("rss-reloaded", "after the reloads", rss.loaded_kb),
        ] {
            if let Some(kb) = kb {
                f.add(
                    Phase::Control,
                    &format!("{what}/{}@{rules}", rss.daemon),
                    format!(
                        "resident memory of {}, {n} rules installed, {when}",
                        rss.daemon
                    ),
                    Unit::Mb,
                    kb_to_mb(kb),
                );
            }
        }
    }
    if let Some(kb) = c.loader_maps.as_ref().and_then(|m| m.installed_kb) {
        f.add(
            Phase::Control,
            &format!("maps-installed@{rules}"),
            format!("kernel memory of bpf-loader's maps, {n} rules installed"),
            Unit::Mb,
            kb_to_mb(kb),
        );
    }
    if let Some(create) = &c.create {
        f.add(
            Phase::Control,
            "create-in-force",
            "container create → policy in force: median from `/tasks/create`".into(),
            Unit::Ms,
            sys::median(&create.from_create_ms),
        );
    }
}

/// Each call's cost with contain at the largest rule count, and with no
/// filter.
fn syscalls(f: &mut Figures, s: &sockcost::SockCost) {
    let largest = s
        .rows
        .iter()
        .filter(|r| r.kind == Kind::Contain)
        .map(|r| r.rules)
        .max();
    for call in CALLS {
        let call_key = json_name(call);
        if let Some(row) = largest.and_then(|rules| {
            s.rows
                .iter()
                .find(|r| r.kind == Kind::Contain && r.rules == rules && r.call == call)
        }) {
            f.add(
                Phase::Syscalls,
                &format!("contain/{call_key}@{}", row.rules),
                format!(
                    "{}, with contain, {} rules: per call",
                    call.label(),
                    count(row.rules)
                ),
                Unit::Ns,
                row.median_ns,
            );
        }
        if let Some(row) = s
            .rows
            .iter()
            .find(|r| r.kind == Kind::None && r.call == call)
        {
            f.add(
                Phase::Syscalls,
                &format!("none/{call_key}"),
                format!("{}, with no filter: per call", call.label()),
                Unit::Ns,
                row.median_ns,
            );
        }
    }
}

/// Each case's cost at the largest rule count, and the floor's.
fn cold(f: &mut Figures, c: &coldcache::ColdCache) {
    let largest = c
        .rows
        .iter()
        .filter(|r| r.name != "floor")
        .map(|r| r.rules)
        .max();
    for case in CASES {
        let case_key = json_name(case);
        if let Some(row) = largest.and_then(|rules| {
            c.rows
                .iter()
                .find(|r| r.name != "floor" && r.rules == rules && r.case == case)
        }) {
            f.add(
                Phase::Cold,
                &format!("contain/{case_key}@{}", row.rules),
                format!(
                    "egress program, {}, {} rules: per packet (bpf_stats)",
                    case.label(),
                    count(row.rules)
                ),
                Unit::Ns,
                row.ns_per_packet,
            );
        }
        if let Some(row) = c.rows.iter().find(|r| r.name == "floor" && r.case == case) {
            f.add(
                Phase::Cold,
                &format!("floor/{case_key}"),
                format!("the floor, {}: per packet (bpf_stats)", case.label()),
                Unit::Ns,
                row.ns_per_packet,
            );
        }
    }
}

/// A container start's time to in force and the daemons' CPU per start,
/// at each host size.
fn scale(f: &mut Figures, s: &crate::scale::Scale) {
    for row in &s.rows {
        let running = row.running;
        f.add(
            Phase::Scale,
            &format!("in-force@{running}"),
            format!(
                "container create → in force, {} containers running: median",
                count(running)
            ),
            Unit::Ms,
            sys::median(&row.from_create_ms),
        );
        for (daemon, cpu_ms) in [
            ("resolver", row.resolver_cpu_ms),
            ("policyd", row.policyd_cpu_ms),
        ] {
            f.add(
                Phase::Scale,
                &format!("{daemon}-cpu@{running}"),
                format!(
                    "{daemon} CPU time per container start, {} containers running",
                    count(running)
                ),
                Unit::Ms,
                cpu_ms,
            );
        }
    }
}

/// How a figure moved, in its own direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// More than [`MARK_THRESHOLD`] worse than before.
    Worse,
    /// More than [`MARK_THRESHOLD`] better than before.
    Better,
    Within,
}

/// Whether `now` is worse or better than `before` by more than
/// [`MARK_THRESHOLD`] of `before`'s size. Relative to |before|, so that an
/// added round trip below zero moves the right way too.
pub fn verdict(before: f64, now: f64, better: Better) -> Verdict {
    let worsening = match better {
        Better::Lower => now - before,
        Better::Higher => before - now,
    };
    let relative = if before == 0.0 {
        // No size to be relative to: any move counts in full.
        if worsening == 0.0 {
            0.0
        } else {
            worsening.signum() * f64::INFINITY
        }
    } else {
        worsening / before.abs()
    };
    if relative > MARK_THRESHOLD {
        Verdict::Worse
    } else if relative < -MARK_THRESHOLD {
        Verdict::Better
    } else {
        Verdict::Within
    }
}

/// One figure measured in both runs.
#[derive(Debug)]
pub struct Pair<'a> {
    /// This run's figure (label, unit and direction as this code names
    /// them).
    pub now: &'a Figure,
    pub before: f64,
    /// now ÷ before, where before is above zero (a ratio to zero or to a
    /// negative difference says nothing).
    pub ratio: Option<f64>,
    pub verdict: Verdict,
}

/// Two runs' headline figures, joined.
#[derive(Debug)]
pub struct Comparison<'a> {
    /// In this run's order.
    pub pairs: Vec<Pair<'a>>,
    /// Phases with figures in the previous run only, and in this one only:
    /// phases that ran on one side.
    pub phases_before_only: Vec<Phase>,
    pub phases_now_only: Vec<Phase>,
    /// Figures left out because their phase ran on one side only.
    pub skipped_phase_one_side: usize,
    /// Figures left out though their phase ran on both sides: a rule
    /// count, path or configuration measured on one side only.
    pub skipped_other: usize,
}

pub fn compare<'a>(before: &'a [Figure], now: &'a [Figure]) -> Comparison<'a> {
    let pairs = now
        .iter()
        .filter_map(|n| {
            let b = before.iter().find(|b| b.key == n.key)?;
            Some(Pair {
                now: n,
                before: b.value,
                ratio: (b.value > 0.0).then(|| n.value / b.value),
                verdict: verdict(b.value, n.value, n.better),
            })
        })
        .collect();
    let phases = |figures: &[Figure]| {
        let mut phases: Vec<Phase> = Vec::new();
        for f in figures {
            if !phases.contains(&f.phase) {
                phases.push(f.phase);
            }
        }
        phases
    };
    let (phases_before, phases_now) = (phases(before), phases(now));
    let mut skipped_phase_one_side = 0;
    let mut skipped_other = 0;
    for (side, other, other_phases) in [(before, now, &phases_now), (now, before, &phases_before)] {
        for f in side {
            if other.iter().any(|o| o.key == f.key) {
                continue;
            }
            if other_phases.contains(&f.phase) {
                skipped_other += 1;
            } else {
                skipped_phase_one_side += 1;
            }
        }
    }
    Comparison {
        pairs,
        phases_before_only: phases_before
            .iter()
            .filter(|p| !phases_now.contains(p))
            .copied()
            .collect(),
        phases_now_only: phases_now
            .iter()
            .filter(|p| !phases_before.contains(p))
            .copied()
            .collect(),
        skipped_phase_one_side,
        skipped_other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control, progcost, scale};

    fn prog_row(rules: usize, host: f64, veth: Option<f64>) -> progcost::Row {
        progcost::Row {
            veth_governed_ns: veth,
            ..progcost::Row::sample(rules, host, host + 20.0, host + 50.0, 15.0)
        }
    }

    fn prog_cost(rows: Vec<progcost::Row>) -> progcost::ProgCost {
        progcost::ProgCost {
            rounds: 1,
            target_ms: 20,
            floor_ns: 15.0,
            rows,
            seconds: 0.0,
        }
    }

    fn figure(key: &str, phase: Phase, better: Better, value: f64) -> Figure {
        Figure {
            key: key.into(),
            phase,
            label: key.into(),
            unit: match better {
                Better::Lower => Unit::Ns,
                Better::Higher => Unit::ShareOfUnfiltered,
            },
            better,
            value,
        }
    }

    fn value(figures: &[Figure], key: &str) -> Option<f64> {
        figures.iter().find(|f| f.key == key).map(|f| f.value)
    }

    #[test]
    fn headline_takes_the_largest_rule_count_and_the_backstop_columns_that_exist() {
        let r = Results {
            prog_cost: Some(prog_cost(vec![
                prog_row(100_000, 70.0, Some(60.0)),
                prog_row(10, 65.0, Some(61.0)),
            ])),
            ..Results::default()
        };
        let figures = headline(&r);
        assert_eq!(
            value(&figures, "prog/contain-allow-host@100000"),
            Some(70.0)
        );
        assert_eq!(value(&figures, "prog/contain-deny@100000"), Some(120.0));
        assert_eq!(value(&figures, "prog/floor"), Some(15.0));
        assert_eq!(value(&figures, "prog/veth-governed@100000"), Some(60.0));
        assert_eq!(value(&figures, "prog/contain-allow-host@10"), None);
        assert_eq!(value(&figures, "prog/veth-unowned@100000"), None);
        assert!(figures.iter().all(|f| f.phase == Phase::Prog));
        assert!(figures
            .iter()
            .all(|f| f.unit == Unit::Ns && f.better == Better::Lower));
        let host = figures
            .iter()
            .find(|f| f.key == "prog/contain-allow-host@100000")
            .expect("the allowed host's figure");
        assert!(
            host.label.contains("100\u{202f}000 rules"),
            "{}",
            host.label
        );
    }

    #[test]
    fn headline_of_latency_throughput_control_and_scale() {
        use crate::latency::{Latency, Row, Stats};
        let stats = |median_us| Stats {
            median_us,
            ..Stats::default()
        };
        let lrow = |kind, rules, ping, rr| Row {
            name: String::new(),
            kind,
            rules,
            ping: stats(ping),
            tcp_rr: stats(rr),
        };
        let trow = |kind, rules, control, ratio| crate::throughput::Row {
            name: String::new(),
            kind,
            rules,
            control,
            gbps: vec![],
            median_gbps: 10.0,
            median_ratio_to_none: ratio,
            ratios: vec![],
            ratio_interval: None,
            interval_coverage: 0.0,
            retransmits: vec![],
            frames: vec![],
            frame_bytes: vec![],
            frames_back: vec![],
            seconds: vec![],
            program_ns: vec![],
            program_runs: vec![],
            by_program: vec![],
            program_seconds: vec![],
        };
        let reload = |wall_ms: Vec<f64>| control::Reload {
            wall_ms,
            compile_ms: vec![],
            apply_ms: vec![],
            ops: 0,
            ops_detail: String::new(),
            report_bytes: vec![],
        };
        let r = Results {
            latency: Some(Latency {
                rounds: 1,
                per_round: 1,
                payload_bytes: 64,
                rows: vec![
                    lrow(Kind::None, 0, 20.0, 30.0),
                    lrow(Kind::Contain, 10, 20.5, 30.25),
                    lrow(Kind::Contain, 1000, 20.75, 31.0),
                    lrow(Kind::Contain, 100, 99.0, 99.0),
                ],
                nft_load_s: Default::default(),
                seconds: 0.0,
            }),
            throughput: Some(crate::throughput::Throughput {
                seconds_per_run: 1,
                rounds: 1,
                comparison_rounds: 1,
                stats_runs: 0,
                rows: vec![
                    trow(Kind::None, 0, true, 0.5),
                    trow(Kind::Contain, 10, false, 0.99),
                ],
                toggled: Vec::new(),
                seconds: 0.0,
            }),
            control: Some(control::Control {
                rules: 10_000,
                policies: 1,
                containers: 1,
                install: reload(vec![30.0, 10.0, 20.0]),
                remove_all: reload(vec![1.0]),
                one_rule: reload(vec![]),
                unchanged: reload(vec![2.0]),
                nft: None,
                rss: vec![control::Rss {
                    daemon: "policyd".into(),
                    idle_kb: Some(1024),
                    installed_kb: Some(2048),
                    loaded_kb: None,
                }],
                loader_maps: None,
                create: None,
                seconds: 0.0,
            }),
            scale: Some(scale::Scale {
                measured_per_row: 2,
                rows: vec![scale::Row {
                    running: 10,
                    from_create_ms: vec![3.0, 5.0],
                    resolver_cpu_ms: 2.0,
                    policyd_cpu_ms: 0.5,
                    background_start_s: 1.0,
                }],
                seconds: 0.0,
            }),
            ..Results::default()
        };
        let figures = headline(&r);
        assert_eq!(value(&figures, "latency/contain/ping@10"), Some(0.5));
        assert_eq!(value(&figures, "latency/contain/tcp-rr@1000"), Some(1.0));
        // Neither the smallest nor the largest count.
        assert_eq!(value(&figures, "latency/contain/ping@100"), None);
        // One rule count: one figure, not the same twice.
        assert_eq!(
            figures
                .iter()
                .filter(|f| f.key == "throughput/contain@10")
                .count(),
            1
        );
        let share = figures
            .iter()
            .find(|f| f.key == "throughput/contain@10")
            .expect("contain's throughput");
        assert_eq!((share.value, share.better), (0.99, Better::Higher));
        assert!(!figures.iter().any(|f| f.key.starts_with("throughput/none")));
        assert_eq!(value(&figures, "control/install@10000"), Some(20.0));
        // No samples: not a figure (NaN would not even serialize).
        assert_eq!(value(&figures, "control/one-rule@10000"), None);
        assert_eq!(
            value(&figures, "control/rss-installed/policyd@10000"),
            Some(2.0)
        );
        assert_eq!(value(&figures, "control/rss-reloaded/policyd@10000"), None);
        assert_eq!(value(&figures, "scale/in-force@10"), Some(3.0));
        assert_eq!(value(&figures, "scale/policyd-cpu@10"), Some(0.5));
        assert!(figures.iter().all(|f| f.value.is_finite()));
    }

    #[test]
    fn worse_follows_the_direction_of_the_figure() {
        // A time (lower is better): up is worse.
        assert_eq!(verdict(100.0, 106.0, Better::Lower), Verdict::Worse);
        assert_eq!(verdict(100.0, 94.0, Better::Lower), Verdict::Better);
        assert_eq!(verdict(100.0, 105.0, Better::Lower), Verdict::Within);
        // A throughput ratio (higher is better): down is worse.
        assert_eq!(verdict(0.99, 0.93, Better::Higher), Verdict::Worse);
        assert_eq!(verdict(0.90, 0.99, Better::Higher), Verdict::Better);
        assert_eq!(verdict(0.99, 0.98, Better::Higher), Verdict::Within);
        // An added round trip below zero: closer to zero is up, so worse.
        assert_eq!(verdict(-0.2, -0.1, Better::Lower), Verdict::Worse);
        assert_eq!(verdict(-0.1, -0.2, Better::Lower), Verdict::Better);
        assert_eq!(verdict(0.0, 0.01, Better::Lower), Verdict::Worse);
        assert_eq!(verdict(0.0, 0.0, Better::Lower), Verdict::Within);
    }

    #[test]
    fn compare_joins_by_key_with_ratio_and_verdict() {
        let before = vec![
            figure("prog/contain-deny@10", Phase::Prog, Better::Lower, 100.0),
            figure(
                "throughput/contain@10",
                Phase::Throughput,
                Better::Higher,
                1.0,
            ),
            figure(
                "latency/contain/ping@10",
                Phase::Latency,
                Better::Lower,
                -0.1,
            ),
        ];
        let now = vec![
            figure(
                "latency/contain/ping@10",
                Phase::Latency,
                Better::Lower,
                0.1,
            ),
            figure("prog/contain-deny@10", Phase::Prog, Better::Lower, 120.0),
            figure(
                "throughput/contain@10",
                Phase::Throughput,
                Better::Higher,
                1.1,
            ),
        ];
        let c = compare(&before, &now);
        let got: Vec<_> = c
            .pairs
            .iter()
            .map(|p| {
                (
                    p.now.key.as_str(),
                    p.before,
                    p.now.value,
                    p.ratio,
                    p.verdict,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                // A ratio to a negative difference says nothing.
                ("latency/contain/ping@10", -0.1, 0.1, None, Verdict::Worse),
                (
                    "prog/contain-deny@10",
                    100.0,
                    120.0,
                    Some(1.2),
                    Verdict::Worse
                ),
                (
                    "throughput/contain@10",
                    1.0,
                    1.1,
                    Some(1.1),
                    Verdict::Better
                ),
            ]
        );
        assert_eq!((c.skipped_phase_one_side, c.skipped_other), (0, 0));
    }

    #[test]
    fn a_phase_on_one_side_only_is_skipped_and_counted() {
        let before = vec![
            figure("prog/floor", Phase::Prog, Better::Lower, 15.0),
            figure("scale/in-force@10", Phase::Scale, Better::Lower, 3.0),
            figure("scale/in-force@100", Phase::Scale, Better::Lower, 3.5),
            // The phase ran on both sides, at a count only this side has.
            figure("prog/contain-deny@10", Phase::Prog, Better::Lower, 100.0),
        ];
        let now = vec![
            figure("prog/floor", Phase::Prog, Better::Lower, 15.0),
            figure("cold/floor/cold", Phase::Cold, Better::Lower, 30.0),
        ];
        let c = compare(&before, &now);
        assert_eq!(c.pairs.len(), 1);
        assert_eq!(c.pairs[0].verdict, Verdict::Within);
        assert_eq!(c.pairs[0].ratio, Some(1.0));
        assert_eq!(c.phases_before_only, vec![Phase::Scale]);
        assert_eq!(c.phases_now_only, vec![Phase::Cold]);
        assert_eq!(c.skipped_phase_one_side, 3);
        assert_eq!(c.skipped_other, 1);
    }

    #[test]
    fn a_run_compared_with_itself_is_within_everywhere() {
        let r = Results {
            prog_cost: Some(prog_cost(vec![prog_row(10, 65.0, None)])),
            ..Results::default()
        };
        let previous = Previous::of(&r);
        let now = headline(&r);
        let c = compare(&previous.figures, &now);
        assert_eq!(c.pairs.len(), now.len());
        assert!(c
            .pairs
            .iter()
            .all(|p| p.verdict == Verdict::Within && p.ratio == Some(1.0)));
    }

    #[test]
    fn previous_figures_survive_the_json() {
        let r = Results {
            prog_cost: Some(prog_cost(vec![prog_row(10, 65.0, Some(60.0))])),
            ..Results::default()
        };
        let stored = Results {
            previous: Some(Previous::of(&r)),
            ..Results::default()
        };
        let json = serde_json::to_string(&stored).expect("serialize");
        let back: Results = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(
            back.previous.expect("the previous run").figures,
            headline(&r)
        );
    }

    #[test]
    fn a_missing_or_unreadable_before_file_names_the_file() {
        let dir =
            std::env::temp_dir().join(format!("contain-bench-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let missing = dir.join("missing.json");
        let e = format!(
            "{:#}",
            read_previous(&missing, "HEAD").expect_err("no such file")
        );
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("--before"), "{e}");
        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, "{\"meta\": 1}").expect("write");
        let e = format!(
            "{:#}",
            read_previous(&garbage, "HEAD").expect_err("not results")
        );
        assert!(e.contains(&garbage.display().to_string()), "{e}");
        assert!(e.contains("benchmarks.json an earlier"), "{e}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
