//! Prometheus metrics, in the text exposition format (0.0.4) written by
//! `prometheus-client` (Prometheus' own Rust client).
//!
//! Two kinds of figures:
//!
//! * what policyd records as it goes ([`Recorder`]): reloads, their
//!   duration, and the deny and audit events it receives per container;
//! * what is read at each scrape ([`Scrape`]): the kernel's counters (via
//!   the loader), map usage, containers by state, connections.
//!
//! Each scrape builds a fresh registry from both, so a figure that cannot
//! be read (the loader is away) is left out rather than shown as zero.
//! Labels are bounded: actions, reasons, map names and states are fixed
//! sets; policies come from the policy file; containers from the inventory,
//! and a container's series are dropped [`RETAIN_GONE`] after it leaves it.
//! No address, port or executable is ever a label.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use kernel_model::state::Verdict;
use prometheus_client::{
    encoding::prometheus_text,
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

/// How long a gone container's series stay: long enough for a few
/// scrapes to see its last increments, short enough that container churn
/// does not grow the output without bound.
pub const RETAIN_GONE: Duration = Duration::from_secs(600);

/// How a non-dry-run reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReloadResult {
    /// A diff was applied.
    Applied,
    /// Valid, and the kernel already held it.
    Unchanged,
    /// Valid, not applied yet (waiting for the first inventory).
    Pending,
    /// The file was refused; the running policy stays.
    Invalid,
    /// The loader was away or refused the diff.
    Failed,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Pending => "pending",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Failed => "failed",
        }
    }
}

/// The labels of one per-container verdict series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct VerdictKey {
    action: Verdict,
    policy: String,
    container: String,
}

#[derive(Default)]
struct Recorded {
    reloads: BTreeMap<ReloadResult, u64>,
    verdicts: BTreeMap<VerdictKey, u64>,
    /// Containers with series that left the inventory, and when.
    gone_since: BTreeMap<String, Instant>,
}

/// What policyd counts itself, kept for the daemon's lifetime.
pub struct Recorder {
    recorded: Mutex<Recorded>,
    reload_duration: Histogram,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            recorded: Mutex::default(),
            // 1 ms to about 33 s.
            reload_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl Recorder {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // Every update is a few integer writes: a panic elsewhere cannot
        // leave them half done.
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reload(&self, result: ReloadResult, took: Duration) {
        *self.recorded().reloads.entry(result).or_default() += 1;
        self.reload_duration.observe(took.as_secs_f64());
    }

    /// A deny or audit event of `container` under `policy` (empty when
    /// unknown), standing for itself and the `suppressed` events of its
    /// cgroup the kernel's rate limit held back before it.
    pub fn verdict(&self, action: Verdict, policy: &str, container: &str, suppressed: u32) {
        let key = VerdictKey {
            action,
            policy: policy.to_string(),
            container: container.to_string(),
        };
        *self.recorded().verdicts.entry(key).or_default() += 1 + u64::from(suppressed);
    }

    /// Drops the series of containers that have not been in the inventory
    /// (`present`, by name) for [`RETAIN_GONE`].
    pub fn retain_containers(&self, present: &BTreeSet<String>, now: Instant) {
        let mut r = self.recorded();
        let Recorded {
            verdicts,
            gone_since,
            ..
        } = &mut *r;
        gone_since.retain(|name, _| !present.contains(name));
        for name in verdicts.keys().map(|k| &k.container) {
            if !name.is_empty() && !present.contains(name) {
                gone_since.entry(name.clone()).or_insert(now);
            }
        }
        let expired = |since: &Instant| now.saturating_duration_since(*since) >= RETAIN_GONE;
        verdicts.retain(|k, _| !gone_since.get(&k.container).is_some_and(expired));
        gone_since.retain(|_, since| !expired(since));
    }
}

/// The kernel's counters, as the loader reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// (policy name, action, count); the empty name is the unknown-container
    /// verdict.
    pub policy_verdicts: Vec<(String, Verdict, u64)>,
    pub ring_buffer_full: u64,
    pub loader_buffer_full: u64,
    pub rate_limited: u64,
    pub unstamped_sockets: u64,
    pub unparsed_packets: u64,
    pub veth_unowned_frames: u64,
    pub forged_source_frames: u64,
    pub refused_socket_options: u64,
}

/// One kernel map's use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub map: &'static str,
    pub entries: u64,
    pub max_entries: u32,
}

/// What one scrape reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scrape {
    /// `None` when the loader could not be asked.
    pub kernel: Option<KernelCounters>,
    /// `None` until policyd has read the loader's maps.
    pub maps: Option<Vec<MapUsage>>,
    /// Containers per [`ContainerState`].
    pub containers: BTreeMap<ContainerState, u64>,
    pub loader_connected: bool,
    pub inventory_connected: bool,
    pub policy_loaded: bool,
}

/// What the kernel does for a container, as `contain_containers{state}`
/// says it. Only `Enforced` means a deny-mode policy is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContainerState {
    /// A policy in enforce mode selects it and the programs see its cgroup.
    Enforced,
    /// As enforced, but the policy is in audit mode: nothing is denied.
    Audited,
    /// A policy selects it, and the programs do not see its cgroup.
    Unenforced,
    /// Not known: no cgroup mapped yet, no policy loaded, or whether the
    /// programs see it cannot be checked.
    Unknown,
    /// No policy selects it.
    Unselected,
}

impl ContainerState {
    pub const ALL: [ContainerState; 5] = [
        ContainerState::Enforced,
        ContainerState::Audited,
        ContainerState::Unenforced,
        ContainerState::Unknown,
        ContainerState::Unselected,
    ];

    /// From `ContainerStatus::mode`.
    pub fn from_mode(mode: &str) -> ContainerState {
        match mode {
            "enforce" => ContainerState::Enforced,
            "audit" => ContainerState::Audited,
            "unenforced" => ContainerState::Unenforced,
            "unrestricted" => ContainerState::Unselected,
            // "unmapped", "unverified", "unknown", and anything new.
            _ => ContainerState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Enforced => "enforced",
            ContainerState::Audited => "audited",
            ContainerState::Unenforced => "unenforced",
            ContainerState::Unknown => "unknown",
            ContainerState::Unselected => "unselected",
        }
    }
}

/// Usage of the policy maps, from the loader's state as policyd last read
/// or wrote it: destinations go to the host table or the prefix trie,
/// ports to the exact table or the range trie, as the loader splits them.
pub fn map_usage(state: &kernel_model::state::KernelState) -> Vec<MapUsage> {
    use contain_common::{capacity, dest_is_host, port_is_exact};
    let hosts = state
        .dests
        .keys()
        .filter(|k| dest_is_host(k.prefix_len.into()))
        .count();
    let exact_ports = state
        .ports
        .keys()
        .filter(|k| port_is_exact(k.port_bits.into()))
        .count();
    [
        ("cgroups", state.cgroups.len(), capacity::CGROUPS),
        ("processes", state.processes.len(), capacity::PROCESSES),
        ("dest_hosts", hosts, capacity::HOSTS),
        ("dest_prefixes", state.dests.len() - hosts, capacity::DESTS),
        ("ports_exact", exact_ports, capacity::EXACT_PORTS),
        (
            "port_ranges",
            state.ports.len() - exact_ports,
            capacity::PORTS,
        ),
        ("veths", state.veths.len(), capacity::VETHS),
    ]
    .into_iter()
    .map(|(map, entries, max_entries)| MapUsage {
        map,
        entries: entries as u64,
        max_entries,
    })
    .collect()
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Registers a family of counters holding `samples`.
fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, count) in samples {
        family.get_or_create(&labels).inc_by(count);
    }
    registry.register(name, help, family);
}

/// Registers a family of gauges holding `samples` (saturating at
/// `i64::MAX`).
fn gauges<V: TryInto<i64>>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, V)>,
) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in samples {
        family
            .get_or_create(&labels)
            .set(value.try_into().unwrap_or(i64::MAX));
    }
    registry.register(name, help, family);
}

/// The metrics page: `scrape` and what `recorder` holds, in the
/// Prometheus text format.
pub fn render(scrape: &Scrape, recorder: &Recorder) -> String {
    let mut registry = Registry::with_prefix("contain");

    gauges(
        &mut registry,
        "build_info",
        "The policyd version (always 1)",
        [(labels(&[("version", env!("CARGO_PKG_VERSION"))]), 1)],
    );
    gauges(
        &mut registry,
        "connected",
        "Whether policyd is connected to its peer: bpf-loader (peer=\"loader\") or the container inventory (peer=\"inventory\", the resolver or an inventory file); 1 or 0",
        [
            ("loader", scrape.loader_connected),
            ("inventory", scrape.inventory_connected),
        ]
        .map(|(peer, up)| (labels(&[("peer", peer)]), i64::from(up))),
    );
    registry.register(
        "policy_loaded",
        "Whether a valid policy is loaded (1) or none yet (0); an invalid file never replaces a loaded one",
        ConstGauge::new(i64::from(scrape.policy_loaded)),
    );
    gauges(
        &mut registry,
        "containers",
        "Containers in the inventory by state: enforced (an enforce-mode policy selects it and the kernel programs see its cgroup), audited (the same in audit mode: nothing is denied), unenforced (selected, but its cgroup is below no cgroup the programs are attached to, or the maps do not hold its entry or its policy's rules as the file gives them), unknown (no cgroup mapped yet, no policy loaded, or not checkable), unselected (no policy selects it)",
        ContainerState::ALL.map(|state| {
            let count = scrape.containers.get(&state).copied().unwrap_or_default();
            (labels(&[("state", state.as_str())]), count)
        }),
    );

    if let Some(kernel) = &scrape.kernel {
        counters(
            &mut registry,
            "policy_verdicts",
            "Decisions the kernel programs made under each policy (policy=\"\": containers not mapped yet, under the unknown-container verdict), counted in the kernel for every decision, not sampled: each judged connect() and unconnected sendmsg(), and each outgoing packet and frame (packets of a flow whose verdict is cached count too, so allow counts packets while deny mostly counts attempts); not per container",
            kernel.policy_verdicts.iter().map(|(policy, action, count)| {
                (labels(&[("action", &action.to_string()), ("policy", policy)]), *count)
            }),
        );
        counters(
            &mut registry,
            "events_dropped",
            "Deny and audit events not reported, by reason: ring_buffer_full (the kernel could not queue them), loader_buffer_full (bpf-loader's buffer overflowed before they were read), rate_limited (their cgroup exceeded bpf-loader --events-per-second; each cgroup's next event carries how many)",
            [
                ("ring_buffer_full", kernel.ring_buffer_full),
                ("loader_buffer_full", kernel.loader_buffer_full),
                ("rate_limited", kernel.rate_limited),
            ]
            .map(|(reason, count)| (labels(&[("reason", reason)]), count)),
        );
        for (name, help, count) in [
            (
                "sockets_refused",
                "Sockets refused at creation, and connect() calls refused, because the kernel could not stamp the socket with its creator's identity",
                kernel.unstamped_sockets,
            ),
            (
                "packets_unparsed",
                "Packets the egress program could not parse: judged by their container's miss verdict and reported",
                kernel.unparsed_packets,
            ),
            (
                "veth_unowned_frames",
                "Frames no container's socket sent, let through on a veth policyd has mapped to no container",
                kernel.veth_unowned_frames,
            ),
            (
                "forged_source_frames",
                "Frames of a governed container whose source is none of its addresses: denied (passed in audit mode) and reported",
                kernel.forged_source_frames,
            ),
            (
                "refused_socket_options",
                "Socket options refused to a governed container because they let a packet socket's frame change after the veth backstop judged it (PACKET_VNET_HDR, AF_XDP transmit metadata)",
                kernel.refused_socket_options,
            ),
        ] {
            registry.register(name, help, ConstCounter::new(count));
        }
    }

    if let Some(maps) = &scrape.maps {
        gauges(
            &mut registry,
            "bpf_map_entries",
            "Entries in each policy map, as of the loader state policyd last read or wrote",
            maps.iter().map(|u| (labels(&[("map", u.map)]), u.entries)),
        );
        gauges(
            &mut registry,
            "bpf_map_max_entries",
            "Capacity of each policy map; a reload that needs more is refused",
            maps.iter()
                .map(|u| (labels(&[("map", u.map)]), u.max_entries)),
        );
    }

    let recorded = recorder.recorded();
    counters(
        &mut registry,
        "reloads",
        "Policy reloads (policyd reload, SIGHUP, a changed file; not dry runs) by result: applied, unchanged, pending (valid, waiting for the first inventory), invalid (refused, the running policy stays), failed (the loader was away or refused the diff)",
        [
            ReloadResult::Applied,
            ReloadResult::Unchanged,
            ReloadResult::Pending,
            ReloadResult::Invalid,
            ReloadResult::Failed,
        ]
        .map(|result| {
            let count = recorded.reloads.get(&result).copied().unwrap_or_default();
            (labels(&[("result", result.as_str())]), count)
        }),
    );
    registry.register_with_unit(
        "reload_duration",
        "Time a reload took: reading, validating and compiling the file, and applying the diff",
        Unit::Seconds,
        recorder.reload_duration.clone(),
    );
    counters(
        &mut registry,
        "container_verdicts",
        "Deny and audit events per container (container=\"\": a cgroup not mapped to a container), as policyd received them from bpf-loader: one per denied or audited flow and rules epoch (later packets of the flow take the cached verdict and are not reported), plus those the per-cgroup rate limit held back, counted when the cgroup's next event arrives. Events lost before policyd read them are in contain_events_dropped_total; allowed flows are only in contain_policy_verdicts_total",
        recorded.verdicts.iter().map(|(key, count)| {
            let labels = labels(&[
                ("action", &key.action.to_string()),
                ("policy", &key.policy),
                ("container", &key.container),
            ]);
            (labels, *count)
        }),
    );
    drop(recorded);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_container_denial_moves_its_own_series_and_no_other() {
        let recorder = Recorder::default();
        recorder.verdict(Verdict::Deny, "lockdown", "curler", 0);
        recorder.verdict(Verdict::Deny, "lockdown", "curler", 4);
        recorder.verdict(Verdict::Audit, "observe", "web", 0);
        let text = render(&Scrape::default(), &recorder);
        assert_eq!(
            sample(
                &text,
                r#"contain_container_verdicts_total{action="deny",policy="lockdown",container="curler"}"#
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"contain_container_verdicts_total{action="audit",policy="observe",container="web"}"#
            ),
            Some(1.0)
        );
        assert!(!text.contains(r#"action="deny",policy="observe""#));
    }

    #[test]
    fn every_family_has_help_and_counters_end_in_total() {
        let recorder = Recorder::default();
        recorder.reload(ReloadResult::Applied, Duration::from_millis(12));
        recorder.verdict(Verdict::Deny, "lockdown", "curler", 0);
        let scrape = Scrape {
            kernel: Some(KernelCounters {
                policy_verdicts: vec![("lockdown".into(), Verdict::Deny, 3)],
                ..KernelCounters::default()
            }),
            maps: Some(map_usage(&Default::default())),
            ..Scrape::default()
        };
        let text = render(&scrape, &recorder);
        let types: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        assert!(types.len() >= 12, "{text}");
        for (name, kind) in &types {
            assert!(name.starts_with("contain_"), "{name}");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            assert_eq!(*kind == "counter", name.ends_with("_total"), "{name}");
        }
        assert_eq!(
            sample(
                &text,
                r#"contain_policy_verdicts_total{action="deny",policy="lockdown"}"#
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, r#"contain_reloads_total{result="applied"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "contain_reload_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"contain_bpf_map_max_entries{map="cgroups"}"#),
            Some(f64::from(contain_common::capacity::CGROUPS))
        );
    }

    #[test]
    fn what_could_not_be_read_is_left_out_not_shown_as_zero() {
        let text = render(&Scrape::default(), &Recorder::default());
        assert!(!text.contains("contain_policy_verdicts_total"));
        assert!(!text.contains("contain_events_dropped_total"));
        assert!(!text.contains("contain_bpf_map_entries"));
        assert_eq!(
            sample(&text, r#"contain_connected{peer="loader"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"contain_containers{state="enforced"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn container_modes_map_onto_states_without_claiming_enforcement() {
        assert_eq!(
            ContainerState::from_mode("enforce"),
            ContainerState::Enforced
        );
        assert_eq!(ContainerState::from_mode("audit"), ContainerState::Audited);
        for mode in ["unmapped", "unverified", "unknown", "something new"] {
            assert_eq!(ContainerState::from_mode(mode), ContainerState::Unknown);
        }
        assert_eq!(
            ContainerState::from_mode("unenforced"),
            ContainerState::Unenforced
        );
        assert_eq!(
            ContainerState::from_mode("unrestricted"),
            ContainerState::Unselected
        );
    }

    #[test]
    fn a_gone_containers_series_stay_for_a_while_then_go() {
        let recorder = Recorder::default();
        recorder.verdict(Verdict::Deny, "p", "old", 0);
        recorder.verdict(Verdict::Deny, "p", "", 0);
        let t0 = Instant::now();
        let present: BTreeSet<String> = ["other".to_string()].into();
        recorder.retain_containers(&present, t0);
        recorder.retain_containers(&present, t0 + RETAIN_GONE / 2);
        assert!(render(&Scrape::default(), &recorder).contains(r#"container="old""#));
        recorder.retain_containers(&present, t0 + RETAIN_GONE);
        let text = render(&Scrape::default(), &recorder);
        assert!(!text.contains(r#"container="old""#));
        // Unmapped cgroups are no container that could leave.
        assert!(text.contains(r#"container="""#));
    }

    #[test]
    fn a_container_that_comes_back_keeps_its_series() {
        let recorder = Recorder::default();
        recorder.verdict(Verdict::Deny, "p", "web", 0);
        let t0 = Instant::now();
        recorder.retain_containers(&BTreeSet::new(), t0);
        recorder.retain_containers(&["web".to_string()].into(), t0 + RETAIN_GONE / 2);
        recorder.retain_containers(&BTreeSet::new(), t0 + RETAIN_GONE);
        assert!(render(&Scrape::default(), &recorder).contains(r#"container="web""#));
    }

    #[test]
    fn destinations_and_ports_are_split_as_the_loader_splits_them() {
        use kernel_model::state::{DestPrefix, KernelState, PortPrefix};
        let mut state = KernelState::default();
        let dest = |prefix_len| DestPrefix {
            policy_id: 1,
            class: 0,
            addr: [0; 16],
            prefix_len,
        };
        state.dests.insert(dest(128), 1);
        state.dests.insert(dest(120), 1);
        state.dests.insert(dest(104), 1);
        state.ports.insert(
            PortPrefix {
                ruleset: 1,
                proto: 6,
                port: 443,
                port_bits: 16,
            },
            1,
        );
        let usage = map_usage(&state);
        let get = |map| usage.iter().find(|u| u.map == map).unwrap().entries;
        assert_eq!(get("dest_hosts"), 1);
        assert_eq!(get("dest_prefixes"), 2);
        assert_eq!(get("ports_exact"), 1);
        assert_eq!(get("port_ranges"), 0);
    }
}
