//! The validated policy: what the TOML file and the thesis JSON allow-list
//! both become. Everything here has been checked; the compiler trusts it.
//!
//! # Semantics, in the order the kernel applies them
//!
//! * A container is selected by the **first** policy, in file order, whose
//!   selector matches it (all criteria of a selector must hold). A container
//!   no policy selects is left alone (unrestricted). A managed cgroup the
//!   resolver has not mapped yet gets `unknown_container`.
//! * Inside a policy, a process is recognised by the file it executed
//!   (`exe`: the file that path names inside the container, resolved in each
//!   selected container's own root; optionally pinned by content with
//!   `sha256`) or else by its `comm`. The kernel tries the file first: a
//!   process matching both an `exe` entry and a `comm` entry gets the `exe`
//!   entry's rules. A path that names no file in a container, or a file
//!   whose content differs from the pin, gives that container no class for
//!   it: the executable gets the container-wide rules.
//! * A process entry's traffic is allowed by its own rules **and** the
//!   policy's container-wide `allow` rules; any other process of the
//!   container gets the container-wide rules only. Rules only ever allow:
//!   there is no deny rule, so order between rules never changes a verdict.
//! * Loopback (`127.0.0.0/8`, `::1`) is allowed implicitly unless
//!   `allow_loopback = false`: traffic on `lo` never leaves the container's
//!   network namespace. A container on the host network shares the host's
//!   `lo`; set `allow_loopback = false` for it to keep it from host-local
//!   services.
//! * Docker's embedded DNS at `127.0.0.11` is *not* part of the loopback
//!   allowance: dockerd forwards whatever it is sent upstream from its own
//!   cgroup, where contain does not look, so it is a tunnel out of a
//!   container that may reach nothing else. `allow_docker_dns = true` allows
//!   it (TCP and UDP, every port); explicit rules covering it allow it too.

pub mod thesis_json;
pub mod toml_format;

#[cfg(test)]
mod bad_input;

use std::{collections::BTreeMap, fmt, path::Path};

use kernel_model::state::{ProcessMatch, Verdict};
use serde::{Deserialize, Serialize};

use crate::{
    diagnostic::{Diagnostic, Location},
    glob::Glob,
    net::{Family, PortBlock, Prefix},
};

/// Enforce denies; audit reports what would be denied and denies nothing.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

/// Which file format a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Toml,
    /// The thesis' JSON allow-list.
    ThesisJson,
}

/// A whole policy file, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySet {
    pub source_name: String,
    pub format: Format,
    pub mode: Mode,
    pub unknown_container: Verdict,
    pub policies: Vec<ContainerPolicy>,
    /// Findings that do not stop the policy from being applied.
    pub warnings: Vec<Diagnostic>,
    /// FNV-1a of the file's bytes, to tell reloads of the same text apart.
    pub digest: u64,
}

/// One `[[policy]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPolicy {
    pub name: String,
    /// Effective mode (the policy's own, or the file's).
    pub mode: Mode,
    pub allow_loopback: bool,
    /// TCP and UDP to Docker's embedded DNS server, `127.0.0.11`.
    pub allow_docker_dns: bool,
    pub selector: Selector,
    /// Rules for every process of the container.
    pub rules: Vec<AllowRule>,
    pub processes: Vec<ProcessPolicy>,
    pub location: Option<Location>,
}

impl ContainerPolicy {
    pub fn rule_count(&self) -> usize {
        self.rules.len() + self.processes.iter().map(|p| p.rules.len()).sum::<usize>()
    }
}

/// Which containers a policy applies to; every given criterion must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// Container name, exact (Docker's leading `/` ignored).
    pub name: Option<String>,
    /// Labels that must be present, values as globs.
    pub labels: BTreeMap<String, Glob>,
    /// Image reference glob.
    pub image: Option<Glob>,
    /// Runtime namespace, exact (`moby` for Docker, `k8s.io` for Kubernetes).
    pub namespace: Option<String>,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.labels.is_empty()
            && self.image.is_none()
            && self.namespace.is_none()
    }

    /// Whether every container `other` selects is also selected by `self`
    /// (judged syntactically: each of our criteria appears, identical, in
    /// `other`). Used to find policies that can never apply.
    pub fn selects_all_of(&self, other: &Selector) -> bool {
        let name = self.name.is_none() || self.name == other.name;
        let namespace = self.namespace.is_none() || self.namespace == other.namespace;
        let image = self.image.is_none() || self.image == other.image;
        let labels = self
            .labels
            .iter()
            .all(|(k, v)| other.labels.get(k) == Some(v));
        name && namespace && image && labels
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(name) = &self.name {
            parts.push(format!("name={name}"));
        }
        for (k, v) in &self.labels {
            parts.push(format!("label {k}={}", v.as_str()));
        }
        if let Some(image) = &self.image {
            parts.push(format!("image={}", image.as_str()));
        }
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={ns}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// How a process is recognised.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessIdent {
    /// An absolute path inside the container: the file it names there is
    /// the executable (resolved per container, see `compile::assign`).
    Exe(String),
    /// Task comm (the kernel keeps 15 bytes).
    Comm(String),
}

impl ProcessIdent {
    /// The `PROCESSES` key part of a comm, hashed as the kernel hashes;
    /// `None` for an exe, whose key is the file it names in each container.
    pub fn comm_match(&self) -> Option<ProcessMatch> {
        match self {
            ProcessIdent::Exe(_) => None,
            ProcessIdent::Comm(comm) => Some(ProcessMatch::Comm(contain_common::comm_hash(
                comm.as_bytes(),
            ))),
        }
    }

    pub fn exe_path(&self) -> Option<&str> {
        match self {
            ProcessIdent::Exe(path) => Some(path),
            ProcessIdent::Comm(_) => None,
        }
    }
}

impl fmt::Display for ProcessIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessIdent::Exe(p) => write!(f, "exe {p}"),
            ProcessIdent::Comm(c) => write!(f, "comm {c}"),
        }
    }
}

/// One `[[policy.process]]`: a process class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessPolicy {
    /// Any of these identifies the class (all exe, or all comm).
    pub idents: Vec<ProcessIdent>,
    /// For exe entries: the SHA-256 (lowercase hex) every file the paths
    /// name must have; a file with other content gets no class.
    pub sha256: Option<String>,
    pub rules: Vec<AllowRule>,
    pub location: Option<Location>,
}

impl ProcessPolicy {
    /// The exe paths of this entry (none for a comm entry).
    pub fn exe_paths(&self) -> impl Iterator<Item = &str> {
        self.idents.iter().filter_map(ProcessIdent::exe_path)
    }

    pub fn describe(&self) -> String {
        let kind = match self.idents.first() {
            Some(ProcessIdent::Exe(_)) => "exe",
            _ => "comm",
        };
        let names: Vec<&str> = self
            .idents
            .iter()
            .map(|i| match i {
                ProcessIdent::Exe(s) | ProcessIdent::Comm(s) => s.as_str(),
            })
            .collect();
        format!("{kind} {}", names.join("|"))
    }
}

/// What a rule allows, as `PORTS` blocks: `proto` 0 means any protocol
/// (then `block` is all), ICMP blocks hold `type << 8 | code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Allowance {
    pub proto: u8,
    pub block: PortBlock,
}

impl Allowance {
    pub const ANY: Allowance = Allowance {
        proto: contain_common::ip_proto::ANY,
        block: PortBlock::ALL,
    };

    /// Whether this allowance can apply to a destination of `family`
    /// (ICMP is IPv4 only, ICMPv6 IPv6 only).
    pub fn applies_to(&self, family: Family) -> bool {
        match self.proto {
            contain_common::ip_proto::ICMP => family == Family::V4,
            contain_common::ip_proto::ICMPV6 => family == Family::V6,
            _ => true,
        }
    }

    /// Whether everything `other` allows, this allows too.
    pub fn covers(&self, other: &Allowance) -> bool {
        self.proto == contain_common::ip_proto::ANY
            || (self.proto == other.proto && self.block.contains(&other.block))
    }
}

impl fmt::Display for Allowance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use contain_common::ip_proto as p;
        let name = proto_name(self.proto);
        let b = self.block;
        match self.proto {
            p::ANY => f.write_str("any protocol"),
            p::ICMP | p::ICMPV6 => match b.bits {
                0 => write!(f, "{name} any type"),
                16 => write!(f, "{name} type {} code {}", b.port >> 8, b.port & 0xff),
                _ if b.bits <= 8 && b.first() >> 8 == b.last() >> 8 => {
                    write!(f, "{name} type {}", b.port >> 8)
                }
                _ if b.bits <= 8 => write!(f, "{name} types {}-{}", b.first() >> 8, b.last() >> 8),
                _ => write!(
                    f,
                    "{name} type {} codes {}-{}",
                    b.port >> 8,
                    b.first() & 0xff,
                    b.last() & 0xff
                ),
            },
            _ => match b.bits {
                0 => write!(f, "{name} any port"),
                16 => write!(f, "{name}/{}", b.port),
                _ => write!(f, "{name}/{}-{}", b.first(), b.last()),
            },
        }
    }
}

pub fn proto_name(proto: u8) -> String {
    use contain_common::ip_proto as p;
    match proto {
        p::ANY => "any".into(),
        p::TCP => "tcp".into(),
        p::UDP => "udp".into(),
        p::ICMP => "icmp".into(),
        p::ICMPV6 => "icmpv6".into(),
        other => format!("proto {other}"),
    }
}

/// One allow rule: these destinations, these protocols and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    /// Position in its list (`allow[index]`), for messages.
    pub index: usize,
    /// Distinct destination prefixes.
    pub dests: Vec<Prefix>,
    /// Sorted, minimal (none covers another).
    pub allowances: Vec<Allowance>,
    pub location: Option<Location>,
}

impl AllowRule {
    pub fn describe_allowances(&self) -> String {
        self.allowances
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Sorts and minimises a list of allowances: drops any covered by another.
pub fn normalize_allowances(mut list: Vec<Allowance>) -> Vec<Allowance> {
    list.sort_unstable();
    list.dedup();
    if list.contains(&Allowance::ANY) {
        return vec![Allowance::ANY];
    }
    let snapshot = list.clone();
    list.retain(|a| !snapshot.iter().any(|b| b != a && b.covers(a)));
    list
}

/// A policy that could not be accepted, with every error found (and the
/// warnings, which are worth fixing along the way).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{}", render_diagnostics(.diagnostics))]
pub struct InvalidPolicy {
    pub diagnostics: Vec<Diagnostic>,
}

impl InvalidPolicy {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

pub fn render_diagnostics(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] InvalidPolicy),
}

/// Reads and validates a policy file, TOML or thesis JSON.
pub fn load_file(path: &Path) -> Result<PolicySet, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse(&path.display().to_string(), &text)?)
}

/// Validates policy text. `.json` files, and text whose first token is `[`
/// followed by `{` or `]`, are the thesis JSON format; everything else is
/// TOML.
pub fn parse(name: &str, text: &str) -> Result<PolicySet, InvalidPolicy> {
    if looks_like_json(name, text) {
        thesis_json::parse(name, text)
    } else {
        toml_format::parse(name, text)
    }
}

fn looks_like_json(name: &str, text: &str) -> bool {
    if name.ends_with(".json") {
        return true;
    }
    if name.ends_with(".toml") {
        return false;
    }
    let mut tokens = text.chars().filter(|c| !c.is_whitespace());
    tokens.next() == Some('[') && matches!(tokens.next(), Some('{') | Some(']'))
}

/// FNV-1a 64 over bytes, whole; for digests and stable ids (std's hasher
/// is not stable across releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(contain_common::fnv1a_start(), |h, &b| {
        contain_common::fnv1a_step(h, b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowances_normalise() {
        let tcp443 = Allowance {
            proto: 6,
            block: PortBlock {
                port: 443,
                bits: 16,
            },
        };
        let tcp_all = Allowance {
            proto: 6,
            block: PortBlock::ALL,
        };
        let udp53 = Allowance {
            proto: 17,
            block: PortBlock { port: 53, bits: 16 },
        };
        assert_eq!(
            normalize_allowances(vec![tcp443, tcp_all, udp53, tcp443]),
            vec![tcp_all, udp53]
        );
        assert_eq!(
            normalize_allowances(vec![tcp443, Allowance::ANY]),
            vec![Allowance::ANY]
        );
    }

    #[test]
    fn allowance_display() {
        let icmp_echo = Allowance {
            proto: 1,
            block: PortBlock {
                port: 8 << 8,
                bits: 8,
            },
        };
        assert_eq!(icmp_echo.to_string(), "icmp type 8");
        let range = Allowance {
            proto: 6,
            block: PortBlock {
                port: 8000,
                bits: 10,
            },
        };
        assert_eq!(range.to_string(), "tcp/8000-8063");
        assert_eq!(Allowance::ANY.to_string(), "any protocol");
    }

    #[test]
    fn format_sniffing() {
        assert!(looks_like_json("x", " [ {\"container_name\": 1}]"));
        assert!(looks_like_json("x", "[]"));
        assert!(!looks_like_json("x", "[[policy]]\nname='a'"));
        assert!(!looks_like_json("x", "mode = 'audit'"));
        assert!(looks_like_json("a.json", "garbage"));
    }
}
