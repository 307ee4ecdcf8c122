//! The thesis' JSON allow-list, accepted as is:
//!
//! ```json
//! [{ "container_name": "curler",
//!    "policy": [{ "process": "curl",
//!                 "allow": [{ "cidr4": "1.1.1.0/24", "ports": [80, 443] }] }] }]
//! ```
//!
//! Mapping, as the thesis' programs behaved: each entry is a policy named
//! and selecting by `container_name`; `process` is a comm (the thesis
//! matched `bpf_get_current_comm`); a port allows TCP and UDP to it; port 0
//! allows ICMP (every type). `//` line comments, which the thesis README's
//! example carries, are ignored. Two extensions, documented: `"process":
//! "*"` (or `""`) means every process of the container. Loopback is allowed
//! and Docker's DNS (`127.0.0.11`) is not, as in a TOML file that sets
//! neither `allow_loopback` nor `allow_docker_dns`.
//!
//! JSON has no spans in serde, so positions of semantic errors are found by
//! locating the offending literal after its enclosing entry.

use std::collections::{HashMap, HashSet};

use contain_common::ip_proto;
use kernel_model::state::Verdict;
use serde::Deserialize;

use super::{
    normalize_allowances, toml_format::Checker, AllowRule, Allowance, ContainerPolicy, Format,
    InvalidPolicy, Mode, PolicySet, ProcessPolicy, Selector,
};
use crate::{
    diagnostic::{Diagnostic, Location, Severity},
    net::{parse_cidr, Family, PortBlock},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    container_name: String,
    policy: Vec<ProcessEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessEntry {
    process: String,
    allow: Vec<AllowEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowEntry {
    cidr4: String,
    ports: Vec<i64>,
}

/// Blanks `//` comments outside strings, keeping every byte offset.
fn strip_line_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
        } else if c == '/' && chars.peek() == Some(&'/') {
            out.push(' ');
            for next in chars.by_ref() {
                if next == '\n' {
                    out.push('\n');
                    break;
                }
                // Keep byte offsets: one space per byte.
                out.extend(std::iter::repeat_n(' ', next.len_utf8()));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Finds positions of literals in order, so each error points at the
/// right occurrence.
struct Cursor<'a> {
    text: &'a str,
}

impl Cursor<'_> {
    fn find(&self, needle: &str, after: usize) -> Option<usize> {
        self.text.get(after..)?.find(needle).map(|i| i + after)
    }
    fn find_string(&self, value: &str, after: usize) -> Option<usize> {
        let quoted = serde_json::to_string(value).ok()?;
        self.find(&quoted, after)
    }
    fn find_number(&self, value: i64, after: usize) -> Option<usize> {
        let text = value.to_string();
        let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_ascii_digit() || c == '-');
        self.text
            .get(after..)?
            .match_indices(&text)
            .map(|(at, _)| at + after)
            .find(|&at| {
                boundary(self.text[..at].chars().next_back())
                    && boundary(self.text[at + text.len()..].chars().next())
            })
    }
}

/// Parses and validates a thesis JSON allow-list.
pub fn parse(name: &str, text: &str) -> Result<PolicySet, InvalidPolicy> {
    let stripped = strip_line_comments(text);
    let entries: Vec<Entry> = match serde_json::from_str(&stripped) {
        Ok(e) => e,
        Err(e) => {
            let location = (e.line() > 0).then(|| Location {
                file: name.into(),
                line: e.line() as u32,
                column: e.column().max(1) as u32,
            });
            let source_line = location
                .as_ref()
                .and_then(|l| text.lines().nth(l.line as usize - 1))
                .map(str::to_string);
            // serde_json appends " at line L column C"; the location says it.
            let message = e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string();
            return Err(InvalidPolicy {
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    location,
                    message,
                    source_line,
                }],
            });
        }
    };

    let mut checker = Checker::new(name, text);
    let cursor = Cursor { text: &stripped };
    let mut pos = 0usize;
    let mut names = HashSet::new();
    let mut policies = Vec::new();

    for entry in entries {
        pos = cursor.find("\"container_name\"", pos).unwrap_or(pos);
        let entry_at = pos;
        let span_at = |p: usize| Some(p..p + 1);
        let container = entry
            .container_name
            .trim()
            .trim_start_matches('/')
            .to_string();
        if container.is_empty() {
            checker.error(span_at(entry_at), "container_name is empty");
            continue;
        }
        if !names.insert(container.clone()) {
            checker.error(
                span_at(entry_at),
                format!("conflicting selectors: container \"{container}\" has a second entry; the thesis format takes one object per container"),
            );
            continue;
        }
        let mut rules_for_all = Vec::new();
        let mut processes: Vec<ProcessPolicy> = Vec::new();
        // Comm → the comm first written with the kernel's same key.
        let mut seen_process = HashMap::new();
        for process in entry.policy {
            pos = cursor.find("\"process\"", pos).unwrap_or(pos);
            let process_at = pos;
            let mut rules = Vec::new();
            for (index, allow) in process.allow.into_iter().enumerate() {
                pos = cursor.find("\"cidr4\"", pos).unwrap_or(pos);
                let allow_at = pos;
                let cidr_at = cursor
                    .find_string(&allow.cidr4, allow_at)
                    .unwrap_or(allow_at);
                let dest = match parse_cidr(&allow.cidr4) {
                    Ok(p) if p.family() == Family::V4 => p,
                    Ok(p) => {
                        checker.error(span_at(cidr_at), format!("cidr4 {p} is not IPv4"));
                        continue;
                    }
                    Err(e) => {
                        checker.error(span_at(cidr_at), format!("invalid cidr4: {e}"));
                        continue;
                    }
                };
                let mut allowances = Vec::new();
                let mut bad = false;
                for &port in &allow.ports {
                    match port {
                        0 => allowances.push(Allowance {
                            proto: ip_proto::ICMP,
                            block: PortBlock::ALL,
                        }),
                        1..=65535 => {
                            let block = PortBlock {
                                port: port as u16,
                                bits: 16,
                            };
                            allowances.extend(
                                [ip_proto::TCP, ip_proto::UDP]
                                    .map(|proto| Allowance { proto, block }),
                            );
                        }
                        _ => {
                            let at = cursor.find_number(port, allow_at).unwrap_or(allow_at);
                            checker.error(
                                span_at(at),
                                format!(
                                    "port {port} is out of range; expected 1-65535, or 0 for ICMP"
                                ),
                            );
                            bad = true;
                        }
                    }
                }
                if bad {
                    continue;
                }
                if allowances.is_empty() {
                    checker.warn(
                        span_at(allow_at),
                        format!("{dest} has no ports, so this entry allows nothing"),
                    );
                    continue;
                }
                rules.push(AllowRule {
                    index,
                    dests: vec![dest],
                    allowances: normalize_allowances(allowances),
                    location: Some(checker.src.location(allow_at)),
                });
            }
            let comm = process.process.trim();
            if comm.is_empty() || comm == "*" {
                rules_for_all.extend(rules);
                continue;
            }
            let Some(ident) = checker.comm(comm, process_at..process_at + 1) else {
                continue;
            };
            // The kernel keeps 15 bytes of a comm: two longer ones that
            // share them are one process to it.
            if let Some(first) = seen_process.get(&ident.comm_match()) {
                let same = if first == comm {
                    String::new()
                } else {
                    format!(" (\"{first}\", the same comm to the kernel, which keeps 15 bytes)")
                };
                checker.error(
                    span_at(process_at),
                    format!("conflicting selectors: process \"{comm}\" has a second entry{same} in container \"{container}\"; the thesis format takes one object per process"),
                );
                continue;
            }
            seen_process.insert(ident.comm_match(), comm.to_string());
            processes.push(ProcessPolicy {
                sha256: None,
                idents: vec![ident],
                rules,
                location: Some(checker.src.location(process_at)),
            });
        }
        policies.push(ContainerPolicy {
            name: container.clone(),
            mode: Mode::Enforce,
            allow_loopback: true,
            // As in TOML: Docker's DNS forwards anything upstream, so it is
            // allowed only by rules that name it.
            allow_docker_dns: false,
            selector: Selector {
                name: Some(container),
                ..Selector::default()
            },
            rules: rules_for_all,
            processes,
            location: Some(checker.src.location(entry_at)),
        });
    }

    checker.finish(Format::ThesisJson, Mode::Enforce, Verdict::Deny, policies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ProcessIdent;

    /// The thesis repository's allowlist.json, verbatim in structure.
    pub(crate) const THESIS_FILE: &str = "[\n\t{\t\n\t\t\"container_name\": \"curler\",\n\t\t\"policy\": [\n\t\t\t{\n\t\t\t\t\"process\": \"curl\",\n\t\t\t\t\"allow\": [\n\t\t\t\t\t{\n\t\t\t\t\t\t\"cidr4\": \"1.1.1.0/24\",\n\t\t\t\t\t\t\"ports\": [80, 443]\n\t\t\t\t\t}\n\t\t\t\t]\n\t\t\t},\n\t\t\t{\n\t\t\t\t\"process\": \"ping\",\n\t\t\t\t\"allow\": [\n\t\t\t\t\t{\n\t\t\t\t\t\t\"cidr4\": \"1.1.1.0/24\",\n\t\t\t\t\t\t\"ports\": [80, 443, 0]\n\t\t\t\t\t}\n\t\t\t\t]\n\t\t\t}\n\t\t]\n\t}\n]\n";

    #[test]
    fn thesis_file_is_accepted() {
        let p = parse("allowlist.json", THESIS_FILE).unwrap();
        assert_eq!(p.format, Format::ThesisJson);
        assert_eq!(p.policies.len(), 1);
        let curler = &p.policies[0];
        assert_eq!(curler.selector.name.as_deref(), Some("curler"));
        assert!(curler.rules.is_empty());
        assert_eq!(
            curler.processes[0].idents,
            vec![ProcessIdent::Comm("curl".into())]
        );
        let curl: Vec<String> = curler.processes[0].rules[0]
            .allowances
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(curl, ["tcp/80", "tcp/443", "udp/80", "udp/443"]);
        let ping: Vec<String> = curler.processes[1].rules[0]
            .allowances
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ping,
            ["icmp any type", "tcp/80", "tcp/443", "udp/80", "udp/443"]
        );
        assert_eq!(curler.processes[1].location.as_ref().unwrap().line, 15);
    }

    #[test]
    fn readme_example_with_comments_is_accepted() {
        let text = r#"[
	{
		"container_name": "curler", // Only add a single object per container
		"policy": [
			{
				"process": "curl", // Only add a single object per process
				"allow": [ { "cidr4": "1.1.1.0/24", "ports": [80, 443] } ]
			}
		]
	}
]"#;
        let p = parse("x.json", text).unwrap();
        assert_eq!(p.policies[0].processes.len(), 1);
    }

    #[test]
    fn errors_have_positions() {
        let text = "[\n {\"container_name\": \"a\", \"policy\": [\n  {\"process\": \"curl\", \"allow\": [\n   {\"cidr4\": \"1.1.1.0/33\", \"ports\": [80]},\n   {\"cidr4\": \"1.1.1.0/24\", \"ports\": [70000]}\n  ]}\n ]}\n]";
        let e = parse("x.json", text).unwrap_err().to_string();
        assert!(
            e.contains("x.json:4:14: error: invalid cidr4: prefix length 33"),
            "{e}"
        );
        assert!(
            e.contains("x.json:5:38: error: port 70000 is out of range"),
            "{e}"
        );
        let e = parse("x.json", "[{\"container_name\": \"a\", \"polcy\": []}]")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.json:1:") && e.contains("unknown field `polcy`"),
            "{e}"
        );
        let e = parse("x.json", "[{\"container_name\": \"a\", \"policy\": []}, {\"container_name\": \"a\", \"policy\": []}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("conflicting selectors"), "{e}");
    }

    #[test]
    fn a_file_with_several_mistakes_reports_them_all() {
        let text = r#"[
 {"container_name": "a", "policy": [
  {"process": "curl", "allow": [
   {"cidr4": "1.1.1.0/33", "ports": [80]},
   {"cidr4": "2001:db8::/32", "ports": [443]},
   {"cidr4": "1.1.1.0/24", "ports": [70000]}
  ]},
  {"process": "curl", "allow": []}
 ]},
 {"container_name": "a", "policy": []}
]"#;
        let e = parse("x.json", text).unwrap_err().to_string();
        for needle in [
            "x.json:4:14: error: invalid cidr4: prefix length 33",
            "x.json:5:14: error: cidr4 2001:db8::/32 is not IPv4",
            "x.json:6:38: error: port 70000 is out of range",
            "x.json:8:4: error: conflicting selectors: process \"curl\" has a second entry in",
            "x.json:10:3: error: conflicting selectors: container \"a\" has a second entry",
        ] {
            assert!(e.contains(needle), "missing `{needle}` in:\n{e}");
        }
    }

    #[test]
    fn comms_the_kernel_cannot_tell_apart_are_one_process() {
        let text = r#"[{"container_name": "a", "policy": [
  {"process": "a-long-worker-name-1", "allow": [{"cidr4": "10.0.0.1/32", "ports": [80]}]},
  {"process": "a-long-worker-name-2", "allow": [{"cidr4": "10.0.0.2/32", "ports": [443]}]}
]}]"#;
        let e = parse("x.json", text).unwrap_err().to_string();
        assert!(
            e.contains("x.json:3:4: error: conflicting selectors: process \"a-long-worker-name-2\" has a second entry (\"a-long-worker-name-1\", the same comm to the kernel"),
            "{e}"
        );
    }

    #[test]
    fn comment_stripping_keeps_offsets_and_strings() {
        let text = "{\"a\": \"x//y\"} // c\n// é\n1";
        let s = strip_line_comments(text);
        assert_eq!(s.len(), text.len());
        assert!(s.contains("\"x//y\""));
        assert!(!s.contains("// c"));
    }
}
