//! The lab's pieces against the real host (root): a namespace and a cgroup
//! made, used and removed, a process inside killed with its cgroup; veths
//! between this process's namespace and others, made and deleted.

use std::process::Command;

use test_kit::{
    cgroup, cleanup,
    lab::{self, VethEnd},
    privileged, process,
};

const PREFIX: &str = "contain-kit-";
/// Links of this namespace: `ckit<pid>…` (a link's name has 15 bytes at
/// most).
const LINK_PREFIX: &str = "ckit";

/// Whether `test` may run (as root; otherwise it is recorded as skipped),
/// once what dead runs of these tests left is swept away.
fn root_and_swept(test: &str) -> bool {
    if !privileged::root_or_skip(test, "network namespaces, links and cgroups") {
        return false;
    }
    cleanup::sweep_dead_runs(PREFIX);
    cleanup::sweep_dead_runs(LINK_PREFIX);
    true
}

#[test]
fn a_netns_a_cgroup_and_their_process_are_made_and_removed() {
    if !root_and_swept("a_netns_a_cgroup_and_their_process_are_made_and_removed") {
        return;
    }
    let name = format!("{PREFIX}{}", std::process::id());
    let dir = cgroup::cgroup2_mount().expect("cgroup2").join(&name);
    let made = cgroup::Cgroup::create(&dir).expect("creating the cgroup");
    {
        let ns = lab::Netns::new(&name).expect("creating the namespace");
        assert!(lab::netns_path(ns.name()).exists());
        let lo = lab::link_in(ns.name(), "lo").expect("its loopback");
        assert_eq!(lo.ifindex, 1);

        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        let child = lab::spawn_in(sleeper, Some(ns.name()), Some(&dir)).expect("spawning");
        let child = process::Proc(child);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("cgroup.procs");
        assert_eq!(
            procs.trim(),
            child.pid().to_string(),
            "it runs in the cgroup"
        );
        let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        let its = std::fs::read_link(format!("/proc/{}/ns/net", child.pid())).expect("its netns");
        assert_ne!(own, its, "it runs in the namespace");
        assert!(cgroup::cgroup_id(&dir).expect("id") > 1);

        // Code on this thread inside the namespace, and back.
        let inside = lab::with_netns(ns.name(), || {
            std::fs::read_link("/proc/thread-self/ns/net")
                .map_err(|e| test_kit::Error::Setup(e.to_string()))
        })
        .expect("with_netns");
        assert_eq!(inside, its);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("back"),
            own
        );

        drop(made);
        assert!(
            !dir.exists(),
            "the cgroup is gone on drop, its process killed"
        );
        let pid = child.pid();
        drop(child);
        assert!(!process::pid_alive(pid));
    }
    assert!(
        !lab::netns_path(&name).exists(),
        "the namespace is gone on drop"
    );
}

#[test]
fn veths_join_this_namespace_to_a_named_one_and_to_a_process_s() {
    if !root_and_swept("veths_join_this_namespace_to_a_named_one_and_to_a_process_s") {
        return;
    }
    let pid = std::process::id();
    let ns = lab::Netns::new(&format!("{PREFIX}{pid}-v")).expect("creating the namespace");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("600");
    let inside = process::Proc(lab::spawn_in(sleeper, Some(ns.name()), None).expect("spawning"));
    let (to_process, to_named) = (
        format!("{LINK_PREFIX}{pid}p"),
        format!("{LINK_PREFIX}{pid}n"),
    );

    // Here → the namespace of a process in it, as a CNI plugin plugs a
    // container whose namespace has no name.
    lab::add_veth(
        VethEnd::own(&to_process),
        VethEnd::of_process(inside.pid(), "eth0"),
    )
    .expect("a veth into the process's namespace");
    assert!(lab::ifindex(&to_process).expect("its host end") > 1);
    assert!(
        lab::link_in(ns.name(), "eth0").is_ok(),
        "its peer is inside"
    );
    // Its addresses as `ip` reports them, sorted; down at both ends, so
    // no link-local one yet.
    lab::add_addr(ns.name(), "eth0", "2001:db8::2/64").expect("an IPv6 address");
    lab::add_addr(ns.name(), "eth0", "198.18.0.2/24").expect("an IPv4 address");
    let want: Vec<std::net::IpAddr> = vec![
        "198.18.0.2".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    ];
    assert_eq!(
        lab::addresses_in(ns.name(), "eth0").expect("its addresses"),
        want
    );
    // The host end up, as a runtime sets it.
    lab::own_link_up(&to_process).expect("setting the host end up");
    let flags =
        std::fs::read_to_string(format!("/sys/class/net/{to_process}/flags")).expect("its flags");
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("hex");
    assert_eq!(flags & 1, 1, "IFF_UP");
    // Made from the named namespace, its peer moved here.
    lab::add_veth(VethEnd::new(ns.name(), "eth1"), VethEnd::own(&to_named))
        .expect("a veth from the named namespace");
    assert!(lab::ifindex(&to_named).is_ok(), "its peer is here");
    assert!(
        lab::add_veth(VethEnd::of_process(inside.pid(), "x0"), VethEnd::own("x1")).is_err(),
        "`ip` cannot make a link inside a namespace it has no name for"
    );

    for host_end in [&to_process, &to_named] {
        lab::delete_link(host_end).expect("deleting the host end");
        assert!(lab::ifindex(host_end).is_err(), "{host_end} is gone");
    }
    assert!(
        lab::link_in(ns.name(), "eth0").is_err() && lab::link_in(ns.name(), "eth1").is_err(),
        "the peers went with their host ends"
    );
    assert!(
        lab::delete_link(&to_process).is_err(),
        "deleting twice fails"
    );

    drop(inside);
    let path = lab::netns_path(ns.name());
    ns.delete().expect("deleting the namespace");
    assert!(!path.exists(), "the namespace is gone at once");
}
