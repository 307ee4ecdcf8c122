//! Per-packet cost of the egress program (BPF_PROG_TEST_RUN), at 10, 1 000
//! and 100 000 rules, against a program that only returns "pass" (the
//! floor), all measured in the same run. Root only.
//!
//!   sudo cargo bench -p bpf-loader --bench egress_cost
//!
//! Rules are random destinations (/32, /28, /24 in 198.18.0.0/15) with
//! random TCP ports, so the LPM trie has a realistic depth. The dummy
//! socket of a test run has no socket storage, so every run takes the full
//! decision path (cgroup, process class, two LPM lookups): this is the
//! worst case, not the per-flow cached path real traffic mostly takes.

#[path = "../tests/common/packets.rs"]
mod packets;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
};

use aya::{programs::CgroupSkb, EbpfLoader};
use bpf_loader::{kernel::Kernel, testrun};
use contain_common::{program_names, v4_mapped};
use proto::state::{CgroupEntry, DestKey, Entry, KernelState, MapDiff, PortKey, Verdict};

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 7;
const RULE_COUNTS: [usize; 3] = [10, 1_000, 100_000];

/// A small deterministic PRNG (xorshift), so every run builds the same rules.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn rules(count: usize, cgroup_id: u64) -> KernelState {
    let mut state = KernelState::default();
    state.upsert(Entry::Cgroup {
        id: cgroup_id,
        value: CgroupEntry {
            policy_id: 1,
            audit: false,
            unrestricted: false,
        },
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rulesets: BTreeMap<u16, u32> = BTreeMap::new();
    let mut add = |state: &mut KernelState, addr: [u8; 4], prefix: u8, port: u16| {
        let mut masked = u32::from_be_bytes(addr);
        if prefix < 32 {
            masked &= !(u32::MAX >> prefix);
        }
        let key = DestKey {
            policy_id: 1,
            class: 0,
            addr: v4_mapped(masked.to_be_bytes()),
            prefix_len: 96 + prefix,
        };
        if state.dests.contains_key(&key) {
            return;
        }
        let next = rulesets.len() as u32 + 1;
        let ruleset = *rulesets.entry(port).or_insert(next);
        state.upsert(Entry::Dest { key, ruleset });
        state.upsert(Entry::Port {
            key: PortKey {
                ruleset,
                proto: 6,
                port,
                port_bits: 16,
            },
            rule_id: ruleset,
        });
    };
    add(&mut state, [198, 18, 0, 1], 32, 443);
    while state.dests.len() < count {
        let r = rng.next();
        let host = 0xC612_0000u32 | (r as u32 & 0x1_FFFF);
        let prefix = [32, 32, 32, 28, 24][(r >> 20) as usize % 5];
        let port = 1024 + (r >> 32) as u16 % 4096;
        add(&mut state, host.to_be_bytes(), prefix, port);
    }
    state
}

fn median_ns(fd: i32, packet: &[u8], expected: u32) -> u32 {
    let mut samples: Vec<u32> = (0..ROUNDS)
        .map(|_| {
            let run = testrun::run(fd, packet, REPEAT).expect("BPF_PROG_TEST_RUN");
            assert_eq!(
                run.retval, expected,
                "unexpected verdict during the benchmark"
            );
            run.duration_ns
        })
        .collect();
    samples.sort_unstable();
    samples[ROUNDS / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("egress_cost: needs root (loads BPF programs); not run");
        return;
    }
    let pin_dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/contain-bench-{}", std::process::id()));
    let (mut kernel, _events) = Kernel::load(&pin_dir).expect("loading contain's object");
    let egress = kernel
        .program_fd(program_names::EGRESS)
        .expect("egress program");

    let mut baselines = EbpfLoader::new()
        .load(bpf_loader::BASELINES_OBJECT)
        .expect("baseline object (built by build.rs)");
    let pass: &mut CgroupSkb = baselines
        .program_mut("baseline_pass")
        .expect("baseline_pass")
        .try_into()
        .expect("cgroup_skb");
    pass.load().expect("loading baseline_pass");
    let pass_fd = pass.fd().expect("fd").as_fd().as_raw_fd();

    let allowed = packets::ipv4(Ipv4Addr::new(198, 18, 0, 1), packets::TCP, 443, 0, 0);
    let denied = packets::ipv4(Ipv4Addr::new(203, 0, 113, 9), packets::TCP, 443, 0, 0);
    let cgroup_id = bpf_loader::fs::own_cgroup_id().expect("own cgroup id");

    let floor = median_ns(pass_fd, &allowed, 1);
    let mut rows = Vec::new();
    for count in RULE_COUNTS {
        let desired = rules(count, cgroup_id);
        let diff = MapDiff {
            from_generation: kernel.generation(),
            unknown_verdict: Some(Verdict::Deny),
            ops: kernel.state().diff_to(&desired),
        };
        kernel.apply(&diff).expect("applying the benchmark rules");
        let allow_ns = median_ns(egress, &allowed, 1);
        let deny_ns = median_ns(egress, &denied, 0);
        rows.push((count, allow_ns, deny_ns));
    }
    drop(kernel);
    let _ = std::fs::remove_dir_all(&pin_dir);

    println!(
        "egress program cost per packet, BPF_PROG_TEST_RUN, median of {ROUNDS} x {REPEAT} runs"
    );
    println!("floor (program that only returns pass): {floor} ns");
    println!(
        "{:>8}  {:>10}  {:>10}  {:>12}  {:>12}",
        "rules", "allow ns", "deny ns", "vs 10 rules", "vs floor"
    );
    let base = rows[0].1.max(1) as f64;
    for (count, allow_ns, deny_ns) in &rows {
        println!(
            "{count:>8}  {allow_ns:>10}  {deny_ns:>10}  {:>11.2}x  {:>11.2}x",
            *allow_ns as f64 / base,
            *allow_ns as f64 / floor.max(1) as f64
        );
    }
    let json: Vec<String> = rows
        .iter()
        .map(|(c, a, d)| format!("{{\"rules\":{c},\"allow_ns\":{a},\"deny_ns\":{d}}}"))
        .collect();
    println!(
        "JSON {{\"floor_ns\":{floor},\"rows\":[{}]}}",
        json.join(",")
    );
}
