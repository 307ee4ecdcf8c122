//! Destination prefixes in the kernel's 128-bit key space, and port (or
//! ICMP type/code) blocks as big-endian prefixes.
//!
//! Every address is kept as 128 bits, IPv4 as `::ffff:a.b.c.d`, because that
//! is how `DESTS` is keyed: IPv4-mapped IPv6 destinations meet the IPv4 rules
//! by construction.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// `::ffff:0:0`, the start of the IPv4-mapped block.
const V4_MAPPED_BASE: u128 = 0xffff_u128 << 32;
/// Prefix length of the IPv4-mapped block in the 128-bit space.
pub const V4_BLOCK_LEN: u8 = 96;

/// Which address family a prefix belongs to. A prefix is IPv4 when it lies
/// entirely inside `::ffff:0:0/96`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// An address prefix in the 128-bit key space; host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: u128,
    /// Leading address bits that must match, 0..=128.
    pub len: u8,
}

fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        128.. => u128::MAX,
        l => !(u128::MAX >> l),
    }
}

impl Prefix {
    /// The prefix of `addr` of length `len`, host bits cleared.
    pub fn new(addr: u128, len: u8) -> Self {
        let len = len.min(128);
        Prefix {
            addr: addr & mask(len),
            len,
        }
    }

    /// All of IPv4: `0.0.0.0/0` as it is stored.
    pub fn v4_all() -> Self {
        Prefix {
            addr: V4_MAPPED_BASE,
            len: V4_BLOCK_LEN,
        }
    }

    /// `127.0.0.0/8`.
    pub fn v4_loopback() -> Self {
        Prefix::new(V4_MAPPED_BASE | (127u128 << 24), V4_BLOCK_LEN + 8)
    }

    /// `127.0.0.11/32`, Docker's embedded DNS server inside every container
    /// network namespace on a user-defined network.
    pub fn docker_dns() -> Self {
        Prefix::new(V4_MAPPED_BASE | (127u128 << 24) | 11, V4_BLOCK_LEN + 32)
    }

    /// `::1/128`.
    pub fn v6_loopback() -> Self {
        Prefix { addr: 1, len: 128 }
    }

    pub fn contains(&self, other: &Prefix) -> bool {
        self.len <= other.len && other.addr & mask(self.len) == self.addr
    }

    pub fn contains_addr(&self, addr: u128) -> bool {
        addr & mask(self.len) == self.addr
    }

    pub fn family(&self) -> Family {
        if Prefix::v4_all().contains(self) {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The 16 key bytes, network order.
    pub fn key_bytes(&self) -> [u8; 16] {
        self.addr.to_be_bytes()
    }

    pub fn from_key(addr: [u8; 16], len: u8) -> Self {
        Prefix::new(u128::from_be_bytes(addr), len)
    }
}

/// An address as the kernel looks it up: IPv4 mapped into IPv6.
pub fn addr_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_MAPPED_BASE | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family() {
            Family::V4 => {
                let v4 = Ipv4Addr::from((self.addr & u128::from(u32::MAX)) as u32);
                write!(f, "{v4}/{}", self.len - V4_BLOCK_LEN)
            }
            Family::V6 => write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.len),
        }
    }
}

/// A block of ports (or ICMP type/code words) matched by their leading
/// `bits` bits, as a `PORTS` LPM key holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortBlock {
    pub port: u16,
    pub bits: u8,
}

impl PortBlock {
    pub const ALL: PortBlock = PortBlock { port: 0, bits: 0 };

    pub fn first(&self) -> u16 {
        self.port
    }

    pub fn last(&self) -> u16 {
        let span = if self.bits == 0 {
            u32::from(u16::MAX)
        } else {
            (1u32 << (16 - self.bits)) - 1
        };
        (u32::from(self.port) + span) as u16
    }

    pub fn contains(&self, other: &PortBlock) -> bool {
        self.bits <= other.bits && self.first() <= other.first() && other.last() <= self.last()
    }

    pub fn contains_value(&self, value: u16) -> bool {
        self.first() <= value && value <= self.last()
    }

    /// The block of `bits` leading bits that contains `value`.
    pub fn enclosing(value: u16, bits: u8) -> PortBlock {
        let bits = bits.min(16);
        let mask = (u32::from(u16::MAX) << (16 - u32::from(bits))) as u16;
        PortBlock {
            port: value & mask,
            bits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment() {
        let a = Prefix::new(addr_key("10.0.0.0".parse().unwrap()), V4_BLOCK_LEN + 8);
        let b = Prefix::new(addr_key("10.1.0.0".parse().unwrap()), V4_BLOCK_LEN + 16);
        assert!(a.contains(&b) && !b.contains(&a) && a.contains(&a));
        assert!(Prefix::v4_all().contains(&Prefix::v4_loopback()));
        assert!(a.contains_addr(addr_key("10.9.9.9".parse().unwrap())));
        assert_eq!(a.to_string(), "10.0.0.0/8");
        assert_eq!(
            a.key_bytes(),
            contain_common::v4_mapped([10, 0, 0, 0]),
            "key bytes must be the kernel's ::ffff:a.b.c.d"
        );
    }

    #[test]
    fn enclosing_blocks() {
        assert_eq!(
            PortBlock::enclosing(8081, 12),
            PortBlock {
                port: 8080,
                bits: 12
            }
        );
        assert_eq!(PortBlock::enclosing(8081, 0), PortBlock::ALL);
        assert!(PortBlock {
            port: 8064,
            bits: 12
        }
        .contains_value(8079));
        assert!(!PortBlock {
            port: 8064,
            bits: 12
        }
        .contains_value(8080));
    }
}
