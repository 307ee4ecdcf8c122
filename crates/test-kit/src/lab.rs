//! Network namespaces, links and the processes that run in them: the
//! building blocks of the labs (the loader's "containers" with their
//! bridge, the resolver's veth → netns → cgroup scenes, the bench's
//! configurations).

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{io_error, process, Error, Result};

/// A network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name`, replacing a stale one of that name.
    pub fn new(name: &str) -> Result<Netns> {
        process::run_quiet("ip", &["netns", "del", name]);
        process::run("ip", &["netns", "add", name])?;
        Ok(Netns { name: name.into() })
    }

    /// Creates namespace `name` from inside `cgroup`, as runc does: the
    /// kernel's per-namespace control sockets (neighbour discovery) then
    /// belong to that cgroup too.
    pub fn new_in_cgroup(name: &str, cgroup: &Path) -> Result<Netns> {
        process::run_quiet("ip", &["netns", "del", name]);
        let mut add = Command::new("ip");
        add.args(["netns", "add", name]).stdin(Stdio::null());
        let out = spawn_in(add, None, Some(cgroup))?
            .wait_with_output()
            .map_err(io_error("waiting for `ip netns add` in", cgroup))?;
        if !out.status.success() {
            return Err(Error::Failed {
                command: format!("ip netns add {name} (in {})", cgroup.display()),
                status: out.status,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(Netns { name: name.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace now, failing if it cannot (a drop only tries:
    /// what it removes may be gone already).
    pub fn delete(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        process::run("ip", &["netns", "del", &name]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Empty once `delete` has deleted it.
        if !self.name.is_empty() {
            process::run_quiet("ip", &["netns", "del", &self.name]);
        }
    }
}

/// The bind mount `ip netns` keeps for namespace `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// One link of a namespace, as `ip -j link` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    /// The MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// A link message as the kernel sends one (`RTM_NEWLINK`, a dump's entry):
/// link `index` with `attributes`, for the parsers of the loader and the
/// resolver.
pub fn link_message(
    index: u32,
    attributes: Vec<rtnetlink::packet_route::link::LinkAttribute>,
) -> rtnetlink::packet_route::link::LinkMessage {
    use rtnetlink::packet_route::link::{LinkHeader, LinkMessage};
    let mut m = LinkMessage::default();
    m.header = LinkHeader {
        index,
        ..LinkHeader::default()
    };
    m.attributes = attributes;
    m
}

/// Reads link `dev` inside namespace `ns` (ifindexes are per namespace).
pub fn link_in(ns: &str, dev: &str) -> Result<Link> {
    let out = process::run("ip", &["-n", ns, "-j", "link", "show", "dev", dev])?;
    let bad = |why: String| Error::Setup(format!("ip -j link show {dev} in {ns}: {why}"));
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
    let link = &v[0];
    Ok(Link {
        name: dev.to_string(),
        ifindex: link["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(format!("no ifindex in {v}")))?,
        mac: link["address"].as_str().unwrap_or_default().to_string(),
    })
}

/// A link's traffic counters, as `ip -s -j link` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Reads the traffic counters of link `dev` inside namespace `ns`.
pub fn link_counters(ns: &str, dev: &str) -> Result<LinkCounters> {
    let out = ip(ns, &["-s", "-j", "link", "show", "dev", dev])?;
    let bad = |why: String| Error::Setup(format!("ip -s -j link show {dev} in {ns}: {why}"));
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
    let stats = &v[0]["stats64"];
    let counter = |direction: &str, what: &str| {
        stats[direction][what]
            .as_u64()
            .ok_or_else(|| bad(format!("no {direction} {what} in {v}")))
    };
    Ok(LinkCounters {
        rx_packets: counter("rx", "packets")?,
        rx_bytes: counter("rx", "bytes")?,
        tx_packets: counter("tx", "packets")?,
        tx_bytes: counter("tx", "bytes")?,
    })
}

/// Runs `ip -n <ns> <args>`: one change to namespace `ns`'s links,
/// addresses, routes or neighbours.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    process::run("ip", &all)
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec`,
/// which also mounts the namespace's /sys); its arguments are the caller's
/// to add.
pub fn cmd_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Runs `program` inside namespace `ns` (see [`cmd_in`]): its stdout, or
/// an error when it fails.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    process::run("ip", &all)
}

/// Sets `key=value` sysctls inside namespace `ns`.
pub fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["-qw"];
    args.extend_from_slice(settings);
    exec_in(ns, "sysctl", &args).map(drop)
}

/// Lets every group of namespace `ns` open ICMP echo ("ping") sockets.
pub fn allow_ping_sockets(ns: &str) -> Result<()> {
    sysctl(ns, &["net.ipv4.ping_group_range=0 2147483647"])
}

/// Turns IPv6 off in namespace `ns` (no background chatter), for links
/// made there from now on too.
pub fn disable_ipv6(ns: &str) -> Result<()> {
    sysctl(
        ns,
        &[
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
}

/// Loads `ruleset` (what `nft -f` reads) into namespace `ns`'s nftables.
pub fn load_nftables(ns: &str, ruleset: &str) -> Result<()> {
    process::run_with_input(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        ruleset.as_bytes(),
    )
    .map(drop)
}

/// A network namespace as `ip` can reach one: this process's own, one
/// that [`Netns`] named, or the one a process (a container's init) is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsRef<'a> {
    /// The namespace this process runs in (on a test host, the host's).
    Own,
    /// One [`Netns`] made, by its name.
    Named(&'a str),
    /// The namespace process `pid` is in.
    OfProcess(u32),
}

/// One end of a veth pair: its namespace, its name and, if given, its MAC
/// address and ifindex.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub ns: NetnsRef<'a>,
    pub name: &'a str,
    pub mac: Option<&'a str>,
    pub index: Option<u32>,
}

impl<'a> VethEnd<'a> {
    /// An end in namespace `ns` (made by [`Netns`]).
    pub fn new(ns: &'a str, name: &'a str) -> VethEnd<'a> {
        VethEnd::at(NetnsRef::Named(ns), name)
    }

    /// An end in this process's own namespace: a container's host side, as
    /// a CNI plugin leaves it.
    pub fn own(name: &'a str) -> VethEnd<'a> {
        VethEnd::at(NetnsRef::Own, name)
    }

    /// An end in the namespace process `pid` is in: a container's side,
    /// when the container's namespace has no name.
    pub fn of_process(pid: u32, name: &'a str) -> VethEnd<'a> {
        VethEnd::at(NetnsRef::OfProcess(pid), name)
    }

    fn at(ns: NetnsRef<'a>, name: &'a str) -> VethEnd<'a> {
        VethEnd {
            ns,
            name,
            mac: None,
            index: None,
        }
    }

    pub fn mac(self, mac: &'a str) -> VethEnd<'a> {
        VethEnd {
            mac: Some(mac),
            ..self
        }
    }

    pub fn index(self, index: u32) -> VethEnd<'a> {
        VethEnd {
            index: Some(index),
            ..self
        }
    }
}

/// Makes the veth pair `a` — `b` (both down), `b` moved into its own
/// namespace when that is not `a`'s. `a` is made where it is, so it must be
/// in a namespace `ip` runs in: this process's or a named one.
pub fn add_veth(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<()> {
    fn options<'s>(mac: Option<&'s str>, index: Option<&'s str>, args: &mut Vec<&'s str>) {
        if let Some(mac) = mac {
            args.extend(["address", mac]);
        }
        if let Some(index) = index {
            args.extend(["index", index]);
        }
    }
    let (a_index, b_index) = (
        a.index.map(|i| i.to_string()),
        b.index.map(|i| i.to_string()),
    );
    // `ip link ... netns` takes a namespace's name or a process in it.
    let b_netns = match b.ns {
        NetnsRef::Own => std::process::id().to_string(),
        NetnsRef::Named(ns) => ns.to_string(),
        NetnsRef::OfProcess(pid) => pid.to_string(),
    };
    let mut args = vec!["link", "add", a.name];
    options(a.mac, a_index.as_deref(), &mut args);
    args.extend(["type", "veth", "peer", "name", b.name]);
    options(b.mac, b_index.as_deref(), &mut args);
    if b.ns != a.ns {
        args.extend(["netns", &b_netns]);
    }
    match a.ns {
        NetnsRef::Own => process::run("ip", &args).map(drop),
        NetnsRef::Named(ns) => ip(ns, &args).map(drop),
        NetnsRef::OfProcess(pid) => Err(Error::Setup(format!(
            "veth {} — {}: `ip` cannot make a link inside process {pid}'s namespace; \
             give that end second, it is moved there",
            a.name, b.name
        ))),
    }
}

/// Deletes link `name` of this process's namespace (a veth takes its peer
/// with it).
pub fn delete_link(name: &str) -> Result<()> {
    process::run("ip", &["link", "del", name]).map(drop)
}

/// Sets link `name` of this process's namespace up (a container's host
/// side, as a runtime does once the pair is made).
pub fn own_link_up(name: &str) -> Result<()> {
    process::run("ip", &["link", "set", name, "up"]).map(drop)
}

/// Sets link `dev` of namespace `ns` up.
pub fn link_up(ns: &str, dev: &str) -> Result<()> {
    ip(ns, &["link", "set", dev, "up"]).map(drop)
}

/// Adds address `cidr` (`198.18.0.2/15`, `2001:db8::2/64`) to `dev` in
/// namespace `ns`; an IPv6 one without duplicate address detection (it is
/// usable at once).
pub fn add_addr(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(ns, &args).map(drop)
}

/// Removes address `cidr` (as [`add_addr`] took it) from `dev` in
/// namespace `ns`.
pub fn del_addr(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip(ns, &["addr", "del", cidr, "dev", dev]).map(drop)
}

/// The addresses of link `dev` in namespace `ns` as `ip -j addr` reports
/// them (every one the link holds: link-local, tentative and all), sorted:
/// what a test holds the resolver's own reading against.
pub fn addresses_in(ns: &str, dev: &str) -> Result<Vec<std::net::IpAddr>> {
    let out = ip(ns, &["-j", "addr", "show", "dev", dev])?;
    let bad = |why: String| Error::Setup(format!("ip -j addr show {dev} in {ns}: {why}"));
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
    let infos = v[0]["addr_info"]
        .as_array()
        .ok_or_else(|| bad(format!("no addr_info in {v}")))?;
    let mut addresses = infos
        .iter()
        .map(|info| {
            info["local"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad(format!("no local address in {info}")))
        })
        .collect::<Result<Vec<std::net::IpAddr>>>()?;
    addresses.sort_unstable();
    Ok(addresses)
}

/// The IPv6 link-local address the kernel gave `dev` inside `ns` (it does
/// as the link comes up), once it is usable: until its duplicate address
/// detection is done (a second or two) the kernel answers no neighbour
/// solicitation for it, so nothing sent to it arrives. Waits up to 5 s.
pub fn usable_link_local(ns: &str, dev: &str) -> Result<std::net::Ipv6Addr> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = ip(
            ns,
            &["-6", "-j", "addr", "show", "dev", dev, "scope", "link"],
        )?;
        let bad = |why: String| Error::Setup(format!("ip -j addr show {dev} in {ns}: {why}"));
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
        let usable = v[0]["addr_info"].as_array().and_then(|infos| {
            infos
                .iter()
                .filter(|info| info["tentative"] != true)
                .find_map(|info| info["local"].as_str()?.parse().ok())
        });
        match usable {
            Some(addr) => return Ok(addr),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => return Err(bad(format!("no usable link-local address in {v}"))),
        }
    }
}

/// A static neighbour entry: `addr` is at `mac` on `dev` (no ARP or
/// neighbour discovery for it).
pub fn add_neighbour(ns: &str, dev: &str, addr: &str, mac: &str) -> Result<()> {
    ip(
        ns,
        &[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )
    .map(drop)
}

/// Routes `dest` (`10.0.0.0/8`, `2001:db8::/64`) in namespace `ns` via
/// `gateway` out of `dev`.
pub fn add_route(ns: &str, dest: &str, gateway: &str, dev: &str) -> Result<()> {
    ip(ns, &["route", "add", dest, "via", gateway, "dev", dev]).map(drop)
}

/// Drops what namespace `ns` sends to `dest` (`10.0.0.0/8`), silently: a
/// blackhole route, no ICMP error.
pub fn add_blackhole_route(ns: &str, dest: &str) -> Result<()> {
    ip(ns, &["route", "add", "blackhole", dest]).map(drop)
}

/// A bridge `name` in namespace `ns`, up, that only switches: no spanning
/// tree, no multicast snooping, and (as far as the namespace has them) no
/// bridge netfilter calls.
pub fn add_bridge(ns: &str, name: &str) -> Result<()> {
    exec_in(
        ns,
        "sh",
        &[
            "-c",
            "for k in iptables ip6tables arptables; do f=/proc/sys/net/bridge/bridge-nf-call-$k; [ -e $f ] && echo 0 > $f; done; true",
        ],
    )?;
    ip(
        ns,
        &[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ],
    )?;
    link_up(ns, name)
}

/// Makes link `dev` of namespace `ns` a port of `bridge`, and sets it up.
pub fn add_to_bridge(ns: &str, dev: &str, bridge: &str) -> Result<()> {
    ip(ns, &["link", "set", dev, "master", bridge])?;
    link_up(ns, dev)
}

/// The ifindex of link `name` in this process's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let path = PathBuf::from(format!("/sys/class/net/{name}/ifindex"));
    let text = std::fs::read_to_string(&path).map_err(io_error("reading", &path))?;
    text.trim()
        .parse()
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}

/// Moves the calling thread into the network namespace at `path`.
pub fn join_netns(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(io_error("opening network namespace", path))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io_error("joining network namespace", path)(e.into()))
}

/// Runs `f` on a new thread that has joined network namespace `ns`.
pub fn in_netns<T, E>(ns: &str, f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let path = netns_path(ns);
    std::thread::spawn(move || {
        join_netns(&path)?;
        f()
    })
    .join()
    .map_err(|_| Error::Setup(format!("a thread in network namespace {ns} panicked")))?
}

/// Runs `f` on the calling thread inside network namespace `ns`, then
/// moves the thread back (for what must happen on this thread: a test run
/// needs its device in the thread's namespace, a tc attachment resolves
/// its device there).
pub fn with_netns<T, E>(ns: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<Error>,
{
    let home_path = Path::new("/proc/thread-self/ns/net");
    let home = File::open(home_path).map_err(io_error("opening", home_path))?;
    join_netns(&netns_path(ns))?;
    let out = f();
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io_error("returning to network namespace", home_path)(e.into()))?;
    out
}

/// Spawns `cmd` inside network namespace `ns` and, if given, `cgroup`
/// (joined in the child between fork and exec, so its first instruction
/// already runs there).
pub fn spawn_in(mut cmd: Command, ns: Option<&str>, cgroup: Option<&Path>) -> Result<Child> {
    let netns = ns
        .map(|ns| {
            let path = netns_path(ns);
            File::open(&path).map_err(io_error("opening network namespace", &path))
        })
        .transpose()?;
    let procs = cgroup
        .map(|c| {
            let path = c.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("opening", &path))
        })
        .transpose()?;
    let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure only makes async-signal-safe syscalls on fds that
    // stay open until the child has exec'd (they are dropped after spawn).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd {
                // "0": the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = netns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        command: format!("{:?}", cmd.get_program()),
        source,
    })?;
    drop(netns);
    drop(procs);
    Ok(child)
}

/// A command that joins `cgroup`, then network namespace `ns`, then runs
/// `args` (through a shell and `ip netns exec`, which also mounts the
/// namespace's /sys).
pub fn in_cgroup_ns_cmd(cgroup: &Path, ns: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#)
        .arg("sh")
        .arg(cgroup)
        .arg(ns)
        .args(args);
    cmd
}
