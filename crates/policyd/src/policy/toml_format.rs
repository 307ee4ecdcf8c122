//! The TOML policy format.
//!
//! ```toml
//! mode = "enforce"            # or "audit"
//! unknown_container = "deny"  # deny | allow | audit: a managed cgroup not mapped yet
//! allow_loopback = true       # 127.0.0.0/8 and ::1 always allowed (default)
//! allow_docker_dns = false    # Docker's DNS at 127.0.0.11 (default: not allowed)
//!
//! [[policy]]
//! name = "public-web"
//! mode = "audit"              # optional, overrides the file's mode
//! select = { label = { egress = "block" } }  # and/or name, image (glob), namespace
//! allow = [
//!   { to = ["10.0.0.0/8"], proto = "tcp", ports = [443, "8000-8080"] },
//!   { to = "1.1.1.1", proto = ["tcp", "udp"], ports = [53] },
//!   { to = ["0.0.0.0/0", "::/0"], proto = ["icmp", "icmpv6"], icmp_types = ["echo-request"] },
//! ]
//!
//! [[policy.process]]
//! exe = "/usr/bin/curl"       # or comm = "curl"; either may be a list
//! sha256 = "…"                # optional, exe only: the content every named file must have
//! allow = [{ to = ["1.1.1.0/24"], proto = "tcp", ports = [80, 443] }]
//! ```
//!
//! An `exe` is the file the path names inside each selected container (its
//! own root, symlinks followed there), not the path string: a renamed,
//! copied, replaced, bind-mounted or chrooted file is another file.
//!
//! Parsing is in two steps: serde with `deny_unknown_fields` catches syntax
//! errors, unknown keys and wrong types (one at a time: that is what the TOML
//! parser can report), then validation collects every semantic error (bad
//! CIDR, unknown protocol or mode, port out of range, unknown ICMP type,
//! duplicate names, conflicting selectors) with its position. Keywords are
//! therefore read as strings and checked in the second step, so a misspelt
//! protocol does not hide the other mistakes of the file.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    ops::Range,
};

use contain_common::ip_proto;
use kernel_model::state::Verdict;
use serde::{de, Deserialize, Deserializer};
use serde_spanned::Spanned;

use super::{
    fnv1a, normalize_allowances, AllowRule, Allowance, ContainerPolicy, Format, InvalidPolicy,
    Mode, PolicySet, ProcessIdent, ProcessPolicy, Selector,
};
use crate::{
    diagnostic::{Diagnostic, Source},
    glob::Glob,
    net::{
        merge_ranges, parse_cidr, range_to_blocks, translator_overlaps, Family, PortBlock, Prefix,
    },
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    mode: Option<Spanned<String>>,
    unknown_container: Option<Spanned<String>>,
    allow_loopback: Option<bool>,
    allow_docker_dns: Option<bool>,
    #[serde(default)]
    policy: Vec<Spanned<RawPolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    mode: Option<Spanned<String>>,
    allow_loopback: Option<bool>,
    allow_docker_dns: Option<bool>,
    select: Spanned<RawSelect>,
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    process: Vec<Spanned<RawProcess>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelect {
    name: Option<Spanned<String>>,
    #[serde(default, alias = "labels")]
    label: BTreeMap<String, Spanned<String>>,
    image: Option<Spanned<String>>,
    namespace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    exe: Option<Spanned<Strings>>,
    comm: Option<Spanned<Strings>>,
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    to: Spanned<Strings>,
    proto: Option<Spanned<Strings>>,
    ports: Option<Vec<Spanned<PortSpec>>>,
    icmp_types: Option<Vec<Spanned<IcmpSpec>>>,
}

/// A string or a list of strings.
enum Strings {
    One(String),
    Many(Vec<Spanned<String>>),
}

/// Each string with its span (a lone string takes the whole value's span).
fn items(strings: Spanned<Strings>) -> Vec<(String, Range<usize>)> {
    let whole = strings.span();
    match strings.into_inner() {
        Strings::One(s) => vec![(s, whole)],
        Strings::Many(v) => v
            .into_iter()
            .map(|s| (s.get_ref().clone(), s.span()))
            .collect(),
    }
}

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Strings, E> {
                Ok(Strings::One(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Strings, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Strings::Many)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Proto {
    Tcp,
    Udp,
    Icmp,
    #[serde(alias = "icmp6", alias = "ipv6-icmp")]
    Icmpv6,
    Any,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => ip_proto::TCP,
            Proto::Udp => ip_proto::UDP,
            Proto::Icmp => ip_proto::ICMP,
            Proto::Icmpv6 => ip_proto::ICMPV6,
            Proto::Any => ip_proto::ANY,
        }
    }
    fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
    fn is_icmp(self) -> bool {
        matches!(self, Proto::Icmp | Proto::Icmpv6)
    }
}

/// `443` or `"8000-8080"`, checked later so every bad port is reported.
enum PortSpec {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number (1-65535) or a range like \"8000-8080\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `8`, `"echo-request"`, `"3/4"` or `{ type = 3, code = 4 }`.
enum IcmpSpec {
    Number(i64),
    Text(String),
    TypeCode(RawTypeCode),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTypeCode {
    #[serde(rename = "type")]
    ty: i64,
    code: Option<i64>,
}

impl<'de> Deserialize<'de> for IcmpSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = IcmpSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an ICMP type (0-255 or a name like \"echo-request\"), \"TYPE/CODE\", or { type = T, code = C }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IcmpSpec, E> {
                Ok(IcmpSpec::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IcmpSpec, E> {
                Ok(IcmpSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IcmpSpec, E> {
                Ok(IcmpSpec::Text(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<IcmpSpec, A::Error> {
                RawTypeCode::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(IcmpSpec::TypeCode)
            }
        }
        d.deserialize_any(V)
    }
}

/// Named ICMP types, per protocol.
const ICMP_NAMES: &[(&str, u8)] = &[
    ("echo-reply", 0),
    ("destination-unreachable", 3),
    ("redirect", 5),
    ("echo-request", 8),
    ("router-advertisement", 9),
    ("router-solicitation", 10),
    ("time-exceeded", 11),
    ("parameter-problem", 12),
    ("timestamp-request", 13),
    ("timestamp-reply", 14),
];
const ICMPV6_NAMES: &[(&str, u8)] = &[
    ("destination-unreachable", 1),
    ("packet-too-big", 2),
    ("time-exceeded", 3),
    ("parameter-problem", 4),
    ("echo-request", 128),
    ("echo-reply", 129),
    ("router-solicitation", 133),
    ("router-advertisement", 134),
    ("neighbor-solicitation", 135),
    ("neighbor-advertisement", 136),
];

/// An ICMP (`proto` 1) or ICMPv6 (`proto` 58) type by name.
pub(crate) fn icmp_type_named(proto: u8, name: &str) -> Option<u8> {
    let table = match proto {
        ip_proto::ICMP => ICMP_NAMES,
        ip_proto::ICMPV6 => ICMPV6_NAMES,
        _ => return None,
    };
    table.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}

/// Paths the kernel opens are shorter than `PATH_MAX`.
const MAX_EXE_PATH: usize = 4096;

/// Most policies a file may hold: ids are bounded by the kernel's counter array.
pub const MAX_POLICIES_IN_FILE: usize = contain_common::MAX_POLICIES as usize - 1;

/// Validation state: the source (for locations) and what was found.
pub(crate) struct Checker<'a> {
    pub src: Source<'a>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Self {
        Checker {
            src: Source::new(name, text),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let d = self.src.error(span, message);
        self.errors.push(d);
    }

    pub fn warn(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let d = self.src.warning(span, message);
        self.warnings.push(d);
    }

    /// Checks a comm; `None` if unusable.
    pub fn comm(&mut self, comm: &str, span: Range<usize>) -> Option<ProcessIdent> {
        let max = contain_common::COMM_LEN - 1;
        if comm.is_empty() {
            self.error(
                Some(span),
                "comm is empty; expected a process name like \"curl\"",
            );
            return None;
        }
        if comm.contains('\0') {
            self.error(Some(span), "comm contains a NUL byte");
            return None;
        }
        if comm.len() > max {
            let kept = comm
                .as_bytes()
                .get(..max)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            self.warn(
                Some(span),
                format!(
                    "comm \"{comm}\" is longer than the {max} bytes the kernel keeps; it matches any process whose comm is \"{kept}\""
                ),
            );
        }
        Some(ProcessIdent::Comm(comm.to_string()))
    }

    /// Checks an executable path; `None` if unusable.
    pub fn exe(&mut self, path: &str, span: Range<usize>) -> Option<ProcessIdent> {
        if !path.starts_with('/') {
            self.error(
                Some(span),
                format!("exe \"{path}\" is not an absolute path; expected the executable's path inside the container, e.g. \"/usr/bin/curl\""),
            );
            return None;
        }
        if path.contains('\0') {
            self.error(Some(span), "exe contains a NUL byte");
            return None;
        }
        if path.len() >= MAX_EXE_PATH {
            self.error(
                Some(span),
                format!(
                    "exe path is {} bytes long; a path the kernel can open has fewer than {MAX_EXE_PATH}",
                    path.len()
                ),
            );
            return None;
        }
        Some(ProcessIdent::Exe(path.to_string()))
    }

    /// Checks a content pin: 64 hex digits, kept lowercase; `None` if
    /// unusable.
    pub fn sha256(&mut self, text: &str, span: Range<usize>) -> Option<String> {
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.error(
                Some(span),
                format!(
                    "sha256 \"{text}\" is not a SHA-256: expected 64 hex digits, as `sha256sum FILE` prints them"
                ),
            );
            return None;
        }
        Some(hex.to_ascii_lowercase())
    }

    /// Reads a keyword (a mode, a verdict, a protocol) after
    /// deserialisation, so a wrong one is reported along with every other
    /// error; `None` (and an error naming the choices) if it is not one.
    pub fn keyword<T: de::DeserializeOwned>(
        &mut self,
        what: &str,
        text: &str,
        span: Range<usize>,
    ) -> Option<T> {
        let text = text.trim();
        match T::deserialize(de::value::StrDeserializer::<de::value::Error>::new(text)) {
            Ok(value) => Some(value),
            Err(e) => {
                // serde says "unknown variant `x`, expected one of …";
                // keep the choices, in the file's own words.
                let e = e.to_string();
                let expected = e
                    .split_once(", expected")
                    .map(|(_, choices)| format!("expected{choices}"))
                    .unwrap_or(e);
                self.error(Some(span), format!("unknown {what} \"{text}\"; {expected}"));
                None
            }
        }
    }

    /// The policy set, or every error (and then the warnings too).
    pub fn finish(
        self,
        format: Format,
        mode: Mode,
        unknown_container: Verdict,
        policies: Vec<ContainerPolicy>,
    ) -> Result<PolicySet, InvalidPolicy> {
        if !self.errors.is_empty() {
            let mut diagnostics = self.errors;
            diagnostics.extend(self.warnings);
            return Err(InvalidPolicy { diagnostics });
        }
        Ok(PolicySet {
            source_name: self.src.name.to_string(),
            format,
            mode,
            unknown_container,
            policies,
            warnings: self.warnings,
            digest: fnv1a(self.src.text.as_bytes()),
        })
    }
}

/// Parses and validates TOML policy text.
pub fn parse(name: &str, text: &str) -> Result<PolicySet, InvalidPolicy> {
    let mut checker = Checker::new(name, text);
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            checker.error(e.span(), e.message().trim_end().to_string());
            return Err(InvalidPolicy {
                diagnostics: checker.errors,
            });
        }
    };
    let mode: Mode = raw
        .mode
        .and_then(|m| checker.keyword("mode", m.get_ref(), m.span()))
        .unwrap_or_default();
    let unknown_container: Verdict = raw
        .unknown_container
        .as_ref()
        .and_then(|v| checker.keyword("unknown_container", v.get_ref(), v.span()))
        .unwrap_or_default();
    if unknown_container != Verdict::Deny {
        checker.warn(
            raw.unknown_container.as_ref().map(|v| v.span()),
            format!(
                "unknown_container = \"{unknown_container}\" lets through whatever comes from a cgroup under the managed parent that has no entry: a container not mapped yet, but also a cgroup a container makes below its own where its cgroupfs is writable, and processes that outlive their container's entry; \"deny\" fails closed there"
            ),
        );
    }
    let allow_loopback = raw.allow_loopback.unwrap_or(true);
    let allow_docker_dns = raw.allow_docker_dns.unwrap_or(false);
    let mut policies: Vec<ContainerPolicy> = Vec::new();
    let mut first_use_of_name: HashMap<String, Range<usize>> = HashMap::new();
    let mut selectors: Vec<(Selector, String, Range<usize>)> = Vec::new();

    if raw.policy.len() > MAX_POLICIES_IN_FILE {
        checker.error(
            raw.policy.get(MAX_POLICIES_IN_FILE).map(Spanned::span),
            format!("too many policies: at most {MAX_POLICIES_IN_FILE} fit the kernel's policy id space"),
        );
    }

    for raw_policy in raw.policy {
        let policy_span = raw_policy.span();
        let rp = raw_policy.into_inner();
        let name = rp.name.get_ref().trim().to_string();
        if name.is_empty() {
            checker.error(Some(rp.name.span()), "policy name is empty");
        } else if let Some(first) = first_use_of_name.get(&name) {
            let line = checker.src.location(first.start).line;
            checker.error(
                Some(rp.name.span()),
                format!("policy name \"{name}\" is already used on line {line}"),
            );
        } else {
            first_use_of_name.insert(name.clone(), rp.name.span());
        }

        let select_span = rp.select.span();
        let selector = check_selector(&mut checker, rp.select.into_inner(), select_span.clone());
        if let Some(selector) = &selector {
            if let Some((_, earlier, earlier_span)) = selectors
                .iter()
                .find(|(s, _, _)| s.selects_all_of(selector))
            {
                let line = checker.src.location(earlier_span.start).line;
                checker.error(
                    Some(select_span.clone()),
                    format!(
                        "conflicting selectors: policy \"{name}\" can never apply, because policy \"{earlier}\" (line {line}) comes first and selects every container this one selects; make the selectors disjoint or move this policy first"
                    ),
                );
            }
            selectors.push((selector.clone(), name.clone(), select_span));
        }

        let policy_mode: Option<Mode> = rp
            .mode
            .and_then(|m| checker.keyword("mode", m.get_ref(), m.span()));
        let rules = check_rules(&mut checker, rp.allow);
        let mut processes = Vec::new();
        let mut seen_idents: HashMap<ProcessIdent, Range<usize>> = HashMap::new();
        for raw_process in rp.process {
            let span = raw_process.span();
            if let Some(process) = check_process(
                &mut checker,
                raw_process.into_inner(),
                span.clone(),
                &mut seen_idents,
            ) {
                if process.rules.is_empty() {
                    checker.warn(
                        Some(span),
                        format!(
                            "process entry {} has no allow rules of its own; it gets the container-wide rules, as any other process would",
                            process.describe()
                        ),
                    );
                }
                processes.push(process);
            }
        }

        if let Some(selector) = selector {
            policies.push(ContainerPolicy {
                name,
                mode: policy_mode.unwrap_or(mode),
                allow_loopback: rp.allow_loopback.unwrap_or(allow_loopback),
                allow_docker_dns: rp.allow_docker_dns.unwrap_or(allow_docker_dns),
                selector,
                rules,
                processes,
                location: Some(checker.src.location(policy_span.start)),
            });
        }
    }

    checker.finish(Format::Toml, mode, unknown_container, policies)
}

fn check_selector(checker: &mut Checker, raw: RawSelect, span: Range<usize>) -> Option<Selector> {
    let errors_before = checker.errors.len();
    let mut selector = Selector::default();
    if let Some(name) = raw.name {
        // Docker reports names with a leading '/'; people write them without.
        let n = name.get_ref().trim().trim_start_matches('/').to_string();
        if n.is_empty() {
            checker.error(Some(name.span()), "select.name is empty");
        }
        selector.name = Some(n);
    }
    for (key, value) in raw.label {
        if key.is_empty() {
            checker.error(Some(value.span()), "label key is empty");
            continue;
        }
        match Glob::new(value.get_ref()) {
            Ok(glob) => {
                selector.labels.insert(key, glob);
            }
            Err(e) => checker.error(Some(value.span()), format!("label value: {e}")),
        }
    }
    if let Some(image) = raw.image {
        match Glob::new(image.get_ref().trim()) {
            Ok(glob) if !glob.as_str().is_empty() => selector.image = Some(glob),
            Ok(_) => checker.error(
                Some(image.span()),
                "select.image is empty; expected an image glob like \"nginx:*\"",
            ),
            Err(e) => checker.error(Some(image.span()), format!("select.image: {e}")),
        }
    }
    if let Some(ns) = raw.namespace {
        let n = ns.get_ref().trim().to_string();
        if n.is_empty() {
            checker.error(
                Some(ns.span()),
                "select.namespace is empty; expected e.g. \"moby\" or \"k8s.io\"",
            );
        }
        selector.namespace = Some(n);
    }
    if checker.errors.len() > errors_before {
        return None;
    }
    if selector.is_empty() {
        checker.error(
            Some(span),
            "select needs at least one of name, label, image, namespace (to select every container, use image = \"*\")",
        );
        return None;
    }
    Some(selector)
}

fn check_process(
    checker: &mut Checker,
    raw: RawProcess,
    span: Range<usize>,
    seen: &mut HashMap<ProcessIdent, Range<usize>>,
) -> Option<ProcessPolicy> {
    let idents: Vec<ProcessIdent> = match (raw.exe, raw.comm) {
        (Some(_), Some(comm)) => {
            checker.error(
                Some(comm.span()),
                "conflicting selectors: a process entry takes exe or comm, not both (the kernel recognises a process by its executable first, then by its comm; write two entries)",
            );
            return None;
        }
        (None, None) => {
            checker.error(
                Some(span),
                "process entry needs exe = \"/path/as/execd\" or comm = \"name\"",
            );
            return None;
        }
        (Some(exe), None) => items(exe)
            .into_iter()
            .filter_map(|(p, s)| checker.exe(&p, s))
            .collect(),
        (None, Some(comm)) => items(comm)
            .into_iter()
            .filter_map(|(c, s)| checker.comm(&c, s))
            .collect(),
    };
    if idents.is_empty() {
        checker.error(Some(span), "process entry lists no exe or comm");
        return None;
    }
    let sha256 = match raw.sha256 {
        None => None,
        Some(pin) if idents.iter().all(|i| i.exe_path().is_none()) => {
            checker.error(
                Some(pin.span()),
                "sha256 pins the content of an exe's file; a comm entry names no file (use exe = \"/path\")",
            );
            None
        }
        Some(pin) => Some(checker.sha256(pin.get_ref(), pin.span())?),
    };
    let mut unique = Vec::new();
    for ident in idents {
        // Comms the kernel cannot tell apart (same hash of the kept bytes)
        // are the same comm; exe paths are compared as written (two paths
        // naming one file in a container are found when it is resolved).
        let same = |other: &ProcessIdent| match (other, &ident) {
            (ProcessIdent::Comm(_), ProcessIdent::Comm(_)) => {
                other.comm_match() == ident.comm_match()
            }
            _ => *other == ident,
        };
        if let Some((_, first)) = seen.iter().find(|(other, _)| same(other)) {
            let line = checker.src.location(first.start).line;
            checker.error(
                Some(span.clone()),
                format!("conflicting selectors: {ident} already has a process entry on line {line} in this policy"),
            );
            continue;
        }
        seen.insert(ident.clone(), span.clone());
        unique.push(ident);
    }
    let rules = check_rules(checker, raw.allow);
    Some(ProcessPolicy {
        idents: unique,
        sha256,
        rules,
        location: Some(checker.src.location(span.start)),
    })
}

fn check_rules(checker: &mut Checker, raw: Vec<Spanned<RawRule>>) -> Vec<AllowRule> {
    // Into a vector of their own: collected in place, the rules would keep
    // the raw list's larger allocation for as long as the policy is loaded.
    let mut rules = Vec::with_capacity(raw.len());
    for (index, r) in raw.into_iter().enumerate() {
        let span = r.span();
        rules.extend(check_rule(checker, r.into_inner(), index, span));
    }
    rules
}

fn check_rule(
    checker: &mut Checker,
    raw: RawRule,
    index: usize,
    span: Range<usize>,
) -> Option<AllowRule> {
    // Most errors below do not end the check, so that a rule's mistakes
    // are all reported; the rule is refused if there was any.
    let errors_before = checker.errors.len();
    let to_span = raw.to.span();
    let mut dests: Vec<Prefix> = Vec::new();
    for (text, s) in items(raw.to) {
        match parse_cidr(&text) {
            Ok(p) if dests.contains(&p) => {
                checker.warn(Some(s), format!("destination {p} is listed twice"))
            }
            Ok(p) => {
                let translators = translator_overlaps(&p);
                if !translators.is_empty() {
                    checker.warn(
                        Some(s),
                        format!(
                            "destination {p} covers IPv6 prefixes that reach IPv4 hosts through translators ({}): this rule may let traffic reach IPv4 destinations the IPv4 rules do not allow; list the IPv6 destinations you mean without them, or allow the IPv4 hosts explicitly",
                            translators.join(", ")
                        ),
                    );
                }
                dests.push(p);
            }
            Err(e) => checker.error(Some(s), format!("invalid destination: {e}")),
        }
    }
    if checker.errors.len() == errors_before && dests.is_empty() {
        checker.error(
            Some(to_span.clone()),
            "`to` lists no destination; for anywhere write [\"0.0.0.0/0\", \"::/0\"]",
        );
    }

    let protos: Vec<Proto> = match raw.proto {
        Some(p) => {
            let p_span = p.span();
            let parsed: Vec<Option<Proto>> = items(p)
                .into_iter()
                .map(|(text, s)| checker.keyword("proto", &text, s))
                .collect();
            let Some(mut list) = parsed.into_iter().collect::<Option<Vec<_>>>() else {
                // Which restrictions apply depends on the protocols; the
                // port values can still be checked on their own.
                for port in raw.ports.iter().flatten() {
                    if let Err(e) = check_port_spec(port.get_ref()) {
                        checker.error(Some(port.span()), e);
                    }
                }
                return None;
            };
            list.sort_unstable();
            list.dedup();
            if list.is_empty() {
                checker.error(
                    Some(p_span),
                    "proto lists no protocol; expected tcp, udp, icmp, icmpv6 or any",
                );
                return None;
            }
            if list.contains(&Proto::Any) && list.len() > 1 {
                checker.error(
                    Some(p_span),
                    "proto \"any\" already includes every protocol; list it alone",
                );
                return None;
            }
            list
        }
        None if raw.ports.is_some() => {
            checker.error(
                Some(span),
                "ports need a protocol: add proto = \"tcp\", \"udp\" or [\"tcp\", \"udp\"]",
            );
            return None;
        }
        None if raw.icmp_types.is_some() => {
            checker.error(Some(span), "icmp_types need proto = \"icmp\" or \"icmpv6\"");
            return None;
        }
        None => vec![Proto::Any],
    };

    let mut port_ranges = None;
    if let Some(ports) = raw.ports {
        let unused = !protos.iter().any(|p| p.has_ports());
        port_ranges = Some(check_entries(
            checker,
            ports,
            &span,
            unused.then_some(
                "ports apply to tcp and udp, and this rule has neither; for ICMP use icmp_types",
            ),
            "ports is empty; leave it out to allow every port",
            check_port_spec,
        ));
    }

    // Per ICMP protocol: the (type, code) blocks allowed; none = every type.
    let mut icmp: BTreeMap<Proto, Vec<PortBlock>> = BTreeMap::new();
    if let Some(types) = raw.icmp_types {
        let icmp_protos: Vec<Proto> = protos.iter().copied().filter(|p| p.is_icmp()).collect();
        let blocks = check_entries(
            checker,
            types,
            &span,
            icmp_protos
                .is_empty()
                .then_some("icmp_types apply to icmp and icmpv6, and this rule has neither"),
            "icmp_types is empty; leave it out to allow every type",
            |spec| check_icmp_spec(spec, &icmp_protos),
        );
        for (proto, block) in blocks.into_iter().flatten() {
            icmp.entry(proto).or_default().push(block);
        }
        // A name only one of ICMP's tables has (`timestamp-request`,
        // `packet-too-big`) gives the other protocol no type, and a
        // protocol without types would be every type: refused instead.
        if checker.errors.len() == errors_before {
            for proto in icmp_protos.iter().filter(|p| !icmp.contains_key(p)) {
                let (name, other) = match proto {
                    Proto::Icmpv6 => ("icmpv6", "icmp"),
                    _ => ("icmp", "icmpv6"),
                };
                checker.error(
                    Some(span.clone()),
                    format!(
                        "icmp_types names no {name} type (each name here is an {other} type only), so this rule would allow {name} of every type; list the {name} types it should allow, or give {name} a rule of its own"
                    ),
                );
            }
        }
    }
    if checker.errors.len() > errors_before {
        return None;
    }

    // Port 0 is no destination; 1-65535 is "every port". The ports listed
    // start at 1, so only "every port" gives the block of all 65536.
    let port_blocks: Vec<PortBlock> = match port_ranges.map(merge_ranges) {
        Some(merged) if merged != [(1, u16::MAX)] => merged
            .into_iter()
            .flat_map(|(lo, hi)| range_to_blocks(lo, hi))
            .collect(),
        _ => vec![PortBlock::ALL],
    };

    // A loopback destination that takes in Docker's DNS, with ports that are
    // not all of them: Docker's rewritten port is any.
    let docker_dns = Prefix::docker_dns();
    let over_docker_dns = dests
        .iter()
        .any(|d| d.contains(&docker_dns) && Prefix::v4_loopback().contains(d));
    if port_blocks != [PortBlock::ALL] && over_docker_dns {
        checker.warn(
            Some(to_span),
            format!(
                "Docker rewrites what is sent to its DNS server {docker_dns} (port 53) to a port of its own choosing before contain sees it, so this rule's ports never match there; set allow_docker_dns = true for name resolution"
            ),
        );
    }

    let allowances = protos
        .iter()
        .flat_map(|proto| {
            let blocks = match proto {
                Proto::Tcp | Proto::Udp => port_blocks.clone(),
                Proto::Icmp | Proto::Icmpv6 => icmp
                    .get(proto)
                    .cloned()
                    .unwrap_or_else(|| vec![PortBlock::ALL]),
                Proto::Any => vec![PortBlock::ALL],
            };
            blocks.into_iter().map(|block| Allowance {
                proto: proto.number(),
                block,
            })
        })
        .collect();
    let mut allowances = normalize_allowances(allowances);

    // A destination no allowance of this rule can reach (icmp to an IPv6
    // prefix, icmpv6 to an IPv4 one) is a mistake worth naming.
    let applies = |p: &Prefix| allowances.iter().any(|a| a.applies_to(p.family()));
    let unreachable: Vec<&Prefix> = dests.iter().filter(|p| !applies(p)).collect();
    if !unreachable.is_empty() {
        let list = unreachable
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let hint = if unreachable[0].family() == Family::V6 {
            "icmp is IPv4 only; add icmpv6"
        } else {
            "icmpv6 is IPv6 only; add icmp"
        };
        if unreachable.len() == dests.len() {
            checker.error(
                Some(span),
                format!("this rule allows nothing: {hint} (destinations {list})"),
            );
            return None;
        }
        checker.warn(
            Some(span.clone()),
            format!("destinations {list} get nothing from this rule: {hint}"),
        );
    }

    // Held as long as the policy is loaded: no spare capacity (a vector
    // grown by a push has room for four).
    dests.shrink_to_fit();
    allowances.shrink_to_fit();
    Some(AllowRule {
        index,
        dests,
        allowances,
        location: Some(checker.src.location(span.start)),
    })
}

/// Checks a rule's `ports` or `icmp_types`: an error where the rule's
/// protocols take none (`unused`, at the first entry), one if the list is
/// empty, and one per bad entry; the good entries, checked.
fn check_entries<T, R>(
    checker: &mut Checker,
    entries: Vec<Spanned<T>>,
    rule_span: &Range<usize>,
    unused: Option<&str>,
    empty: &str,
    check: impl Fn(&T) -> Result<R, String>,
) -> Vec<R> {
    if let Some(unused) = unused {
        let at = entries.first().map_or(rule_span.clone(), Spanned::span);
        checker.error(Some(at), unused);
    }
    if entries.is_empty() {
        checker.error(Some(rule_span.clone()), empty);
    }
    entries
        .iter()
        .filter_map(|entry| {
            check(entry.get_ref())
                .map_err(|e| checker.error(Some(entry.span()), e))
                .ok()
        })
        .collect()
}

fn port_number(value: i64) -> Result<u16, String> {
    match value {
        0 => Err("port 0 is no destination port (in the thesis JSON format port 0 meant ICMP: write proto = \"icmp\")".into()),
        1..=65535 => Ok(value as u16),
        _ => Err(format!("port {value} is out of range; expected 1-65535")),
    }
}

fn check_port_spec(spec: &PortSpec) -> Result<(u16, u16), String> {
    match spec {
        PortSpec::Number(n) => port_number(*n).map(|p| (p, p)),
        PortSpec::Text(text) => {
            let parse = |s: &str| -> Result<u16, String> {
                let n: i64 = s.trim().parse().map_err(|_| {
                    format!("\"{text}\" is not a port or a range; expected a number 1-65535 or \"LOW-HIGH\"")
                })?;
                port_number(n)
            };
            match text.split_once('-') {
                None => parse(text).map(|p| (p, p)),
                Some((lo, hi)) => {
                    let (lo, hi) = (parse(lo)?, parse(hi)?);
                    if lo > hi {
                        Err(format!(
                            "port range \"{text}\" is backwards; write \"{hi}-{lo}\""
                        ))
                    } else {
                        Ok((lo, hi))
                    }
                }
            }
        }
    }
}

fn byte(value: i64, what: &str) -> Result<u8, String> {
    u8::try_from(value).map_err(|_| format!("ICMP {what} {value} is out of range; expected 0-255"))
}

/// The `PORTS` block of an ICMP type, and a code or every code.
fn icmp_block(ty: u8, code: Option<u8>) -> PortBlock {
    match code {
        None => PortBlock {
            port: u16::from(ty) << 8,
            bits: 8,
        },
        Some(c) => PortBlock {
            port: u16::from(ty) << 8 | u16::from(c),
            bits: 16,
        },
    }
}

/// One `icmp_types` entry, resolved for each ICMP protocol of the rule.
fn check_icmp_spec(spec: &IcmpSpec, protos: &[Proto]) -> Result<Vec<(Proto, PortBlock)>, String> {
    let numeric = |ty: u8, code: Option<u8>| {
        let block = icmp_block(ty, code);
        protos.iter().map(|&p| (p, block)).collect()
    };
    match spec {
        IcmpSpec::Number(n) => Ok(numeric(byte(*n, "type")?, None)),
        IcmpSpec::TypeCode(RawTypeCode { ty, code }) => {
            let code = code.map(|c| byte(c, "code")).transpose()?;
            Ok(numeric(byte(*ty, "type")?, code))
        }
        IcmpSpec::Text(text) => {
            let text = text.trim();
            if let Some((ty, code)) = text.split_once('/') {
                let num = |s: &str, what| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("\"{text}\" is not TYPE/CODE with numbers 0-255"))
                        .and_then(|n| byte(n, what))
                };
                return Ok(numeric(num(ty, "type")?, Some(num(code, "code")?)));
            }
            if let Ok(n) = text.parse::<i64>() {
                return Ok(numeric(byte(n, "type")?, None));
            }
            let resolved: Vec<_> = protos
                .iter()
                .filter_map(|&p| {
                    icmp_type_named(p.number(), text).map(|t| (p, icmp_block(t, None)))
                })
                .collect();
            if resolved.is_empty() {
                let mut names: Vec<&str> = ICMP_NAMES
                    .iter()
                    .chain(ICMPV6_NAMES)
                    .map(|(n, _)| *n)
                    .collect();
                names.sort_unstable();
                names.dedup();
                Err(format!(
                    "unknown ICMP type \"{text}\" for this rule's protocols; expected a number 0-255, \"TYPE/CODE\", or one of: {}",
                    names.join(", ")
                ))
            } else {
                Ok(resolved)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> PolicySet {
        match parse("p.toml", text) {
            Ok(p) => p,
            Err(e) => panic!("expected valid policy, got:\n{e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse("p.toml", text) {
            Ok(_) => panic!("expected an invalid policy:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const DESIGN_SKETCH: &str = r#"
mode = "enforce"
unknown_container = "deny"

[[policy]]
name = "public-web"
select = { label = { egress = "block" } }
allow = [
  { to = ["10.0.0.0/8", "192.168.0.0/16"], proto = "tcp", ports = [443] },
  { to = ["1.1.1.1/32", "2606:4700:4700::1111/128"], proto = "udp", ports = [53] },
]

[[policy]]
name = "curler"
select = { name = "curler" }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = ["1.1.1.0/24"], proto = "tcp", ports = [80, 443] },
         { to = ["1.1.1.0/24"], proto = "icmp" }]
"#;

    #[test]
    fn design_sketch_parses() {
        let p = ok(DESIGN_SKETCH);
        assert_eq!(p.policies.len(), 2);
        assert_eq!(p.unknown_container, Verdict::Deny);
        let web = &p.policies[0];
        assert_eq!(web.rules.len(), 2);
        assert_eq!(web.rules[0].dests.len(), 2);
        assert_eq!(
            web.rules[0].allowances,
            vec![Allowance {
                proto: 6,
                block: PortBlock {
                    port: 443,
                    bits: 16
                }
            }]
        );
        assert!(web.allow_loopback);
        let curler = &p.policies[1];
        assert_eq!(
            curler.processes[0].idents,
            vec![ProcessIdent::Exe("/usr/bin/curl".into())]
        );
        assert_eq!(
            curler.processes[0].rules[1].allowances,
            vec![Allowance {
                proto: 1,
                block: PortBlock::ALL
            }]
        );
        assert_eq!(curler.location.as_ref().unwrap().line, 13);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn unknown_key_has_location_and_expectation() {
        let e = err("[[policy]]\nname = \"a\"\nselect = { name = \"a\" }\nallow = [{ to = \"1.1.1.1\", prto = \"tcp\" }]\n");
        assert!(e.starts_with("p.toml:4:"), "{e}");
        assert!(e.contains("unknown field `prto`"), "{e}");
        assert!(e.contains("expected one of"), "{e}");
    }

    #[test]
    fn syntax_error_has_location() {
        let e = err("mode = \"enforce\"\n[[policy]\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
    }

    #[test]
    fn bad_enum_values_list_choices() {
        let e = err("mode = \"strict\"\n");
        assert!(e.starts_with("p.toml:1:8"), "{e}");
        assert!(e.contains("enforce") && e.contains("audit"), "{e}");
        let e = err("unknown_container = \"maybe\"\n");
        assert!(
            e.contains("deny") && e.contains("allow") && e.contains("audit"),
            "{e}"
        );
        let e =
            err("[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='1.1.1.1', proto='tcpp'}]\n");
        assert!(e.contains("tcpp") && e.contains("icmpv6"), "{e}");
    }

    #[test]
    fn every_semantic_error_is_reported_with_position() {
        let e = err(r#"[[policy]]
name = "a"
select = { name = "a" }
allow = [
  { to = ["10.0.0.0/33", "10.0.0.1/8"], proto = "tcp", ports = [70000, "90-80", 0] },
  { to = "1.1.1.1", proto = "icmp", ports = [80] },
  { to = "1.1.1.1", ports = [80] },
  { to = "2001:db8::/32", proto = "icmp" },
  { to = "1.1.1.1", proto = "icmp", icmp_types = [300, "bogus"] },
]
"#);
        for needle in [
            "p.toml:5:11: error: invalid destination: prefix length 33",
            "p.toml:5:26: error: invalid destination: `10.0.0.1/8` has host bits set",
            "p.toml:5:65: error: port 70000 is out of range",
            "p.toml:5:72: error: port range \"90-80\" is backwards",
            "p.toml:5:81: error: port 0 is no destination port",
            "p.toml:6:46: error: ports apply to tcp and udp",
            "p.toml:7:3: error: ports need a protocol",
            "p.toml:8:3: error: this rule allows nothing: icmp is IPv4 only",
            "p.toml:9:51: error: ICMP type 300 is out of range",
            "error: unknown ICMP type \"bogus\"",
        ] {
            assert!(e.contains(needle), "missing `{needle}` in:\n{e}");
        }
    }

    #[test]
    fn a_file_with_several_mistakes_reports_them_all() {
        let e = err(r#"mode = "strict"
unknown_container = "maybe"

[[policy]]
name = "web"
select = { name = "web" }
allow = [
  { to = ["10.0.0.0/33"], proto = "tcp", ports = [443] },
  { to = "1.1.1.1", proto = ["udp", "tcpp"], ports = [70000] },
  { to = "1.1.1.1", proto = "icmp", icmp_types = ["echo-requets"] },
]

[[policy]]
name = "web"
mode = "loud"
select = { name = "api" }
"#);
        for needle in [
            "p.toml:1:8: error: unknown mode \"strict\"; expected `enforce` or `audit`",
            "p.toml:2:21: error: unknown unknown_container \"maybe\"; expected one of `deny`, `allow`, `audit`",
            "p.toml:8:11: error: invalid destination: prefix length 33",
            "p.toml:9:37: error: unknown proto \"tcpp\"; expected one of `tcp`, `udp`",
            "p.toml:9:55: error: port 70000 is out of range",
            "p.toml:10:51: error: unknown ICMP type \"echo-requets\"",
            "p.toml:14:8: error: policy name \"web\" is already used on line 5",
            "p.toml:15:8: error: unknown mode \"loud\"",
        ] {
            assert!(e.contains(needle), "missing `{needle}` in:\n{e}");
        }
        assert_eq!(e.matches(": error: ").count(), 8, "{e}");
    }

    #[test]
    fn an_exe_entry_may_pin_its_files_content() {
        let pin = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        let p = ok(&format!(
            "[[policy]]\nname='a'\nselect={{name='x'}}\n[[policy.process]]\nexe=['/usr/bin/curl', '/bin/curl']\nsha256='{pin}'\nallow=[{{to='1.1.1.1'}}]\n"
        ));
        let entry = &p.policies[0].processes[0];
        assert_eq!(
            entry.sha256.as_deref(),
            Some(pin.to_ascii_lowercase().as_str())
        );
        assert_eq!(
            entry.exe_paths().collect::<Vec<_>>(),
            ["/usr/bin/curl", "/bin/curl"]
        );

        let e = err("[[policy]]\nname='a'\nselect={name='x'}\n[[policy.process]]\nexe='/usr/bin/curl'\nsha256='abc'\n");
        assert!(
            e.contains(
                "p.toml:6:8: error: sha256 \"abc\" is not a SHA-256: expected 64 hex digits"
            ),
            "{e}"
        );
        let e = err(&format!(
            "[[policy]]\nname='a'\nselect={{name='x'}}\n[[policy.process]]\ncomm='curl'\nsha256='{pin}'\n"
        ));
        assert!(
            e.contains("p.toml:6:8: error: sha256 pins the content of an exe's file; a comm entry names no file"),
            "{e}"
        );
        let e = err(
            "[[policy]]\nname='a'\nselect={name='x'}\n[[policy.process]]\nexe='usr/bin/curl'\n",
        );
        assert!(
            e.contains("p.toml:5:5: error: exe \"usr/bin/curl\" is not an absolute path"),
            "{e}"
        );
        let long = format!("/{}", "a".repeat(4096));
        let e = err(&format!(
            "[[policy]]\nname='a'\nselect={{name='x'}}\n[[policy.process]]\nexe='{long}'\n"
        ));
        assert!(e.contains("exe path is 4097 bytes long"), "{e}");
        // The same path twice in one policy is one executable.
        let e = err("[[policy]]\nname='a'\nselect={name='x'}\n[[policy.process]]\nexe='/bin/a'\n[[policy.process]]\nexe=['/bin/b', '/bin/a']\n");
        assert!(
            e.contains("exe /bin/a already has a process entry on line 4"),
            "{e}"
        );
    }

    #[test]
    fn conflicting_selectors_are_errors() {
        let e = err("[[policy]]\nname='a'\nselect={label={tier='web'}}\n[[policy]]\nname='b'\nselect={label={tier='web'}, image='nginx:*'}\n");
        assert!(
            e.contains("p.toml:6:8: error: conflicting selectors: policy \"b\" can never apply"),
            "{e}"
        );
        let e = err(
            "[[policy]]\nname='a'\nselect={name='x'}\n[[policy.process]]\nexe='/bin/a'\ncomm='a'\n",
        );
        assert!(e.contains("exe or comm, not both"), "{e}");
        let e = err("[[policy]]\nname='a'\nselect={name='x'}\n[[policy.process]]\ncomm='a'\nallow=[{to='1.1.1.1'}]\n[[policy.process]]\ncomm=['b','a']\nallow=[{to='1.1.1.1'}]\n");
        assert!(
            e.contains("comm a already has a process entry on line 4"),
            "{e}"
        );
        let e = err("[[policy]]\nname='a'\nselect={}\n");
        assert!(e.contains("select needs at least one of"), "{e}");
        let e = err(
            "[[policy]]\nname='a'\nselect={name='x'}\n[[policy]]\nname='a'\nselect={name='y'}\n",
        );
        assert!(e.contains("already used on line 2"), "{e}");
    }

    #[test]
    fn disjoint_selectors_are_fine() {
        let p = ok("[[policy]]\nname='a'\nselect={label={tier='web'}, image='nginx:*'}\n[[policy]]\nname='b'\nselect={label={tier='web'}}\n");
        assert_eq!(p.policies.len(), 2);
    }

    #[test]
    fn ports_ranges_icmp_and_lists() {
        let p = ok(r#"[[policy]]
name = "a"
select = { image = "nginx:*", namespace = "moby" }
allow = [
  { to = "1.1.1.1", proto = ["tcp", "udp"], ports = ["1-65535"] },
  { to = "1.1.1.2", proto = "tcp", ports = [80, 81, "82 - 83"] },
  { to = ["1.1.1.3", "::1:2"], proto = ["icmp", "icmpv6"], icmp_types = ["echo-request", "3/4", { type = 11 }, "packet-too-big"] },
]
"#);
        let rules = &p.policies[0].rules;
        assert_eq!(rules[0].allowances.len(), 2);
        assert!(rules[0]
            .allowances
            .iter()
            .all(|a| a.block == PortBlock::ALL));
        assert_eq!(
            rules[1].allowances,
            vec![Allowance {
                proto: 6,
                block: PortBlock { port: 80, bits: 14 }
            }]
        );
        let icmp: Vec<String> = rules[2]
            .allowances
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            icmp,
            [
                "icmp type 3 code 4",
                "icmp type 8",
                "icmp type 11",
                "icmpv6 type 2",
                "icmpv6 type 3 code 4",
                "icmpv6 type 11",
                "icmpv6 type 128"
            ]
        );
    }

    #[test]
    fn a_port_rule_to_docker_dns_is_warned_it_never_matches() {
        let p = ok(r#"[[policy]]
name = "a"
select = { name = "web" }
allow = [
  { to = "127.0.0.11", proto = "udp", ports = [53] },
  { to = "127.0.0.0/24", proto = "tcp", ports = [53] },
  { to = "127.0.0.11" },
  { to = "127.0.0.11", proto = "udp", ports = ["1-65535"] },
  { to = "0.0.0.0/0", proto = "tcp", ports = [443] },
]
"#);
        let w: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with("p.toml:5:10: warning: Docker rewrites"),
            "{w:#?}"
        );
        assert!(
            w[1].starts_with("p.toml:6:10: warning: Docker rewrites"),
            "{w:#?}"
        );
    }

    #[test]
    fn icmp_types_of_one_family_do_not_open_the_other() {
        for (types, missing) in [
            (r#"["timestamp-request"]"#, "icmpv6"),
            (r#"["redirect", "timestamp-reply"]"#, "icmpv6"),
            (r#"["packet-too-big"]"#, "icmp"),
            (
                r#"["neighbor-solicitation", "neighbor-advertisement"]"#,
                "icmp",
            ),
        ] {
            let text = format!(
                r#"[[policy]]
name = "a"
select = {{ name = "web" }}
allow = [{{ to = ["0.0.0.0/0", "::/0"], proto = ["icmp", "icmpv6"], icmp_types = {types} }}]
"#
            );
            let e = err(&text);
            assert!(
                e.contains(&format!("icmp_types names no {missing} type")),
                "{types}: {e}"
            );
        }
        // Each family named once: accepted, and no protocol of every type.
        let p = ok(r#"[[policy]]
name = "a"
select = { name = "web" }
allow = [{ to = ["0.0.0.0/0", "::/0"], proto = ["icmp", "icmpv6"], icmp_types = ["timestamp-request", "packet-too-big"] }]
"#);
        let allowances = &p.policies[0].rules[0].allowances;
        assert!(allowances.iter().all(|a| a.block != PortBlock::ALL));
        assert_eq!(
            allowances
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["icmp type 13", "icmpv6 type 2"]
        );
    }

    #[test]
    fn an_unknown_verdict_other_than_deny_is_warned_of() {
        for (verdict, warned) in [("deny", false), ("allow", true), ("audit", true)] {
            let p = ok(&format!("unknown_container = \"{verdict}\"\n"));
            let text: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
            assert_eq!(
                text.iter()
                    .any(|w| w.contains("\"deny\" fails closed there")),
                warned,
                "{verdict}: {text:?}"
            );
        }
        assert!(ok("").warnings.is_empty(), "the default is deny");
    }

    #[test]
    fn warnings_do_not_block() {
        let p = ok(r#"[[policy]]
name = "a"
select = { name = "a" }
allow = [{ to = ["1.1.1.1", "1.1.1.1", "2001:db8::1"], proto = "icmp" }]
[[policy.process]]
comm = "averyveryverylongname"
"#);
        let text: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|w| w.contains("listed twice")), "{text:?}");
        assert!(
            text.iter()
                .any(|w| w.contains("get nothing from this rule")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|w| w.contains("longer than the 15 bytes")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|w| w.contains("no allow rules of its own")),
            "{text:?}"
        );
    }

    #[test]
    fn ipv6_rules_over_translator_prefixes_warn_with_their_position() {
        let p = ok(r#"[[policy]]
name = "a"
select = { name = "a" }
allow = [
  { to = ["2001:db8::/32", "64:ff9b::/96"], proto = "tcp", ports = [443] },
  { to = "::/0", proto = "icmpv6" },
  { to = "2606:4700:4700::1111", proto = "udp", ports = [53] },
]
"#);
        let text: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with("p.toml:5:28: warning: destination 64:ff9b::/96 covers IPv6 prefixes that reach IPv4 hosts through translators (NAT64 64:ff9b::/96)"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("p.toml:6:10: warning: destination ::/0 covers")
                && text[1].contains("6to4 2002::/16")
                && text[1].contains("Teredo 2001::/32"),
            "{text:#?}"
        );
    }

    #[test]
    fn policy_mode_and_loopback_override() {
        let p = ok("mode='audit'\nallow_loopback=false\n[[policy]]\nname='a'\nselect={name='a'}\n[[policy]]\nname='b'\nmode='enforce'\nallow_loopback=true\nselect={name='b'}\n");
        assert_eq!(
            (p.policies[0].mode, p.policies[0].allow_loopback),
            (Mode::Audit, false)
        );
        assert_eq!(
            (p.policies[1].mode, p.policies[1].allow_loopback),
            (Mode::Enforce, true)
        );
    }

    #[test]
    fn hostile_input_never_panics() {
        for text in [
            "", "\u{0}", "[[policy]]", "policy = 5", "[[policy]]\nname=1", "[[policy]]\nname='a'\nselect={name=''}",
            "[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to=[]}]",
            "[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='1.1.1.1', proto=[]}]",
            "[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='1.1.1.1', proto='tcp', ports=[]}]",
            "[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='1.1.1.1', proto='tcp', ports=[99999999999999999999]}]",
            "[[policy]]\nname='a'\nselect={name='a'}\nallow=[{to='1.1.1.1', proto='icmp', icmp_types=[{type=-1, code=999}]}]",
            "[[policy]]\nname='a'\nselect={name='a'}\n[[policy.process]]\nexe='relative'",
        ] {
            let _ = parse("p.toml", text);
        }
    }
}
