//! Reading a network namespace's addresses through a process in it
//! (`Proc::addresses`: `/proc/<pid>/net/{fib_trie,if_inet6}`) against the
//! kernel: a namespace with a veth holding IPv4, a secondary IPv4 and IPv6
//! addresses (and the link-local one the kernel adds, and one with a
//! lifetime, as from a router advertisement, which does not count), a
//! second interface whose IPv6 address stays tentative, lo up; read as root and with exactly
//! the resolver unit's capabilities. Privileged: run as root
//! (`cargo test -p resolver --test addresses`).

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use resolver::process::Proc;
use test_kit::{
    lab::{self, Netns, VethEnd},
    privileged::{EffectiveCapabilities, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE},
    process,
};

const NS_PREFIX: &str = "contain-ra-";
const LINK_PREFIX: &str = "cra";

/// What the resolver's units give it (debian/systemd/contain-resolver.service,
/// nixos/module.nix): root's uid with these capabilities alone.
const UNIT_CAPABILITIES: [u32; 2] = [CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE];

fn root_or_skip(test: &str) -> bool {
    test_kit::privileged::root_or_skip(test, "network namespaces, veths, capabilities")
}

/// A namespace, the host sides of its veths and a process living in it,
/// removed on drop.
struct Lab {
    ns: Netns,
    links: Vec<String>,
    tag: String,
    process: Option<process::Proc>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        for prefix in [NS_PREFIX, LINK_PREFIX] {
            test_kit::cleanup::sweep_dead_runs(prefix);
        }
        let tag = format!("{}{tag}", std::process::id());
        let ns = Netns::new(&format!("{NS_PREFIX}{tag}")).unwrap_or_else(|e| panic!("{e}"));
        Lab {
            ns,
            links: Vec::new(),
            tag,
            process: None,
        }
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// A veth pair: host side `cra<tag><n>`, peer `dev` in the namespace.
    fn veth(&mut self, n: &str, dev: &str) -> String {
        let host = format!("{LINK_PREFIX}{}{n}", self.tag);
        assert!(host.len() <= 15, "interface name {host} too long");
        let _ = lab::delete_link(&host);
        lab::add_veth(VethEnd::own(&host), VethEnd::new(self.ns(), dev))
            .unwrap_or_else(|e| panic!("{e}"));
        self.links.push(host.clone());
        host
    }

    /// `sleep` in the namespace: the container's process.
    fn process(&mut self) -> u32 {
        let mut sleep = Command::new("sleep");
        sleep.arg("600");
        let child =
            lab::spawn_in(sleep, Some(self.ns.name()), None).unwrap_or_else(|e| panic!("{e}"));
        let proc = process::Proc(child);
        let pid = proc.pid();
        self.process = Some(proc);
        pid
    }

    fn addresses(&self, dev: &str) -> Vec<IpAddr> {
        lab::addresses_in(self.ns(), dev).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.process = None;
        for l in &self.links {
            // Gone with its peer's namespace, usually.
            let _ = lab::delete_link(l);
        }
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|a| a.parse().unwrap()).collect();
    v.sort_unstable();
    v
}

fn link_local(addresses: &[IpAddr]) -> Vec<IpAddr> {
    addresses
        .iter()
        .copied()
        .filter(|a| matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect()
}

/// The lab of both tests: eth0 up at both ends with 198.18.5.2/24, the
/// secondary 198.18.5.3/24 and 2001:db8:5::2/64 (and the link-local the
/// kernel gives it), and 2001:db8:55::2/64 with a lifetime; eth1 down with
/// 2001:db8:6::2/64 under duplicate address detection (tentative until the
/// link is up) and 198.18.6.2/24; lo up. The process's pid, and every
/// address the read must return (not the one with a lifetime).
fn lab_with_addresses(lab: &mut Lab) -> (u32, Vec<IpAddr>) {
    let host0 = lab.veth("a0", "eth0");
    for cidr in ["198.18.5.2/24", "198.18.5.3/24", "2001:db8:5::2/64"] {
        lab::add_addr(lab.ns(), "eth0", cidr).unwrap_or_else(|e| panic!("{e}"));
    }
    lab::own_link_up(&host0).unwrap();
    lab::link_up(lab.ns(), "eth0").unwrap();
    lab.veth("a1", "eth1");
    lab::add_addr(lab.ns(), "eth1", "198.18.6.2/24").unwrap();
    // Not add_addr's nodad: detection runs, and cannot finish down.
    lab::ip(
        lab.ns(),
        &["addr", "add", "2001:db8:6::2/64", "dev", "eth1"],
    )
    .unwrap();
    // With a lifetime, as the kernel adds one from a router advertisement
    // (not permanent): whoever advertised chose its prefix, so it is never
    // the container's own.
    lab::ip(
        lab.ns(),
        &[
            "addr",
            "add",
            "2001:db8:55::2/64",
            "dev",
            "eth0",
            "valid_lft",
            "300",
            "preferred_lft",
            "300",
        ],
    )
    .unwrap();
    lab::link_up(lab.ns(), "lo").unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while link_local(&lab.addresses("eth0")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "eth0 got no IPv6 link-local address"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let flags = lab::ip(lab.ns(), &["addr", "show", "dev", "eth1"]).unwrap();
    assert!(
        flags.contains("tentative"),
        "eth1's address is tentative: {flags}"
    );
    let ll = link_local(&lab.addresses("eth0"));
    assert_eq!(ll.len(), 1, "eth0 has one link-local: {ll:?}");
    let mut want = ips(&[
        "198.18.5.2",
        "198.18.5.3",
        "2001:db8:5::2",
        "198.18.6.2",
        "2001:db8:6::2",
    ]);
    want.extend(ll);
    want.sort_unstable();
    let mut held = lab.addresses("eth0");
    held.extend(lab.addresses("eth1"));
    held.sort_unstable();
    let mut shown = want.clone();
    shown.extend(ips(&["2001:db8:55::2"]));
    shown.sort_unstable();
    assert_eq!(held, shown, "what `ip` shows of eth0 and eth1");
    let pid = lab.process();
    (pid, want)
}

#[test]
fn the_procfs_read_gives_the_namespaces_addresses_loopback_aside() {
    if !root_or_skip("the_procfs_read_gives_the_namespaces_addresses_loopback_aside") {
        return;
    }
    let mut lab = Lab::new("a");
    let (pid, want) = lab_with_addresses(&mut lab);
    let lo = lab.addresses("lo");
    assert_eq!(lo, ips(&["127.0.0.1", "::1"]), "lo is up");

    let got = Proc::default()
        .addresses(pid)
        .unwrap_or_else(|e| panic!("reading process {pid}'s addresses: {e}"));
    assert_eq!(
        got, want,
        "every interface's, the secondary, link-local and tentative ones included; lo's not"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "sorted, once each");

    // Through a process of the host, the host's: never the container's.
    let own = Proc::default().addresses(std::process::id()).unwrap();
    assert!(
        own.iter().all(|a| !want.contains(a)),
        "the host's addresses hold none of the container's: {own:?}"
    );
}

/// On a thread of its own, with the effective capabilities of the
/// resolver's unit and no others.
#[test]
fn the_units_capabilities_are_enough_to_read_them() {
    if !root_or_skip("the_units_capabilities_are_enough_to_read_them") {
        return;
    }
    let mut lab = Lab::new("b");
    let (pid, want) = lab_with_addresses(&mut lab);
    let got = std::thread::spawn(move || {
        let _unit = EffectiveCapabilities::only(&UNIT_CAPABILITIES).expect("capset");
        let proc = Proc::default();
        // What the reconciler reads around it, too.
        assert!(proc.start_time(pid).is_some());
        assert!(
            proc.open_netns(pid).is_some(),
            "its namespace (ptrace read)"
        );
        proc.addresses(pid)
    })
    .join()
    .expect("the narrowed thread");
    assert_eq!(got, Ok(want));
}

#[test]
fn a_process_that_is_gone_has_no_addresses_to_read() {
    if !root_or_skip("a_process_that_is_gone_has_no_addresses_to_read") {
        return;
    }
    let mut lab = Lab::new("c");
    let pid = lab.process();
    assert!(Proc::default().addresses(pid).is_ok());
    // Exited, not reaped yet: a zombie has no namespace any more.
    process::signal(pid, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = Proc::default()
        .addresses(pid)
        .expect_err("a zombie's addresses");
    assert!(err.contains(&format!("/proc/{pid}/net/fib_trie")), "{err}");
    lab.process = None;
    let err = Proc::default()
        .addresses(pid)
        .expect_err("a reaped process's addresses");
    assert!(err.contains("No such file"), "{err}");
}
