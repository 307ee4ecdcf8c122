//! One abstract allow-list, written three ways: contain's kernel state,
//! the thesis-style entry array, and nftables (a linear chain, and a set).
//!
//! A list of N rules is N − k synthetic rules plus the k rules the measured
//! traffic needs, placed in the middle: a linear scan reads about half the
//! list before it finds them, the average for a uniformly placed rule.
//! Synthetic rules are TCP to one port each, to destinations in 10.0.0.0/8
//! (/32, /30 or /28, each in its own /28 block so no two overlap and every
//! form of the list gives the same verdicts). No traffic is ever sent to
//! them.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use contain_common::v4_mapped;
use kernel_model::state::{CgroupEntry, DestPrefix, Entry, KernelState, PortPrefix};

pub const TCP: u8 = 6;
pub const ICMP: u8 = 1;
pub const UDP: u8 = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub proto: u8,
    /// TCP port; 0 with ICMP = every ICMP type.
    pub port: u16,
}

impl Rule {
    pub fn host(addr: Ipv4Addr, proto: u8, port: u16) -> Rule {
        Rule {
            addr,
            prefix: 32,
            proto,
            port,
        }
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
}

/// A small deterministic PRNG (xorshift): every run builds the same rules
/// (and the cache-cold phase draws the same destinations). The seed must
/// not be 0.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `count` synthetic rules (always the same ones for the same count).
pub fn synthetic(count: usize) -> Vec<Rule> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut blocks = HashSet::with_capacity(count);
    let mut rules = Vec::with_capacity(count);
    while rules.len() < count {
        let r = rng.next();
        // A /28 block of 10.0.0.0/8: 2^20 of them.
        let block = (r as u32) & 0xF_FFFF;
        if !blocks.insert(block) {
            continue;
        }
        let base = 0x0A00_0000 | (block << 4);
        let prefix = [32u8, 32, 32, 30, 28][(r >> 24) as usize % 5];
        let host = base | ((r >> 32) as u32 & 0xF);
        let mask = u32::MAX << (32 - prefix);
        rules.push(Rule {
            addr: Ipv4Addr::from(host & mask),
            prefix,
            proto: TCP,
            port: 1024 + ((r >> 40) as u16 % 4096),
        });
    }
    rules
}

/// A list of `count` rules with `needed` in the middle.
pub fn list(count: usize, needed: &[Rule]) -> Vec<Rule> {
    let mut rules = synthetic(count.saturating_sub(needed.len()));
    let middle = rules.len() / 2;
    rules.splice(middle..middle, needed.iter().copied());
    rules
}

/// Builds contain's kernel state for several (cgroup, rule list) pairs,
/// one policy each, the way policyd lays it out: one `Dest` entry per
/// destination prefix pointing to a ruleset, identical rulesets shared,
/// one `Port` entry per (ruleset, protocol, port).
#[derive(Default)]
pub struct ContainState {
    pub state: KernelState,
    rulesets: BTreeMap<Vec<(u8, u16)>, u32>,
}

impl ContainState {
    pub fn add_policy(&mut self, policy_id: u32, cgroup_id: u64, rules: &[Rule]) {
        self.state.upsert(Entry::Cgroup {
            id: cgroup_id,
            value: CgroupEntry {
                policy_id,
                audit: false,
                unrestricted: false,
                forwarded_dns: false,
            },
        });
        let mut by_dest: BTreeMap<(u32, u8), Vec<(u8, u16)>> = BTreeMap::new();
        for r in rules {
            by_dest
                .entry((u32::from(r.addr), r.prefix))
                .or_default()
                .push((r.proto, r.port));
        }
        for ((addr, prefix), mut allowances) in by_dest {
            allowances.sort_unstable();
            allowances.dedup();
            let next = self.rulesets.len() as u32 + 1;
            let (ruleset, fresh) = match self.rulesets.get(&allowances) {
                Some(&id) => (id, false),
                None => {
                    self.rulesets.insert(allowances.clone(), next);
                    (next, true)
                }
            };
            self.state.upsert(Entry::Dest {
                key: DestPrefix {
                    policy_id,
                    class: 0,
                    addr: v4_mapped(Ipv4Addr::from(addr).octets()),
                    prefix_len: 96 + prefix,
                },
                ruleset,
            });
            if fresh {
                for (proto, port) in allowances {
                    let (port, port_bits) = match (proto, port) {
                        (_, 0) => (0, 0),
                        (_, p) => (p, 16),
                    };
                    self.state.upsert(Entry::Port {
                        key: PortPrefix {
                            ruleset,
                            proto,
                            port,
                            port_bits,
                        },
                        rule_id: ruleset,
                    });
                }
            }
        }
    }
}

/// The thesis-style entry (layout of `ThesisRule` in
/// crates/contain-ebpf/src/baselines.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThesisRule {
    pub addr: u32,
    pub mask: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

// SAFETY: repr(C), plain integers, no implicit padding (4+4+2+1+1).
unsafe impl aya::Pod for ThesisRule {}

pub fn thesis_entries(rules: &[Rule]) -> Vec<ThesisRule> {
    rules
        .iter()
        .map(|r| ThesisRule {
            addr: u32::from_ne_bytes(r.addr.octets()),
            mask: u32::from_ne_bytes(r.mask().to_be_bytes()),
            port: r.port,
            proto: r.proto,
            _pad: 0,
        })
        .collect()
}

fn nft_dest(r: &Rule) -> String {
    if r.prefix == 32 {
        r.addr.to_string()
    } else {
        format!("{}/{}", r.addr, r.prefix)
    }
}

/// The table name both nftables forms use (one per namespace).
pub const NFT_TABLE: &str = "cbench";

/// nftables, one rule per entry, evaluated in order (what iptables does,
/// and what the thesis' scan does), policy drop.
pub fn nft_linear(rules: &[Rule]) -> String {
    let mut s = format!(
        "table ip {NFT_TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy drop;\n"
    );
    for r in rules {
        let d = nft_dest(r);
        let _ = match (r.proto, r.port) {
            (ICMP, _) => writeln!(s, "  ip daddr {d} ip protocol icmp accept"),
            (TCP, 0) => writeln!(s, "  ip daddr {d} ip protocol tcp accept"),
            (TCP, p) => writeln!(s, "  ip daddr {d} tcp dport {p} accept"),
            (UDP, 0) => writeln!(s, "  ip daddr {d} ip protocol udp accept"),
            (UDP, p) => writeln!(s, "  ip daddr {d} udp dport {p} accept"),
            (proto, _) => writeln!(s, "  ip daddr {d} ip protocol {proto} accept"),
        };
    }
    s.push_str(" }\n}\n");
    s
}

/// nftables the efficient way: one lookup in a concatenated interval set
/// (address . protocol . port), ICMP in a set of addresses; policy drop.
pub fn nft_set(rules: &[Rule]) -> String {
    let mut ports = Vec::new();
    let mut icmp = Vec::new();
    for r in rules {
        match (r.proto, r.port) {
            (ICMP, _) => icmp.push(nft_dest(r)),
            (proto, port) => ports.push(format!(
                "{} . {proto} . {}",
                nft_dest(r),
                if port == 0 {
                    "0-65535".to_string()
                } else {
                    port.to_string()
                }
            )),
        }
    }
    let mut s = format!("table ip {NFT_TABLE} {{\n");
    let mut set = |name: &str, ty: &str, elements: &[String]| {
        let _ = writeln!(s, " set {name} {{\n  type {ty}; flags interval;");
        if !elements.is_empty() {
            let _ = writeln!(s, "  elements = {{ {} }}", elements.join(",\n   "));
        }
        s.push_str(" }\n");
    };
    set("allow", "ipv4_addr . inet_proto . inet_service", &ports);
    set("allow_icmp", "ipv4_addr", &icmp);
    s.push_str(
        " chain out {\n  type filter hook output priority 0; policy drop;\n  ip daddr . ip protocol . th dport @allow accept\n  ip protocol icmp ip daddr @allow_icmp accept\n }\n}\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_have_the_size_asked_and_no_overlaps() {
        let needed = [Rule::host(Ipv4Addr::new(198, 18, 1, 1), ICMP, 0)];
        for count in [10, 1000] {
            let l = list(count, &needed);
            assert_eq!(l.len(), count);
            assert_eq!(l[(count - 1) / 2], needed[0]);
            let blocks: HashSet<u32> = l.iter().map(|r| u32::from(r.addr) >> 4).collect();
            assert_eq!(blocks.len(), count);
        }
    }

    #[test]
    fn contain_state_shares_rulesets() {
        let rules = list(100, &[]);
        let mut c = ContainState::default();
        c.add_policy(1, 42, &rules);
        assert_eq!(c.state.dests.len(), 100);
        assert!(c.state.ports.len() <= 100);
    }

    #[test]
    fn thesis_masks_are_network_order() {
        let e = thesis_entries(&[Rule {
            addr: Ipv4Addr::new(10, 1, 2, 0),
            prefix: 24,
            proto: TCP,
            port: 80,
        }]);
        assert_eq!(e[0].mask.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(e[0].addr.to_ne_bytes(), [10, 1, 2, 0]);
    }
}
