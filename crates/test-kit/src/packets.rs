//! Hand-built Ethernet frames for BPF_PROG_TEST_RUN: IPv4 with and without
//! options, IPv6 with extension headers, fragments, TCP/UDP/ICMP.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 2);

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Transport header: TCP SYN or UDP with ports, or ICMP with `type, code`
/// taken from `dport >> 8, dport & 0xff`.
pub fn transport(proto: u8, dport: u16) -> Vec<u8> {
    match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = 0x02; // SYN
            h
        }
        UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        _ => vec![(dport >> 8) as u8, dport as u8, 0, 0, 0, 1, 0, 1],
    }
}

/// IPv4 packet; `options` bytes (a multiple of 4) go after the base header,
/// `frag_offset` in 8-byte units (non-zero = a later fragment, no L4 header).
pub fn ipv4(dst: Ipv4Addr, proto: u8, dport: u16, options: usize, frag_offset: u16) -> Vec<u8> {
    let l4 = if frag_offset == 0 {
        transport(proto, dport)
    } else {
        vec![0xAA; 16]
    };
    let ihl = 5 + options / 4;
    let total = ihl * 4 + l4.len();
    let mut ip = vec![0u8; ihl * 4];
    ip[0] = 0x40 | ihl as u8;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&frag_offset.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&SRC4.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    for b in ip[20..].iter_mut() {
        *b = 1; // NOP options
    }
    let mut f = ethernet(0x0800);
    f.extend(ip);
    f.extend(l4);
    f
}

/// An IPv6 extension header to put before the transport header.
#[derive(Clone, Copy)]
pub enum Ext {
    HopByHop,
    DestOpts,
    Routing,
    /// Fragment header with this offset (8-byte units).
    Fragment(u16),
}

pub fn ipv6(dst: Ipv6Addr, proto: u8, dport: u16, exts: &[Ext]) -> Vec<u8> {
    let later_fragment = exts
        .iter()
        .any(|e| matches!(e, Ext::Fragment(o) if *o != 0));
    let l4 = if later_fragment {
        vec![0xAA; 16]
    } else {
        transport(proto, dport)
    };
    let codes: Vec<u8> = exts
        .iter()
        .map(|e| match e {
            Ext::HopByHop => 0,
            Ext::DestOpts => 60,
            Ext::Routing => 43,
            Ext::Fragment(_) => 44,
        })
        .collect();
    let mut body = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = codes.get(i + 1).copied().unwrap_or(proto);
        match e {
            Ext::Fragment(offset) => {
                body.extend_from_slice(&[next, 0]);
                body.extend_from_slice(&(offset << 3).to_be_bytes());
                body.extend_from_slice(&[0, 0, 0, 7]);
            }
            Ext::Routing => body.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]),
            _ => body.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
        }
    }
    body.extend(l4);
    ipv6_frame(dst, codes.first().copied().unwrap_or(proto), body)
}

/// An Ethernet frame of an IPv6 header (from the lab's container address,
/// hop limit 64) to `dst` whose next header is `next`, then `body`.
fn ipv6_frame(dst: Ipv6Addr, next: u8, body: Vec<u8>) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&SRC6.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    let mut f = ethernet(0x86DD);
    f.extend(ip);
    f.extend(body);
    f
}

/// The same IP frame with another hop limit (IPv6) or TTL (IPv4).
pub fn with_hop_limit(mut frame: Vec<u8>, hop_limit: u8) -> Vec<u8> {
    let at = if frame[12..14] == [0x08, 0x00] { 8 } else { 7 };
    frame[14 + at] = hop_limit;
    frame
}

/// The same frame from another source address (of the frame's family).
pub fn with_source(mut frame: Vec<u8>, source: std::net::IpAddr) -> Vec<u8> {
    match source {
        std::net::IpAddr::V4(s) => frame[14 + 12..14 + 16].copy_from_slice(&s.octets()),
        std::net::IpAddr::V6(s) => frame[14 + 8..14 + 24].copy_from_slice(&s.octets()),
    }
    frame
}

/// The source address every frame here carries.
pub fn source(v6: bool) -> std::net::IpAddr {
    if v6 {
        SRC6.into()
    } else {
        SRC4.into()
    }
}

/// IPv6 packet with one routing header of `routing_type` listing `route`,
/// `segments_left` of them still to visit.
pub fn ipv6_routed(
    dst: Ipv6Addr,
    proto: u8,
    dport: u16,
    routing_type: u8,
    route: &[Ipv6Addr],
    segments_left: u8,
) -> Vec<u8> {
    let mut body = vec![
        proto,
        (route.len() * 2) as u8,
        routing_type,
        segments_left,
        0,
        0,
        0,
        0,
    ];
    for hop in route {
        body.extend_from_slice(&hop.octets());
    }
    body.extend(transport(proto, dport));
    // 43: the routing header.
    ipv6_frame(dst, 43, body)
}
