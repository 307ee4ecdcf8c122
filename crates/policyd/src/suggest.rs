//! `policyd suggest`: the policy entries that would have allowed what was
//! denied (or audited) in a time window, per container and executable, as
//! TOML for a person to review, with how often each was seen.
//!
//! The source is policyd's own event log (the JSON lines of
//! [`crate::eventlog`]), from the journal or a file: it outlives restarts
//! of every daemon and spans whatever window the journal keeps, where the
//! loader's buffer holds only the latest 65 536 events of the running
//! loader. A file works for lines exported from Loki too.
//!
//! [`Collector`] is the pure part: lines in, [`Suggestion`] out, rendered
//! by [`render`]; [`run`] feeds it from the journal or a file.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::BufRead,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Stdio},
};

use kernel_model::state::Verdict;

use crate::{
    cli::exit,
    eventlog::{EventRecord, Reason},
};

/// Docker's embedded DNS server: allowed by `allow_docker_dns`, not a rule.
const DOCKER_DNS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 11));
/// Comms shown in a comment per entry.
const COMMS_SHOWN: usize = 4;
/// Destinations whose counts are shown in a comment per entry.
const DESTS_COUNTED: usize = 4;

/// Widening of destinations into prefixes, per family (`None`: each
/// address as seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub v4: Option<u8>,
    pub v6: Option<u8>,
}

/// `policyd suggest`'s arguments.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Request {
    /// Events from this time on: for the journal anything `journalctl
    /// --since` takes ("2 days ago", "-2h", "2026-11-30 08:00"); with --input,
    /// an RFC 3339 time in UTC (2026-11-30T08:00:00Z).
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Events up to this time (same forms as --since).
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Only this container (its name).
    #[arg(long)]
    pub container: Option<String>,
    /// Read policyd's JSON event lines from this file (`-`: stdin)
    /// instead of the journal.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The systemd unit whose journal holds the events.
    #[arg(long, default_value = "contain-policyd.service")]
    pub unit: String,
    /// Widen IPv4 destinations to prefixes of this length (e.g. 24);
    /// by default each address seen is listed.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub aggregate_v4: Option<u8>,
    /// Widen IPv6 destinations to prefixes of this length (e.g. 64).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub aggregate_v6: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("cannot run journalctl: {0}; pass policyd's event lines with --input FILE instead")]
    Journal(String),
    #[error("journalctl failed ({status}): {stderr}; it needs root or membership of the systemd-journal group (or pass the event lines with --input FILE)")]
    JournalFailed { status: String, stderr: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--{flag} {value:?}: with --input, give an RFC 3339 time in UTC such as 2026-11-30T08:00:00Z")]
    BadTime { flag: &'static str, value: String },
}

impl SuggestError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SuggestError::BadTime { .. } => exit::USAGE,
            SuggestError::Read { .. } => exit::NOT_FOUND,
            SuggestError::Journal(_) | SuggestError::JournalFailed { .. } => exit::INTERNAL,
        }
    }
}

/// What a rule has to name: a protocol and its port or ICMP type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Service {
    Tcp(u16),
    Udp(u16),
    Icmp(u8),
    Icmpv6(u8),
    /// Another IP protocol: no rule narrower than `proto = "any"` allows it.
    Other(u8),
}

impl Service {
    fn proto(self) -> &'static str {
        match self {
            Service::Tcp(_) => "tcp",
            Service::Udp(_) => "udp",
            Service::Icmp(_) => "icmp",
            Service::Icmpv6(_) => "icmpv6",
            Service::Other(_) => "any",
        }
    }

    /// The port or type number, when the rule lists one.
    fn number(self) -> Option<u16> {
        match self {
            Service::Tcp(p) | Service::Udp(p) => Some(p),
            Service::Icmp(t) | Service::Icmpv6(t) => Some(t.into()),
            Service::Other(_) => None,
        }
    }
}

/// A destination prefix: an address with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Dest {
    addr: IpAddr,
    len: u8,
}

impl Dest {
    fn new(addr: IpAddr, aggregate: Aggregate) -> Dest {
        // `::ffff:a.b.c.d` is IPv4 to the policy: aggregated as IPv4, never
        // by the IPv6 length (`/96` of it is every IPv4 address).
        let addr = match addr {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match addr {
            IpAddr::V4(a) => {
                let len = aggregate.v4.unwrap_or(32).min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Dest {
                    addr: IpAddr::V4((u32::from(a) & mask).into()),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = aggregate.v6.unwrap_or(128).min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Dest {
                    addr: IpAddr::V6((u128::from(a) & mask).into()),
                    len,
                }
            }
        }
    }

    fn is_host(self) -> bool {
        self.len == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// Which rules of a policy an event falls under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// Every process of the container (and frames, which have no process).
    ContainerWide,
    /// A process entry `exe = PATH`.
    Exe(String),
}

#[derive(Clone, Debug, Default)]
struct Tally {
    events: u64,
    comms: BTreeSet<String>,
}

/// Events per (service, destination) of one scope.
type Flows = BTreeMap<(Service, Dest), Tally>;

#[derive(Clone, Debug, Default)]
struct Seen {
    policies: BTreeSet<String>,
    flows: BTreeMap<Scope, Flows>,
    docker_dns: u64,
    /// Non-IP frames: nothing allows them.
    not_ip: u64,
    /// Frames with a forged source: nothing allows them either.
    forged: u64,
    /// Packets of a cgroup containers under different policies share: no
    /// rule is consulted for them.
    shared_cgroup: u64,
    /// Port 0 (a later fragment, or a connect() to port 0), or a process
    /// whose executable path is relative: no valid rule names them.
    unsuggested: u64,
    events: u64,
}

/// Filters applied to each record.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub container: Option<String>,
    /// Nanoseconds since the epoch; only for records read from a file (the
    /// journal is asked for the window itself).
    pub since_ns: Option<u128>,
    pub until_ns: Option<u128>,
}

/// Reads event lines and keeps what a suggestion needs.
#[derive(Debug, Default)]
pub struct Collector {
    filter: Filter,
    out: Suggestion,
}

impl Collector {
    pub fn new(filter: Filter, aggregate: Aggregate) -> Self {
        let out = Suggestion {
            aggregate,
            ..Suggestion::default()
        };
        Collector { filter, out }
    }

    pub fn add_line(&mut self, line: &str) {
        let line = line.trim();
        // The journal may prefix nothing, Loki exports nothing either; a
        // line that does not start as an object is another log line.
        let Ok(record) = serde_json::from_str::<EventRecord>(line) else {
            self.out.other_lines += 1;
            return;
        };
        self.add(record);
    }

    fn add(&mut self, record: EventRecord) {
        if record.verdict == Verdict::Allow {
            return;
        }
        let out = &mut self.out;
        if self.filter.since_ns.is_some() || self.filter.until_ns.is_some() {
            let Some(t) = parse_rfc3339(&record.timestamp) else {
                out.other_lines += 1;
                return;
            };
            if self.filter.since_ns.is_some_and(|s| t < s)
                || self.filter.until_ns.is_some_and(|u| t > u)
            {
                return;
            }
        }
        if let Some(want) = &self.filter.container {
            if record.container_name.as_deref() != Some(want.as_str()) {
                return;
            }
        }
        // A transport the event log never writes makes it another log line:
        // told before anything of it is counted.
        let target = match (record.destination_address, &record.transport) {
            (Some(dest), Some(transport)) => {
                let service = match (
                    transport.as_str(),
                    record.destination_port,
                    record.icmp_type,
                ) {
                    ("tcp", Some(port), _) => Service::Tcp(port),
                    ("udp", Some(port), _) => Service::Udp(port),
                    ("icmp", _, Some(t)) => Service::Icmp(t),
                    ("icmpv6", _, Some(t)) => Service::Icmpv6(t),
                    (other, _, _) => match other.parse::<u8>() {
                        Ok(n) => Service::Other(n),
                        Err(_) => {
                            out.other_lines += 1;
                            return;
                        }
                    },
                };
                Some((dest, service))
            }
            _ => None,
        };
        out.suppressed += u64::from(record.suppressed);
        let Some(container) = record.container_name.clone() else {
            out.unmapped += 1;
            return;
        };
        // Timestamps of one format compare as strings.
        if out.first.as_ref().is_none_or(|f| record.timestamp < *f) {
            out.first = Some(record.timestamp.clone());
        }
        if out.last.as_ref().is_none_or(|l| record.timestamp > *l) {
            out.last = Some(record.timestamp.clone());
        }
        let seen = out.containers.entry(container).or_default();
        seen.events += 1;
        if let Some(p) = &record.policy {
            seen.policies.insert(p.clone());
        }
        // Nothing allows a non-IP frame or a forged source, and no rule lets
        // a shared cgroup's packets through (the containers must get cgroups
        // of their own first): counted, never suggested.
        let unruled = match record.reason {
            Reason::NotIp => Some(&mut seen.not_ip),
            Reason::ForgedSource => Some(&mut seen.forged),
            Reason::SharedCgroup => Some(&mut seen.shared_cgroup),
            _ => None,
        };
        if let Some(count) = unruled {
            *count += 1;
            return;
        }
        let Some((dest, service)) = target else {
            seen.not_ip += 1;
            return;
        };
        match service {
            Service::Tcp(53) | Service::Udp(53) if dest == DOCKER_DNS => {
                seen.docker_dns += 1;
                return;
            }
            Service::Tcp(0) | Service::Udp(0) => {
                seen.unsuggested += 1;
                return;
            }
            _ => {}
        }
        // Frames and packets no process sent get only the container-wide
        // rules; so does a process whose executable the kernel did not see.
        let scope = match (&record.exe, record.reason) {
            (_, Reason::PacketSocket | Reason::Unattributed) => Scope::ContainerWide,
            (Some(exe), _) if !exe.starts_with('/') => {
                seen.unsuggested += 1;
                return;
            }
            (Some(exe), _) => Scope::Exe(exe.clone()),
            (None, _) => Scope::ContainerWide,
        };
        let tally = seen
            .flows
            .entry(scope)
            .or_default()
            .entry((service, Dest::new(dest, out.aggregate)))
            .or_default();
        tally.events += 1;
        if let Some(comm) = record.comm {
            if tally.comms.len() < COMMS_SHOWN {
                tally.comms.insert(comm);
            }
        }
    }

    pub fn finish(self) -> Suggestion {
        self.out
    }
}

/// What was seen, ready to render.
#[derive(Debug, Default)]
pub struct Suggestion {
    containers: BTreeMap<String, Seen>,
    /// Lines that are not event records (policyd's other log lines).
    pub other_lines: u64,
    /// Events of cgroups no container was mapped to.
    pub unmapped: u64,
    /// Events the rate limit held back: seen by the kernel, never logged.
    pub suppressed: u64,
    first: Option<String>,
    last: Option<String>,
    aggregate: Aggregate,
}

impl Suggestion {
    /// Events that became part of a suggestion.
    pub fn events(&self) -> u64 {
        self.containers.values().map(|s| s.events).sum()
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text safe in a TOML comment: one line, printable.
fn comment_text(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// One allow entry: a protocol, its ports or types, destinations.
struct Entry {
    proto: &'static str,
    numbers: Vec<u16>,
    /// For `proto = "any"`: the protocols seen.
    other_protocols: Vec<u8>,
    dests: Vec<(Dest, u64)>,
    comms: BTreeSet<String>,
}

/// Groups the flows of one scope into entries: one per (protocol, port or
/// type) with every destination seen for it; entries of one protocol
/// with the same destinations are then merged into one listing each port.
fn entries(flows: &Flows) -> Vec<Entry> {
    let mut by_service: BTreeMap<Service, Vec<(Dest, &Tally)>> = BTreeMap::new();
    for ((service, dest), tally) in flows {
        by_service.entry(*service).or_default().push((*dest, tally));
    }
    let mut out: Vec<Entry> = Vec::new();
    for (service, dests) in by_service {
        let comms: BTreeSet<String> = dests
            .iter()
            .flat_map(|(_, t)| t.comms.iter().cloned())
            .take(COMMS_SHOWN)
            .collect();
        let dests: Vec<(Dest, u64)> = dests.iter().map(|(d, t)| (*d, t.events)).collect();
        let same = out.iter_mut().find(|e| {
            e.proto == service.proto()
                && e.dests
                    .iter()
                    .map(|(d, _)| d)
                    .eq(dests.iter().map(|(d, _)| d))
        });
        match same {
            Some(e) => {
                e.numbers.extend(service.number());
                if let Service::Other(p) = service {
                    e.other_protocols.push(p);
                }
                for ((_, n), (_, add)) in e.dests.iter_mut().zip(&dests) {
                    *n += add;
                }
                e.comms.extend(comms);
            }
            None => out.push(Entry {
                proto: service.proto(),
                numbers: service.number().into_iter().collect(),
                other_protocols: match service {
                    Service::Other(p) => vec![p],
                    _ => Vec::new(),
                },
                dests,
                comms,
            }),
        }
    }
    out
}

fn render_entries(out: &mut String, flows: &Flows) {
    out.push_str("allow = [\n");
    for e in entries(flows) {
        let total: u64 = e.dests.iter().map(|(_, n)| n).sum();
        let mut note = plural(total, "event");
        if e.dests.len() > 1 && e.dests.len() <= DESTS_COUNTED {
            let per: Vec<String> = e.dests.iter().map(|(d, n)| format!("{d} {n}")).collect();
            let _ = write!(note, " ({})", per.join(", "));
        }
        if !e.comms.is_empty() {
            let comms: Vec<String> = e.comms.iter().map(|c| comment_text(c)).collect();
            let _ = write!(note, "; comm {}", comms.join(", "));
        }
        if !e.other_protocols.is_empty() {
            let protos: Vec<String> = e.other_protocols.iter().map(u8::to_string).collect();
            let _ = write!(
                note,
                "; IP protocol {}: no rule narrower than proto = \"any\" allows it, which allows every protocol and port: uncomment it only if that is meant",
                protos.join(", ")
            );
        }
        let _ = writeln!(out, "  # {note}");
        // Every protocol and port to those addresses: left for the reader
        // to take, never taken by default.
        let indent = if e.other_protocols.is_empty() {
            "  "
        } else {
            "  # "
        };
        let to: Vec<String> = e
            .dests
            .iter()
            .map(|(d, _)| toml_string(&d.to_string()))
            .collect();
        let _ = write!(
            out,
            "{indent}{{ to = [{}], proto = \"{}\"",
            to.join(", "),
            e.proto
        );
        let numbers: Vec<String> = e.numbers.iter().map(u16::to_string).collect();
        match e.proto {
            "tcp" | "udp" => {
                let _ = write!(out, ", ports = [{}]", numbers.join(", "));
            }
            "icmp" | "icmpv6" => {
                let _ = write!(out, ", icmp_types = [{}]", numbers.join(", "));
            }
            _ => {}
        }
        out.push_str(" },\n");
    }
    out.push_str("]\n");
}

/// The suggestion as a TOML policy file.
pub fn render(s: &Suggestion) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Suggested by `policyd suggest` from {} deny and audit events{}.",
        s.events(),
        match (&s.first, &s.last) {
            (Some(f), Some(l)) => format!(" between {f} and {l}"),
            _ => String::new(),
        }
    );
    out.push_str(
        "# Each entry allows exactly what was seen. Review every one before use: a\n\
         # destination seen once may be an attack rather than a need.\n\
         # Each [[policy]] selects one container by name. Use one in place of a\n\
         # policy that selects only that container (policyd check refuses a policy\n\
         # an earlier one shadows), before broader ones (the first policy that\n\
         # selects a container wins), or merge its entries into the container's policy.\n",
    );
    if s.aggregate.v4.is_some() || s.aggregate.v6.is_some() {
        let _ = writeln!(
            out,
            "# Destinations widened to prefixes: IPv4 /{}, IPv6 /{}.",
            s.aggregate.v4.unwrap_or(32),
            s.aggregate.v6.unwrap_or(128)
        );
    }
    if s.suppressed > 0 {
        let _ = writeln!(
            out,
            "# {} more {} held back by the kernel's per-container rate limit and never\n# logged: what they were is not known; run in audit mode longer to see them.",
            s.suppressed,
            if s.suppressed == 1 { "event was" } else { "events were" }
        );
    }
    if s.unmapped > 0 {
        let _ = writeln!(
            out,
            "# {} came from cgroups no container was mapped to yet: not included.",
            plural(s.unmapped, "event")
        );
    }
    if s.containers.is_empty() {
        out.push_str(
            "# Nothing to suggest: no deny or audit event of a known container was seen.\n",
        );
    }
    for (name, seen) in &s.containers {
        out.push('\n');
        let policies: Vec<String> = seen.policies.iter().map(|p| comment_text(p)).collect();
        let _ = writeln!(
            out,
            "# container {}: {}{}",
            comment_text(name),
            plural(seen.events, "event"),
            if policies.is_empty() {
                String::new()
            } else {
                format!(" under policy {}", policies.join(", "))
            }
        );
        for (count, what) in [
            (seen.not_ip, "of frames that are not IP (from a packet socket): no rule allows those."),
            (seen.forged, "of frames whose source is none of the container's addresses: no rule allows those."),
            (seen.shared_cgroup, "of a cgroup this container shares with one under another policy: no rule lets those through; give each container a cgroup of its own."),
            (seen.unsuggested, "to port 0 or from an executable by a relative path: no rule is suggested for those."),
        ] {
            if count > 0 {
                let _ = writeln!(out, "# {} {what}", plural(count, "event"));
            }
        }
        if seen.flows.is_empty() && seen.docker_dns == 0 {
            let _ = writeln!(out, "# (nothing a rule can allow)");
            continue;
        }
        let name = toml_string(name);
        let _ = writeln!(
            out,
            "[[policy]]\nname = {name}\nselect = {{ name = {name} }}"
        );
        if seen.docker_dns > 0 {
            let _ = writeln!(
                out,
                "# {} to Docker's DNS (127.0.0.11)",
                plural(seen.docker_dns, "event")
            );
            out.push_str("allow_docker_dns = true\n");
        }
        // The container-wide scope sorts first: its entries belong to the
        // [[policy]] table, before any [[policy.process]] one.
        for (scope, flows) in &seen.flows {
            match scope {
                Scope::ContainerWide => {
                    out.push_str("# every process of the container (and its packet sockets)\n")
                }
                Scope::Exe(exe) => {
                    let _ = writeln!(out, "\n[[policy.process]]\nexe = {}", toml_string(exe));
                }
            }
            render_entries(&mut out, flows);
        }
    }
    out
}

/// Nanoseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fraction]Z`; a day
/// the month does not have (`2026-02-31`) is refused, not rolled over.
pub fn parse_rfc3339(s: &str) -> Option<u128> {
    let time = humantime::parse_rfc3339(s).ok()?;
    Some(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos())
}

fn window_bound(flag: &'static str, value: &Option<String>) -> Result<Option<u128>, SuggestError> {
    value
        .as_ref()
        .map(|v| {
            parse_rfc3339(v).ok_or_else(|| SuggestError::BadTime {
                flag,
                value: v.clone(),
            })
        })
        .transpose()
}

/// Feeds each line of `reader` to `collector`.
fn read_lines(
    collector: &mut Collector,
    reader: impl BufRead,
    error: impl Fn(std::io::Error) -> SuggestError,
) -> Result<(), SuggestError> {
    for line in reader.split(b'\n') {
        collector.add_line(&String::from_utf8_lossy(&line.map_err(&error)?));
    }
    Ok(())
}

/// Reads the events `request` names and prints the suggestion.
pub fn run(request: &Request) -> Result<(), SuggestError> {
    // The journal is asked for the window itself.
    let (since_ns, until_ns) = match request.input {
        Some(_) => (
            window_bound("since", &request.since)?,
            window_bound("until", &request.until)?,
        ),
        None => (None, None),
    };
    let filter = Filter {
        container: request.container.clone(),
        since_ns,
        until_ns,
    };
    let aggregate = Aggregate {
        v4: request.aggregate_v4,
        v6: request.aggregate_v6,
    };
    let mut collector = Collector::new(filter, aggregate);
    match &request.input {
        Some(path) => {
            let read_err = |source| SuggestError::Read {
                path: path.display().to_string(),
                source,
            };
            let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(path).map_err(read_err)?,
                ))
            };
            read_lines(&mut collector, reader, read_err)?;
        }
        None => {
            let journal_err = |e: std::io::Error| SuggestError::Journal(e.to_string());
            let mut command = Command::new("journalctl");
            command
                .args(["--no-pager", "-o", "cat", "-u", &request.unit])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(since) = &request.since {
                command.args(["--since", since]);
            }
            if let Some(until) = &request.until {
                command.args(["--until", until]);
            }
            let mut child = command.spawn().map_err(journal_err)?;
            if let Some(stdout) = child.stdout.take() {
                read_lines(&mut collector, std::io::BufReader::new(stdout), journal_err)?;
            }
            let output = child.wait_with_output().map_err(journal_err)?;
            if !output.status.success() {
                return Err(SuggestError::JournalFailed {
                    status: output.status.to_string(),
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                });
            }
        }
    }
    let suggestion = collector.finish();
    print!("{}", render(&suggestion));
    eprintln!(
        "policyd: {} event(s) of {} container(s) read; {} other line(s) skipped",
        suggestion.events(),
        suggestion.containers.len(),
        suggestion.other_lines
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proto::loader::{Event, Hook};

    use super::*;
    use crate::{eventlog::EventRecord, inventory::Container, policy};

    fn event(exe: Option<&str>, dst: IpAddr, proto: u8, port: u16) -> Event {
        let is_icmp = proto == 1 || proto == 58;
        Event {
            seq: 1,
            time_ns: 1_764_489_600_000_000_000,
            verdict: Verdict::Audit,
            hook: Hook::Connect4,
            cgroup_id: 9,
            policy_id: 2,
            rule_id: 0,
            tgid: 77,
            uid: 0,
            comm: exe.map_or("sh", |e| e.rsplit('/').next().unwrap()).into(),
            exe: exe.map(str::to_string),
            proto,
            src: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
            dst,
            src_port: 40000,
            dst_port: if is_icmp { 0 } else { port },
            icmp_type: is_icmp.then_some(port as u8),
            icmp_code: is_icmp.then_some(0),
            suppressed: 0,
            revoked_flow: false,
            socket_cookie: 0,
            link_layer: false,
            unattributed: false,
            forged_source: false,
            ethertype: None,
        }
    }

    fn line(container: &str, e: &Event) -> String {
        let c = Container {
            id: format!("{container}-id"),
            name: container.into(),
            image: "contain-test:latest".into(),
            ..Container::default()
        };
        EventRecord::new(e, Some(&c), Some("observe")).to_line()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn suggest(lines: &[String], filter: Filter, aggregate: Aggregate) -> String {
        let mut c = Collector::new(filter, aggregate);
        for l in lines {
            c.add_line(l);
        }
        render(&c.finish())
    }

    fn valid(text: &str) -> policy::PolicySet {
        match policy::parse("suggested.toml", text) {
            Ok(p) => p,
            Err(e) => panic!("the suggestion is not a valid policy:\n{e}\n---\n{text}"),
        }
    }

    #[test]
    fn what_was_seen_becomes_entries_per_container_and_executable_with_counts() {
        let curl = Some("/usr/bin/curl");
        let lines = vec![
            line("curler", &event(curl, v4(198, 18, 0, 1), 6, 443)),
            line("curler", &event(curl, v4(198, 18, 0, 1), 6, 443)),
            line("curler", &event(curl, v4(198, 18, 0, 1), 6, 80)),
            line("curler", &event(None, v4(198, 18, 0, 2), 17, 123)),
            line("curler", &event(curl, v4(198, 18, 0, 3), 1, 8)),
            line(
                "web",
                &event(Some("/usr/sbin/nginx"), v4(10, 0, 0, 5), 6, 5432),
            ),
            "2026-11-30T08:00:00Z INFO policyd listening".into(),
        ];
        let text = suggest(&lines, Filter::default(), Aggregate::default());
        let policies = valid(&text);
        assert_eq!(policies.policies.len(), 2, "{text}");
        assert!(text.contains(
            "  # 3 events; comm curl\n  { to = [\"198.18.0.1\"], proto = \"tcp\", ports = [80, 443] },"
        ), "{text}");
        assert!(text.contains("{ to = [\"198.18.0.3\"], proto = \"icmp\", icmp_types = [8] }"));
        assert!(text.contains("# every process of the container (and its packet sockets)\nallow = [\n  # 1 event; comm sh\n  { to = [\"198.18.0.2\"], proto = \"udp\", ports = [123] },"), "{text}");
        assert!(text.contains("[[policy.process]]\nexe = \"/usr/bin/curl\""));
        assert!(text.contains("select = { name = \"web\" }"));
        assert!(text.contains("# container curler: 5 events under policy observe"));
    }

    #[test]
    fn one_container_and_a_time_window_can_be_asked_for() {
        let mut late = event(None, v4(198, 18, 0, 9), 6, 22);
        late.time_ns += 3_600_000_000_000;
        let lines = vec![
            line("curler", &event(None, v4(198, 18, 0, 1), 6, 443)),
            line("curler", &late),
            line("web", &event(None, v4(10, 0, 0, 5), 6, 5432)),
        ];
        let filter = Filter {
            container: Some("curler".into()),
            since_ns: None,
            until_ns: parse_rfc3339("2025-11-30T08:30:00Z"),
        };
        let text = suggest(&lines, filter, Aggregate::default());
        valid(&text);
        assert!(text.contains("198.18.0.1"));
        assert!(!text.contains("198.18.0.9"), "{text}");
        assert!(!text.contains("web"));
    }

    #[test]
    fn prefixes_only_when_asked() {
        let lines = vec![
            line("c", &event(None, v4(198, 18, 0, 1), 6, 443)),
            line("c", &event(None, v4(198, 18, 0, 200), 6, 443)),
            line(
                "c",
                &event(
                    None,
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 5)),
                    6,
                    443,
                ),
            ),
        ];
        let exact = suggest(&lines, Filter::default(), Aggregate::default());
        valid(&exact);
        assert!(
            exact.contains("\"198.18.0.1\", \"198.18.0.200\", \"2001:db8:0:1::5\""),
            "{exact}"
        );
        let widened = suggest(
            &lines,
            Filter::default(),
            Aggregate {
                v4: Some(24),
                v6: Some(48),
            },
        );
        valid(&widened);
        assert!(
            widened.contains(
                "{ to = [\"198.18.0.0/24\", \"2001:db8::/48\"], proto = \"tcp\", ports = [443] }"
            ),
            "{widened}"
        );
        assert!(
            widened.contains("# 3 events (198.18.0.0/24 2, 2001:db8::/48 1)"),
            "{widened}"
        );
    }

    #[test]
    fn docker_dns_is_the_policy_switch_and_other_protocols_need_any() {
        let lines = vec![
            line("c", &event(None, DOCKER_DNS, 17, 53)),
            line("c", &event(None, v4(198, 18, 0, 1), 47, 0)),
        ];
        let text = suggest(&lines, Filter::default(), Aggregate::default());
        let policies = valid(&text);
        assert!(policies.policies[0].allow_docker_dns, "{text}");
        // Every protocol and port: offered commented out, never allowed as is.
        assert!(
            text.contains("  # { to = [\"198.18.0.1\"], proto = \"any\" }"),
            "{text}"
        );
        assert!(policies.policies[0].rules.is_empty(), "{text}");
        assert!(text.contains("IP protocol 47"));
    }

    #[test]
    fn what_no_valid_rule_names_is_said_and_a_mapped_address_stays_ipv4() {
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 18, 0, 9).to_ipv6_mapped());
        let lines = vec![
            line("c", &event(None, v4(198, 18, 0, 1), 6, 0)),
            line("c", &event(Some("./x"), v4(198, 18, 0, 2), 6, 443)),
            line("c", &event(None, mapped, 6, 443)),
        ];
        let aggregate = Aggregate {
            v4: Some(24),
            v6: Some(96),
        };
        let text = suggest(&lines, Filter::default(), aggregate);
        valid(&text);
        assert!(
            text.contains("# 2 events to port 0 or from an executable by a relative path"),
            "{text}"
        );
        // /24 as IPv4 asks, not ::ffff:0.0.0.0/96 (every IPv4 address).
        assert!(text.contains("\"198.18.0.0/24\""), "{text}");
        assert!(
            !text.contains("::ffff") && !text.contains("0.0.0.0"),
            "{text}"
        );
    }

    #[test]
    fn a_forged_source_is_said_and_never_allowed() {
        let mut forged = event(None, v4(198, 18, 0, 1), 17, 5353);
        forged.hook = Hook::Veth;
        forged.forged_source = true;
        forged.src = v4(198, 18, 7, 9);
        let lines = vec![
            line("c", &forged),
            line("c", &event(None, v4(198, 18, 0, 2), 6, 443)),
        ];
        let text = suggest(&lines, Filter::default(), Aggregate::default());
        valid(&text);
        assert!(
            text.contains("# 1 event of frames whose source is none of the container's addresses: no rule allows those."),
            "{text}"
        );
        assert!(!text.contains("198.18.0.1"), "{text}");
        assert!(text.contains("198.18.0.2"), "{text}");
    }

    #[test]
    fn a_shared_cgroups_denials_are_said_and_never_allowed() {
        let mut shared = event(None, v4(198, 18, 0, 1), 6, 443);
        shared.policy_id = contain_common::UNKNOWN_POLICY_ID;
        let c = Container {
            name: "c".into(),
            ..Container::default()
        };
        let mut record = EventRecord::new(&shared, Some(&c), None);
        record.judged_as_shared_cgroup();
        let lines = vec![
            record.to_line(),
            line("c", &event(None, v4(198, 18, 0, 2), 6, 443)),
        ];
        let text = suggest(&lines, Filter::default(), Aggregate::default());
        valid(&text);
        assert!(
            text.contains(
                "# 1 event of a cgroup this container shares with one under another policy"
            ),
            "{text}"
        );
        assert!(!text.contains("198.18.0.1"), "{text}");
        assert!(text.contains("198.18.0.2"), "{text}");
    }

    #[test]
    fn hostile_names_and_paths_stay_strings() {
        let exe = "/tmp/x\"\n[[policy]]\nname = \"evil";
        let mut e = event(Some(exe), v4(198, 18, 0, 1), 6, 443);
        e.comm = "a\nb".into();
        let text = suggest(&[line("c", &e)], Filter::default(), Aggregate::default());
        let policies = valid(&text);
        assert_eq!(policies.policies.len(), 1, "{text}");
    }

    #[test]
    fn unmapped_and_rate_limited_events_are_said_not_hidden() {
        let mut e = event(None, v4(198, 18, 0, 1), 6, 443);
        e.suppressed = 40;
        e.policy_id = 0;
        let unmapped = EventRecord::new(&e, None, None).to_line();
        let text = suggest(&[unmapped], Filter::default(), Aggregate::default());
        valid(&text);
        assert!(text.contains("# 40 more events were held back"), "{text}");
        assert!(text.contains("# 1 event came from cgroups no container was mapped to yet"));
        assert!(text.contains("Nothing to suggest"));
    }

    #[test]
    fn a_line_of_a_transport_the_log_never_writes_counts_for_nothing() {
        let mut e = event(None, v4(198, 18, 0, 1), 6, 443);
        e.suppressed = 7;
        let forged = line("c", &e).replace("\"tcp\"", "\"tcpx\"");
        assert!(forged.contains("tcpx"), "{forged}");
        let mut c = Collector::new(Filter::default(), Aggregate::default());
        c.add_line(&forged);
        let out = c.finish();
        assert_eq!(out.other_lines, 1);
        assert!(out.containers.is_empty(), "{:?}", out.containers.keys());
        assert_eq!((out.first, out.last, out.suppressed), (None, None, 0));
    }

    #[test]
    fn rfc3339_times_parse_as_the_event_log_writes_them() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500_000_000)
        );
        assert_eq!(parse_rfc3339("2 days ago"), None);
        assert_eq!(parse_rfc3339("2023-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-02-31T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000_000)
        );
    }
}
