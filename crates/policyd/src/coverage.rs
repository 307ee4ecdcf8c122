//! Whether the kernel enforces a container's policy at all.
//!
//! bpf-loader attaches contain's programs to parent cgroups (a dedicated
//! `contain.slice` set as Docker's `cgroup-parent`, `kubepods.slice`), and
//! the kernel runs them for every cgroup at or below those. A container
//! whose cgroup lies elsewhere (started before the `cgroup-parent` was set,
//! or under another parent) gets its map entries and no program ever looks
//! at them: its policy is not enforced, whatever the maps say. Both sides
//! are compared as the resolver reports cgroups: paths relative to the
//! cgroup2 mount, as `/proc/<pid>/cgroup` writes them.
//!
//! Frames from packet sockets pass no cgroup hook at all: the veth backstop
//! judges them on the host side of the container's veth, so a container
//! without a veth of its own is not covered against them.

use crate::{
    inventory::{Container, Inventory},
    policy::{ContainerPolicy, Mode},
};

/// The cgroups the loader's programs are attached to (paths relative to
/// the cgroup2 mount), or why they are not known.
pub type AttachedParents = Result<Vec<String>, String>;

/// Whether `path` is `parent` or a cgroup below it. Both are relative to
/// the cgroup2 mount; `/` is the root, above everything.
pub fn is_at_or_below(path: &str, parent: &str) -> bool {
    let path = path.trim_end_matches('/');
    let parent = parent.trim_end_matches('/');
    parent.is_empty()
        || path == parent
        || path
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Where a container stands with respect to the attached programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Its cgroup is at or below this attached cgroup.
    Attached(String),
    /// Its cgroup is below no attached cgroup: why, for people.
    NotAttached(String),
    /// Cannot be told: why, for people.
    Unknown(String),
}

/// Which attached parent, if any, covers a container's cgroup.
pub fn coverage(cgroup_path: Option<&str>, attached: &AttachedParents) -> Coverage {
    let parents = match attached {
        Ok(parents) => parents,
        Err(why) => {
            return Coverage::Unknown(format!(
                "the cgroups the loader's programs are attached to are not known ({why})"
            ))
        }
    };
    let Some(path) = cgroup_path.filter(|p| !p.is_empty()) else {
        return Coverage::Unknown(
            "its cgroup path is not known, so whether the loader's programs see it cannot be checked"
                .into(),
        );
    };
    if let Some(parent) = parents.iter().find(|p| is_at_or_below(path, p)) {
        return Coverage::Attached(parent.clone());
    }
    let listed = if parents.is_empty() {
        "none: the loader has attached its programs nowhere".to_string()
    } else {
        parents.join(", ")
    };
    Coverage::NotAttached(format!(
        "cgroup {path} is not below an attached parent ({listed}); recreate the container under the managed parent (Docker: \"cgroup-parent\" in /etc/docker/daemon.json)"
    ))
}

/// For a container whose cgroup is below no attached parent (whether a
/// policy selects it or not), where its cgroup is; `None` when it is below
/// one, or when that cannot be told. Such a container gets no first-packet
/// coverage and no unknown-container verdict, and a policy that selects it
/// is not enforced.
pub fn outside_attached(container: &Container, attached: &AttachedParents) -> Option<String> {
    match coverage(container.cgroup_path.as_deref(), attached) {
        Coverage::NotAttached(_) => container.cgroup_path.clone(),
        Coverage::Attached(_) | Coverage::Unknown(_) => None,
    }
}

/// What status shows for a container: a mode, and when the kernel does not
/// (or may not) do what the policy's mode says, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enforcement {
    /// "enforce", "audit", "unenforced", "unverified", "unrestricted" or
    /// "unmapped" (see `proto::policyd::ContainerStatus::mode`).
    pub mode: String,
    pub unenforced_reason: Option<String>,
}

/// The enforcement of `container` under the policy mode it is selected by
/// (`None`: no policy selects it).
pub fn enforcement(
    container: &Container,
    policy_mode: Option<Mode>,
    attached: &AttachedParents,
) -> Enforcement {
    let enforcement = |mode: &str, unenforced_reason| Enforcement {
        mode: mode.to_string(),
        unenforced_reason,
    };
    if container.cgroup_id.is_none() {
        return enforcement("unmapped", None);
    }
    let Some(mode) = policy_mode else {
        return enforcement("unrestricted", None);
    };
    match coverage(container.cgroup_path.as_deref(), attached) {
        Coverage::Attached(_) => enforcement(&mode.to_string(), None),
        Coverage::NotAttached(why) => enforcement("unenforced", Some(why)),
        Coverage::Unknown(why) => enforcement("unverified", Some(why)),
    }
}

/// Where the veth backstop judges the frames a container's packet sockets
/// send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketSockets {
    /// On a host-side veth (its own, or that of a container whose network
    /// namespace it shares), under its own policy: the kernel judges a
    /// packet socket under the cgroup that made it.
    Veth,
    /// Nowhere: it uses the host's network namespace.
    HostNetwork,
    /// Nowhere: its namespace has no veth to the host (macvlan, ipvlan,
    /// `--network none`, another driver).
    NoVeth,
}

/// Each container's [`PacketSockets`], in inventory order.
pub fn packet_sockets(inventory: &Inventory) -> Vec<PacketSockets> {
    inventory
        .containers
        .iter()
        .map(|c| {
            if c.host_network {
                PacketSockets::HostNetwork
            } else if c.host_veths.is_empty() {
                PacketSockets::NoVeth
            } else {
                PacketSockets::Veth
            }
        })
        .collect()
}

/// For each container a policy selects (`policies[i]` is the policy of
/// container `i`), why frames from its packet sockets are not judged under
/// its policy, for people; `None` when they are, or when no policy selects
/// it. `forged_dns` is why a Docker container's packet socket can have
/// Docker's DNS forwarder send a query on this host, if it can
/// ([`crate::docker_dns`]): said of each one whose policy does not allow
/// Docker's DNS.
pub fn packet_sockets_uncovered(
    inventory: &Inventory,
    policies: &[Option<&ContainerPolicy>],
    forged_dns: Option<&str>,
) -> Vec<Option<String>> {
    const DROP_NET_RAW: &str = "drop NET_RAW (--cap-drop NET_RAW)";
    packet_sockets(inventory)
        .into_iter()
        .zip(policies)
        .zip(&inventory.containers)
        .map(|((coverage, policy), container)| {
            let policy = (*policy)?;
            match coverage {
                PacketSockets::Veth => forged_dns
                    .filter(|_| container.runtime == "docker" && !policy.allow_docker_dns)
                    .map(str::to_owned),
                PacketSockets::HostNetwork => Some(format!(
                    "uses the host network: no veth of its own; frames from packet sockets (CAP_NET_RAW) leave unjudged; {DROP_NET_RAW}"
                )),
                PacketSockets::NoVeth => Some(format!(
                    "no host-side veth (macvlan, ipvlan, --network none or another driver): frames from packet sockets (CAP_NET_RAW) are not judged; {DROP_NET_RAW}"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parents(list: &[&str]) -> AttachedParents {
        Ok(list.iter().map(|s| s.to_string()).collect())
    }

    fn container(cgroup_path: Option<&str>) -> Container {
        Container {
            name: "web".into(),
            cgroup_id: Some(42),
            cgroup_path: cgroup_path.map(Into::into),
            ..Container::default()
        }
    }

    #[test]
    fn containers_outside_every_attached_parent_are_named_whatever_their_policy() {
        let attached = parents(&["/contain.slice"]);
        let outside = container(Some("/system.slice/docker-abc.scope"));
        assert_eq!(
            outside_attached(&outside, &attached).as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        let inside = container(Some("/contain.slice/docker-abc.scope"));
        assert_eq!(outside_attached(&inside, &attached), None);
        // Unknown is not "outside": status says why elsewhere.
        assert_eq!(outside_attached(&outside, &Err("loader down".into())), None);
        assert_eq!(outside_attached(&container(None), &attached), None);
    }

    #[test]
    fn below_means_below_a_path_component() {
        assert!(is_at_or_below(
            "/contain.slice/docker-abc.scope",
            "/contain.slice"
        ));
        assert!(is_at_or_below("/contain.slice", "/contain.slice"));
        assert!(is_at_or_below("/contain.slice/a/b", "/contain.slice/"));
        assert!(is_at_or_below("/system.slice/x.scope", "/"));
        assert!(!is_at_or_below(
            "/contain.slice-other/docker-abc.scope",
            "/contain.slice"
        ));
        assert!(!is_at_or_below(
            "/system.slice/docker-abc.scope",
            "/contain.slice"
        ));
        assert!(!is_at_or_below("/contain", "/contain.slice"));
    }

    #[test]
    fn a_container_under_an_attached_parent_is_enforced() {
        let e = enforcement(
            &container(Some("/contain.slice/docker-abc.scope")),
            Some(Mode::Enforce),
            &parents(&["/kubepods.slice", "/contain.slice"]),
        );
        assert_eq!((e.mode.as_str(), e.unenforced_reason), ("enforce", None));
        let e = enforcement(
            &container(Some("/contain.slice/docker-abc.scope")),
            Some(Mode::Audit),
            &parents(&["/contain.slice"]),
        );
        assert_eq!(e.mode, "audit");
    }

    #[test]
    fn a_container_elsewhere_is_unenforced_with_the_reason() {
        let e = enforcement(
            &container(Some("/system.slice/docker-abc.scope")),
            Some(Mode::Enforce),
            &parents(&["/contain.slice"]),
        );
        assert_eq!(e.mode, "unenforced");
        let reason = e.unenforced_reason.unwrap();
        assert!(
            reason.starts_with(
                "cgroup /system.slice/docker-abc.scope is not below an attached parent (/contain.slice)"
            ),
            "{reason}"
        );
        assert!(reason.contains("cgroup-parent"), "{reason}");
        let e = enforcement(
            &container(Some("/system.slice/docker-abc.scope")),
            Some(Mode::Enforce),
            &parents(&[]),
        );
        assert!(
            e.unenforced_reason
                .unwrap()
                .contains("attached its programs nowhere"),
            "no attachment at all"
        );
    }

    #[test]
    fn unknown_paths_or_attachments_are_unverified_never_enforced() {
        let e = enforcement(
            &container(None),
            Some(Mode::Enforce),
            &parents(&["/contain.slice"]),
        );
        assert_eq!(e.mode, "unverified");
        assert!(e
            .unenforced_reason
            .unwrap()
            .contains("cgroup path is not known"));
        let e = enforcement(
            &container(Some("/contain.slice/docker-abc.scope")),
            Some(Mode::Enforce),
            &Err("the loader is unreachable".into()),
        );
        assert_eq!(e.mode, "unverified");
        assert!(e
            .unenforced_reason
            .unwrap()
            .contains("the loader is unreachable"));
    }

    fn networked(id: &str, host_network: bool, veths: &[u32]) -> Container {
        Container {
            id: id.into(),
            name: id.into(),
            cgroup_id: Some(42),
            host_network,
            host_veths: veths.to_vec(),
            ..Container::default()
        }
    }

    #[test]
    fn packet_sockets_are_judged_on_any_veth_to_the_host() {
        let unmapped = Container {
            cgroup_id: None,
            ..networked("starting", false, &[7])
        };
        let inventory = Inventory {
            containers: vec![
                networked("bridged", false, &[7]),
                networked("host", true, &[]),
                networked("macvlan", false, &[]),
                // `--network container:bridged`: the kernel judges its packet
                // sockets under its own cgroup's policy on bridged's veth.
                networked("joined", false, &[7]),
                unmapped,
            ],
        };
        assert_eq!(
            packet_sockets(&inventory),
            [
                PacketSockets::Veth,
                PacketSockets::HostNetwork,
                PacketSockets::NoVeth,
                PacketSockets::Veth,
                PacketSockets::Veth,
            ]
        );
    }

    #[test]
    fn uncovered_filtered_containers_get_a_reason_naming_the_fix() {
        let inventory = Inventory {
            containers: vec![
                networked("bridged", false, &[7]),
                networked("host", true, &[]),
                networked("macvlan", false, &[]),
                networked("joined", false, &[7]),
                networked("unfiltered", true, &[]),
            ],
        };
        let web = policy(false);
        let reasons = packet_sockets_uncovered(
            &inventory,
            &[Some(&web), Some(&web), Some(&web), Some(&web), None],
            None,
        );
        assert_eq!(reasons[0], None);
        let host = reasons[1].as_deref().unwrap();
        assert!(
            host.starts_with("uses the host network: no veth of its own")
                && host.ends_with("drop NET_RAW (--cap-drop NET_RAW)"),
            "{host}"
        );
        let macvlan = reasons[2].as_deref().unwrap();
        assert!(macvlan.starts_with("no host-side veth"), "{macvlan}");
        assert_eq!(
            reasons[3], None,
            "a shared veth judges it under its own policy"
        );
        assert_eq!(reasons[4], None, "no policy selects it");
    }

    fn policy(allow_docker_dns: bool) -> ContainerPolicy {
        ContainerPolicy {
            name: "web".into(),
            mode: Mode::Enforce,
            allow_loopback: true,
            allow_docker_dns,
            selector: Default::default(),
            rules: Vec::new(),
            processes: Vec::new(),
            location: None,
        }
    }

    #[test]
    fn a_forged_docker_dns_query_is_named_for_docker_containers_denied_dns() {
        let docker = |id| Container {
            runtime: "docker".into(),
            ..networked(id, false, &[7])
        };
        let inventory = Inventory {
            containers: vec![
                docker("denied"),
                docker("allowed"),
                networked("ctr", false, &[7]),
                docker("free"),
            ],
        };
        let (denied, allowed) = (policy(false), policy(true));
        let policies = [Some(&denied), Some(&allowed), Some(&denied), None];
        let reasons = packet_sockets_uncovered(&inventory, &policies, Some("forged"));
        assert_eq!(reasons, [Some("forged".to_string()), None, None, None]);
        let reasons = packet_sockets_uncovered(&inventory, &policies, None);
        assert_eq!(reasons, [None, None, None, None]);
    }

    #[test]
    fn unselected_and_unmapped_containers_keep_their_modes() {
        let attached = parents(&["/contain.slice"]);
        let outside = container(Some("/system.slice/docker-abc.scope"));
        assert_eq!(enforcement(&outside, None, &attached).mode, "unrestricted");
        let unmapped = Container {
            cgroup_id: None,
            ..outside
        };
        for mode in [Some(Mode::Enforce), None] {
            assert_eq!(enforcement(&unmapped, mode, &attached).mode, "unmapped");
        }
    }
}
