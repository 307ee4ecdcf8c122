//! Synthetic policies and inventories of a chosen size, for the benchmark
//! and the scaling tests. Every rule sits on its own line, ending in
//! `# rule N`, so a test can edit exactly one rule.

use std::fmt::Write;

use kernel_model::state::FileId;
use proto::resolver::ExeFile;

use policyd::inventory::{Container, Inventory};

/// The destination of rule `n`: mostly IPv4 host routes, some /24s and
/// IPv6 prefixes, spread so few of them nest.
fn dest(n: usize) -> String {
    let (a, b, c) = ((n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    match n % 10 {
        7 => format!("2001:db8:{:x}:{:x}::/64", n >> 16, n & 0xffff),
        // n / 10 is distinct for every such rule (up to 40 960 of them).
        9 => format!("172.{}.{}.0/24", 16 + (n / 2560) % 16, (n / 10) % 256),
        _ => format!("10.{a}.{b}.{c}"),
    }
}

/// The protocol part of rule `n`: a handful of distinct port sets, as real
/// policies have, so rulesets are shared.
fn allowance(n: usize) -> &'static str {
    match n % 5 {
        0 | 1 => "proto = \"tcp\", ports = [443]",
        2 => "proto = \"tcp\", ports = [80, 443]",
        3 => "proto = [\"tcp\", \"udp\"], ports = [53, \"8000-8080\"]",
        _ => "proto = \"icmp\", icmp_types = [\"echo-request\"]",
    }
}

/// The line of rule `n`.
pub fn rule_line(n: usize) -> String {
    let d = dest(n);
    let a = if n % 10 == 7 && n % 5 == 4 {
        "proto = \"icmpv6\""
    } else {
        allowance(n)
    };
    format!("  {{ to = \"{d}\", {a} }}, # rule {n}\n")
}

/// `rules` rules spread over `policies` policies, each policy with two
/// process entries holding a tenth of its rules. Policy `p` selects the
/// container named `c{p}`.
pub fn policy_text(rules: usize, policies: usize) -> String {
    let policies = policies.max(1);
    let per_policy = rules.div_ceil(policies);
    let mut text = String::from("mode = \"enforce\"\nunknown_container = \"deny\"\n");
    let mut n = 0;
    for p in 0..policies {
        let count = per_policy.min(rules - n);
        let process_rules = count / 10;
        let container_rules = count - 2 * process_rules;
        let _ = write!(
            text,
            "\n[[policy]]\nname = \"policy-{p}\"\nselect = {{ name = \"c{p}\" }}\nallow = [\n"
        );
        for _ in 0..container_rules {
            text.push_str(&rule_line(n));
            n += 1;
        }
        text.push_str("]\n");
        for exe in ["/usr/bin/curl", "/usr/bin/wget"] {
            let _ = write!(text, "[[policy.process]]\nexe = \"{exe}\"\nallow = [\n");
            for _ in 0..process_rules {
                text.push_str(&rule_line(n));
                n += 1;
            }
            text.push_str("]\n");
        }
    }
    text
}

/// `containers` containers named `c0`, `c1`, …, with cgroup ids 1000 + i,
/// a veth each, host ifindex 100 + i, and their own `/usr/bin/curl` and
/// `/usr/bin/wget` (each container's root filesystem is its own device).
pub fn inventory(containers: usize) -> Inventory {
    Inventory {
        containers: (0..containers)
            .map(|i| Container {
                id: format!("{i:064x}"),
                name: format!("c{i}"),
                image: "alpine:3.20".into(),
                namespace: "moby".into(),
                runtime: "docker".into(),
                cgroup_id: Some(1000 + i as u64),
                host_veths: vec![100 + i as u32],
                exes: [("/usr/bin/curl", 101), ("/usr/bin/wget", 102)]
                    .into_iter()
                    .map(|(path, ino)| {
                        let file = FileId {
                            dev: 64 + i as u32,
                            ino,
                            ctime_sec: 1_700_000_000,
                            ctime_nsec: 0,
                        };
                        (
                            path.to_string(),
                            Ok(ExeFile {
                                file,
                                ..ExeFile::default()
                            }),
                        )
                    })
                    .collect(),
                ..Container::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_policy_is_valid_and_sized() {
        let text = policy_text(1000, 4);
        let set = policyd::policy::parse("synthetic.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let rules: usize = set.policies.iter().map(|p| p.rule_count()).sum();
        assert_eq!(rules, 1000);
        assert_eq!(set.policies.len(), 4);
    }
}
