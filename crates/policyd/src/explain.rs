//! `explain`: which rule decides a flow, and why.
//!
//! The verdict comes from replaying the kernel's lookups on the compiled
//! state (so explain shows what the kernel will do, folding included); the
//! rule is then found in the policy text. [`policy_allows`] is an
//! independent reading of the policy, used by tests to check the compiler
//! against the semantics.

use std::net::IpAddr;

use std::collections::BTreeMap;

use contain_common::ip_proto;
use kernel_model::{
    decide::{lookup, Creator, Target},
    state::{FileId, KernelState, PortPrefix, ProcessMatch, Verdict},
};
use proto::policyd::{ExplainQuery, Explanation, RuleRef};

use crate::{
    compile::{exe_file, CompiledRules},
    ids::{DOCKER_DNS_RULE_ID, LOOPBACK_RULE_ID},
    inventory::{Inventory, Resolution},
    net::{addr_key, PortBlock, Prefix},
    policy::{
        proto_name, toml_format::icmp_type_named, AllowRule, Allowance, ContainerPolicy, PolicySet,
    },
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadQuery(String),
}

/// Who sends: the executable (its path, and the file it names in the
/// container when known) and the comm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    pub exe: Option<String>,
    /// What the kernel recognises the executable by.
    pub file: Option<FileId>,
    pub comm: Option<String>,
}

/// What a `PORTS` key allows.
pub fn port_allowance(key: &PortPrefix) -> Allowance {
    Allowance {
        proto: key.proto,
        block: PortBlock {
            port: key.port,
            bits: key.port_bits,
        },
    }
}

/// A file identity for people: `dev MAJOR:MINOR ino N`.
pub fn describe_file(f: &FileId) -> String {
    format!("dev {}:{} ino {}", f.dev >> 20, f.dev & 0xf_ffff, f.ino)
}

impl Sender {
    /// `/usr/bin/curl` is an executable (whose comm is `curl`); anything
    /// else is a comm.
    pub fn parse(text: Option<&str>) -> Sender {
        match text {
            None => Sender::default(),
            Some(t) if t.starts_with('/') => {
                let base = t.rsplit('/').next().unwrap_or(t);
                // The kernel keeps the name's first 15 bytes, as bytes: a
                // non-ASCII name stays what it is (each byte taken as a char
                // of its own made another comm).
                let cut = &base.as_bytes()[..base.len().min(contain_common::COMM_LEN - 1)];
                let comm = String::from_utf8_lossy(cut).into_owned();
                Sender {
                    exe: Some(t.to_string()),
                    file: None,
                    comm: Some(comm),
                }
            }
            Some(t) => Sender {
                comm: Some(t.to_string()),
                ..Sender::default()
            },
        }
    }

    /// What the kernel stamps on the sockets it creates.
    pub fn creator(&self) -> Creator {
        Creator {
            file: self.file,
            comm: self.comm.as_ref().map(|c| c.as_bytes().to_vec()),
        }
    }

    /// The same sender running the file its path names in a container
    /// whose resolutions are `exes` (unchanged when it names none there).
    pub fn in_container(mut self, exes: &BTreeMap<String, Resolution>) -> Sender {
        if let Some(Some(Ok(resolved))) = self.exe.as_ref().map(|e| exes.get(e)) {
            self.file = Some(resolved.file);
        }
        self
    }
}

/// The process entry (index) the kernel would pick in a container whose
/// resolutions are `exes`: the first whose exe paths name the sender's file
/// there (with the content its pin wants), else the one with its comm.
pub fn process_entry(
    policy: &ContainerPolicy,
    exes: &BTreeMap<String, Resolution>,
    sender: &Sender,
) -> Option<usize> {
    let by_file = sender.file.and_then(|file| {
        policy.processes.iter().position(|p| {
            p.exe_paths()
                .any(|path| exe_file(p, path, exes) == Ok(file))
        })
    });
    by_file.or_else(|| {
        let comm = ProcessMatch::Comm(contain_common::comm_hash(sender.comm.as_ref()?.as_bytes()));
        policy
            .processes
            .iter()
            .position(|p| p.idents.iter().any(|i| i.comm_match() == Some(comm)))
    })
}

fn allowance_matches(a: &Allowance, proto: u8, port: u16) -> bool {
    a.proto == ip_proto::ANY || (a.proto == proto && a.block.contains_value(port))
}

/// A rule destination matches an address of the same family only: IPv6
/// prefixes never match IPv4 (see `compile`).
fn dest_matches(d: &Prefix, addr: u128) -> bool {
    d.contains_addr(addr) && d.family() == Prefix::new(addr, 128).family()
}

/// The policy's answer, read directly from the rules (no folding, no
/// tries): the reference the compiler is tested against.
pub fn policy_allows(
    policy: &ContainerPolicy,
    exes: &BTreeMap<String, Resolution>,
    sender: &Sender,
    dest: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let addr = addr_key(dest);
    if Prefix::docker_dns().contains_addr(addr) {
        // Not part of the loopback allowance: only allow_docker_dns or an
        // explicit rule allows it.
        if policy.allow_docker_dns && matches!(proto, ip_proto::TCP | ip_proto::UDP) {
            return true;
        }
    } else if policy.allow_loopback
        && (Prefix::v4_loopback().contains_addr(addr) || Prefix::v6_loopback().contains_addr(addr))
    {
        return true;
    }
    let process_rules = process_entry(policy, exes, sender)
        .map(|i| policy.processes[i].rules.as_slice())
        .unwrap_or(&[]);
    policy.rules.iter().chain(process_rules).any(|rule| {
        rule.dests.iter().any(|d| {
            dest_matches(d, addr)
                && rule
                    .allowances
                    .iter()
                    .any(|a| a.applies_to(d.family()) && allowance_matches(a, proto, port))
        })
    })
}

/// Finds the rule the kernel's rule id stands for at this destination: the
/// one with that id whose destination is the most specific match.
fn find_rule(
    policy: &ContainerPolicy,
    compiled: &CompiledRules,
    policy_index: usize,
    process: Option<usize>,
    rule_id: u32,
    addr: u128,
) -> Option<RuleRef> {
    let implicit = match rule_id {
        LOOPBACK_RULE_ID => Some("implicit loopback allowance: 127.0.0.0/8 (except Docker's DNS at 127.0.0.11) and ::1 never leave the container's network namespace (allow_loopback)"),
        DOCKER_DNS_RULE_ID => Some("Docker's embedded DNS at 127.0.0.11, TCP and UDP (allow_docker_dns)"),
        _ => None,
    };
    if let Some(description) = implicit {
        return Some(RuleRef {
            rule_id,
            description: description.into(),
            location: None,
        });
    }
    let ids = compiled.rule_ids.get(policy_index)?;
    let mut scopes: Vec<(Option<usize>, &[AllowRule], &[u32])> =
        vec![(None, &policy.rules, &ids[0])];
    if let Some(pi) = process {
        scopes.push((Some(pi), &policy.processes[pi].rules, &ids[pi + 1]));
    }
    let mut best: Option<(Option<usize>, &AllowRule, Prefix)> = None;
    for (scope, rules, rule_ids) in scopes {
        for (rule, &id) in rules.iter().zip(rule_ids) {
            if id != rule_id {
                continue;
            }
            for d in rule.dests.iter().filter(|d| dest_matches(d, addr)) {
                if best.as_ref().is_none_or(|(.., b)| d.len > b.len) {
                    best = Some((scope, rule, *d));
                }
            }
        }
    }
    let (scope, rule, dest) = best?;
    let scope_text = match scope {
        None => String::new(),
        Some(pi) => format!(", process {}", policy.processes[pi].describe()),
    };
    Some(RuleRef {
        rule_id,
        description: format!(
            "policy \"{}\"{scope_text}, allow[{}]: {} to {dest}",
            policy.name,
            rule.index,
            rule.describe_allowances()
        ),
        location: rule.location.as_ref().map(ToString::to_string),
    })
}

/// Parses the query's protocol and port into kernel terms.
fn flow(query: &ExplainQuery) -> Result<Option<(u8, u16)>, ExplainError> {
    let proto = match (&query.proto, &query.port) {
        (None, None) => return Ok(None),
        (None, Some(_)) => ip_proto::TCP,
        (Some(p), _) => match p.to_ascii_lowercase().as_str() {
            "tcp" => ip_proto::TCP,
            "udp" => ip_proto::UDP,
            "icmp" => ip_proto::ICMP,
            "icmpv6" | "icmp6" | "ipv6-icmp" => ip_proto::ICMPV6,
            other => other.parse::<u8>().map_err(|_| {
                ExplainError::BadQuery(format!(
                    "unknown protocol \"{other}\"; expected tcp, udp, icmp, icmpv6 or a protocol number"
                ))
            })?,
        },
    };
    let port = match proto {
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            // Without a type, ask about the echo request: what ping sends.
            let default = if proto == ip_proto::ICMP { "8" } else { "128" };
            let text = query.port.as_deref().unwrap_or(default).trim();
            let (ty, code) = text.split_once('/').unwrap_or((text, "0"));
            let ty = ty
                .parse::<u8>()
                .ok()
                .or_else(|| icmp_type_named(proto, ty))
                .ok_or_else(|| {
                    ExplainError::BadQuery(format!(
                        "\"{ty}\" is not an ICMP type (0-255 or a name)"
                    ))
                })?;
            let code = code.parse::<u8>().map_err(|_| {
                ExplainError::BadQuery(format!("\"{code}\" is not an ICMP code (0-255)"))
            })?;
            u16::from(ty) << 8 | u16::from(code)
        }
        ip_proto::TCP | ip_proto::UDP => {
            let text = query.port.as_deref().ok_or_else(|| {
                ExplainError::BadQuery(format!("{} needs --port", proto_name(proto)))
            })?;
            text.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    ExplainError::BadQuery(format!("\"{text}\" is not a port (1-65535)"))
                })?
        }
        _ => 0,
    };
    Ok(Some((proto, port)))
}

fn describe_flow(proto: u8, port: u16) -> String {
    match proto {
        ip_proto::ICMP | ip_proto::ICMPV6 => format!(
            "{} type {} code {}",
            proto_name(proto),
            port >> 8,
            port & 0xff
        ),
        ip_proto::TCP | ip_proto::UDP => format!("{}/{port}", proto_name(proto)),
        other => proto_name(other),
    }
}

/// Explains a query against the state the compiler produced.
pub fn explain(
    policies: &PolicySet,
    compiled: &CompiledRules,
    state: &KernelState,
    inventory: &Inventory,
    query: &ExplainQuery,
) -> Result<Explanation, ExplainError> {
    let container = inventory
        .find(&query.container)
        .map_err(ExplainError::NotFound)?;
    let sender = Sender::parse(query.process.as_deref()).in_container(&container.exes);
    let flow = flow(query)?;
    let (proto, port) = flow.unwrap_or((ip_proto::ANY, 0));
    let target = Target {
        dest: query.dest,
        proto,
        port,
        later_fragment: false,
    };
    let trace = container
        .cgroup_id
        .map(|id| lookup(state, id, Some(&sender.creator()), &target));
    let cgroup = trace.as_ref().and_then(|t| t.governance.cgroup);
    let who = match (&sender.exe, &sender.file, &sender.comm) {
        (Some(e), Some(f), _) => format!("exe {e} ({})", describe_file(f)),
        (Some(e), None, comm) => {
            let why = match container.exes.get(e) {
                Some(Err(why)) => why.clone(),
                _ => format!("not resolved in container \"{}\"", container.name),
            };
            format!(
                "exe {e} ({why}: recognised by its comm {} only)",
                comm.as_deref().unwrap_or("-")
            )
        }
        (None, _, Some(c)) => format!("comm {c}"),
        (None, _, None) => "any process".to_string(),
    };
    let mut out = Explanation {
        container: container.name.clone(),
        container_id: container.id.clone(),
        cgroup_id: container.cgroup_id,
        policy: None,
        policy_id: cgroup.map(|c| c.policy_id).unwrap_or(0),
        mode: String::new(),
        process_class: trace.as_ref().map_or(0, |t| t.class),
        process: who.clone(),
        dest: query.dest,
        proto: flow.map(|f| f.0),
        port: flow.map(|f| f.1),
        verdict: None,
        matched_prefix: None,
        ruleset: None,
        rule: None,
        allowed_here: Vec::new(),
        reason: String::new(),
    };
    let flow_text = flow
        .map(|(p, port)| describe_flow(p, port))
        .unwrap_or_else(|| "traffic".into());

    let (Some(trace), Some(cgroup)) = (trace, cgroup) else {
        out.mode = "unmapped".into();
        out.verdict = Some(state.unknown_verdict);
        out.reason = format!(
            "container \"{}\" has no cgroup entry yet (not mapped by the resolver), so the unknown_container verdict applies: {}",
            container.name, state.unknown_verdict
        );
        return Ok(out);
    };
    if cgroup.unrestricted {
        out.mode = "unrestricted".into();
        out.verdict = Some(Verdict::Allow);
        out.reason = format!(
            "no policy selects container \"{}\"; contain leaves it alone",
            container.name
        );
        return Ok(out);
    }
    out.verdict = flow.map(|_| trace.verdict);
    if cgroup.is_ruleless() {
        out.mode = "unenforced".into();
        out.reason = format!(
            "container \"{}\" shares its cgroup with a container under another policy: the kernel cannot tell their packets apart and judges them by no rules, so {flow_text} is {}",
            container.name,
            if cgroup.audit { "audited" } else { "denied" }
        );
        return Ok(out);
    }
    let Some(policy_index) = compiled
        .catalog
        .policies
        .get(&cgroup.policy_id)
        .map(|p| p.index)
    else {
        out.mode = if cgroup.audit { "audit" } else { "enforce" }.into();
        out.reason = format!("the kernel has policy id {} for this container, which the loaded policy does not define (a reload is pending?)", cgroup.policy_id);
        return Ok(out);
    };
    let policy = &policies.policies[policy_index];
    out.policy = Some(policy.name.clone());
    out.mode = policy.mode.to_string();
    let process_index = compiled
        .catalog
        .classes
        .get(&(cgroup.policy_id, trace.class))
        .copied();
    out.process = match process_index {
        Some(pi) => format!(
            "{who}: process entry {} (class {})",
            policy.processes[pi].describe(),
            trace.class
        ),
        None => format!("{who}: no process entry, container-wide rules (class 0)"),
    };

    if let Some((dest_key, ruleset)) = trace.dest {
        out.matched_prefix = Some(Prefix::from_key(dest_key.addr, dest_key.prefix_len).to_string());
        out.ruleset = Some(ruleset);
        let first = PortPrefix {
            ruleset,
            proto: 0,
            port: 0,
            port_bits: 0,
        };
        out.allowed_here = state
            .ports
            .range(first..)
            .take_while(|(k, _)| k.ruleset == ruleset)
            .map(|(k, _)| port_allowance(k).to_string())
            .collect();
    }
    if let Some((_, rule_id)) = trace.port {
        let addr = addr_key(query.dest);
        out.rule = find_rule(policy, compiled, policy_index, process_index, rule_id, addr);
    }

    let dest = query.dest;
    let denied_word = if cgroup.audit {
        "would be denied (audit mode: reported, not blocked)"
    } else {
        "denied"
    };
    out.reason = match (flow, &out.rule, &trace.dest) {
        (None, _, None) => format!("no rule of policy \"{}\" allows anything to {dest} for this process", policy.name),
        (None, _, Some(_)) => format!("allowed to {dest}: {}", out.allowed_here.join(", ")),
        (Some(_), Some(rule), _) => format!("{flow_text} to {dest} is allowed by {}", rule.description),
        (Some(_), None, None) => format!(
            "{flow_text} to {dest} is {denied_word}: no rule of policy \"{}\" covers {dest} for this process",
            policy.name
        ),
        (Some(_), None, Some(_)) => format!(
            "{flow_text} to {dest} is {denied_word}: rules cover {dest} via {} but allow only {}",
            out.matched_prefix.as_deref().unwrap_or("?"),
            if out.allowed_here.is_empty() { "nothing".to_string() } else { out.allowed_here.join(", ") }
        ),
    };
    if proto == ip_proto::UDP && out.verdict != Some(Verdict::Allow) {
        // The egress program's one exception to the rules.
        out.reason.push_str(
            "; only a reply passes: a datagram back to an address and port that sent this socket one first, within the UDP reply timeout",
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    fn target(dest: std::net::IpAddr, proto: u8, port: u16) -> kernel_model::decide::Target {
        kernel_model::decide::Target {
            dest,
            proto,
            port,
            later_fragment: false,
        }
    }

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_executables_comm_is_its_names_first_15_bytes() {
        let comm = |path: &str| Sender::parse(Some(path)).comm.unwrap();
        assert_eq!(comm("/usr/bin/curl"), "curl");
        assert_eq!(comm("/opt/a-very-long-name-indeed"), "a-very-long-nam");
        // Non-ASCII bytes kept as they are: "żółw" is 7 bytes, not 7 chars.
        assert_eq!(comm("/usr/bin/żółw"), "żółw");
        assert_eq!(comm("/usr/bin/żółw").len(), 7);
    }
    use crate::{
        compile::compile,
        ids::IdTables,
        inventory::Container,
        net::PortBlock,
        policy::{normalize_allowances, Format, Mode, ProcessIdent, ProcessPolicy, Selector},
    };

    /// The image's curl in the container.
    const CURL: FileId = FileId {
        dev: 52,
        ino: 1001,
        ctime_sec: 1_700_000_000,
        ctime_nsec: 5,
    };
    /// Another file: a copy, a replacement, a chroot's own curl.
    const OTHER: FileId = FileId {
        dev: 52,
        ino: 2002,
        ctime_sec: 1_700_000_000,
        ctime_nsec: 5,
    };

    fn exes() -> BTreeMap<String, Resolution> {
        BTreeMap::from([
            (
                "/usr/bin/curl".to_string(),
                Ok(proto::resolver::ExeFile {
                    file: CURL,
                    ..Default::default()
                }),
            ),
            (
                "/usr/bin/wget".to_string(),
                Err("/usr/bin/wget: no such file in container c0ffee00".to_string()),
            ),
        ])
    }

    fn inventory() -> Inventory {
        Inventory {
            containers: vec![Container {
                id: "c0ffee00".into(),
                name: "curler".into(),
                image: "alpine:3".into(),
                namespace: "moby".into(),
                cgroup_id: Some(7),
                exes: exes(),
                ..Container::default()
            }],
        }
    }

    fn query(
        dest: &str,
        proto: Option<&str>,
        port: Option<&str>,
        process: Option<&str>,
    ) -> ExplainQuery {
        ExplainQuery {
            container: "curler".into(),
            dest: dest.parse().unwrap(),
            proto: proto.map(Into::into),
            port: port.map(Into::into),
            process: process.map(Into::into),
        }
    }

    const CURLER: &str = r#"[[policy]]
name = "curler"
select = { name = "curler" }
allow = [{ to = "9.9.9.9", proto = "udp", ports = [53] }]
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = ["1.1.1.0/24"], proto = "tcp", ports = [80, 443] },
         { to = ["1.1.1.0/24"], proto = "icmp" }]
"#;

    fn run(q: ExplainQuery) -> Explanation {
        let p = crate::policy::parse("p.toml", CURLER).unwrap();
        let inv = inventory();
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        explain(&p, &c.rules, &c.state, &inv, &q).unwrap()
    }

    #[test]
    fn allowed_flow_names_the_rule() {
        let e = run(query(
            "1.1.1.5",
            Some("tcp"),
            Some("443"),
            Some("/usr/bin/curl"),
        ));
        assert_eq!(e.verdict, Some(Verdict::Allow));
        let rule = e.rule.unwrap();
        assert!(
            rule.description
                .contains("process exe /usr/bin/curl, allow[0]: tcp/80, tcp/443 to 1.1.1.0/24"),
            "{rule:?}"
        );
        assert_eq!(rule.location.as_deref(), Some("p.toml:7:10"));
        assert_eq!(e.matched_prefix.as_deref(), Some("1.1.1.0/24"));
        assert!(
            e.process.starts_with(
                "exe /usr/bin/curl (dev 0:52 ino 1001): process entry exe /usr/bin/curl"
            ),
            "{}",
            e.process
        );
    }

    #[test]
    fn an_exe_the_container_does_not_have_is_recognised_by_comm_only() {
        let e = run(query(
            "1.1.1.5",
            Some("tcp"),
            Some("443"),
            Some("/usr/bin/wget"),
        ));
        assert_eq!(e.verdict, Some(Verdict::Deny));
        assert!(
            e.process.starts_with(
                "exe /usr/bin/wget (/usr/bin/wget: no such file in container c0ffee00: recognised by its comm wget only)"
            ),
            "{}",
            e.process
        );
        let e = run(query("1.1.1.5", Some("tcp"), Some("443"), Some("/opt/x")));
        assert!(
            e.process.starts_with(
                "exe /opt/x (not resolved in container \"curler\": recognised by its comm x only)"
            ),
            "{}",
            e.process
        );
    }

    #[test]
    fn only_the_file_the_path_names_gets_the_class() {
        let p = crate::policy::parse("p.toml", CURLER).unwrap();
        let inv = inventory();
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let curl = Sender::parse(Some("/usr/bin/curl")).in_container(&exes());
        assert_eq!(curl.file, Some(CURL));
        // Another file at that path (the layer overwritten after policyd
        // resolved it, a bind mount, a chroot): not curl.
        let impostor = Sender {
            file: Some(OTHER),
            ..curl.clone()
        };
        let dest: IpAddr = "1.1.1.5".parse().unwrap();
        let lookup =
            |s: &Sender| lookup(&c.state, 7, Some(&s.creator()), &target(dest, 6, 443)).verdict;
        assert_eq!(lookup(&curl), Verdict::Allow);
        assert_eq!(lookup(&impostor), Verdict::Deny);
        let policy = &p.policies[0];
        assert!(policy_allows(policy, &exes(), &curl, dest, 6, 443));
        assert!(!policy_allows(policy, &exes(), &impostor, dest, 6, 443));
    }

    #[test]
    fn other_processes_get_container_rules_only() {
        let e = run(query("1.1.1.5", Some("tcp"), Some("443"), Some("wget")));
        assert_eq!(e.verdict, Some(Verdict::Deny));
        assert!(
            e.reason
                .contains("no rule of policy \"curler\" covers 1.1.1.5"),
            "{}",
            e.reason
        );
        let e = run(query("9.9.9.9", Some("udp"), Some("53"), Some("wget")));
        assert_eq!(e.verdict, Some(Verdict::Allow));
        // A renamed copy of curl is not curl: the exe is what counts.
        let e = run(query(
            "1.1.1.5",
            Some("tcp"),
            Some("443"),
            Some("/tmp/curl"),
        ));
        assert_eq!(e.verdict, Some(Verdict::Deny));
    }

    #[test]
    fn wrong_port_lists_what_is_allowed() {
        let e = run(query(
            "1.1.1.5",
            Some("tcp"),
            Some("22"),
            Some("/usr/bin/curl"),
        ));
        assert_eq!(e.verdict, Some(Verdict::Deny));
        assert!(
            e.reason
                .contains("allow only icmp any type, tcp/80, tcp/443"),
            "{}",
            e.reason
        );
        let e = run(query("1.1.1.5", Some("icmp"), None, Some("/usr/bin/curl")));
        assert_eq!(e.verdict, Some(Verdict::Allow));
    }

    #[test]
    fn loopback_is_allowed_but_not_docker_dns() {
        let e = run(query("127.0.0.1", Some("tcp"), Some("8080"), None));
        assert_eq!(e.verdict, Some(Verdict::Allow));
        assert!(e.rule.unwrap().description.contains("loopback"));
        let e = run(query("::1", Some("tcp"), Some("8080"), None));
        assert_eq!(e.verdict, Some(Verdict::Allow));
        let e = run(query("127.0.0.11", Some("udp"), Some("53"), None));
        assert_eq!(e.verdict, Some(Verdict::Deny), "{e:?}");
        assert_eq!(e.matched_prefix.as_deref(), Some("127.0.0.11/32"));
        assert!(e.rule.is_none(), "{e:?}");
    }

    #[test]
    fn allow_docker_dns_allows_tcp_and_udp_on_every_port() {
        let text = CURLER.replacen("[[policy]]", "allow_docker_dns = true\n[[policy]]", 1);
        let p = crate::policy::parse("p.toml", &text).unwrap();
        let inv = inventory();
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let ask = |proto: &str, port: &str| {
            explain(
                &p,
                &c.rules,
                &c.state,
                &inv,
                &query("127.0.0.11", Some(proto), Some(port), None),
            )
            .unwrap()
        };
        // The egress program sees the port Docker DNATs 53 to.
        for (proto, port) in [("udp", "53"), ("tcp", "53"), ("udp", "43117")] {
            let e = ask(proto, port);
            assert_eq!(e.verdict, Some(Verdict::Allow), "{e:?}");
            assert!(
                e.rule.unwrap().description.contains("allow_docker_dns"),
                "{proto}/{port}"
            );
        }
        assert_eq!(ask("icmp", "8").verdict, Some(Verdict::Deny));
    }

    #[test]
    fn ipv4_mapped_ipv6_meets_ipv4_rules() {
        let e = run(query(
            "::ffff:1.1.1.5",
            Some("tcp"),
            Some("80"),
            Some("/usr/bin/curl"),
        ));
        assert_eq!(e.verdict, Some(Verdict::Allow));
    }

    #[test]
    fn unknown_container_and_bad_queries() {
        let p = crate::policy::parse("p.toml", CURLER).unwrap();
        let inv = inventory();
        let c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let mut q = query("1.1.1.1", Some("tcp"), None, None);
        assert!(matches!(
            explain(&p, &c.rules, &c.state, &inv, &q),
            Err(ExplainError::BadQuery(_))
        ));
        q.container = "nope".into();
        assert!(matches!(
            explain(&p, &c.rules, &c.state, &inv, &q),
            Err(ExplainError::NotFound(_))
        ));
    }

    /// A cgroup containers under two policies share is judged by no rules:
    /// explain says so, not what its policy would allow.
    #[test]
    fn a_ruleless_cgroup_is_explained_as_unenforced() {
        let p = crate::policy::parse("p.toml", CURLER).unwrap();
        let inv = inventory();
        let mut c = compile(&p, &inv, &mut IdTables::default()).unwrap();
        let allowed = query("9.9.9.9", Some("udp"), Some("53"), None);
        assert_eq!(
            explain(&p, &c.rules, &c.state, &inv, &allowed)
                .unwrap()
                .verdict,
            Some(Verdict::Allow)
        );
        c.state
            .cgroups
            .insert(7, kernel_model::state::CgroupEntry::ruleless(false));
        let e = explain(&p, &c.rules, &c.state, &inv, &allowed).unwrap();
        assert_eq!(e.mode, "unenforced");
        assert_eq!(e.verdict, Some(Verdict::Deny));
        assert!(e.reason.contains("judges them by no rules"), "{}", e.reason);
        assert_eq!(e.policy, None);
    }

    // ---- The compiler against the reference reading of the policy. ----

    /// A small universe of prefixes so rules nest and overlap.
    fn universe() -> Vec<Prefix> {
        [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "10.2.0.0/16",
            "127.0.0.0/8",
            "127.0.0.11/32",
            "::/0",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "2001:db8:1::1/128",
            "::1/128",
        ]
        .iter()
        .map(|s| crate::net::parse_cidr(s).unwrap())
        .collect()
    }

    fn addresses() -> Vec<IpAddr> {
        [
            "10.1.2.3",
            "10.1.2.4",
            "10.1.9.9",
            "10.2.0.1",
            "10.9.9.9",
            "8.8.8.8",
            "127.0.0.1",
            "127.0.0.11",
            "::ffff:127.0.0.11",
            "2001:db8:1::1",
            "2001:db8:1::2",
            "2001:db8:2::1",
            "2002::1",
            "::1",
            "::ffff:10.1.2.3",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
    }

    fn arb_allowance() -> impl Strategy<Value = Allowance> {
        prop_oneof![
            Just(Allowance::ANY),
            (
                prop::sample::select(vec![6u8, 17]),
                0u16..8,
                prop::sample::select(vec![0u8, 13, 14, 16])
            )
                .prop_map(|(proto, port, bits)| Allowance {
                    proto,
                    block: PortBlock::enclosing(port, if bits == 0 { 0 } else { bits }),
                }),
            (
                prop::sample::select(vec![1u8, 58]),
                prop::sample::select(vec![0u8, 8, 16])
            )
                .prop_map(|(proto, bits)| {
                    Allowance {
                        proto,
                        block: PortBlock::enclosing(8 << 8, bits),
                    }
                }),
        ]
    }

    fn arb_rule() -> impl Strategy<Value = AllowRule> {
        (
            prop::collection::vec(prop::sample::select(universe()), 1..3),
            prop::collection::vec(arb_allowance(), 1..3),
        )
            .prop_map(|(mut dests, allowances)| {
                dests.sort_unstable();
                dests.dedup();
                AllowRule {
                    index: 0,
                    dests,
                    allowances: normalize_allowances(allowances),
                    location: None,
                }
            })
    }

    fn arb_policy() -> impl Strategy<Value = ContainerPolicy> {
        (
            prop::collection::vec(arb_rule(), 0..5),
            prop::collection::vec(arb_rule(), 0..4),
            prop::collection::vec(arb_rule(), 0..3),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(rules, curl, ping, allow_loopback, allow_docker_dns)| {
                ContainerPolicy {
                    name: "p".into(),
                    mode: Mode::Enforce,
                    allow_loopback,
                    allow_docker_dns,
                    selector: Selector {
                        name: Some("curler".into()),
                        ..Selector::default()
                    },
                    rules,
                    processes: vec![
                        ProcessPolicy {
                            idents: vec![ProcessIdent::Exe("/usr/bin/curl".into())],
                            sha256: None,
                            rules: curl,
                            location: None,
                        },
                        ProcessPolicy {
                            idents: vec![ProcessIdent::Comm("ping".into())],
                            sha256: None,
                            rules: ping,
                            location: None,
                        },
                    ],
                    location: None,
                }
            })
    }

    fn set_of(policy: ContainerPolicy) -> PolicySet {
        PolicySet {
            source_name: "gen".into(),
            format: Format::Toml,
            mode: Mode::Enforce,
            unknown_container: Verdict::Deny,
            policies: vec![policy],
            warnings: Vec::new(),
            digest: 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        #[test]
        fn kernel_lookups_agree_with_the_policy(policy in arb_policy()) {
            let set = set_of(policy);
            let inv = inventory();
            let compiled = compile(&set, &inv, &mut IdTables::default()).unwrap();
            let exes = exes();
            let senders = [
                Sender::parse(Some("/usr/bin/curl")).in_container(&exes),
                Sender { file: Some(OTHER), ..Sender::parse(Some("/usr/bin/curl")) },
                Sender::parse(Some("ping")),
                Sender::parse(Some("/bin/ping")),
                Sender { file: Some(CURL), ..Sender::parse(Some("/bin/ping")) },
                Sender::parse(Some("sh")),
                Sender::default(),
            ];
            let flows = [(6u8, 1u16), (6, 4), (6, 7), (17, 3), (1, 8 << 8), (1, 3 << 8), (58, 8 << 8 | 1), (132, 0)];
            let mut verdicts = BTreeMap::new();
            for sender in &senders {
                for &dest in &addresses() {
                    for &(proto, port) in &flows {
                        let kernel = lookup(&compiled.state, 7, Some(&sender.creator()), &target(dest, proto, port)).verdict;
                        let reference = policy_allows(&set.policies[0], &exes, sender, dest, proto, port);
                        prop_assert_eq!(
                            kernel == Verdict::Allow, reference,
                            "sender {:?} dest {} proto {} port {}", sender, dest, proto, port
                        );
                        verdicts.insert((sender.exe.clone(), sender.file, dest, proto, port), kernel);
                    }
                }
            }
        }
    }
}
