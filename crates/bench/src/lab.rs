//! The measured setup: one "container" network namespace per filter
//! configuration, each with its own veth to one shared peer namespace and
//! its own cgroup; contain's programs, the thesis-style program or an
//! nftables table applied to it. All configurations exist at once, so the
//! phases can go round-robin over them.
//!
//! Configuration k: client 198.18.k.2/24 in `cbench-<pid>-k`, peer
//! 198.18.k.1/24 on `p<k>` in `cbench-<pid>-peer`; static neighbour
//! entries (no ARP in the measurements); IPv6 off on the veths (no
//! background chatter).
//!
//! The veth backstop: the peer namespace plays the host, and `p<k>` is the
//! host side of configuration k's veth, where Docker's host end of a
//! container's veth is. For the "contain + veth backstop" configurations
//! the bench attaches the backstop there the way bpf-loader does
//! (`Kernel::attach_veth`: `contain_veth` on tc ingress, what the
//! container sends, and `contain_veth_inbound` on tc egress, what it
//! receives; tcx, first in line, the links pinned) and maps the device to
//! the configuration's cgroup in `CONTAIN_VETHS`, as policyd would. Every
//! configuration's path is the same single veth pair; only what is
//! attached to it differs.
//!
//! The program-cost phase test-runs `contain_veth` on veths of its own
//! namespace, `cbench-<pid>-tr` (BPF_PROG_TEST_RUN looks the context's
//! ifindex up in the caller's namespace): one mapped to each contain
//! configuration's cgroup (ifindex 2000 + i), one mapped to nothing.

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
use kernel_model::{
    diff::MapDiff,
    state::{Entry, Verdict, VethSource},
};
use serde::{Deserialize, Serialize};
use test_kit::{
    cgroup, cleanup,
    lab::{self as netlab, Netns, VethEnd},
    process,
    tc_program::{self, Placement, TcProgram},
};

use crate::{
    programs::{EstablishedVia, Floor, Thesis, BOUNDED_MAX},
    rules::{self, ContainState, Rule},
    sys,
};

/// TCP request/response server port on the peer.
pub const RR_PORT: u16 = 7777;
/// iperf3 server port on the peer.
pub const IPERF_PORT: u16 = 5201;
/// UDP port on the peer the socket-call phase sends to, allowed (a bound
/// socket there that nobody reads: datagrams are dropped silently once its
/// buffer is full, no ICMP).
pub const UDP_SINK_PORT: u16 = 9999;
/// UDP port on the peer the socket-call phase sends to, denied by every
/// contain list (also a bound socket, so the configurations without
/// contain send there quietly too).
pub const UDP_DENIED_PORT: u16 = 9998;
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
    /// contain's cgroup programs, and `contain_veth` on the host side of
    /// the configuration's veth.
    ContainVeth,
    /// contain's cgroup programs, and a tc program that only passes on
    /// the host side of the veth (tcx, as the backstop): the hook's cost.
    ContainTcFloor,
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
            Kind::ContainVeth => "contain + veth backstop",
            Kind::ContainTcFloor => "contain + a tc program that passes",
            Kind::Thesis => "thesis-style scan",
            Kind::ThesisBounded => "thesis-style, bounded loop",
            Kind::NftLinear => "nftables, one rule per entry",
            Kind::NftSet => "nftables, one set lookup",
        }
    }

    /// Whether contain's cgroup programs run for this configuration.
    pub fn has_contain(self) -> bool {
        matches!(
            self,
            Kind::Contain | Kind::ContainVeth | Kind::ContainTcFloor
        )
    }
}

pub struct Target {
    pub kind: Kind,
    pub rules: usize,
    pub ns: String,
    pub cgroup: PathBuf,
    pub client: Ipv4Addr,
    pub peer: Ipv4Addr,
    /// The ifindex of the host-side end of its veth, in the peer
    /// namespace (0 without the network).
    pub host_ifindex: u32,
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

/// The host-side (peer-namespace) end of configuration k's veth.
pub fn peer_veth(k: usize) -> String {
    format!("p{k}")
}

/// The test-run namespace's veth mapped to nothing.
pub const TESTRUN_UNOWNED: u32 = 2999;

/// Where the backstop is attached for the latency and throughput phases.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backstop {
    /// The configuration (`contain-veth@N`).
    pub target: String,
    /// The host-side device, in the peer namespace.
    pub device: String,
    pub ifindex: u32,
    /// How it is attached: "tcx" (a bpf_link) or "clsact" (a netlink filter).
    pub attach: String,
    /// `contain_veth`, or the tc floor (a program that only passes).
    #[serde(default)]
    pub program: String,
}

/// The rules the measured traffic to `peer` needs: ICMP, the TCP
/// request/response port, iperf3's port and the socket-call phase's UDP
/// sink, plus the prefix rule. A list of N rules is still N rules: these
/// take the place of synthetic ones.
pub fn needed(peer: Ipv4Addr) -> Vec<Rule> {
    vec![
        Rule::host(peer, rules::ICMP, 0),
        Rule::host(peer, rules::TCP, RR_PORT),
        Rule::host(peer, rules::TCP, IPERF_PORT),
        Rule::host(peer, rules::UDP, UDP_SINK_PORT),
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
    /// One socket-storage lookup: the floor of an established flow's
    /// cached verdict (the flow phase).
    pub storage_floor: Floor,
    /// Test runs of an established flow's packet (the program-cost phase).
    pub established: EstablishedVia,
    /// Seconds to load each nftables table, by target name.
    pub nft_load_s: BTreeMap<String, f64>,
    /// The namespace the program-cost phase test-runs `contain_veth` in.
    pub testrun_ns: String,
    /// Its veths mapped to each contain configuration's cgroup, by rule
    /// count (the unmapped one is [`TESTRUN_UNOWNED`]).
    pub testrun_veths: BTreeMap<usize, u32>,
    /// Where the backstop is attached (network phases).
    pub backstop: Vec<Backstop>,
    /// The tc floor program, attached next to the backstop (tcx kernels).
    tc_floor: Option<TcProgram>,
    network: bool,
    /// Every namespace above, deleted on drop (the last made first).
    namespaces: Vec<Netns>,
    servers: Vec<JoinHandle<()>>,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
}

impl Lab {
    pub fn new(opts: &Options) -> Result<Lab> {
        cleanup::sweep_dead_runs(sys::RUN_PREFIX);
        let name = sys::run_name();
        let root = cgroup::cgroup2_mount()?;
        let base = root.join(&name);
        std::fs::create_dir_all(&base)?;
        let home = cgroup::own_cgroup()?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let (kernel, _rings) = Kernel::load(&pin_dir)
            .context("loading contain's eBPF object (bpf-loader's Kernel)")?;
        let established =
            EstablishedVia::load(&kernel.map_pin(contain_common::map_names::SOCKETS))?;
        let mut lab = Lab {
            peer_ns: format!("{name}-peer"),
            testrun_ns: format!("{name}-tr"),
            name,
            base,
            home,
            targets: Vec::new(),
            kernel,
            pin_dir,
            thesis: BTreeMap::new(),
            floor: Floor::load()?,
            storage_floor: Floor::storage_lookup()?,
            established,
            nft_load_s: BTreeMap::new(),
            testrun_veths: BTreeMap::new(),
            backstop: Vec::new(),
            tc_floor: None,
            network: opts.network,
            namespaces: Vec::new(),
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
                    Kind::ContainVeth => format!("contain/v{rules}"),
                    Kind::ContainTcFloor => format!("contain/f{rules}"),
                    _ => format!("t{k}"),
                }),
                client: Ipv4Addr::new(198, 18, k, 2),
                peer: Ipv4Addr::new(198, 18, k, 1),
                host_ifindex: 0,
            };
            lab.targets.push(target);
        };
        add(&mut lab, Kind::None, 0);
        for kind in [
            Kind::Contain,
            Kind::ContainVeth,
            Kind::ContainTcFloor,
            Kind::Thesis,
            Kind::ThesisBounded,
            Kind::NftLinear,
            Kind::NftSet,
        ] {
            let network_only = matches!(
                kind,
                Kind::ContainVeth | Kind::ContainTcFloor | Kind::NftLinear | Kind::NftSet
            );
            if !opts.network && network_only {
                continue;
            }
            // The floor is attached by tcx only (as the backstop is on
            // these kernels).
            if kind == Kind::ContainTcFloor && !bpf_loader::veths::uses_tcx() {
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
        lab.setup_testrun()?;
        if opts.network {
            lab.setup_network()?;
        }
        lab.setup_contain()?;
        lab.setup_thesis()?;
        if opts.network {
            lab.setup_backstop()?;
            lab.setup_nft()?;
        }
        Ok(lab)
    }

    /// The test-run namespace and its veths (never up, no traffic: only
    /// devices for BPF_PROG_TEST_RUN's ifindex).
    fn setup_testrun(&mut self) -> Result<()> {
        let ns = self.testrun_ns.clone();
        self.namespaces.push(Netns::new(&ns)?);
        let contain: Vec<usize> = self
            .targets
            .iter()
            .filter(|t| t.kind == Kind::Contain)
            .map(|t| t.rules)
            .collect();
        let mut devices: Vec<(String, u32)> = (0..contain.len())
            .map(|i| (format!("tr{i}"), 2000 + i as u32))
            .collect();
        devices.push(("tru".into(), TESTRUN_UNOWNED));
        for (name, index) in &devices {
            netlab::add_veth(
                VethEnd::new(&ns, name).index(*index),
                VethEnd::new(&ns, &format!("{name}p")).index(index + 1000),
            )?;
        }
        self.testrun_veths = contain
            .into_iter()
            .zip(devices.iter().map(|d| d.1))
            .collect();
        Ok(())
    }

    /// The cgroup contain's cgroup programs are attached to, relative to
    /// the cgroup root: the parent of every contain configuration's.
    pub fn contain_cgroup(&self) -> String {
        format!("{}/contain", self.name)
    }

    /// The same cgroup's directory.
    pub fn contain_cgroup_path(&self) -> PathBuf {
        self.base.join("contain")
    }

    fn setup_contain(&mut self) -> Result<()> {
        let parent = self.contain_cgroup();
        self.kernel
            .attach(&parent)
            .with_context(|| format!("attaching contain to {parent}"))?;
        let mut state = ContainState::default();
        for (i, t) in self.targets.iter().enumerate() {
            if t.kind.has_contain() {
                let list = rules::list(t.rules, &needed(t.peer));
                let cgroup_id = cgroup::cgroup_id(&t.cgroup)?;
                state.add_policy(i as u32 + 1, cgroup_id, &list);
                // The veth each container's frames come in on, as policyd
                // maps it: the host side of its own (network phases), or
                // a test-run device (program cost).
                let ifindex = match t.kind {
                    Kind::ContainVeth => Some(t.host_ifindex).filter(|&i| i != 0),
                    Kind::Contain => self.testrun_veths.get(&t.rules).copied(),
                    _ => None,
                };
                if let Some(ifindex) = ifindex {
                    let source = match t.kind {
                        Kind::ContainVeth => t.client,
                        _ => crate::progcost::FRAME_SOURCE,
                    };
                    state.state.upsert(Entry::VethSource {
                        key: VethSource::new(ifindex, source.into()),
                    });
                    state.state.upsert(Entry::Veth { ifindex, cgroup_id });
                }
            }
        }
        let diff = MapDiff {
            unknown_verdict: Some(Verdict::Deny),
            ..MapDiff::between(self.kernel.generation(), self.kernel.state(), &state.state)
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
        self.namespaces.push(Netns::new(peer)?);
        netlab::link_up(peer, "lo")?;
        netlab::disable_ipv6(peer)?;
        for (i, t) in self.targets.iter().enumerate() {
            let k = i + 1;
            let (ns, pv) = (t.ns.as_str(), peer_veth(k));
            let (cmac, pmac) = (
                format!("02:cb:00:00:{k:02x}:02"),
                format!("02:cb:00:00:{k:02x}:01"),
            );
            self.namespaces.push(Netns::new(ns)?);
            netlab::disable_ipv6(ns)?;
            netlab::allow_ping_sockets(ns)?;
            netlab::add_veth(
                VethEnd::new(ns, "vc").mac(&cmac),
                VethEnd::new(peer, &pv).mac(&pmac),
            )?;
            let c = t.client.to_string();
            let p = t.peer.to_string();
            netlab::add_addr(ns, "vc", &format!("{c}/24"))?;
            netlab::add_addr(peer, &pv, &format!("{p}/24"))?;
            netlab::link_up(ns, "lo")?;
            netlab::link_up(ns, "vc")?;
            netlab::link_up(peer, &pv)?;
            netlab::add_neighbour(ns, "vc", &p, &pmac)?;
            netlab::add_neighbour(peer, &pv, &c, &cmac)?;
        }
        // The host-side ends' ifindexes, as the peer namespace numbers them
        // (what CONTAIN_VETHS is keyed by).
        let names: Vec<String> = (1..=self.targets.len()).map(peer_veth).collect();
        let indexes = netlab::with_netns(peer, || {
            names
                .iter()
                .map(|n| {
                    nix::net::if_::if_nametoindex(n.as_str())
                        .with_context(|| format!("ifindex of {n}"))
                })
                .collect::<Result<Vec<u32>>>()
        })?;
        for (t, index) in self.targets.iter_mut().zip(indexes) {
            t.host_ifindex = index;
        }
        // The TCP request/response server, in the peer namespace.
        let stop = self.stop.clone();
        let listener = netlab::in_netns(peer, move || {
            let l = std::net::TcpListener::bind(("0.0.0.0", RR_PORT))?;
            l.set_nonblocking(true)?;
            Ok::<_, anyhow::Error>(l)
        })?;
        self.servers.push(std::thread::spawn(move || {
            crate::latency::serve(listener, stop)
        }));
        Ok(())
    }

    /// Attaches `contain_veth` to the host side of each "contain + veth
    /// backstop" configuration's veth with bpf-loader's own code, from the
    /// peer namespace, where the device is (the loader attaches to every
    /// veth of its namespace; here only these get it, so the other
    /// configurations keep today's path).
    fn setup_backstop(&mut self) -> Result<()> {
        let attach = if bpf_loader::veths::uses_tcx() {
            "tcx"
        } else {
            "clsact"
        };
        for (i, t) in self.targets.iter().enumerate() {
            let (device, ifindex) = (peer_veth(i + 1), t.host_ifindex);
            let program = match t.kind {
                Kind::ContainVeth => {
                    let kernel = &mut self.kernel;
                    netlab::with_netns(&self.peer_ns, || {
                        kernel
                            .attach_veth(ifindex, &device)
                            .map_err(|e| anyhow::anyhow!("attaching contain_veth to {device}: {e}"))
                    })?;
                    bpf_loader::veths::PROGRAMS
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(" + ")
                }
                Kind::ContainTcFloor => {
                    if self.tc_floor.is_none() {
                        self.tc_floor = Some(TcProgram::load(tc_program::Verdict::NoOpinion)?);
                    }
                    let floor = self.tc_floor.as_mut().context("the tc floor")?;
                    netlab::with_netns(&self.peer_ns, || floor.attach(ifindex, Placement::Last))?;
                    "tc floor (ingress and egress)".to_string()
                }
                _ => continue,
            };
            self.backstop.push(Backstop {
                target: t.name(),
                device,
                ifindex,
                attach: attach.into(),
                program,
            });
        }
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
            netlab::load_nftables(&t.ns, &text)
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
        let cgroup = target.map_or(&self.home, |t| &t.cgroup);
        Ok(cgroup::enter(cgroup)?)
    }

    /// Moves this process into the root cgroup: outside every cgroup
    /// contain's programs are attached to, at the shortest ancestor walk.
    pub fn enter_root(&self) -> Result<()> {
        Ok(cgroup::enter(&cgroup::cgroup2_mount()?)?)
    }

    pub fn egress_fd(&self) -> Result<i32> {
        self.kernel
            .program_fd(contain_common::program_names::EGRESS)
            .context("contain's egress program")
    }

    pub fn veth_fd(&self) -> Result<i32> {
        self.kernel
            .program_fd(contain_common::program_names::VETH)
            .context("contain's veth program")
    }

    pub fn veth_inbound_fd(&self) -> Result<i32> {
        self.kernel
            .program_fd(contain_common::program_names::VETH_INBOUND)
            .context("contain's veth inbound program")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = cgroup::enter(&self.home);
        self.stop.store(true, Ordering::SeqCst);
        for mut c in self.children.drain(..) {
            process::stop(&mut c);
        }
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        self.thesis.clear();
        while self.namespaces.pop().is_some() {}
        cleanup::remove_any(&self.pin_dir);
        cgroup::remove_tree(&self.base);
    }
}

/// How many rules the measured traffic needs (the smallest list).
pub fn needed_len() -> usize {
    needed(Ipv4Addr::UNSPECIFIED).len()
}
