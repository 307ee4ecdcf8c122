//! A network namespace's own addresses, as procfs shows them to any process
//! that can see one of the namespace's processes: `/proc/<pid>/net/if_inet6`
//! (IPv6, by interface) and `/proc/<pid>/net/fib_trie` (IPv4: the
//! namespace's routing tables, where each IPv4 address of an interface is a
//! `/32 host LOCAL` route). Pure parsers; the reading is
//! [`crate::process::Proc::addresses`]'s.
//!
//! Neither file needs a privilege (an address dump into another namespace
//! over rtnetlink needs `CAP_NET_ADMIN` over it), and both formats are as
//! old as the files: `if6_seq_show` in `net/ipv6/addrconf.c` and
//! `fib_trie_seq_show` in `net/ipv4/fib_trie.c` print them the same way on
//! 6.1 (Debian 12) and 6.18.
//!
//! IPv4 has no per-interface view in procfs: the addresses are the
//! namespace's, which is why the inventory keeps them per container, not
//! per veth.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The loopback interface's index, the same in every namespace (the
/// kernel's `LOOPBACK_IFINDEX`): it is made first, and a rename keeps it.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// `IFA_F_DADFAILED`: duplicate address detection found the address in
/// use by another node of the link.
const IFA_F_DADFAILED: u8 = 0x08;

/// `IFA_F_PERMANENT`: an address a runtime configured, or the kernel's
/// link-local one. Those the kernel adds from a router advertisement (even
/// one with an infinite lifetime) and the temporary ones it derives lack
/// it, and whoever sent the advertisement chose their prefix.
const IFA_F_PERMANENT: u8 = 0x80;

/// A line of a procfs file that is not what the kernel writes there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The file's name (`if_inet6`, `fib_trie`).
    pub file: &'static str,
    /// 1-based.
    pub line: usize,
    pub why: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.why)
    }
}

impl std::error::Error for ParseError {}

/// Pure: the IPv6 addresses of `/proc/<pid>/net/if_inet6`'s text, those of
/// the loopback interface (and any loopback address) aside, in the file's
/// order. Every permanent address counts, link-local ones and tentative
/// ones (duplicate address detection still running) included: the
/// container's frames may carry each as their source. Not one whose
/// detection failed (`dadfailed`): another node of the link holds it, the
/// kernel sends nothing from it, and accepting it as a source would let the
/// container claim that node's address. Nor one that is not `permanent`:
/// the kernel adds those from router advertisements, whose prefix any node
/// of the link may choose (a neighbour advertising a prefix it routes would
/// get the answers to packets from such an address).
///
/// Each line is `if6_seq_show`'s `"%pi6 %02x %02x %02x %02x %8s\n"`: the
/// address as 32 hex digits, then in hex the ifindex (more than two digits
/// past 255), the prefix length, the scope and the low byte of the flags,
/// then the interface's name (right-aligned; a name holds no white space).
pub fn parse_if_inet6(text: &str) -> Result<Vec<Ipv6Addr>, ParseError> {
    let mut addresses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: String| ParseError {
            file: "if_inet6",
            line: n + 1,
            why,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [address, ifindex, prefix_len, scope, flags, _name] = fields[..] else {
            return Err(bad(format!(
                "{} fields, not the 6 of `address ifindex prefix-length scope flags name`: {line:?}",
                fields.len()
            )));
        };
        if address.len() != 32 || !address.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("address {address:?} is not 32 hex digits")));
        }
        let address = u128::from_str_radix(address, 16)
            .map(Ipv6Addr::from)
            .map_err(|e| bad(format!("address {address:?}: {e}")))?;
        let hex_u32 = |what: &str, field: &str| {
            u32::from_str_radix(field, 16).map_err(|e| bad(format!("{what} {field:?}: {e}")))
        };
        let hex_u8 = |what: &str, field: &str| {
            u8::from_str_radix(field, 16).map_err(|e| bad(format!("{what} {field:?}: {e}")))
        };
        let ifindex = hex_u32("ifindex", ifindex)?;
        if hex_u8("prefix length", prefix_len)? > 128 {
            return Err(bad(format!("prefix length {prefix_len:?} is over 128")));
        }
        hex_u8("scope", scope)?;
        let flags = hex_u8("flags", flags)?;
        if ifindex == LOOPBACK_IFINDEX
            || address.is_loopback()
            || flags & IFA_F_DADFAILED != 0
            || flags & IFA_F_PERMANENT == 0
        {
            continue;
        }
        addresses.push(address);
    }
    Ok(addresses)
}

/// Pure: the IPv4 addresses of `/proc/<pid>/net/fib_trie`'s text: the keys
/// of the leaves with a `/32 host LOCAL` entry, in every table the file
/// shows (`Main:`, `Local:`, `Id <n>:`; the kernel shows the local table
/// under both names while no policy rule splits them), `127.0.0.0/8` aside.
/// In file order, duplicates kept.
///
/// `fib_trie_seq_show` writes, after each table's header, one line per trie
/// node, indented by its depth: `+-- <prefix>/<len> <bits> <full> <empty>`
/// for an inner node, `|-- <address>` for a leaf, and under a leaf one line
/// per route of it, `/<len> <scope> <type>` (with ` tos=<n>` when the route
/// has one). Each address of an interface is a `/32 host LOCAL` route of
/// its namespace; a broadcast address (`/32 link BROADCAST`), a
/// point-to-point address's other end (`/32 link UNICAST`) and a network
/// route are not. A local route added by hand (`ip route add local`) is
/// one too: the namespace answers to it, and may send from it.
pub fn parse_fib_trie(text: &str) -> Result<Vec<Ipv4Addr>, ParseError> {
    let mut addresses = Vec::new();
    let mut in_table = false;
    let mut leaf: Option<Ipv4Addr> = None;
    for (n, line) in text.lines().enumerate() {
        let bad = |why: String| ParseError {
            file: "fib_trie",
            line: n + 1,
            why,
        };
        if !line.starts_with(' ') {
            let header = line
                .strip_suffix(':')
                .ok_or_else(|| bad(format!("neither a table's header nor a node: {line:?}")))?;
            let known = header == "Main"
                || header == "Local"
                || header
                    .strip_prefix("Id ")
                    .is_some_and(|id| id.parse::<u32>().is_ok());
            if !known {
                return Err(bad(format!("unknown table header {line:?}")));
            }
            in_table = true;
            leaf = None;
            continue;
        }
        if !in_table {
            return Err(bad(format!("a node before any table's header: {line:?}")));
        }
        let node = line.trim_start();
        if let Some(inner) = node.strip_prefix("+-- ") {
            let prefix = inner.split_whitespace().next().unwrap_or_default();
            parse_prefix(prefix).map_err(|why| bad(format!("inner node {prefix:?}: {why}")))?;
            leaf = None;
        } else if let Some(key) = node.strip_prefix("|-- ") {
            leaf = Some(
                key.trim_end()
                    .parse()
                    .map_err(|e| bad(format!("leaf {key:?}: {e}")))?,
            );
        } else if let Some(route) = node.strip_prefix('/') {
            let key = leaf.ok_or_else(|| bad(format!("a route outside any leaf: {line:?}")))?;
            let mut fields = route.split_whitespace();
            let len = fields.next().unwrap_or_default();
            let len: u8 = len
                .parse()
                .ok()
                .filter(|&l| l <= 32)
                .ok_or_else(|| bad(format!("prefix length {len:?} is not 0 to 32")))?;
            let (Some(scope), Some(kind)) = (fields.next(), fields.next()) else {
                return Err(bad(format!("a route without scope and type: {line:?}")));
            };
            if len == 32 && scope == "host" && kind == "LOCAL" && key.octets()[0] != 127 {
                addresses.push(key);
            }
        } else {
            return Err(bad(format!(
                "neither a table's header nor a node: {line:?}"
            )));
        }
    }
    Ok(addresses)
}

/// `a.b.c.d/len`.
fn parse_prefix(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (address, len) = text.split_once('/').ok_or("no /length")?;
    let address = address.parse().map_err(|e| format!("{e}"))?;
    let len = len
        .parse()
        .ok()
        .filter(|&l: &u8| l <= 32)
        .ok_or_else(|| format!("prefix length {len:?} is not 0 to 32"))?;
    Ok((address, len))
}

/// Pure: a namespace's addresses from its `fib_trie` and `if_inet6` texts
/// (`None`: the kernel has no IPv6, so no such file), sorted, without
/// duplicates.
pub fn namespace_addresses(
    fib_trie: &str,
    if_inet6: Option<&str>,
) -> Result<Vec<IpAddr>, ParseError> {
    let mut addresses: Vec<IpAddr> = parse_fib_trie(fib_trie)?
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    if let Some(text) = if_inet6 {
        addresses.extend(parse_if_inet6(text)?.into_iter().map(IpAddr::V6));
    }
    addresses.sort_unstable();
    addresses.dedup();
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(list: &[&str]) -> Vec<Ipv4Addr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn v6(list: &[&str]) -> Vec<Ipv6Addr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// A container's `if_inet6` on 6.18: lo, eth0 with a global address
    /// and its link-local (the kernel's, from its MAC), eth1 with a
    /// tentative one (its link down), one whose duplicate detection failed,
    /// one from a router advertisement (a lifetime: flags 00) and its
    /// temporary twin (`IFA_F_TEMPORARY`, 01), and an interface past
    /// ifindex 255.
    const IF_INET6: &str = "\
fe80000000000000c0cda9fffe4b1c63 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000900000000000000000002 03 40 00 c0     eth1
20010db8000500000000000000000002 02 40 00 80     eth0
20010db8000500000000000000000003 02 40 00 48     eth0
20010db8bbbb0001c0cda9fffe4b1c63 02 40 00 00     eth0
20010db8bbbb00013d1b6a2f0c4e9a11 02 40 00 01     eth0
20010db8000a00000000000000000002 1a3 40 00 80 verylongname15
";

    #[test]
    fn if_inet6_gives_every_interfaces_addresses_but_loopbacks() {
        assert_eq!(
            parse_if_inet6(IF_INET6).unwrap(),
            v6(&[
                "fe80::c0cd:a9ff:fe4b:1c63",
                "2001:db8:9::2",
                "2001:db8:5::2",
                "2001:db8:a::2",
            ]),
            "link-local and tentative included; lo, the address another node holds and those \
             from a router advertisement, not"
        );
        assert!(parse_if_inet6("").unwrap().is_empty());
    }

    #[test]
    fn lo_is_left_out_by_its_index_whatever_its_name() {
        // Renamed: still index 1. And ::1 is nobody's source on a veth.
        let text = "\
20010db8000000000000000000000001 01 80 00 80   renamed
00000000000000000000000000000001 02 80 10 80      eth0
";
        assert!(parse_if_inet6(text).unwrap().is_empty());
    }

    #[test]
    fn malformed_if_inet6_is_an_error_with_its_line() {
        let good = "20010db8000500000000000000000002 02 40 00 80     eth0\n";
        for (text, line, says) in [
            ("20010db8 02 40 00 80 eth0", 1, "32 hex digits"),
            (
                "2001:db8:5::2000000000000000000002 02 40 00 80 eth0",
                1,
                "32 hex digits",
            ),
            (
                "+0010db8000500000000000000000002 02 40 00 80 eth0",
                1,
                "32 hex digits",
            ),
            (
                "20010db8000500000000000000000002 02 40 00 80",
                1,
                "5 fields",
            ),
            (
                "20010db8000500000000000000000002 02 40 00 80 eth0 extra",
                1,
                "7 fields",
            ),
            (
                "20010db8000500000000000000000002 zz 40 00 80 eth0",
                1,
                "ifindex",
            ),
            (
                "20010db8000500000000000000000002 02 81 00 80 eth0",
                1,
                "over 128",
            ),
            (
                "20010db8000500000000000000000002 02 40 100 80 eth0",
                1,
                "scope",
            ),
            (
                "20010db8000500000000000000000002 02 40 00 -1 eth0",
                1,
                "flags",
            ),
            (
                "20010db8000500000000000000000002 100000000 40 00 80 eth0",
                1,
                "ifindex",
            ),
            ("\n", 1, "0 fields"),
        ] {
            let err = parse_if_inet6(&format!("{good}{text}")).unwrap_err();
            assert_eq!(err.line, line + 1, "{text:?}: {err}");
            assert!(err.to_string().contains(says), "{text:?}: {err}");
            assert!(err.to_string().starts_with("if_inet6 line 2: "), "{err}");
        }
    }

    /// A container's `fib_trie` on 6.18, no policy rules (the local table
    /// shown as both Main and Local): eth0 with 198.18.5.2/24 and a
    /// secondary 198.18.5.3, 198.18.6.2/24 on eth1, the point-to-point
    /// 10.99.0.1 peer 10.99.0.2, lo's 127.0.0.1/8.
    const FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.99.0.0/30 2 0 2
        |-- 10.99.0.1
           /32 host LOCAL
        |-- 10.99.0.2
           /32 link UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 198.18.4.0/22 3 0 4
        +-- 198.18.5.0/30 2 0 1
           |-- 198.18.5.0
              /24 link UNICAST
           |-- 198.18.5.2
              /32 host LOCAL
           |-- 198.18.5.3
              /32 host LOCAL
        |-- 198.18.5.255
           /32 link BROADCAST
        +-- 198.18.6.0/30 2 0 2
           |-- 198.18.6.0
              /24 link UNICAST
           |-- 198.18.6.2
              /32 host LOCAL
        |-- 198.18.6.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.99.0.0/30 2 0 2
        |-- 10.99.0.1
           /32 host LOCAL
        |-- 10.99.0.2
           /32 link UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 198.18.4.0/22 3 0 4
        +-- 198.18.5.0/30 2 0 1
           |-- 198.18.5.0
              /24 link UNICAST
           |-- 198.18.5.2
              /32 host LOCAL
           |-- 198.18.5.3
              /32 host LOCAL
        |-- 198.18.5.255
           /32 link BROADCAST
        +-- 198.18.6.0/30 2 0 2
           |-- 198.18.6.0
              /24 link UNICAST
           |-- 198.18.6.2
              /32 host LOCAL
        |-- 198.18.6.255
           /32 link BROADCAST
";

    #[test]
    fn fib_trie_gives_the_local_host_routes_of_every_section() {
        let once = ["10.99.0.1", "198.18.5.2", "198.18.5.3", "198.18.6.2"];
        let twice: Vec<&str> = once.iter().chain(&once).copied().collect();
        assert_eq!(
            parse_fib_trie(FIB_TRIE).unwrap(),
            v4(&twice),
            "secondary addresses too; broadcast, unicast, lo's and the other end of a \
             point-to-point address not"
        );
        // An empty namespace (lo down) shows no table at all.
        assert!(parse_fib_trie("").unwrap().is_empty());
    }

    /// With a policy rule the main and local tables are apart; a table of
    /// its own (`Id 100:`, as a VRF's) holds local routes too; a table of
    /// one route is a leaf at the top; a route may carry a TOS.
    #[test]
    fn fib_trie_reads_split_and_numbered_tables() {
        let text = "\
Id 100:
  +-- 10.0.0.0/12 2 0 2
     |-- 10.7.7.7
        /32 host LOCAL
     |-- 10.8.0.0
        /16 link UNICAST tos=16
Id 200:
  |-- 10.5.5.5
     /32 host LOCAL
Main:
  +-- 0.0.0.0/0 3 0 6
     |-- 10.99.0.2
        /32 link UNICAST
     |-- 198.18.5.0
        /24 link UNICAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.0.0.0/9 2 0 2
        |-- 10.6.6.6
           /32 host LOCAL tos=16
        |-- 10.99.0.1
           /32 host LOCAL
     |-- 198.18.5.2
        /32 link BROADCAST
        /32 host LOCAL
     |-- 198.18.5.9
        /32 link LOCAL
        /32 host type 12
        /31 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
";
        assert_eq!(
            parse_fib_trie(text).unwrap(),
            v4(&[
                "10.7.7.7",
                "10.5.5.5",
                "10.6.6.6",
                "10.99.0.1",
                "198.18.5.2"
            ]),
            "a leaf's every route is looked at; only /32 host LOCAL counts"
        );
    }

    #[test]
    fn malformed_fib_trie_is_an_error_with_its_line() {
        for (text, line, says) in [
            ("  |-- 10.0.0.1\n     /32 host LOCAL", 1, "before any table"),
            ("Main\n", 1, "neither"),
            ("Other:\n", 1, "unknown table"),
            ("Id x:\n", 1, "unknown table"),
            ("Main:\n     /32 host LOCAL\n", 2, "outside any leaf"),
            (
                "Main:\n  +-- 10.0.0.0/8 1 0 0\n     /32 host LOCAL\n",
                3,
                "outside any leaf",
            ),
            ("Main:\n  |-- 10.0.0.256\n", 2, "leaf"),
            ("Main:\n  |-- 10.0.0.1\n     /33 host LOCAL\n", 3, "0 to 32"),
            ("Main:\n  |-- 10.0.0.1\n     /x host LOCAL\n", 3, "0 to 32"),
            ("Main:\n  |-- 10.0.0.1\n     /32 host\n", 3, "without scope"),
            ("Main:\n  +-- 10.0.0.0 1 0 0\n", 2, "no /length"),
            ("Main:\n  +-- 10.0.0.0/40 1 0 0\n", 2, "0 to 32"),
            ("Main:\n  ??\n", 2, "neither"),
            ("Main:\n\n", 2, "neither"),
        ] {
            let err = parse_fib_trie(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.to_string().contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_namespaces_addresses_are_both_families_sorted_once_each() {
        let got = namespace_addresses(FIB_TRIE, Some(IF_INET6)).unwrap();
        let want: Vec<IpAddr> = [
            "10.99.0.1",
            "198.18.5.2",
            "198.18.5.3",
            "198.18.6.2",
            "2001:db8:5::2",
            "2001:db8:9::2",
            "2001:db8:a::2",
            "fe80::c0cd:a9ff:fe4b:1c63",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(got, want);
        // No IPv6 in the kernel: no if_inet6, IPv4 alone.
        assert_eq!(
            namespace_addresses(FIB_TRIE, None).unwrap().len(),
            4,
            "IPv4 only"
        );
        // A bad line in either file fails the whole read.
        let err = namespace_addresses(FIB_TRIE, Some("nonsense\n")).unwrap_err();
        assert_eq!((err.file, err.line), ("if_inet6", 1));
        let err = namespace_addresses("Main:\n ?\n", Some(IF_INET6)).unwrap_err();
        assert_eq!((err.file, err.line), ("fib_trie", 2));
    }
}
