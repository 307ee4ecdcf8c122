//! The mapping chain, as a pure function: runtime record + what /proc, the
//! cgroup tree and rtnetlink said → one inventory entry.

use std::net::IpAddr;

use proto::resolver::Container;

use crate::{links::LinkTable, source::RuntimeContainer};

/// What the resolver read about a container's init process and cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcFacts {
    /// v2 path from `/proc/<pid>/cgroup`.
    pub cgroup_path: Option<String>,
    /// Inode of that cgroup's directory.
    pub cgroup_id: Option<u64>,
    /// Processes of the cgroup (and below).
    pub pids: Vec<u32>,
    /// Inode of `/proc/<pid>/ns/net`.
    pub netns_inode: Option<u64>,
    /// The host's id for that namespace (`RTM_GETNSID`), if it has one.
    pub nsid: Option<i32>,
    /// The namespace's addresses, loopback ones aside, sorted, without
    /// duplicates (`/proc/<pid>/net`); empty when none were read.
    pub addresses: Vec<IpAddr>,
}

/// Addresses read in one network namespace (its inode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAddresses {
    pub netns_inode: u64,
    pub addresses: Vec<IpAddr>,
}

/// Pure: a container's addresses after a read in namespace `netns_inode`:
/// what it found; when it failed, what the `last` read found if that was
/// in the same namespace, else none. Never anything else: a namespace that
/// is not the one read (the container's new one) must not lend its
/// addresses.
pub fn addresses_after(
    read: std::result::Result<Vec<IpAddr>, String>,
    last: Option<&ReadAddresses>,
    netns_inode: u64,
) -> Vec<IpAddr> {
    match read {
        Ok(addresses) => addresses,
        Err(_) => last
            .filter(|l| l.netns_inode == netns_inode)
            .map(|l| l.addresses.clone())
            .unwrap_or_default(),
    }
}

/// Builds the inventory entry. A container in the root cgroup (`0::/`, as
/// when a runtime on a hybrid host did not join the unified hierarchy) gets
/// no cgroup id: the root's id would stand for every process on the host.
pub fn build(
    rc: &RuntimeContainer,
    facts: &ProcFacts,
    links: &LinkTable,
    own_netns: Option<u64>,
) -> Container {
    let cgroup_path = facts.cgroup_path.clone().unwrap_or_default();
    let cgroup_id = if cgroup_path.is_empty() || cgroup_path == "/" {
        0
    } else {
        facts.cgroup_id.unwrap_or(0)
    };
    let netns_inode = facts.netns_inode.unwrap_or(0);
    let host_network = netns_inode != 0 && Some(netns_inode) == own_netns;
    let host_veths = match (host_network, facts.nsid) {
        (false, Some(nsid)) => links.veths_into(nsid),
        _ => Vec::new(),
    };
    let mut pids: Vec<u32> = facts
        .pids
        .iter()
        .copied()
        .filter(|&p| p != rc.pid && p != 0)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    if rc.pid != 0 {
        pids.insert(0, rc.pid);
    }
    Container {
        id: rc.id.clone(),
        name: rc.name.clone(),
        runtime: rc.runtime,
        namespace: rc.namespace.clone(),
        labels: rc.labels.clone(),
        image: rc.image.clone(),
        pids,
        cgroup_path,
        cgroup_id,
        netns_inode,
        host_veths,
        host_network,
        addresses: facts.addresses.clone(),
        metadata_complete: rc.metadata_complete,
        readonly_rootfs: rc.readonly_rootfs,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto::resolver::Runtime;

    use super::*;
    use crate::links::Link;

    fn rc(pid: u32) -> RuntimeContainer {
        RuntimeContainer {
            runtime: Runtime::Docker,
            namespace: "moby".into(),
            id: "abc".into(),
            name: "curler".into(),
            labels: BTreeMap::from([("egress".into(), "block".into())]),
            image: "curl".into(),
            pid,
            metadata_complete: true,
            readonly_rootfs: None,
        }
    }

    fn veth(ifindex: u32, nsid: Option<i32>) -> Link {
        Link {
            ifindex,
            name: format!("veth{ifindex}"),
            kind: Some("veth".into()),
            peer_ifindex: Some(2),
            link_netnsid: nsid,
            carrier: false,
        }
    }

    #[test]
    fn full_chain_veth_to_cgroup() {
        let facts = ProcFacts {
            cgroup_path: Some("/system.slice/docker-abc.scope".into()),
            cgroup_id: Some(777),
            pids: vec![300, 100, 200, 300],
            netns_inode: Some(4026532181),
            nsid: Some(3),
            addresses: vec!["198.18.0.2".parse().unwrap()],
        };
        let links = LinkTable::from_links(vec![veth(7, Some(3)), veth(8, Some(4)), veth(9, None)]);
        let c = build(&rc(200), &facts, &links, Some(4026531833));
        assert_eq!(c.cgroup_id, 777);
        assert_eq!(
            c.pids,
            vec![200, 100, 300],
            "init first, then sorted, no duplicates"
        );
        assert_eq!(
            c.host_veths.iter().map(|v| v.ifindex).collect::<Vec<_>>(),
            vec![7]
        );
        assert!(!c.host_network);
        assert_eq!((c.name.as_str(), c.runtime), ("curler", Runtime::Docker));
        assert_eq!(c.addresses, facts.addresses);
    }

    #[test]
    fn a_failed_read_keeps_only_what_the_same_namespace_showed() {
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        let before = vec![ip("198.18.0.2")];
        let now = vec![ip("198.18.0.2"), ip("198.18.0.3")];
        let last = ReadAddresses {
            netns_inode: 40,
            addresses: before.clone(),
        };
        let failed = || Err("/proc/7/net/fib_trie: No such file or directory".to_string());
        assert_eq!(addresses_after(Ok(now.clone()), Some(&last), 40), now);
        assert!(
            addresses_after(Ok(vec![]), Some(&last), 40).is_empty(),
            "a read that finds none is believed"
        );
        assert_eq!(addresses_after(failed(), Some(&last), 40), before);
        assert!(addresses_after(failed(), None, 40).is_empty());
        assert!(
            addresses_after(failed(), Some(&last), 41).is_empty(),
            "another namespace"
        );
    }

    #[test]
    fn host_network_container_has_no_veths() {
        let facts = ProcFacts {
            netns_inode: Some(1),
            nsid: Some(3),
            ..Default::default()
        };
        let c = build(
            &rc(5),
            &facts,
            &LinkTable::from_links(vec![veth(7, Some(3))]),
            Some(1),
        );
        assert!(c.host_network);
        assert!(c.host_veths.is_empty());
    }

    #[test]
    fn namespace_without_nsid_has_no_veths_yet() {
        let facts = ProcFacts {
            netns_inode: Some(2),
            ..Default::default()
        };
        let c = build(
            &rc(5),
            &facts,
            &LinkTable::from_links(vec![veth(7, Some(3))]),
            Some(1),
        );
        assert!(!c.host_network && c.host_veths.is_empty());
    }

    #[test]
    fn root_cgroup_is_never_reported_as_the_containers_id() {
        let facts = ProcFacts {
            cgroup_path: Some("/".into()),
            cgroup_id: Some(1),
            ..Default::default()
        };
        assert_eq!(
            build(&rc(5), &facts, &LinkTable::default(), None).cgroup_id,
            0
        );
        let unknown = build(&rc(5), &ProcFacts::default(), &LinkTable::default(), None);
        assert_eq!(
            (unknown.cgroup_id, unknown.netns_inode, unknown.host_network),
            (0, 0, false)
        );
        assert_eq!(unknown.pids, vec![5]);
    }
}
