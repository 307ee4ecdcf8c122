//! Deny and audit events as log records for the journal and Loki: one JSON
//! object per line, with OpenTelemetry's semantic-convention names
//! (`destination.address`, `process.executable.path`, `container.name`, …)
//! so that Loki's `| json` turns them into labels (dots become
//! underscores). What is contain's own (the verdict, its reason, the policy)
//! is under `contain.`.
//!
//! policyd writes these lines, not bpf-loader: only policyd knows the
//! container's name and image (from the resolver's inventory) and the
//! policy's name. The same record type reads them back for
//! `policyd suggest`.
//!
//! Everything here comes from a container: comm and exe are the process's
//! own choice. serde_json escapes control characters and quotes, so a
//! record is always exactly one line; lengths are bounded by the kernel
//! (16 bytes of comm, 256 of path) and again here.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use kernel_model::state::Verdict;
use proto::loader::{Event, Hook};
use serde::{Deserialize, Serialize};

use crate::inventory::Container;

/// Longest string field written; the kernel's own limits are lower, this
/// only guards against a future change making a log line unbounded.
const MAX_FIELD: usize = 512;

/// Why the kernel denied (or, in audit mode, would have denied) a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No rule of the container's policy allows it.
    NotAllowed,
    /// The cgroup is under the managed parent but no container is mapped
    /// to it yet: the unknown-container verdict applied.
    UnknownContainer,
    /// An established outbound TCP flow that a policy change revoked.
    Revoked,
    /// A frame from a packet socket (AF_PACKET, AF_XDP) that the
    /// container-wide rules do not allow.
    PacketSocket,
    /// A non-IP frame from a packet socket: never allowed.
    NotIp,
    /// A packet of no socket of the container's (the kernel's, or a host
    /// process's in the container's namespace) the container-wide rules do
    /// not allow.
    Unattributed,
    /// A frame whose source is none of the container's addresses: no rule
    /// allows it.
    ForgedSource,
    /// The container shares its cgroup with one under another policy: the
    /// kernel cannot tell their packets apart and judges them by no rules.
    SharedCgroup,
}

impl Reason {
    pub fn of(event: &Event) -> Reason {
        // Most specific first: a revoked flow and a non-IP frame are that
        // whatever the policy; under no policy, the unknown-container
        // verdict decided, not a rule.
        [
            (event.revoked_flow, Reason::Revoked),
            (event.ethertype.is_some(), Reason::NotIp),
            (event.forged_source, Reason::ForgedSource),
            (
                event.policy_id == contain_common::UNKNOWN_POLICY_ID,
                Reason::UnknownContainer,
            ),
            (event.link_layer, Reason::PacketSocket),
            (event.unattributed, Reason::Unattributed),
        ]
        .into_iter()
        .find_map(|(holds, reason)| holds.then_some(reason))
        .unwrap_or(Reason::NotAllowed)
    }
}

/// One log record. Optional fields are left out when unknown, so a Loki
/// label is never the empty string standing for "unknown".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When the kernel decided, RFC 3339 in UTC with nanoseconds.
    pub timestamp: String,
    /// `warn` for a denial, `info` for an audit (Loki's detected level).
    pub level: String,
    #[serde(rename = "event.name")]
    pub event_name: String,
    #[serde(rename = "contain.verdict")]
    pub verdict: Verdict,
    #[serde(rename = "contain.reason")]
    pub reason: Reason,
    #[serde(rename = "contain.policy", skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(rename = "contain.hook")]
    pub hook: Hook,
    /// The loader's sequence number (`policyd events --after`).
    #[serde(rename = "contain.seq")]
    pub seq: u64,
    #[serde(rename = "contain.cgroup_id")]
    pub cgroup_id: u64,
    /// Events of this cgroup the kernel's rate limit, or policyd's
    /// [`LineBudget`], held back since the previous one written.
    #[serde(rename = "contain.suppressed", default)]
    pub suppressed: u32,
    #[serde(rename = "container.name", skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(rename = "container.id", skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The image reference without its tag or digest.
    #[serde(
        rename = "container.image.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_name: Option<String>,
    #[serde(
        rename = "container.image.tags",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub image_tags: Vec<String>,
    #[serde(rename = "container.runtime", skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    /// 0 for a frame or packet no process sent.
    #[serde(rename = "process.pid")]
    pub pid: u32,
    #[serde(rename = "process.user.id")]
    pub uid: u32,
    /// The kernel's comm: the executable's base name cut to 15 bytes,
    /// unless the process renamed itself (so only a hint).
    #[serde(
        rename = "process.executable.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub comm: Option<String>,
    /// The path the process was exec'd as, when the kernel saw the exec.
    #[serde(
        rename = "process.executable.path",
        skip_serializing_if = "Option::is_none"
    )]
    pub exe: Option<String>,
    /// `ipv4` or `ipv6`; absent for a non-IP frame.
    #[serde(rename = "network.type", skip_serializing_if = "Option::is_none")]
    pub network_type: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol number.
    #[serde(rename = "network.transport", skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    #[serde(rename = "source.address", skip_serializing_if = "Option::is_none")]
    pub source_address: Option<IpAddr>,
    #[serde(rename = "source.port", skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    #[serde(
        rename = "destination.address",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_address: Option<IpAddr>,
    #[serde(rename = "destination.port", skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    #[serde(rename = "contain.icmp.type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(rename = "contain.icmp.code", skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// The ethertype of a non-IP frame.
    #[serde(rename = "contain.ethertype", skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<u16>,
}

/// The event's name: one per verdict, so a LogQL stream selector on it
/// needs no JSON parsing.
pub fn event_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Deny => "contain.egress.deny",
        Verdict::Audit => "contain.egress.audit",
        Verdict::Allow => "contain.egress.allow",
    }
}

fn bounded(s: &str) -> String {
    s[..s.floor_char_boundary(MAX_FIELD)].to_string()
}

/// `nginx` and `1.27` from `nginx:1.27`; a registry's port
/// (`registry:5000/app`) is not a tag; a digest is dropped.
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    match without_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (without_digest, None),
    }
}

/// OpenTelemetry's `network.transport` for an IP protocol number: the
/// name contain's policies use, or the number.
pub fn transport_name(proto: u8) -> String {
    use contain_common::ip_proto as p;
    match proto {
        p::TCP => "tcp".into(),
        p::UDP => "udp".into(),
        p::ICMP => "icmp".into(),
        p::ICMPV6 => "icmpv6".into(),
        other => other.to_string(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` from nanoseconds since the epoch (a
/// `u64` of them ends in 2554, well within the format).
pub fn rfc3339_nanos(time_ns: u64) -> String {
    humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + Duration::from_nanos(time_ns))
        .to_string()
}

impl EventRecord {
    /// The record of `event`, attributed to `container` (when its cgroup
    /// is mapped) and the policy named `policy`.
    pub fn new(event: &Event, container: Option<&Container>, policy: Option<&str>) -> Self {
        let non_ip = event.ethertype.is_some();
        let has_ports = matches!(
            event.proto,
            contain_common::ip_proto::TCP | contain_common::ip_proto::UDP
        );
        let image = container
            .filter(|c| !c.image.is_empty())
            .map(|c| split_image(&c.image));
        EventRecord {
            timestamp: rfc3339_nanos(event.time_ns),
            level: match event.verdict {
                Verdict::Deny => "warn",
                _ => "info",
            }
            .into(),
            event_name: event_name(event.verdict).into(),
            verdict: event.verdict,
            reason: Reason::of(event),
            policy: policy.map(bounded),
            hook: event.hook,
            seq: event.seq,
            cgroup_id: event.cgroup_id,
            suppressed: event.suppressed,
            container_name: container.map(|c| bounded(&c.name)),
            container_id: container.map(|c| bounded(&c.id)),
            image_name: image.map(|(name, _)| bounded(name)),
            image_tags: image
                .and_then(|(_, tag)| tag)
                .map(bounded)
                .into_iter()
                .collect(),
            container_runtime: container
                .filter(|c| !c.runtime.is_empty())
                .map(|c| bounded(&c.runtime)),
            pid: event.tgid,
            uid: event.uid,
            comm: (!event.comm.is_empty()).then(|| bounded(&event.comm)),
            exe: event.exe.as_deref().map(bounded),
            network_type: (!non_ip)
                .then(|| if event.dst.is_ipv4() { "ipv4" } else { "ipv6" }.to_string()),
            transport: (!non_ip).then(|| transport_name(event.proto)),
            // A connect() is judged before the socket has a source: then
            // there is none to report, rather than 0.0.0.0:0.
            source_address: (!non_ip && !event.src.is_unspecified()).then_some(event.src),
            source_port: (has_ports && event.src_port != 0).then_some(event.src_port),
            destination_address: (!non_ip).then_some(event.dst),
            destination_port: has_ports.then_some(event.dst_port),
            icmp_type: event.icmp_type,
            icmp_code: event.icmp_type.and(event.icmp_code),
            ethertype: event.ethertype,
        }
    }

    /// Says the record's cgroup is judged by no rules because containers
    /// under different policies share it (the kernel reports policy 0, as
    /// for an unknown container).
    pub fn judged_as_shared_cgroup(&mut self) {
        if self.reason == Reason::UnknownContainer {
            self.reason = Reason::SharedCgroup;
        }
    }

    /// The record as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        // A struct of strings, numbers and addresses always serialises.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event.name\":\"contain.egress\",\"error\":\"cannot serialise: {e}\"}}")
        })
    }
}

/// How many lines of the event log each cgroup may take in a second,
/// across all CPUs. The kernel's rate limit is per CPU, so without this a
/// container flooding denials from every CPU of a large host would write
/// that many times more; the lines held back are counted in the cgroup's
/// next line (`contain.suppressed`), and every event is in the metrics.
/// As in the kernel, frames on a container's veth that none of its sockets
/// sent (which a neighbour can send) have a budget of their own, and a
/// revoked flow is always written.
pub struct LineBudget {
    per_second: u32,
    /// By cgroup id and whether the events are unattributed.
    windows: HashMap<(u64, bool), LineWindow>,
}

struct LineWindow {
    start: Instant,
    written: u32,
    held_back: u32,
}

/// Windows kept before the ones that ended are dropped (with what they
/// held back: it is in the metrics, and the kernel's own count of a
/// cgroup that floods on is in its next line).
const LINE_WINDOWS_KEPT: usize = 4096;

impl LineBudget {
    pub fn new(per_second: u32) -> Self {
        LineBudget {
            per_second,
            windows: HashMap::new(),
        }
    }

    /// Whether `event`'s `record` is written at `now`; if it is, its
    /// `suppressed` takes the lines held back since the last one written.
    pub fn admit(&mut self, event: &Event, record: &mut EventRecord, now: Instant) -> bool {
        if self.windows.len() >= LINE_WINDOWS_KEPT {
            self.windows
                .retain(|_, w| now.duration_since(w.start) < Duration::from_secs(1));
        }
        let window = self
            .windows
            .entry((event.cgroup_id, event.unattributed))
            .or_insert(LineWindow {
                start: now,
                written: 0,
                held_back: 0,
            });
        if now.duration_since(window.start) >= Duration::from_secs(1) {
            window.start = now;
            window.written = 0;
        }
        if window.written >= self.per_second && !event.revoked_flow {
            window.held_back = window
                .held_back
                .saturating_add(1)
                .saturating_add(record.suppressed);
            return false;
        }
        window.written = window.written.saturating_add(1);
        record.suppressed = record
            .suppressed
            .saturating_add(std::mem::take(&mut window.held_back));
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn event() -> Event {
        Event {
            seq: 7,
            time_ns: 1_700_000_000_123_456_789,
            verdict: Verdict::Deny,
            hook: Hook::Connect4,
            cgroup_id: 4242,
            policy_id: 3,
            rule_id: 0,
            tgid: 1234,
            uid: 0,
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            proto: contain_common::ip_proto::TCP,
            src: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            src_port: 40000,
            dst_port: 443,
            icmp_type: None,
            icmp_code: None,
            suppressed: 0,
            revoked_flow: false,
            socket_cookie: 0,
            link_layer: false,
            unattributed: false,
            forged_source: false,
            ethertype: None,
        }
    }

    fn container() -> Container {
        Container {
            id: "0123456789abcdef".into(),
            name: "curler".into(),
            image: "registry.example:5000/tools/curl:8.5".into(),
            runtime: "docker".into(),
            ..Container::default()
        }
    }

    #[test]
    fn a_denial_has_the_opentelemetry_names_loki_turns_into_labels() {
        let line = EventRecord::new(&event(), Some(&container()), Some("curler")).to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(u64::MAX), "2554-07-21T23:34:33.709551615Z");
        assert_eq!(v["event.name"], "contain.egress.deny");
        assert_eq!(v["contain.verdict"], "deny");
        assert_eq!(v["contain.reason"], "not_allowed");
        assert_eq!(v["contain.policy"], "curler");
        assert_eq!(v["container.name"], "curler");
        assert_eq!(v["container.id"], "0123456789abcdef");
        assert_eq!(
            v["container.image.name"],
            "registry.example:5000/tools/curl"
        );
        assert_eq!(v["container.image.tags"], serde_json::json!(["8.5"]));
        assert_eq!(v["process.pid"], 1234);
        assert_eq!(v["process.executable.name"], "curl");
        assert_eq!(v["process.executable.path"], "/usr/bin/curl");
        assert_eq!(v["network.transport"], "tcp");
        assert_eq!(v["network.type"], "ipv4");
        assert_eq!(v["destination.address"], "198.18.0.1");
        assert_eq!(v["destination.port"], 443);
        assert!(v.get("contain.icmp.type").is_none());
        assert_eq!(v["source.address"], "172.17.0.2");
    }

    #[test]
    fn a_connect_judged_before_it_has_a_source_reports_none() {
        let mut e = event();
        e.src = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        e.src_port = 0;
        let v: serde_json::Value =
            serde_json::from_str(&EventRecord::new(&e, None, None).to_line()).unwrap();
        assert!(v.get("source.address").is_none() && v.get("source.port").is_none());
    }

    #[test]
    fn icmp_has_a_type_and_no_port_and_an_unmapped_cgroup_no_container() {
        let mut e = event();
        e.proto = contain_common::ip_proto::ICMPV6;
        e.dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        e.icmp_type = Some(128);
        e.icmp_code = Some(0);
        e.policy_id = contain_common::UNKNOWN_POLICY_ID;
        let v: serde_json::Value =
            serde_json::from_str(&EventRecord::new(&e, None, None).to_line()).unwrap();
        assert_eq!(v["network.transport"], "icmpv6");
        assert_eq!(v["network.type"], "ipv6");
        assert_eq!(v["contain.icmp.type"], 128);
        assert_eq!(v["contain.reason"], "unknown_container");
        assert!(v.get("destination.port").is_none());
        assert!(v.get("container.name").is_none());
        assert!(v.get("contain.policy").is_none());
    }

    #[test]
    fn reasons_name_what_happened() {
        let mut e = event();
        e.revoked_flow = true;
        assert_eq!(Reason::of(&e), Reason::Revoked);
        let mut e = event();
        e.link_layer = true;
        assert_eq!(Reason::of(&e), Reason::PacketSocket);
        e.ethertype = Some(0x88b5);
        assert_eq!(Reason::of(&e), Reason::NotIp);
        let mut e = event();
        e.unattributed = true;
        assert_eq!(Reason::of(&e), Reason::Unattributed);
        let mut e = event();
        e.link_layer = true;
        e.policy_id = contain_common::UNKNOWN_POLICY_ID;
        assert_eq!(Reason::of(&e), Reason::UnknownContainer);
        let mut shared = EventRecord::new(&e, Some(&container()), None);
        shared.judged_as_shared_cgroup();
        assert_eq!(shared.reason, Reason::SharedCgroup);
        assert!(shared
            .to_line()
            .contains(r#""contain.reason":"shared_cgroup""#));
        e.forged_source = true;
        assert_eq!(Reason::of(&e), Reason::ForgedSource);
        let mut forged = EventRecord::new(&e, Some(&container()), None);
        forged.judged_as_shared_cgroup();
        assert_eq!(
            forged.reason,
            Reason::ForgedSource,
            "the more specific reason stays"
        );
    }

    #[test]
    fn images_split_into_name_and_tag() {
        assert_eq!(split_image("nginx"), ("nginx", None));
        assert_eq!(split_image("nginx:1.27"), ("nginx", Some("1.27")));
        assert_eq!(
            split_image("localhost:5000/app"),
            ("localhost:5000/app", None)
        );
        assert_eq!(split_image("app@sha256:abcd"), ("app", None));
    }

    #[test]
    fn a_cgroups_lines_past_its_budget_are_counted_in_its_next_line() {
        let mut budget = LineBudget::new(3);
        let start = Instant::now();
        let mut admit = |cgroup_id, suppressed, set: fn(&mut Event), at| {
            let mut e = event();
            e.cgroup_id = cgroup_id;
            set(&mut e);
            let mut r = EventRecord::new(&e, None, None);
            r.suppressed = suppressed;
            let written = budget.admit(&e, &mut r, at);
            (written, r.suppressed)
        };
        let own: fn(&mut Event) = |_| {};
        let unattributed: fn(&mut Event) = |e| e.unattributed = true;
        let revoked: fn(&mut Event) = |e| e.revoked_flow = true;
        // Five events of cgroup 7 in one second, the kernel having held back
        // 10 before the fifth: three written, two held back (with the 10).
        let written: Vec<bool> = [0, 0, 0, 0, 10]
            .map(|suppressed| admit(7, suppressed, own, start).0)
            .to_vec();
        assert_eq!(written, [true, true, true, false, false]);
        // Another cgroup, and the unattributed frames on cgroup 7's veth,
        // have budgets of their own.
        assert!(admit(8, 0, own, start).0);
        assert!(admit(7, 0, unattributed, start).0);
        // The next second: the first line carries the 12 held back.
        let second = start + Duration::from_secs(1);
        assert_eq!(admit(7, 1, own, second), (true, 1 + 2 + 10));
        assert_eq!(admit(7, 0, own, second), (true, 0));
        // A revoked flow is written past the budget, and carries what was
        // held back before it.
        assert_eq!(admit(7, 0, own, second), (true, 0));
        assert_eq!(admit(7, 0, own, second), (false, 0));
        assert_eq!(admit(7, 0, revoked, second), (true, 1));
    }

    #[test]
    fn records_read_back_as_written() {
        let record = EventRecord::new(&event(), Some(&container()), Some("curler"));
        let back: EventRecord = serde_json::from_str(&record.to_line()).unwrap();
        assert_eq!(back, record);
    }

    proptest! {
        #[test]
        fn whatever_a_container_calls_its_process_a_record_is_one_line(
            comm in ".{0,40}",
            exe in proptest::option::of(".{0,600}"),
        ) {
            let mut e = event();
            e.comm = comm;
            e.exe = exe;
            let line = EventRecord::new(&e, Some(&container()), Some("p")).to_line();
            prop_assert!(!line.contains('\n') && !line.contains('\r'));
            let back: EventRecord = serde_json::from_str(&line).unwrap();
            prop_assert!(back.exe.map_or(0, |x| x.len()) <= MAX_FIELD);
        }
    }
}
