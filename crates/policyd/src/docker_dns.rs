//! Whether a packet socket can hand Docker's DNS forwarder a query on this
//! host, past `allow_docker_dns = false`.
//!
//! For a nameserver on the host's loopback (from the host's
//! `resolv.conf`), dockerd forwards the queries of containers on
//! user-defined networks from the host's namespace, where contain sees
//! nothing. A container's own query is judged at its socket; a frame a
//! packet socket writes on the container's `lo`, straight to the port the
//! forwarder listens on at `127.0.0.11`, is a martian destination the kernel
//! drops unless `route_localnet` is on in the container's namespace. A new
//! namespace copies the host's `net.ipv4.conf.all` and `.default` (unless
//! `net.core.devconf_inherit_init_net` is 2), so the host's settings decide.
//! They are read as they are now: a container made before a change kept the
//! old ones.

use std::net::Ipv4Addr;

/// The host's settings this depends on, as their files read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// `net.ipv4.conf.all.route_localnet` and `.default.route_localnet`.
    pub route_localnet_all: String,
    pub route_localnet_default: String,
    /// `net.core.devconf_inherit_init_net`; empty where the kernel has none
    /// (before 5.1: namespaces copy the host's).
    pub devconf_inherit_init_net: String,
}

impl HostSettings {
    /// Read where policyd runs: the host's namespaces. A file that cannot
    /// be read reads as empty, which opens nothing here.
    pub fn read() -> HostSettings {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        HostSettings {
            resolv_conf: read("/etc/resolv.conf"),
            route_localnet_all: read("/proc/sys/net/ipv4/conf/all/route_localnet"),
            route_localnet_default: read("/proc/sys/net/ipv4/conf/default/route_localnet"),
            devconf_inherit_init_net: read("/proc/sys/net/core/devconf_inherit_init_net"),
        }
    }

    /// Why a Docker container whose policy does not allow Docker's DNS can
    /// still have a query forwarded by it, for people; `None` when the
    /// host's settings leave no way.
    pub fn forged_query_forwarded(&self) -> Option<String> {
        let resolver = loopback_nameserver(&self.resolv_conf)?;
        let setting = [
            ("all", &self.route_localnet_all),
            ("default", &self.route_localnet_default),
        ]
        .into_iter()
        .find_map(|(name, value)| (value.trim() == "1").then_some(name))?;
        if self.devconf_inherit_init_net.trim() == "2" {
            return None;
        }
        Some(format!(
            "a DNS query a packet socket writes on its lo reaches Docker's DNS forwarder, which sends it to this host's \
             loopback resolver ({resolver}, /etc/resolv.conf) from the host's namespace whatever allow_docker_dns says: \
             net.ipv4.conf.{setting}.route_localnet is 1 on this host, and a container's namespace copies it; \
             drop NET_RAW (--cap-drop NET_RAW), or give dockerd resolvers off its loopback (\"dns\" in daemon.json)"
        ))
    }
}

/// The first IPv4 loopback nameserver of a `resolv.conf` (the servers
/// dockerd forwards to from its own namespace).
fn loopback_nameserver(resolv_conf: &str) -> Option<Ipv4Addr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        let address: Ipv4Addr = words.next()?.parse().ok()?;
        address.is_loopback().then_some(address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(resolv_conf: &str, all: &str, default: &str, inherit: &str) -> HostSettings {
        HostSettings {
            resolv_conf: resolv_conf.into(),
            route_localnet_all: all.into(),
            route_localnet_default: default.into(),
            devconf_inherit_init_net: inherit.into(),
        }
    }

    #[test]
    fn a_loopback_resolver_and_route_localnet_on_open_the_way() {
        let open = host("# dnsmasq\nnameserver 127.0.0.1\n", "1\n", "0\n", "0\n");
        let reason = open.forged_query_forwarded().unwrap();
        assert!(reason.contains("127.0.0.1"), "{reason}");
        assert!(
            reason.contains("net.ipv4.conf.all.route_localnet"),
            "{reason}"
        );
        let by_default = host("nameserver 127.0.1.1\n", "0\n", "1\n", "");
        assert!(by_default
            .forged_query_forwarded()
            .unwrap()
            .contains("net.ipv4.conf.default.route_localnet"));
    }

    #[test]
    fn any_condition_missing_closes_it() {
        // The kernel drops the frame as a martian destination.
        assert_eq!(
            host("nameserver 127.0.0.1\n", "0\n", "0\n", "0\n").forged_query_forwarded(),
            None
        );
        // dockerd forwards from the container's namespace, through its veth.
        assert_eq!(
            host(
                "nameserver 192.0.2.53\n#nameserver 127.0.0.1\n",
                "1\n",
                "1\n",
                "0\n"
            )
            .forged_query_forwarded(),
            None
        );
        // New namespaces take the kernel's built-in settings.
        assert_eq!(
            host("nameserver 127.0.0.1\n", "1\n", "1\n", "2\n").forged_query_forwarded(),
            None
        );
        // Unreadable files.
        assert_eq!(HostSettings::default().forged_query_forwarded(), None);
    }
}
