//! A lab for privileged tests, laid out like a Docker host: a "container"
//! (a network namespace and a cgroup v2 directory under a managed parent),
//! a peer namespace that runs TCP/UDP servers, and between them a "host"
//! namespace holding a bridge, on which the host-side end of each one's
//! veth pair is a port. A real bpf-loader runs in the host namespace (so
//! its veth backstop sees exactly the lab's veths) and serves its own pins
//! and socket for each lab.
//!
//! ```text
//!   ct ns: vc ──── hc ┐
//!                     br0   (host ns: the loader runs here)
//! peer ns: vp ──── hp ┘
//! ```
//!
//! Everything the container sends reaches the peer through `hc`'s ingress
//! (where the backstop sits), the bridge and `hp`: a capture on `vp` sees
//! only what passed. Addresses are from 198.18.0.0/15 and 2001:db8::/32
//! (benchmarking and documentation ranges), one bridged subnet, and exist
//! only inside the lab's namespaces. Containers forward IPv4, as they do on
//! a Docker host (see `forward_ipv4`). Everything is named after the test
//! process's pid, removed on drop, and leftovers of dead runs are swept
//! first (test-kit's naming and sweep).
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use kernel_model::{
    diff::MapDiff,
    state::{
        CgroupEntry, DestPrefix, Entry, KernelState, PortPrefix, ProcessKey, ProcessMatch, Verdict,
        VethSource,
    },
};
use proto::{loader::LoaderClient, transport};
pub use test_kit::lab::{in_cgroup_ns_cmd, Link};
use test_kit::{
    cgroup, cleanup,
    lab::{self, Netns, VethEnd},
    privileged,
    process::{Proc, ProcGroup},
};

pub const PEER4: &str = "198.18.0.1";
pub const PEER4_OTHER: &str = "198.18.1.1";
pub const CT4: &str = "198.18.0.2";
pub const PEER6: &str = "2001:db8:77::1";
pub const PEER6_OTHER: &str = "2001:db8:78::1";
pub const CT6: &str = "2001:db8:77::2";
pub const PYTHON: &str = "/usr/bin/python3";
/// Ports the peer serves TCP and UDP on.
pub const PEER_PORTS: [u16; 3] = [8080, 9090, 5353];
/// The bridge in the host namespace, and the host-side ends of the
/// container's and the peer's veths on it.
pub const BRIDGE: &str = "br0";
pub const CT_HOST_VETH: &str = "hc";
pub const PEER_HOST_VETH: &str = "hp";

/// Every lab's name starts with this, then the test process's pid.
const PREFIX: &str = "contain-t-";

pub use test_kit::repo_root;

pub fn probe_script() -> PathBuf {
    repo_root().join("tests/probe.py")
}

/// `None` (recorded as skipped, see test-kit's `privileged`) when not
/// root.
pub fn require_root(test: &str) -> Option<()> {
    privileged::root_or_skip(test, "it creates namespaces, cgroups and loads BPF").then_some(())
}

/// IPv4 forwarding on in a container's namespace, as on a Docker host: a
/// new namespace copies its IPv4 `all` and `default` settings from the
/// host's (`net.core.devconf_inherit_init_net` 0), and Docker turns
/// `ip_forward` on. (IPv6 settings start from the kernel's defaults:
/// forwarding off.)
fn forward_ipv4(ns: &str) -> test_kit::Result<()> {
    lab::sysctl(
        ns,
        &[
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.conf.default.forwarding=1",
        ],
    )
}

/// The lab's setup steps: a step that fails fails the test, saying why.
pub fn must<T>(step: test_kit::Result<T>) -> T {
    step.unwrap_or_else(|e| panic!("{e}"))
}

/// The usable IPv6 link-local address of `dev` inside `ns`
/// (`lab::usable_link_local`).
pub fn link_local(ns: &str, dev: &str) -> String {
    must(lab::usable_link_local(ns, dev)).to_string()
}

/// Reads `dev` inside `ns` (ifindexes are per namespace).
pub fn link_in(ns: &str, dev: &str) -> Link {
    must(lab::link_in(ns, dev))
}

/// The identity the kernel records when `path` is exec'd (symlinks
/// followed, as exec follows them).
pub fn file_of(path: &str) -> kernel_model::state::FileId {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    kernel_model::state::FileId::from_stat(md.dev(), md.ino(), md.ctime(), md.ctime_nsec())
}

/// Where the loader pins its maps under `pin_dir` (`maps-v<layout>`).
pub fn maps_pin_dir(pin_dir: &Path) -> PathBuf {
    std::fs::read_dir(pin_dir)
        .expect("the pin directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("maps-v"))
        })
        .expect("the maps' pin directory")
}

pub fn cgroup2_mount() -> PathBuf {
    must(cgroup::cgroup2_mount())
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub name: String,
    pub parent: PathBuf,
    pub ct: PathBuf,
    pub ct_ns: String,
    pub peer_ns: String,
    /// The "host": the bridge, the host-side veth ends and the loader.
    pub host_ns: String,
    /// The host-side end of the container's veth, read in the host
    /// namespace: what an inventory lists as the container's veth.
    pub ct_veth: Link,
    /// The peer's own end (`vp`), whose MAC frames to the peer are sent to.
    pub peer_link: Link,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub scratch: PathBuf,
    /// Extra arguments for the lab's bpf-loader (e.g. a shorter UDP reply
    /// timeout), set before `start_loader`.
    pub loader_args: Vec<String>,
    /// A command the loader runs under (strace), set before `start_loader`;
    /// the loader is its last argument's successor.
    pub loader_wrapper: Vec<String>,
    /// The loader, or its wrapper in a process group of its own with the
    /// loader: killing it kills both.
    loader: Option<ProcGroup>,
    children: Vec<Proc>,
    /// The managed parent cgroup, removed with everything in it on drop.
    cgroup: Option<cgroup::Cgroup>,
    /// The container's, the peer's and [`Lab::add_neighbour`]'s
    /// namespaces, deleted on drop before the host's.
    namespaces: Vec<Netns>,
    host: Option<Netns>,
}

/// Another "container" on the lab's bridge, with a netns and cgroup of
/// its own (see [`Lab::add_neighbour`]).
pub struct Neighbour {
    pub ns: String,
    pub cgroup: PathBuf,
    /// Its end in its own namespace (`vn`).
    pub link: Link,
    /// The host-side end, in the host namespace.
    pub host_veth: Link,
}

impl Lab {
    pub fn new() -> Lab {
        cleanup::sweep_dead_runs(PREFIX);
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        let mount = cgroup2_mount();
        // A dotted, systemd-style name: bpffs refuses dots in pin names.
        let parent = mount.join(format!("{name}.slice"));
        let ct = parent.join("ct");
        let scratch = std::env::temp_dir().join(&name);
        let cgroup = must(cgroup::Cgroup::create(&parent));
        std::fs::create_dir_all(&ct).expect("creating lab cgroups");
        std::fs::create_dir_all(&scratch).expect("creating scratch dir");
        let mut lab = Lab {
            ct_ns: format!("{name}-c"),
            peer_ns: format!("{name}-p"),
            host_ns: format!("{name}-h"),
            ct_veth: Link {
                name: CT_HOST_VETH.into(),
                ifindex: 0,
                mac: String::new(),
            },
            peer_link: Link {
                name: "vp".into(),
                ifindex: 0,
                mac: String::new(),
            },
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
            socket: scratch.join("loader.sock"),
            name,
            parent,
            ct,
            scratch,
            loader_args: Vec::new(),
            loader_wrapper: Vec::new(),
            loader: None,
            children: Vec::new(),
            cgroup: Some(cgroup),
            namespaces: Vec::new(),
            host: None,
        };
        lab.build_network();
        lab
    }

    fn build_network(&mut self) {
        let (c, p, h) = (
            self.ct_ns.clone(),
            self.peer_ns.clone(),
            self.host_ns.clone(),
        );
        // The host: a bridge that only switches (no address, no IPv6 of its
        // own, no multicast snooping, no br_netfilter: plain L2 between the
        // ports, as the lab had with one veth pair).
        self.host = Some(must(Netns::new(&h)));
        must(lab::disable_ipv6(&h));
        must(lab::link_up(&h, "lo"));
        must(lab::add_bridge(&h, BRIDGE));
        // The container's netns is made from inside its cgroup, as runc
        // does: the kernel's per-netns control sockets (neighbour discovery)
        // then belong to the container's cgroup too.
        let ct = self.ct.clone();
        self.plug(Some(&ct), &c, "vc", CT_HOST_VETH);
        self.plug(None, &p, "vp", PEER_HOST_VETH);
        must(lab::add_addr(&c, "vc", &format!("{CT4}/15")));
        must(lab::add_addr(&c, "vc", &format!("{CT6}/64")));
        for addr in [
            format!("{PEER4}/15"),
            format!("{PEER4_OTHER}/15"),
            format!("{PEER6}/64"),
            format!("{PEER6_OTHER}/64"),
        ] {
            must(lab::add_addr(&p, "vp", &addr));
        }
        must(lab::add_route(&c, "2001:db8:78::/64", PEER6, "vc"));
        must(lab::allow_ping_sockets(&c));
        must(lab::allow_ping_sockets(&p));
        must(forward_ipv4(&c));
        self.ct_veth = link_in(&h, CT_HOST_VETH);
        self.peer_link = link_in(&p, "vp");
    }

    /// A new namespace `ns` (made from inside `cgroup` if given, as runc
    /// does), its `inner` veth end plugged into the host's bridge as
    /// `host_end`.
    fn plug(&mut self, cgroup: Option<&Path>, ns: &str, inner: &str, host_end: &str) {
        let netns = match cgroup {
            Some(cgroup) => Netns::new_in_cgroup(ns, cgroup),
            None => Netns::new(ns),
        };
        self.namespaces.push(must(netns));
        let h = &self.host_ns;
        must(lab::link_up(ns, "lo"));
        must(lab::add_veth(
            VethEnd::new(ns, inner),
            VethEnd::new(h, host_end),
        ));
        must(lab::add_to_bridge(h, host_end, BRIDGE));
        must(lab::link_up(ns, inner));
    }

    /// Another container on the bridge: a cgroup `name` under the lab's
    /// parent, a netns made from inside it with `addr4`/15 and `addr6`/64
    /// on its veth (`vn`), and that veth's host end. Which policy (if any)
    /// selects it is the test's business. Removed when the lab drops.
    pub fn add_neighbour(&mut self, name: &str, addr4: &str, addr6: &str) -> Neighbour {
        let cgroup = self.add_container_cgroup(name);
        self.add_neighbour_in(cgroup, name, addr4, addr6)
    }

    /// [`Lab::add_neighbour`] in a cgroup of the caller's (which the
    /// caller creates and removes), not under the lab's parent.
    pub fn add_neighbour_in(
        &mut self,
        cgroup: PathBuf,
        name: &str,
        addr4: &str,
        addr6: &str,
    ) -> Neighbour {
        let ns = format!("{}-{name}", self.name);
        let host_end = format!("hn-{name}");
        assert!(host_end.len() <= 15, "interface name {host_end} too long");
        self.plug(Some(&cgroup), &ns, "vn", &host_end);
        must(lab::add_addr(&ns, "vn", &format!("{addr4}/15")));
        must(lab::add_addr(&ns, "vn", &format!("{addr6}/64")));
        must(forward_ipv4(&ns));
        Neighbour {
            link: link_in(&ns, "vn"),
            host_veth: link_in(&self.host_ns, &host_end),
            ns,
            cgroup,
        }
    }

    /// Starts the peer's TCP and UDP servers and waits until they listen.
    pub fn start_peer_servers(&mut self) {
        let ports: Vec<String> = PEER_PORTS.iter().map(|p| p.to_string()).collect();
        let server = repo_root().join("tests/peer_server.py");
        let mut cmd = lab::cmd_in(&self.peer_ns, PYTHON);
        cmd.arg(server).args(&ports);
        self.spawn_ready(cmd);
    }

    /// Starts a TCP server at the peer on `port` that reads and discards
    /// until EOF, and never closes first (`tests/bypass/peer.py sink`).
    pub fn start_peer_sink(&mut self, port: u16) {
        let mut cmd = lab::cmd_in(&self.peer_ns, PYTHON);
        cmd.arg(repo_root().join("tests/bypass/peer.py"))
            .args(["sink", &port.to_string()]);
        self.spawn_ready(cmd);
    }

    /// Starts servers inside the container (its netns and cgroup).
    pub fn start_container_servers(&mut self, ports: &[u16]) {
        let server = repo_root().join("tests/peer_server.py");
        let mut args: Vec<String> = vec![PYTHON.into(), server.display().to_string()];
        args.extend(ports.iter().map(|p| p.to_string()));
        let cmd = self.in_cgroup_cmd(&self.ct.clone(), &args);
        self.spawn_ready(cmd);
    }

    /// Captures what arrives at the peer (`vp`) into `out`, one JSON line
    /// per frame (`tests/bypass/sniffer.py`), from now until the lab drops.
    /// Starts the capture in the peer's namespace into a fresh
    /// `capture.jsonl` of the scratch directory; returns its path.
    pub fn start_peer_capture(&mut self) -> PathBuf {
        let capture = self.scratch.join("capture.jsonl");
        std::fs::write(&capture, "").expect("capture file");
        self.start_peer_sniffer(&capture);
        capture
    }

    pub fn start_peer_sniffer(&mut self, out: &Path) {
        let mut cmd = lab::cmd_in(&self.peer_ns, PYTHON);
        cmd.arg(repo_root().join("tests/bypass/sniffer.py"))
            .arg(out)
            .arg("vp");
        self.spawn_ready(cmd);
    }

    fn spawn_ready(&mut self, mut cmd: Command) {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("starting server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server output");
        assert_eq!(line.trim(), "ready", "server did not start");
        self.children.push(Proc(child));
    }

    /// A command that joins `cgroup`, then the container's netns, then runs `args`.
    pub fn in_cgroup_cmd(&self, cgroup: &Path, args: &[String]) -> Command {
        in_cgroup_ns_cmd(cgroup, &self.ct_ns, args)
    }

    /// Runs one probe from the container with `exe` as the interpreter;
    /// returns its one-line outcome (`ok`, `denied:EPERM`, `timeout`, ...).
    pub fn probe_with(&self, cgroup: &Path, exe: &str, args: &[&str]) -> String {
        let mut full: Vec<String> = vec![exe.into(), probe_script().display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        let out = self
            .in_cgroup_cmd(cgroup, &full)
            .output()
            .expect("running probe");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if text.is_empty() {
            panic!(
                "probe {args:?} printed nothing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        text
    }

    pub fn probe(&self, args: &[&str]) -> String {
        self.probe_with(&self.ct.clone(), PYTHON, args)
    }

    /// A second "container" cgroup under the lab's managed parent; its
    /// processes share the container's netns (like two containers of one
    /// pod). Removed with the parent when the lab drops.
    pub fn add_container_cgroup(&self, name: &str) -> PathBuf {
        let path = self.parent.join(name);
        std::fs::create_dir_all(&path).expect("creating a container cgroup");
        path
    }

    pub fn cgroup_id(&self, path: &Path) -> u64 {
        must(cgroup::cgroup_id(path))
    }

    pub fn ct_id(&self) -> u64 {
        self.cgroup_id(&self.ct)
    }

    pub fn loader_log(&self) -> PathBuf {
        self.scratch.join("loader.log")
    }

    /// A lab with its peer servers running and its loader up.
    pub async fn running() -> (Lab, LoaderClient) {
        let mut lab = Lab::new();
        lab.start_peer_servers();
        let client = lab.start_loader().await;
        (lab, client)
    }

    /// Starts bpf-loader in the host namespace, attached to the lab's
    /// parent cgroup, and waits until its socket answers (by then the
    /// backstop is on every veth of the host namespace).
    pub async fn start_loader(&mut self) -> LoaderClient {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.loader_log())
            .expect("log");
        // Joined between fork and exec, not `ip netns exec`: that remounts
        // /sys for the namespace, which hides bpffs and the cgroup2 mount.
        // The child is the loader itself.
        let binary = env!("CARGO_BIN_EXE_bpf-loader");
        // setpriv execs the loader in its own process: the loader's pid.
        let as_unit = unit_capabilities();
        let mut loader = match self.loader_wrapper.split_first() {
            Some((wrapper, args)) => {
                // A group of its own, killed as one with the loader in it.
                let mut cmd = Command::new(wrapper);
                cmd.process_group(0).args(args).args(&as_unit).arg(binary);
                cmd
            }
            None => {
                let mut cmd = Command::new(&as_unit[0]);
                cmd.args(&as_unit[1..]).arg(binary);
                cmd
            }
        };
        loader
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--attach-parent")
            .arg(&self.parent)
            .args(&self.loader_args)
            .stderr(log);
        let child = must(lab::spawn_in(loader, Some(&self.host_ns), None));
        self.loader = Some(ProcGroup(child));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .loader
                .as_mut()
                .and_then(|c| c.0.try_wait().ok().flatten())
            {
                panic!(
                    "bpf-loader exited ({status}): {}",
                    std::fs::read_to_string(self.loader_log()).unwrap_or_default()
                );
            }
            if let Ok(client) = self.client().await {
                if client.version(tarpc::context::current()).await.is_ok() {
                    return client;
                }
            }
            assert!(
                Instant::now() < deadline,
                "bpf-loader did not come up: {}",
                std::fs::read_to_string(self.loader_log()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> std::io::Result<LoaderClient> {
        let stream = transport::connect(
            &self.socket,
            &proto::transport::ServerIs::root_or([nix::unistd::geteuid().as_raw()]),
        )
        .await?;
        Ok(LoaderClient::new(
            tarpc::client::Config::default(),
            transport::client(stream, transport::Service::Loader),
        )
        .spawn())
    }

    /// SIGKILLs the loader this lab started (and its wrapper).
    pub fn kill_loader(&mut self) {
        self.loader.take();
    }

    /// Sends `signal` to the loader this lab started (started with no
    /// wrapper: the process is the loader itself).
    pub fn signal_loader(&self, signal: nix::sys::signal::Signal) {
        assert!(
            self.loader_wrapper.is_empty(),
            "the loader runs under a wrapper"
        );
        let loader = self.loader.as_ref().expect("the lab's loader runs");
        test_kit::process::signal(loader.0.id(), signal);
    }

    /// Stops the loader (SIGSTOP) and waits until the kernel says it is
    /// stopped: from then on nothing drains its rings.
    pub fn stop_loader(&self) {
        self.signal_loader(nix::sys::signal::Signal::SIGSTOP);
        let pid = self.loader.as_ref().expect("the lab's loader runs").0.id();
        let stopped = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                    Some(state == "T")
                })
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stopped() {
            assert!(Instant::now() < deadline, "the loader did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The command that runs the loader as its systemd unit does, as far as
/// capabilities go: root, bounded to the unit's `CapabilityBoundingSet=`
/// (read from `debian/systemd/contain-bpf-loader.service`, so the tests
/// follow the unit), so that a capability the loader needs and the unit
/// lacks fails here too; and with a group that is not root's, as the unit's
/// `Group=contain` (65534 stands in for it: what the loader creates is then
/// not root's group, which it must not need to change, lacking CAP_CHOWN).
fn unit_capabilities() -> Vec<String> {
    let unit = repo_root().join("debian/systemd/contain-bpf-loader.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap_or_else(|e| panic!("reading {}: {e}", unit.display()));
    let caps = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{} has no CapabilityBoundingSet=", unit.display()));
    let bounding: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", bounding.join(",")),
        "--regid=65534".into(),
        "--clear-groups".into(),
        "--".into(),
    ]
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_loader();
        self.children.clear();
        self.cgroup.take();
        cleanup::remove_any(&self.pin_dir);
        self.namespaces.clear();
        self.host.take();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Builds the kernel state for tests by hand (policyd compiles it for real).
#[derive(Default, Clone)]
pub struct Rules {
    pub state: KernelState,
    next_ruleset: u32,
}

pub struct Allow<'a> {
    pub policy: u32,
    pub class: u32,
    pub addr: &'a str,
    pub proto: u8,
    /// Port, or `Some(type << 8)` with `icmp_type` for ICMP; `None` = any.
    pub port: Option<u16>,
    pub icmp_type: bool,
}

impl Rules {
    pub fn cgroup(&mut self, id: u64, policy_id: u32, audit: bool) -> &mut Self {
        self.state.upsert(Entry::Cgroup {
            id,
            value: CgroupEntry {
                policy_id,
                audit,
                unrestricted: false,
                forwarded_dns: false,
            },
        });
        self
    }

    /// The container (cgroup `id`) behind the host-side veth `ifindex`,
    /// whose interface there has the addresses `sources`.
    pub fn veth(&mut self, ifindex: u32, id: u64, sources: &[&str]) -> &mut Self {
        self.state.upsert(Entry::Veth {
            ifindex,
            cgroup_id: id,
        });
        for source in sources {
            let addr = source.parse().expect("address");
            self.state.upsert(Entry::VethSource {
                key: VethSource::new(ifindex, addr),
            });
        }
        self
    }

    pub fn process(&mut self, policy_id: u32, process: ProcessMatch, class: u32) -> &mut Self {
        self.state.upsert(Entry::Process {
            key: ProcessKey { policy_id, process },
            class,
        });
        self
    }

    /// One host address (a /32 or /128) and one protocol/port allowance.
    pub fn allow(&mut self, a: Allow<'_>) -> &mut Self {
        let ip: std::net::IpAddr = a.addr.parse().expect("address");
        let (addr, prefix_len) = match ip {
            std::net::IpAddr::V4(v4) => (contain_common::v4_mapped(v4.octets()), 128),
            std::net::IpAddr::V6(v6) => (v6.octets(), 128),
        };
        // One ruleset per destination: allowances for the same address share it.
        let key = DestPrefix {
            policy_id: a.policy,
            class: a.class,
            addr,
            prefix_len,
        };
        let ruleset = match self.state.dests.get(&key) {
            Some(&ruleset) => ruleset,
            None => {
                self.next_ruleset += 1;
                self.state.upsert(Entry::Dest {
                    key,
                    ruleset: self.next_ruleset,
                });
                self.next_ruleset
            }
        };
        let (port, port_bits) = match (a.port, a.icmp_type) {
            (None, _) => (0, 0),
            (Some(p), false) => (p, 16),
            (Some(t), true) => (t << 8, 8),
        };
        self.state.upsert(Entry::Port {
            key: PortPrefix {
                ruleset,
                proto: a.proto,
                port,
                port_bits,
            },
            rule_id: ruleset,
        });
        self
    }
}

/// Makes the loader's maps equal `desired` (and the unknown verdict).
pub async fn converge(client: &LoaderClient, desired: &KernelState, unknown: Verdict) -> u64 {
    let snap = client
        .state(tarpc::context::current())
        .await
        .expect("rpc")
        .expect("state");
    let diff = MapDiff {
        unknown_verdict: Some(unknown),
        ..MapDiff::between(snap.generation, &snap.state, desired)
    };
    client
        .apply(tarpc::context::current(), diff)
        .await
        .expect("rpc")
        .expect("apply")
}

/// A random IPv6 packet of the differential tests, with what the kernel's
/// parser makes of it.
pub struct RandomIpv6 {
    pub bytes: Vec<u8>,
    /// The hops a sound routing header still has to visit: each is judged.
    pub route: Vec<std::net::IpAddr>,
    /// A routing header the parser cannot follow: the packet is denied.
    pub unjudgeable: bool,
    /// No extension header at all.
    pub plain: bool,
}

/// An IPv6 packet to `dest`: in 15 % of whole packets a routing header
/// (type 0, or 3 in a fifth of them) of up to three hops from `hops`, some
/// still to visit; otherwise a hop-by-hop or destination-options header in
/// `ext_percent` % of them, and a fragment header on a later fragment.
pub fn random_ipv6(
    rng: &mut test_kit::random::Rng,
    dest: std::net::Ipv6Addr,
    (proto, port): (u8, u16),
    later_fragment: bool,
    hops: &[std::net::Ipv6Addr],
    ext_percent: u64,
) -> RandomIpv6 {
    use test_kit::packets::{self, Ext};
    let mut out = RandomIpv6 {
        bytes: Vec::new(),
        route: Vec::new(),
        unjudgeable: false,
        plain: false,
    };
    if !later_fragment && rng.chance(15) {
        let route: Vec<std::net::Ipv6Addr> = (0..rng.below(4)).map(|_| rng.pick(hops)).collect();
        let segments_left = rng.below(route.len() + 2) as u8;
        let routing_type = if rng.chance(80) { 0 } else { 3 };
        if segments_left != 0 {
            let sound = routing_type == 0
                && !route.is_empty()
                && route.len() <= 2
                && segments_left as usize <= route.len();
            if sound {
                out.route = route.iter().map(|&h| std::net::IpAddr::V6(h)).collect();
            } else {
                out.unjudgeable = true;
            }
        }
        out.bytes = packets::ipv6_routed(dest, proto, port, routing_type, &route, segments_left);
        return out;
    }
    let mut exts = Vec::new();
    if rng.chance(ext_percent) {
        exts.push(rng.pick(&[Ext::HopByHop, Ext::DestOpts]));
    }
    if later_fragment {
        exts.push(Ext::Fragment(100));
    }
    out.plain = exts.is_empty();
    out.bytes = packets::ipv6(dest, proto, port, &exts);
    out
}
