//! The lab's pieces against the real host (root): a namespace and a cgroup
//! made, used and removed, a process inside killed with its cgroup.

use std::process::Command;

use test_kit::{cgroup, cleanup, lab, privileged, process};

const PREFIX: &str = "contain-kit-";

#[test]
fn a_netns_a_cgroup_and_their_process_are_made_and_removed() {
    if !privileged::root_or_skip(
        "a_netns_a_cgroup_and_their_process_are_made_and_removed",
        "network namespaces and cgroups",
    ) {
        return;
    }
    cleanup::sweep_dead_runs(PREFIX);
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
