//! The control plane, with the real release daemons on private sockets,
//! pins and cgroups:
//!
//! - `policyd reload` (the CLI, as an operator runs it, wall time) of a
//!   synthetic 10 000-rule policy (policyd's own generator: 10 policies, 50
//!   containers from an inventory file), of a one-rule change and of an
//!   unchanged file, against the real bpf-loader and its BPF maps;
//! - `nft -f` of the same rules as one nftables set per address family, in
//!   the same run, into a network namespace of the bench's: from empty, and
//!   an atomic replace of the table (how an nftables reload is done);
//! - resident memory of bpf-loader, resolver and policyd, at rest;
//! - container create → policy in force: a private containerd, the
//!   resolver following it, policyd following the resolver, bpf-loader
//!   attached to the containers' parent cgroup. Each container is run with
//!   `ctr run` and pings a peer from its first moment; the time from
//!   containerd's `/tasks/create` (and `/tasks/start`) event to the moment
//!   the container's cgroup is in the loader's `CGROUPS` map is taken, and
//!   an nftables counter on the peer counts packets that got out (the
//!   policy denies them, and so does the unknown-container verdict before
//!   it is in force).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use contain_common::{CgroupPolicy, PolicyCounters};
use kernel_model::{
    diff::OpCounts,
    state::{EntryKey, MapOp},
};
use serde::{Deserialize, Serialize};
use test_kit::{
    cgroup, cleanup,
    containerd::{now_ns, Containerd},
    lab::{self, Netns, VethEnd},
    process,
};

use crate::sys;

const RULES: usize = 10_000;
const POLICIES: usize = 10;
const CONTAINERS: usize = 50;
/// Send attempts from the unmapped cgroup (half ICMP, half UDP).
const UNMAPPED_PINGS: u64 = 10;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reload {
    pub wall_ms: Vec<f64>,
    /// policyd's own split (from the reload report), per run.
    pub compile_ms: Vec<f64>,
    pub apply_ms: Vec<f64>,
    pub ops: usize,
    pub ops_detail: String,
    /// Size of the JSON report the CLI printed (it lists every operation).
    #[serde(default)]
    pub report_bytes: Vec<usize>,
}

/// `nft -f` of the same rules, for comparison.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NftLoad {
    /// Into a namespace with no table: wall time of `nft -f`, ms.
    pub install_ms: Vec<f64>,
    /// Over the loaded table, replacing it in one transaction (the file
    /// deletes and re-creates the table), ms.
    pub replace_ms: Vec<f64>,
    /// Set elements loaded (IPv4, IPv6 and ICMP sets together).
    pub elements: usize,
    /// Size of the file `nft -f` read.
    pub bytes: usize,
}

/// Resident memory of a daemon, or the kernel memory of bpf-loader's maps
/// (`bpf-loader's maps`), at the three moments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rss {
    pub daemon: String,
    /// Started, nothing loaded (policyd: an empty policy).
    pub idle_kb: Option<u64>,
    /// One second after the first install of the 10 000-rule policy.
    #[serde(default)]
    pub installed_kb: Option<u64>,
    /// Two seconds after all the reloads (the policy still installed).
    pub loaded_kb: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Create {
    pub trials: usize,
    /// containerd `/tasks/create` event → cgroup in the loader's map, ms.
    pub from_create_ms: Vec<f64>,
    /// containerd `/tasks/start` event → cgroup in the loader's map, ms.
    pub from_start_ms: Vec<f64>,
    /// Packets from the containers counted on the peer (should be 0).
    pub escaped_packets: u64,
    /// The positive control: one ping from the same namespace outside the
    /// managed cgroup, counted on the peer (should be 1).
    pub control_packets: u64,
    /// Send attempts (raw ICMP echo requests and UDP datagrams) from a
    /// fresh cgroup under the managed parent that nothing maps; how many
    /// the kernel accepted (sendto did not fail); how many reached the peer.
    #[serde(default)]
    pub unmapped_sent: u64,
    #[serde(default)]
    pub unmapped_accepted_by_kernel: u64,
    #[serde(default)]
    pub unmapped_escaped: u64,
    /// Loader counters: packets denied as "unknown container" (before the
    /// policy was in force) and by the policy (after).
    pub denied_unknown: u64,
    pub denied_by_policy: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Control {
    pub rules: usize,
    pub policies: usize,
    pub containers: usize,
    pub install: Reload,
    pub remove_all: Reload,
    pub one_rule: Reload,
    pub unchanged: Reload,
    /// `nft -f` of the same rules in the same run (none if nft is missing).
    #[serde(default)]
    pub nft: Option<NftLoad>,
    pub rss: Vec<Rss>,
    /// Kernel memory of bpf-loader's maps (their fdinfo `memlock`).
    #[serde(default)]
    pub loader_maps: Option<Rss>,
    pub create: Option<Create>,
    pub seconds: f64,
}

pub(crate) struct Daemon {
    name: &'static str,
    pub(crate) child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        process::stop(&mut self.child);
    }
}

fn wait_for_socket(path: &Path, daemon: &mut Daemon, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if let Some(status) = daemon.child.try_wait()? {
            bail!(
                "{} exited ({status}): {}",
                daemon.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("{} did not come up", daemon.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn start(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    socket: &Path,
    scratch: &Path,
) -> Result<Daemon> {
    start_in(name, bin, args, socket, scratch, None)
}

/// [`start`], in network namespace `netns` if given (joined between fork
/// and exec, as `nsenter --net` does: the mounts stay the host's).
/// The release bpf-loader in network namespace `netns` (it attaches its
/// veth backstop to every veth there), attached to `attach_parent` (below
/// the cgroup2 root), its socket `loader.sock` and its log in `scratch`.
pub(crate) fn start_loader(
    bin_dir: &Path,
    pin_dir: &Path,
    attach_parent: &str,
    scratch: &Path,
    netns: &str,
) -> Result<Daemon> {
    let socket = scratch.join("loader.sock");
    start_in(
        "bpf-loader",
        &bin_dir.join("bpf-loader"),
        &[
            "--socket",
            &socket.to_string_lossy(),
            "--pin-dir",
            &pin_dir.to_string_lossy(),
            "--attach-parent",
            attach_parent,
            "--log-format",
            "text",
        ],
        &socket,
        scratch,
        Some(netns),
    )
}

pub(crate) fn start_in(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    socket: &Path,
    scratch: &Path,
    netns: Option<&str>,
) -> Result<Daemon> {
    let log_path = scratch.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child =
        lab::spawn_in(cmd, netns, None).with_context(|| format!("starting {}", bin.display()))?;
    let mut d = Daemon { name, child };
    wait_for_socket(socket, &mut d, &log_path)?;
    Ok(d)
}

/// Operations a reload report lists in full: a one-rule change fits, a
/// first install of 10 000 rules (tens of thousands) is counted only.
const LISTED_OPS: &str = "1000";

/// One `policyd reload --json --max-ops 1000`: wall time, the report, its size.
fn reload(policyd: &Path, socket: &Path) -> Result<(f64, serde_json::Value, usize)> {
    let t = Instant::now();
    let out = Command::new(policyd)
        .arg("--socket")
        .arg(socket)
        .args(["reload", "--json", "--max-ops", LISTED_OPS])
        .output()?;
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "policyd reload failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((wall, serde_json::from_slice(&out.stdout)?, out.stdout.len()))
}

fn record(r: &mut Reload, (wall, report, bytes): (f64, serde_json::Value, usize)) {
    let report = &report;
    r.wall_ms.push(wall);
    r.report_bytes.push(bytes);
    r.compile_ms
        .push(report["compile_us"].as_f64().unwrap_or(f64::NAN) / 1000.0);
    r.apply_ms
        .push(report["apply_us"].as_f64().unwrap_or(f64::NAN) / 1000.0);
    let counts: OpCounts = serde_json::from_value(report["counts"].clone()).unwrap_or_default();
    let ops: Vec<MapOp> = serde_json::from_value(report["ops"].clone()).unwrap_or_default();
    r.ops = counts.total();
    if ops.len() < r.ops {
        r.ops_detail = counts.to_string();
        return;
    }
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        let (verb, key) = match op {
            MapOp::Upsert { entry } => ("upsert", entry.key()),
            MapOp::Delete { key } => ("delete", *key),
        };
        let map = match key {
            EntryKey::Cgroup { .. } => "cgroup",
            EntryKey::Process { .. } => "process",
            EntryKey::Dest { .. } => "destination",
            EntryKey::Port { .. } => "port",
            EntryKey::Veth { .. } => "veth",
            EntryKey::VethSource { .. } => "veth source",
        };
        *by.entry(format!("{verb} {map}")).or_default() += 1;
    }
    r.ops_detail = by
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
}

/// The one-rule edit policyd's own benchmark makes: the middle rule's port
/// 443 becomes 8443.
fn edit_one_rule(text: &str, rules: usize) -> Result<String> {
    let n = (rules / 2 / 5) * 5;
    let old = test_kit::synthetic::rule_line(n);
    if !old.contains("[443]") || !text.contains(&old) {
        bail!("synthetic rule {n} is not the expected tcp/443 line: {old}");
    }
    Ok(text.replacen(&old, &old.replace("[443]", "[8443]"), 1))
}

pub(crate) fn maps_dir(pin_dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(pin_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("maps-v"))
        })
        .context("the loader's maps directory")
}

/// Everything this phase creates, removed on drop.
struct Scene {
    places: Places,
    netns: Vec<Netns>,
    containerd: Option<Containerd>,
    daemons: Vec<Daemon>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.daemons.clear();
        self.containerd.take();
        self.netns.clear();
    }
}

/// Fails, saying how to build them, unless the release daemons are in
/// `bin_dir`.
pub fn require_daemons(bin_dir: &Path) -> Result<()> {
    for b in ["bpf-loader", "policyd", "resolver"] {
        if !bin_dir.join(b).is_file() {
            bail!(
                "{} not found (build with `cargo build --release -p bpf-loader -p policyd -p resolver`, or pass --bin-dir)",
                bin_dir.join(b).display()
            );
        }
    }
    Ok(())
}

/// Where a phase's scene `name` keeps its files (a scratch directory) and
/// its pins, and its cgroup: made here, all removed on drop (after
/// whatever used them has stopped).
pub struct Places {
    pub scratch: PathBuf,
    pub pin_dir: PathBuf,
    pub cgroup: cgroup::Cgroup,
}

impl Places {
    pub fn new(name: &str) -> Result<Places> {
        let places = Places {
            scratch: PathBuf::from("/tmp").join(name),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(name),
            cgroup: cgroup::Cgroup::create(&cgroup::cgroup2_mount()?.join(name))?,
        };
        std::fs::create_dir_all(&places.scratch)?;
        Ok(places)
    }
}

impl Drop for Places {
    fn drop(&mut self) {
        cleanup::remove_any(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

pub fn measure(bin_dir: &Path, quick: bool) -> Result<(Control, Vec<String>)> {
    let started = Instant::now();
    let mut missing = Vec::new();
    require_daemons(bin_dir)?;
    let bin = |name: &str| bin_dir.join(name);
    let name = format!("{}-cp", sys::run_name());
    let mut scene = Scene {
        places: Places::new(&name)?,
        netns: Vec::new(),
        containerd: None,
        daemons: Vec::new(),
    };
    let s = scene.places.scratch.clone();
    std::fs::create_dir_all(scene.places.cgroup.path().join("ctr"))?;
    let sock = |n: &str| s.join(format!("{n}.sock"));
    let path = |p: &Path| p.to_string_lossy().into_owned();

    // A private containerd, when there is one to run.
    // Overlay snapshots need a real filesystem, not the tmpfs under /tmp.
    let containerd_base = PathBuf::from("/var/lib").join(&name);
    match Containerd::start(&containerd_base, &format!("{name}/ctr"), &["default"]) {
        Ok(c) => scene.containerd = Some(c),
        Err(e) => missing.push(format!(
            "container create → policy in force: no private containerd could be started ({e:#})"
        )),
    }

    // bpf-loader attaches its veth backstop to every veth of its network
    // namespace: it runs in one of its own, so no device of the host's
    // (nor of anything else running there) gets a program from the bench.
    let loader_ns = format!("{name}-loader");
    scene.netns.push(Netns::new(&loader_ns)?);
    let loader = start_loader(
        bin_dir,
        &scene.places.pin_dir,
        &format!("{name}/ctr"),
        &s,
        &loader_ns,
    )?;
    let mut resolver_args = vec![
        "--socket".to_string(),
        path(&sock("resolver")),
        "--docker-socket".into(),
        path(&s.join("no-docker.sock")),
        "--docker-root".into(),
        path(&s.join("no-docker")),
    ];
    match &scene.containerd {
        Some(c) => resolver_args.extend(["--containerd-socket".into(), path(c.socket())]),
        None => resolver_args.push("--no-containerd".into()),
    }
    let resolver_args: Vec<&str> = resolver_args.iter().map(String::as_str).collect();
    let resolver = start(
        "resolver",
        &bin("resolver"),
        &resolver_args,
        &sock("resolver"),
        &s,
    )?;

    // policyd on the synthetic inventory file, for the reload timings.
    let policy = s.join("policy.toml");
    let text = test_kit::synthetic::policy_text(RULES, POLICIES);
    let edited = edit_one_rule(&text, RULES)?;
    let empty = "mode = \"enforce\"\nunknown_container = \"deny\"\n";
    std::fs::write(&policy, empty)?;
    std::fs::write(
        s.join("inventory.json"),
        serde_json::to_string(&test_kit::synthetic::inventory(CONTAINERS))?,
    )?;
    let policyd_bin = bin("policyd");
    let policyd_sock = sock("policyd");
    let daemon_args = |policy: &Path, inventory: Option<&Path>, socket: &Path| {
        let mut a = vec![
            "--socket".to_string(),
            path(socket),
            "daemon".into(),
            "--policy".into(),
            path(policy),
            "--loader-socket".into(),
            path(&sock("loader")),
            "--group".into(),
            "root".into(),
            "--poll-secs".into(),
            "3600".into(),
            "--resync-secs".into(),
            "3600".into(),
        ];
        match inventory {
            Some(i) => a.extend(["--inventory".into(), path(i)]),
            None => a.extend(["--resolver-socket".into(), path(&sock("resolver"))]),
        }
        a
    };
    let args = daemon_args(&policy, Some(&s.join("inventory.json")), &policyd_sock);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let policyd_daemon = start("policyd", &policyd_bin, &args, &policyd_sock, &s)?;
    std::thread::sleep(Duration::from_secs(1));
    let maps_idle = sys::map_memory_kb(loader.child.id());
    let idle = [
        ("bpf-loader", sys::rss_kb(loader.child.id())),
        ("resolver", sys::rss_kb(resolver.child.id())),
        ("policyd", sys::rss_kb(policyd_daemon.child.id())),
    ];

    let mut control = Control {
        rules: RULES,
        policies: POLICIES,
        containers: CONTAINERS,
        ..Control::default()
    };
    let installs = if quick { 1 } else { 3 };
    let changes = if quick { 2 } else { 7 };
    reload(&policyd_bin, &policyd_sock)?; // the empty policy, settled
    let mut installed = [None; 3];
    let mut maps_installed = None;
    for i in 0..installs {
        std::fs::write(&policy, &text)?;
        record(&mut control.install, reload(&policyd_bin, &policyd_sock)?);
        if i == 0 {
            std::thread::sleep(Duration::from_secs(1));
            installed = [
                sys::rss_kb(loader.child.id()),
                sys::rss_kb(resolver.child.id()),
                sys::rss_kb(policyd_daemon.child.id()),
            ];
            maps_installed = sys::map_memory_kb(loader.child.id());
        }
        if i + 1 < installs {
            std::fs::write(&policy, empty)?;
            record(
                &mut control.remove_all,
                reload(&policyd_bin, &policyd_sock)?,
            );
        }
    }
    for i in 0..changes {
        std::fs::write(&policy, if i % 2 == 0 { &edited } else { &text })?;
        record(&mut control.one_rule, reload(&policyd_bin, &policyd_sock)?);
        record(&mut control.unchanged, reload(&policyd_bin, &policyd_sock)?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let loaded = [
        sys::rss_kb(loader.child.id()),
        sys::rss_kb(resolver.child.id()),
        sys::rss_kb(policyd_daemon.child.id()),
    ];
    control.loader_maps = Some(Rss {
        daemon: "bpf-loader's maps (kernel memory)".into(),
        idle_kb: maps_idle,
        installed_kb: maps_installed,
        loaded_kb: sys::map_memory_kb(loader.child.id()),
    });
    control.rss = idle
        .iter()
        .zip(installed)
        .zip(loaded)
        .map(|(((daemon, idle), installed), loaded)| Rss {
            daemon: daemon.to_string(),
            idle_kb: *idle,
            installed_kb: installed,
            loaded_kb: loaded,
        })
        .collect();
    // The same rules through `nft -f`, in the same run.
    let nft_runs = if quick { 2 } else { 7 };
    match measure_nft(&mut scene, &format!("{name}-nft"), &text, nft_runs) {
        Ok(nft) => control.nft = Some(nft),
        Err(e) => missing.push(format!("control plane, nft -f of the same rules: {e:#}")),
    }
    // Leave the maps empty for the next policyd.
    std::fs::write(&policy, empty)?;
    reload(&policyd_bin, &policyd_sock)?;
    drop(policyd_daemon);

    if scene.containerd.is_some() {
        match create_to_in_force(&mut scene, &name, &daemon_args, &policyd_bin, quick) {
            Ok(c) => control.create = Some(c),
            Err(e) => missing.push(format!("container create → policy in force: {e:#}")),
        }
    }
    scene.daemons.push(resolver);
    scene.daemons.push(loader);
    drop(scene);
    control.seconds = started.elapsed().as_secs_f64();
    Ok((control, missing))
}

/// policyd's daemon arguments for (policy, inventory file or the resolver, socket).
type DaemonArgs<'a> = dyn Fn(&Path, Option<&Path>, &Path) -> Vec<String> + 'a;

fn create_to_in_force(
    scene: &mut Scene,
    name: &str,
    daemon_args: &DaemonArgs<'_>,
    policyd_bin: &Path,
    quick: bool,
) -> Result<Create> {
    let s = scene.places.scratch.clone();
    // The containers' network: a namespace they join, a veth to a peer
    // that counts what reaches it.
    let (ct_ns, peer_ns) = (format!("{name}-ct"), format!("{name}-peer"));
    scene.netns.push(Netns::new(&ct_ns)?);
    scene.netns.push(Netns::new(&peer_ns)?);
    let (cmac, pmac) = ("02:cb:00:00:c8:02", "02:cb:00:00:c8:01");
    lab::add_veth(
        VethEnd::new(&ct_ns, "vc").mac(cmac),
        VethEnd::new(&peer_ns, "vp").mac(pmac),
    )?;
    lab::add_addr(&ct_ns, "vc", "198.18.200.2/24")?;
    lab::add_addr(&peer_ns, "vp", "198.18.200.1/24")?;
    lab::link_up(&ct_ns, "lo")?;
    lab::link_up(&ct_ns, "vc")?;
    lab::link_up(&peer_ns, "vp")?;
    lab::add_neighbour(&ct_ns, "vc", "198.18.200.1", pmac)?;
    lab::add_neighbour(&peer_ns, "vp", "198.18.200.2", cmac)?;
    lab::load_nftables(
        &peer_ns,
        "table ip cbench {\n chain pre {\n  type filter hook prerouting priority -300;\n  ip saddr 198.18.200.2 counter\n }\n}\n",
    )?;
    let counted = || -> Result<u64> {
        let out = lab::exec_in(&peer_ns, "nft", &["list", "table", "ip", "cbench"])?;
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .context("nft counter")?
            .parse()
            .context("nft counter")
    };

    // policyd following the resolver, with a policy that selects the
    // benchmark's containers and allows nothing they send.
    let policy = s.join("policy-ct.toml");
    std::fs::write(
        &policy,
        "mode = \"enforce\"\nunknown_container = \"deny\"\n\n[[policy]]\nname = \"bench\"\nselect = { label = { \"contain-bench\" = \"1\" } }\nallow = [{ to = [\"198.18.201.1\"], proto = \"tcp\", ports = [9] }]\n",
    )?;
    let socket = s.join("policyd-ct.sock");
    let args = daemon_args(&policy, None, &socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let policyd_ct = start("policyd", policyd_bin, &args, &socket, &s)?;
    // Let it converge (first inventory, first apply).
    std::thread::sleep(Duration::from_secs(2));

    let maps = maps_dir(&scene.places.pin_dir)?;
    let cgroups: BpfHashMap<MapData, u64, CgroupPolicy> =
        Map::HashMap(MapData::from_pin(maps.join("CONTAIN_CGROUPS"))?).try_into()?;
    let containerd = scene.containerd.as_ref().context("containerd")?;
    let events = containerd.events()?;
    let trials = if quick { 2 } else { 10 };
    let parent = scene.places.cgroup.path().join("ctr");
    let mut create = Create {
        trials,
        ..Create::default()
    };
    for i in 0..=trials {
        let id = format!("{name}-{i}");
        let netns = lab::netns_path(&ct_ns);
        let with_ns = format!("network:{}", netns.display());
        let flags = ["--label", "contain-bench=1", "--with-ns", &with_ns];
        let pinging = "while :; do ping -c 1 -W 1 198.18.200.1 >/dev/null 2>&1; sleep 0.005; done";
        let dir = parent.join(&id);
        let in_force = until_in_force(&dir, &cgroups, || {
            Ok(containerd.run_container("default", &id, &flags, &["sh", "-c", pinging])?)
        })?;
        let create_ns = events.wait(&id, "/tasks/create")?;
        let start_ns = events.wait(&id, "/tasks/start")?;
        // Let it ping under the policy for a moment, then remove it.
        std::thread::sleep(Duration::from_millis(100));
        containerd.remove_container("default", &id);
        if i == 0 {
            continue; // warm-up
        }
        create
            .from_create_ms
            .push((in_force - create_ns) as f64 / 1e6);
        create
            .from_start_ms
            .push((in_force - start_ns) as f64 / 1e6);
    }
    create.escaped_packets = counted()?;
    // First-packet coverage without any container: a cgroup created under
    // the managed parent that nothing ever maps, pinging at once.
    let unmapped = parent.join("unmapped");
    std::fs::create_dir_all(&unmapped)?;
    // Raw ICMP echo requests (judged by the egress program, packet by
    // packet) and UDP datagrams (judged at sendmsg), each attempt counted.
    let mut probe = Command::new("/usr/bin/python3");
    probe
        .arg("-c")
        .arg(format!(
            "import socket, time\n\
             sent = 0\n\
             for i in range({n}):\n\
             \x20   for kind in ('icmp', 'udp'):\n\
             \x20       try:\n\
             \x20           if kind == 'icmp':\n\
             \x20               s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
             \x20               s.sendto(b'\\x08\\x00\\xf7\\xff\\x00\\x00\\x00\\x00', ('198.18.200.1', 0))\n\
             \x20           else:\n\
             \x20               s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20               s.sendto(b'x', ('198.18.200.1', 9))\n\
             \x20           sent += 1\n\
             \x20       except OSError:\n\
             \x20           pass\n\
             \x20   time.sleep(0.02)\n\
             print(sent)\n",
            n = UNMAPPED_PINGS / 2
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = lab::spawn_in(probe, Some(&ct_ns), Some(&unmapped))?.wait_with_output()?;
    let accepted: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the unmapped-cgroup probe's output")?;
    create.unmapped_accepted_by_kernel = accepted;
    create.unmapped_sent = UNMAPPED_PINGS;
    create.unmapped_escaped = counted()? - create.escaped_packets;
    let _ = std::fs::remove_dir(&unmapped);
    let before_control = counted()?;
    // Positive control: the same namespace, outside the managed cgroup.
    let _ = lab::exec_in(&ct_ns, "ping", &["-c", "1", "-W", "1", "198.18.200.1"]);
    create.control_packets = counted()? - before_control;
    let counters: PerCpuArray<MapData, PolicyCounters> =
        Map::PerCpuArray(MapData::from_pin(maps.join("CONTAIN_COUNTERS"))?).try_into()?;
    for policy_id in 0..contain_common::MAX_POLICIES {
        let denied: u64 = counters
            .get(&policy_id, 0)
            .map(|v| v.iter().map(|c| c.denied).sum())
            .unwrap_or(0);
        if policy_id == contain_common::UNKNOWN_POLICY_ID {
            create.denied_unknown = denied;
        } else {
            create.denied_by_policy += denied;
        }
    }
    drop(policyd_ct);
    Ok(create)
}

/// One rule of the synthetic policy, as nftables sees it: a destination
/// and what it allows there.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NftRule {
    /// `10.0.0.1`, `172.16.0.0/24`, `2001:db8::/64`.
    to: String,
    v6: bool,
    /// (protocol name, port range) pairs; ICMP as ("icmp", type name).
    allows: Vec<(String, String)>,
}

/// A value of the synthetic rule lines' inline tables: a string, a
/// number, or a list of them (as text).
fn toml_values(value: &str) -> Vec<String> {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The rules of a synthetic policy (`test_kit::synthetic::policy_text`),
/// read from its `{ to = …, proto = …, ports = […] }, # rule N` lines: the
/// generator's few forms, anything else is an error (not guessed at).
fn nft_rules(text: &str) -> Result<Vec<NftRule>> {
    let mut rules = Vec::new();
    for line in text.lines().filter(|l| l.contains("# rule ")) {
        let body = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map(|(body, _)| body)
            .with_context(|| format!("not an inline rule: {line}"))?;
        // Split `key = value` pairs at the commas outside brackets.
        let (mut fields, mut depth, mut start) = (BTreeMap::new(), 0, 0);
        for (i, c) in body.char_indices().chain([(body.len(), ',')]) {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' if depth == 0 => {
                    let field = &body[start..i];
                    start = i + 1;
                    if let Some((k, v)) = field.split_once('=') {
                        fields.insert(k.trim().to_string(), toml_values(v));
                    }
                }
                _ => {}
            }
        }
        let to = match fields.get("to").map(Vec::as_slice) {
            Some([to]) => to.clone(),
            _ => bail!("a rule with one destination expected: {line}"),
        };
        let protos = fields.get("proto").cloned().unwrap_or_default();
        let mut allows = Vec::new();
        for proto in &protos {
            match proto.as_str() {
                "tcp" | "udp" => {
                    let ports = fields.get("ports").context("ports")?;
                    allows.extend(ports.iter().map(|p| (proto.clone(), p.clone())));
                }
                "icmp" | "icmpv6" => match fields.get("icmp_types") {
                    Some(types) => allows.extend(types.iter().map(|t| (proto.clone(), t.clone()))),
                    None => allows.push((proto.clone(), String::new())),
                },
                other => bail!("protocol {other} in {line}"),
            }
        }
        if allows.is_empty() {
            bail!("a rule with no protocol: {line}");
        }
        rules.push(NftRule {
            v6: to.contains(':'),
            to,
            allows,
        });
    }
    Ok(rules)
}

const NFT_TABLE: &str = "cbench_ctl";

/// The rules as one nftables table: one interval set per address family
/// (destination . protocol . port) and one of (destination . ICMP type),
/// each looked up once by a drop-by-default output chain. `replace` deletes
/// the table first, in the same transaction: an nftables reload.
fn nft_table(rules: &[NftRule], replace: bool) -> (String, usize) {
    let (mut v4, mut v6, mut icmp4, mut icmp6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in rules {
        for (proto, what) in &r.allows {
            let element = format!("{} . {proto} . {what}", r.to);
            match (proto.as_str(), r.v6) {
                ("icmp" | "icmpv6", false) => icmp4.push(format!("{} . {what}", r.to)),
                ("icmp" | "icmpv6", true) => icmp6.push(format!("{} . {what}", r.to)),
                (_, false) => v4.push(element),
                (_, true) => v6.push(element),
            }
        }
    }
    let elements = v4.len() + v6.len() + icmp4.len() + icmp6.len();
    let mut s = String::new();
    if replace {
        s.push_str(&format!(
            "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        ));
    }
    s.push_str(&format!("table inet {NFT_TABLE} {{\n"));
    for (name, ty, list) in [
        ("allow4", "ipv4_addr . inet_proto . inet_service", &v4),
        ("allow6", "ipv6_addr . inet_proto . inet_service", &v6),
        ("icmp4", "ipv4_addr . icmp_type", &icmp4),
        ("icmp6", "ipv6_addr . icmpv6_type", &icmp6),
    ] {
        s.push_str(&format!(" set {name} {{\n  type {ty}; flags interval;\n"));
        if !list.is_empty() {
            s.push_str(&format!("  elements = {{ {} }}\n", list.join(",\n   ")));
        }
        s.push_str(" }\n");
    }
    s.push_str(
        " chain out {\n  type filter hook output priority 0; policy drop;\n  \
         ip daddr . meta l4proto . th dport @allow4 accept\n  \
         ip6 daddr . meta l4proto . th dport @allow6 accept\n  \
         ip daddr . icmp type @icmp4 accept\n  \
         ip6 daddr . icmpv6 type @icmp6 accept\n }\n}\n",
    );
    (s, elements)
}

/// `nft -f file` in network namespace `ns`, joined between fork and exec
/// (no `ip netns exec` in the time): wall time, ms.
fn nft_load(ns: &str, file: &Path) -> Result<f64> {
    let mut cmd = Command::new("nft");
    cmd.arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = lab::spawn_in(cmd, Some(ns), None)?.wait_with_output()?;
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "nft -f {} failed ({}): {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(wall)
}

/// Times `nft -f` of `text`'s rules in a namespace of its own (`ns`, added
/// here and recorded in the scene for removal), `runs` times from empty and
/// `runs` times as a replace of the loaded table.
fn measure_nft(scene: &mut Scene, ns: &str, text: &str, runs: usize) -> Result<NftLoad> {
    let rules = nft_rules(text)?;
    if rules.is_empty() {
        bail!("no rules in the synthetic policy");
    }
    scene.netns.push(Netns::new(ns)?);
    let (fresh, elements) = nft_table(&rules, false);
    let (replace, _) = nft_table(&rules, true);
    let (fresh_file, replace_file) = (
        scene.places.scratch.join("rules.nft"),
        scene.places.scratch.join("rules-replace.nft"),
    );
    std::fs::write(&fresh_file, &fresh)?;
    std::fs::write(&replace_file, &replace)?;
    let mut nft = NftLoad {
        elements,
        bytes: fresh.len(),
        ..NftLoad::default()
    };
    for _ in 0..runs {
        nft.install_ms.push(nft_load(ns, &fresh_file)?);
        nft.replace_ms.push(nft_load(ns, &replace_file)?);
        let mut cmd = Command::new("nft");
        cmd.args(["delete", "table", "inet", NFT_TABLE]);
        let status = lab::spawn_in(cmd, Some(ns), None)?.wait()?;
        if !status.success() {
            bail!("nft delete table inet {NFT_TABLE} failed ({status})");
        }
    }
    Ok(nft)
}

/// Runs `start` (a container's start) while polling for the cgroup at `dir`
/// to appear in the loader's `CGROUPS` map; when it appeared (`now_ns`).
pub(crate) fn until_in_force<T: Send>(
    dir: &Path,
    cgroups: &BpfHashMap<MapData, u64, CgroupPolicy>,
    start: impl FnOnce() -> Result<T> + Send,
) -> Result<i128> {
    let in_force = std::thread::scope(|scope| -> Result<Option<i128>> {
        let run = scope.spawn(start);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut in_force = None;
        let mut cgroup_id = None;
        while Instant::now() < deadline {
            if cgroup_id.is_none() && dir.is_dir() {
                cgroup_id = cgroup::cgroup_id(dir).ok();
            }
            if let Some(cid) = cgroup_id {
                if cgroups.get(&cid, 0).is_ok() {
                    in_force = Some(now_ns());
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        run.join()
            .map_err(|_| anyhow::anyhow!("ctr thread panicked"))??;
        Ok(in_force)
    })?;
    in_force.with_context(|| {
        format!(
            "{}: the container's cgroup never appeared in the loader's map",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_synthetic_rule_becomes_nftables_elements() {
        let text = test_kit::synthetic::policy_text(100, 2);
        let rules = nft_rules(&text).unwrap();
        assert_eq!(rules.len(), 100);
        assert!(rules.iter().any(|r| r.v6));
        let two_protos = rules
            .iter()
            .find(|r| r.allows.len() == 4)
            .expect("a tcp+udp rule with two port specs");
        assert_eq!(
            two_protos.allows,
            [
                ("tcp".to_string(), "53".to_string()),
                ("tcp".into(), "8000-8080".into()),
                ("udp".into(), "53".into()),
                ("udp".into(), "8000-8080".into()),
            ]
        );
        let (table, elements) = nft_table(&rules, false);
        assert_eq!(
            elements,
            rules.iter().map(|r| r.allows.len()).sum::<usize>()
        );
        assert!(table.contains("echo-request"));
        assert!(!table.contains("delete table"));
        assert!(nft_table(&rules, true)
            .0
            .starts_with("table inet cbench_ctl\ndelete table"));
    }

    #[test]
    fn an_unknown_rule_form_is_an_error_not_a_guess() {
        let text = "allow = [\n  { to = \"10.0.0.1\", proto = \"sctp\" }, # rule 0\n]\n";
        assert!(nft_rules(text).is_err());
    }
}
