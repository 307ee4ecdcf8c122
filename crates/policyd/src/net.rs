//! Reading addresses and port ranges from a policy into the kernel model's
//! prefixes and port blocks (`kernel_model::prefix`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use kernel_model::prefix::{addr_key, Family, PortBlock, Prefix, V4_BLOCK_LEN};

/// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a host route).
///
/// Host bits must be zero: `10.0.0.1/8` is refused rather than widened,
/// because in an allow-list the wider reading is the dangerous one.
pub fn parse_cidr(text: &str) -> Result<Prefix, String> {
    let text = text.trim();
    let (addr_text, len_text) = text
        .split_once('/')
        .map_or((text, None), |(a, l)| (a, Some(l)));
    let ip: IpAddr = addr_text.parse().map_err(|_| {
        format!("`{addr_text}` is not an IPv4 or IPv6 address (expected e.g. 10.0.0.0/8 or 2001:db8::/32)")
    })?;
    let (max, key_offset) = match ip {
        IpAddr::V4(_) => (32u8, V4_BLOCK_LEN),
        IpAddr::V6(_) => (128u8, 0),
    };
    let len = match len_text {
        None => max,
        Some(l) => {
            let parsed: u8 = l
                .parse()
                .map_err(|_| format!("prefix length `{l}` is not a number from 0 to {max}"))?;
            if parsed > max {
                return Err(format!("prefix length {parsed} is longer than {max}"));
            }
            parsed
        }
    };
    let key = addr_key(ip);
    let prefix = Prefix::new(key, len + key_offset);
    if prefix.addr != key {
        let network = match ip {
            IpAddr::V4(_) => {
                Ipv4Addr::from((prefix.addr & u128::from(u32::MAX)) as u32).to_string()
            }
            IpAddr::V6(_) => Ipv6Addr::from(prefix.addr).to_string(),
        };
        return Err(format!(
            "`{text}` has host bits set; write {network}/{len} for the network or {addr_text}/{max} for the host"
        ));
    }
    Ok(prefix)
}

/// IPv6 prefixes whose addresses reach IPv4 hosts through a translator or
/// tunnel relay: an IPv6 rule covering them allows IPv4 destinations the
/// IPv4 rules may not.
const TRANSLATOR_PREFIXES: &[(&str, u128, u8)] = &[
    ("NAT64", 0x0064_ff9b_u128 << 96, 96),
    ("local-use NAT64", 0x0064_ff9b_0001_u128 << 80, 48),
    ("6to4", 0x2002_u128 << 112, 16),
    ("Teredo", 0x2001_0000_u128 << 96, 32),
];

/// The translator prefixes `prefix` overlaps (contains, or lies inside),
/// as "NAME PREFIX" for messages.
pub fn translator_overlaps(prefix: &Prefix) -> Vec<String> {
    TRANSLATOR_PREFIXES
        .iter()
        .map(|&(name, addr, len)| (name, Prefix::new(addr, len)))
        .filter(|(_, t)| prefix.contains(t) || t.contains(prefix))
        .map(|(name, t)| format!("{name} {t}"))
        .collect()
}

/// The fewest aligned blocks covering `lo..=hi` exactly.
pub fn range_to_blocks(lo: u16, hi: u16) -> Vec<PortBlock> {
    let mut blocks = Vec::new();
    let (mut start, end) = (u32::from(lo), u32::from(hi));
    while start <= end {
        // Largest aligned block starting at `start` that stays inside the
        // range (0 is aligned to every size).
        let size_log2 = start.trailing_zeros().min((end - start + 1).ilog2());
        blocks.push(PortBlock {
            port: start as u16,
            bits: 16 - size_log2 as u8,
        });
        start += 1u32 << size_log2;
    }
    blocks
}

/// Merges overlapping and adjacent inclusive ranges, sorted.
pub fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translator_prefixes_are_found_when_covered_inside_or_overlapping() {
        let overlaps = |text: &str| translator_overlaps(&parse_cidr(text).unwrap());
        assert_eq!(overlaps("64:ff9b::/96"), ["NAT64 64:ff9b::/96"]);
        assert_eq!(overlaps("64:ff9b::808:808"), ["NAT64 64:ff9b::/96"]);
        assert_eq!(
            overlaps("64:ff9b:1:2::/64"),
            ["local-use NAT64 64:ff9b:1::/48"]
        );
        assert_eq!(overlaps("2002:c000:204::/48"), ["6to4 2002::/16"]);
        assert_eq!(overlaps("2001::/32"), ["Teredo 2001::/32"]);
        assert_eq!(overlaps("2000::/3"), ["6to4 2002::/16", "Teredo 2001::/32"]);
        assert_eq!(overlaps("::/0").len(), 4);
        assert!(overlaps("2001:db8::/32").is_empty());
        assert!(overlaps("2606:4700:4700::1111").is_empty());
        assert!(overlaps("10.0.0.0/8").is_empty());
    }

    #[test]
    fn v4_cidr_is_mapped() {
        let p = parse_cidr("1.1.1.0/24").unwrap();
        assert_eq!(p.len, 120);
        assert_eq!(p.family(), Family::V4);
        assert_eq!(p.to_string(), "1.1.1.0/24");
        assert_eq!(
            p.key_bytes(),
            contain_common::v4_mapped([1, 1, 1, 0]),
            "key bytes must be the kernel's ::ffff:a.b.c.d"
        );
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap(), Prefix::v4_all());
    }

    #[test]
    fn v6_and_bare_addresses() {
        let p = parse_cidr("2001:db8::/32").unwrap();
        assert_eq!((p.len, p.family()), (32, Family::V6));
        assert_eq!(p.to_string(), "2001:db8::/32");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().len, 128);
        assert_eq!(parse_cidr("::1").unwrap(), Prefix::v6_loopback());
        // ::/0 covers the IPv4-mapped block in key space but is an IPv6 prefix.
        assert_eq!(parse_cidr("::/0").unwrap().family(), Family::V6);
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104").unwrap().family(),
            Family::V4
        );
    }

    #[test]
    fn bad_cidrs_say_why() {
        assert!(parse_cidr("10.0.0.0/33")
            .unwrap_err()
            .contains("longer than 32"));
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(parse_cidr("10.0.0/8").unwrap_err().contains("not an IPv4"));
        assert!(parse_cidr("10.0.0.0/x")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_cidr("2001:db8::/129").unwrap_err().contains("128"));
    }

    #[test]
    fn ranges_become_minimal_blocks() {
        assert_eq!(
            range_to_blocks(443, 443),
            vec![PortBlock {
                port: 443,
                bits: 16
            }]
        );
        assert_eq!(range_to_blocks(0, 65535), vec![PortBlock::ALL]);
        assert_eq!(
            range_to_blocks(8000, 8080),
            vec![
                PortBlock {
                    port: 8000,
                    bits: 10
                },
                PortBlock {
                    port: 8064,
                    bits: 12
                },
                PortBlock {
                    port: 8080,
                    bits: 16
                },
            ]
        );
        assert_eq!(range_to_blocks(1, 65535).len(), 16);
    }

    #[test]
    fn blocks_cover_exactly_the_range() {
        for (lo, hi) in [
            (1u16, 1u16),
            (3, 17),
            (1000, 1999),
            (1, 65535),
            (65535, 65535),
            (0, 7),
        ] {
            let blocks = range_to_blocks(lo, hi);
            let covered: u32 = blocks
                .iter()
                .map(|b| u32::from(b.last()) - u32::from(b.first()) + 1)
                .sum();
            assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1);
            assert!(blocks.iter().all(|b| b.first() >= lo && b.last() <= hi));
        }
    }

    #[test]
    fn merging_ranges() {
        assert_eq!(
            merge_ranges(vec![(80, 80), (81, 90), (443, 443), (85, 86)]),
            vec![(80, 90), (443, 443)]
        );
        assert_eq!(merge_ranges(vec![(1, 65535), (80, 80)]), vec![(1, 65535)]);
    }
}
