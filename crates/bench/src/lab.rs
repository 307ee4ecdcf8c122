//! The measured setup: one "container" network namespace per filter
//! configuration, each with its own veth to one shared peer namespace and
//! its own cgroup; contain's programs, the thesis-style program or an
//! nftables table applied to it. All configurations exist at once, so the
//! phases can go round-robin over them.
//!
//! Configuration k: client 198.18.k.2/24 in `cbench-<pid>-k`, peer
//! 198.18.k.1/24 in `cbench-<pid>-peer`; static neighbour entries (no ARP
//! in the measurements); IPv6 off on the veths (no background chatter).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context as _, Result};
use bpf_loader::kernel::Kernel;
use proto::state::{MapDiff, Verdict};
use serde::{Deserialize, Serialize};

use crate::{
    programs::{Floor, Thesis, BOUNDED_MAX},
    rules::{self, ContainState, Rule},
    sys,
};

/// TCP request/response server port on the peer.
pub const RR_PORT: u16 = 7777;
/// iperf3 server port on the peer.
pub const IPERF_PORT: u16 = 5201;
/// A prefix rule every list carries (never the destination of traffic;
/// the BPF_PROG_TEST_RUN "allowed by a prefix" packet goes there).
pub const PREFIX_RULE: Rule = Rule {
    addr: Ipv4Addr::new(198, 18, 240, 0),
    prefix: 24,
    proto: rules::TCP,
    port: 443,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    None,
    Contain,
    Thesis,
    ThesisBounded,
    NftLinear,
    NftSet,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::None => "no filter",
            Kind::Contain => "contain",
            Kind::Thesis => "thesis-style scan",
            Kind::ThesisBounded => "thesis-style, bounded loop",
            Kind::NftLinear => "nftables, one rule per entry",
            Kind::NftSet => "nftables, one set lookup",
        }
    }
}

pub struct Target {
    pub kind: Kind,
    pub rules: usize,
    pub ns: String,
    pub cgroup: PathBuf,
    pub client: Ipv4Addr,
    pub peer: Ipv4Addr,
}

impl Target {
    pub fn name(&self) -> String {
        match self.kind {
            Kind::None => "none".into(),
            k => format!(
                "{}@{}",
                serde_json::to_value(k)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("?"),
                self.rules
            ),
        }
    }
}

/// The rules the measured traffic to `peer` needs: ICMP, the TCP
/// request/response port and iperf3's port, plus the prefix rule.
pub fn needed(peer: Ipv4Addr) -> Vec<Rule> {
    vec![
        Rule::host(peer, rules::ICMP, 0),
        Rule::host(peer, rules::TCP, RR_PORT),
        Rule::host(peer, rules::TCP, IPERF_PORT),
        PREFIX_RULE,
    ]
}

pub struct Options {
    pub counts: Vec<usize>,
    /// Build namespaces, veths and nftables (latency, throughput); the
    /// program-cost phase needs only the BPF side.
    pub network: bool,
}

pub struct Lab {
    pub name: String,
    pub base: PathBuf,
    pub home: PathBuf,
    pub peer_ns: String,
    pub targets: Vec<Target>,
    pub kernel: Kernel,
    pin_dir: PathBuf,
    /// Thesis-style programs by (Thesis or ThesisBounded, rule count).
    pub thesis: BTreeMap<(Kind, usize), Thesis>,
    pub floor: Floor,
    /// Seconds to load each nftables table, by target name.
    pub nft_load_s: BTreeMap<String, f64>,
    network: bool,
    servers: Vec<JoinHandle<()>>,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
}

impl Lab {
    pub fn new(opts: &Options) -> Result<Lab> {
        sys::sweep_leftovers();
        let name = sys::run_name();
        let root = sys::cgroup_root()?;
        let base = root.join(&name);
        std::fs::create_dir_all(&base)?;
        let home = sys::own_cgroup()?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let (kernel, _events) = Kernel::load(&pin_dir)
            .context("loading contain's eBPF object (bpf-loader's Kernel)")?;
        let mut lab = Lab {
            peer_ns: format!("{name}-peer"),
            name,
            base,
            home,
            targets: Vec::new(),
            kernel,
            pin_dir,
            thesis: BTreeMap::new(),
            floor: Floor::load()?,
            nft_load_s: BTreeMap::new(),
            network: opts.network,
            servers: Vec::new(),
            children: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let mut k = 0u8;
        let mut add = |lab: &mut Lab, kind: Kind, rules: usize| {
            k += 1;
            let target = Target {
                kind,
                rules,
                ns: format!("{}-{k}", lab.name),
                cgroup: lab.base.join(match kind {
                    Kind::Contain => format!("contain/r{rules}"),
                    _ => format!("t{k}"),
                }),
                client: Ipv4Addr::new(198, 18, k, 2),
                peer: Ipv4Addr::new(198, 18, k, 1),
            };
            lab.targets.push(target);
        };
        add(&mut lab, Kind::None, 0);
        for kind in [
            Kind::Contain,
            Kind::Thesis,
            Kind::ThesisBounded,
            Kind::NftLinear,
            Kind::NftSet,
        ] {
            if !opts.network && matches!(kind, Kind::NftLinear | Kind::NftSet) {
                continue;
            }
            for &n in &opts.counts {
                if kind == Kind::ThesisBounded && n > BOUNDED_MAX {
                    continue;
                }
                add(&mut lab, kind, n);
            }
        }
        for t in &lab.targets {
            std::fs::create_dir_all(&t.cgroup)?;
        }
        lab.setup_contain()?;
        lab.setup_thesis()?;
        if opts.network {
            lab.setup_network()?;
            lab.setup_nft()?;
        }
        Ok(lab)
    }

    fn setup_contain(&mut self) -> Result<()> {
        let parent = format!("{}/contain", self.name);
        self.kernel
            .attach(&parent)
            .with_context(|| format!("attaching contain to {parent}"))?;
        let mut state = ContainState::default();
        for (i, t) in self.targets.iter().enumerate() {
            if t.kind == Kind::Contain {
                let list = rules::list(t.rules, &needed(t.peer));
                state.add_policy(i as u32 + 1, sys::cgroup_id(&t.cgroup)?, &list);
            }
        }
        let diff = MapDiff {
            from_generation: self.kernel.generation(),
            unknown_verdict: Some(Verdict::Deny),
            ops: self.kernel.state().diff_to(&state.state),
        };
        self.kernel
            .apply(&diff)
            .map_err(|e| anyhow::anyhow!("applying the benchmark rules: {e:?}"))?;
        Ok(())
    }

    fn setup_thesis(&mut self) -> Result<()> {
        for t in &self.targets {
            if !matches!(t.kind, Kind::Thesis | Kind::ThesisBounded) {
                continue;
            }
            let list = rules::list(t.rules, &needed(t.peer));
            let mut prog = Thesis::load(&list, t.kind == Kind::ThesisBounded)?;
            if self.network {
                prog.attach(&t.cgroup)?;
            }
            self.thesis.insert((t.kind, t.rules), prog);
        }
        Ok(())
    }

    fn setup_network(&mut self) -> Result<()> {
        let peer = &self.peer_ns;
        let quiet =
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1";
        sys::run("ip", &["netns", "add", peer])?;
        sys::run("ip", &["-n", peer, "link", "set", "lo", "up"])?;
        sys::run("ip", &["netns", "exec", peer, "sh", "-c", quiet])?;
        for (i, t) in self.targets.iter().enumerate() {
            let k = i + 1;
            let (ns, pv) = (t.ns.as_str(), format!("p{k}"));
            let (cmac, pmac) = (
                format!("02:cb:00:00:{k:02x}:02"),
                format!("02:cb:00:00:{k:02x}:01"),
            );
            sys::run("ip", &["netns", "add", ns])?;
            sys::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sh",
                    "-c",
                    &format!("{quiet}; sysctl -qw net.ipv4.ping_group_range='0 2147483647'"),
                ],
            )?;
            sys::run(
                "ip",
                &[
                    "-n", ns, "link", "add", "vc", "address", &cmac, "type", "veth", "peer",
                    "name", &pv, "address", &pmac, "netns", peer,
                ],
            )?;
            let c = t.client.to_string();
            let p = t.peer.to_string();
            sys::run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{c}/24"), "dev", "vc"],
            )?;
            sys::run(
                "ip",
                &["-n", peer, "addr", "add", &format!("{p}/24"), "dev", &pv],
            )?;
            sys::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            sys::run("ip", &["-n", ns, "link", "set", "vc", "up"])?;
            sys::run("ip", &["-n", peer, "link", "set", &pv, "up"])?;
            sys::run(
                "ip",
                &[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    &p,
                    "lladdr",
                    &pmac,
                    "dev",
                    "vc",
                    "nud",
                    "permanent",
                ],
            )?;
            sys::run(
                "ip",
                &[
                    "-n",
                    peer,
                    "neigh",
                    "replace",
                    &c,
                    "lladdr",
                    &cmac,
                    "dev",
                    &pv,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        // The TCP request/response server, in the peer namespace.
        let stop = self.stop.clone();
        let listener = sys::in_netns(peer, move || {
            let l = std::net::TcpListener::bind(("0.0.0.0", RR_PORT))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        self.servers.push(std::thread::spawn(move || {
            crate::latency::serve(listener, stop)
        }));
        Ok(())
    }

    fn setup_nft(&mut self) -> Result<()> {
        for t in &self.targets {
            let text = match t.kind {
                Kind::NftLinear => rules::nft_linear(&rules::list(t.rules, &needed(t.peer))),
                Kind::NftSet => rules::nft_set(&rules::list(t.rules, &needed(t.peer))),
                _ => continue,
            };
            let started = Instant::now();
            sys::run_with_input(
                "ip",
                &["netns", "exec", &t.ns, "nft", "-f", "-"],
                text.as_bytes(),
            )
            .with_context(|| format!("loading the nftables rules of {}", t.name()))?;
            self.nft_load_s
                .insert(t.name(), started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Keeps a child (e.g. an iperf3 server) to stop when the lab goes.
    pub fn adopt_child(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Moves this process into a target's cgroup (its sockets and the
    /// dummy socket of a test run get that cgroup) or back home.
    pub fn enter(&self, target: Option<&Target>) -> Result<()> {
        match target {
            Some(t) => sys::enter_cgroup(&t.cgroup),
            None => sys::enter_cgroup(&self.home),
        }
    }

    pub fn egress_fd(&self) -> Result<i32> {
        self.kernel
            .program_fd(contain_common::program_names::EGRESS)
            .context("contain's egress program")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sys::enter_cgroup(&self.home);
        self.stop.store(true, Ordering::SeqCst);
        for mut c in self.children.drain(..) {
            sys::stop(&mut c);
        }
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        self.thesis.clear();
        if self.network {
            for t in &self.targets {
                let _ = sys::run("ip", &["netns", "del", &t.ns]);
            }
            let _ = sys::run("ip", &["netns", "del", &self.peer_ns]);
        }
        sys::remove_pin_tree(&self.pin_dir);
        sys::remove_cgroup_tree(&self.base);
    }
}

/// How many rules the measured traffic needs (the smallest list).
pub fn needed_len() -> usize {
    needed(Ipv4Addr::UNSPECIFIED).len()
}
