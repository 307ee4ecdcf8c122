#!/usr/bin/env python3
"""The receiver's eye of the bypass suite: captures every frame that arrives
on the given interfaces of the namespace it runs in, and writes one JSON line
per frame to OUT.

Usage: sniffer.py OUT IFACE [IFACE...]      (prints "ready" once capturing)

Judged by the test, never by the sender: a probe leaked if a packet matching
its leak signature shows up here. AF_PACKET sees a frame whatever the peer's
stack does with it afterwards (a source-routed packet the peer drops, a
fragment it never reassembles, a datagram to a closed port all count as
arrived). Outgoing frames (the peer's own answers, and loopback's transmit
copy) are skipped: only what was delivered to this side is judged.

Frames of other protocols (ARP, anything a packet socket can write) are
recorded too, with their ethertype and markers, and a VLAN tag (which
the receive path takes off the frame before any capture) as `vlan`; an
Ethernet/IPv4 ARP frame also with its fields as `arp` (op, sha, spa, tha,
tpa).

Each line: t (CLOCK_REALTIME of the kernel's receive timestamp, seconds as a
float, the clock the test reads right after an apply returns), ifname,
ethertype, vlan (the 802.1Q VLAN id, when the frame was tagged), v (4, 6,
or 0 for a frame that is not IP), src, dst, proto (the upper-layer protocol
after extension headers; -1 when not IP), sport, dport, icmp_type, tcp_flags, frag_off (offset in bytes), more_frags,
payload_len, markers (every MK{...} token in the frame), rh (addresses of an
IPv6 routing header of any type), srr (addresses of an IPv4 LSRR/SSRR
option), ext (the IPv6 extension header chain), nd_target (the target
address of a Neighbor Solicitation or Advertisement), arp.
"""

import json
import re
import select
import socket
import struct
import sys

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
MARKER = re.compile(rb"MK\{[0-9A-Za-z]{1,40}\}")


def ipv4(frame, rec):
    ihl = (frame[0] & 0x0F) * 4
    rec["v"] = 4
    rec["src"] = socket.inet_ntop(socket.AF_INET, frame[12:16])
    rec["dst"] = socket.inet_ntop(socket.AF_INET, frame[16:20])
    proto = frame[9]
    frag = struct.unpack("!H", frame[6:8])[0]
    rec["frag_off"] = (frag & 0x1FFF) * 8
    rec["more_frags"] = bool(frag & 0x2000)
    # Options: LSRR (131) and SSRR (137) name the hops the packet asks for.
    srr = []
    i = 20
    while i < ihl:
        kind = frame[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = frame[i + 1] if i + 1 < ihl else 0
        if length < 2:
            break
        if kind in (131, 137):
            for a in range(i + 3, i + length - 3, 4):
                srr.append(socket.inet_ntop(socket.AF_INET, frame[a:a + 4]))
        i += length
    rec["srr"] = srr
    transport(frame[ihl:], proto, rec["frag_off"] == 0, rec)


def ipv6(frame, rec):
    rec["v"] = 6
    rec["src"] = socket.inet_ntop(socket.AF_INET6, frame[8:24])
    rec["dst"] = socket.inet_ntop(socket.AF_INET6, frame[24:40])
    nh = frame[6]
    off = 40
    first = True
    rh = []
    ext = []
    while nh in (0, 43, 44, 60) and off + 8 <= len(frame):
        ext.append(nh)
        if nh == 44:
            fo = struct.unpack("!H", frame[off + 2:off + 4])[0]
            rec["frag_off"] = fo & 0xFFF8
            rec["more_frags"] = bool(fo & 1)
            first = rec["frag_off"] == 0
            nh, off = frame[off], off + 8
            continue
        length = (frame[off + 1] + 1) * 8
        if nh == 43:
            rtype = frame[off + 2]
            # Type 0 has 4 reserved bytes, type 2 one address, type 4 (SRH)
            # a segment list after 8 bytes: all carry addresses from byte 8.
            for a in range(off + 8, off + length - 15, 16):
                rh.append(socket.inet_ntop(socket.AF_INET6, frame[a:a + 16]))
            rec["rh_type"] = rtype
        nh, off = frame[off], off + length
    rec["rh"] = rh
    rec["ext"] = ext
    transport(frame[off:], nh, first, rec)


def transport(data, proto, first, rec):
    rec["proto"] = proto
    rec.setdefault("frag_off", 0)
    rec.setdefault("more_frags", False)
    if not first:
        rec["payload_len"] = len(data)
        return
    if proto in (6, 17) and len(data) >= 4:
        rec["sport"], rec["dport"] = struct.unpack("!HH", data[:4])
    if proto == 6 and len(data) >= 20:
        rec["tcp_flags"] = data[13]
        rec["payload_len"] = len(data) - (data[12] >> 4) * 4
    elif proto == 17:
        rec["payload_len"] = max(0, len(data) - 8)
    elif proto in (1, 58) and data:
        rec["icmp_type"] = data[0]
        rec["payload_len"] = max(0, len(data) - 8)
        if proto == 58 and data[0] in (135, 136) and len(data) >= 24:
            rec["nd_target"] = socket.inet_ntop(socket.AF_INET6, data[8:24])
    else:
        rec["payload_len"] = len(data)


def arp(frame, rec):
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[:8])
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return
    hw = lambda b: ":".join(f"{x:02x}" for x in b)  # noqa: E731
    rec["arp"] = {
        "op": op,
        "sha": hw(frame[8:14]),
        "spa": socket.inet_ntop(socket.AF_INET, frame[14:18]),
        "tha": hw(frame[18:24]),
        "tpa": socket.inet_ntop(socket.AF_INET, frame[24:28]),
    }


def decode(frame, ifname, t, ethertype, vlan):
    rec = {"t": t, "ifname": ifname, "ethertype": ethertype}
    if vlan is not None:
        rec["vlan"] = vlan
    if not frame:
        return None
    version = frame[0] >> 4
    try:
        if ethertype == ETH_P_IP and version == 4 and len(frame) >= 20:
            ipv4(frame, rec)
        elif ethertype == ETH_P_IPV6 and version == 6 and len(frame) >= 40:
            ipv6(frame, rec)
        else:
            rec["v"] = 0
            rec["proto"] = -1
            if ethertype == ETH_P_ARP and len(frame) >= 28:
                arp(frame, rec)
    except (IndexError, struct.error, ValueError):
        rec.setdefault("proto", -1)
        rec["truncated"] = True
    rec["markers"] = sorted({m.decode() for m in MARKER.findall(frame)})
    return rec


def main():
    out = open(sys.argv[1], "a", buffering=1)
    socks = {}
    for ifname in sys.argv[2:]:
        # SOCK_DGRAM: the kernel strips the link-layer header (Ethernet on
        # veth, the fake one on lo), so every frame starts at the IP header.
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        s.bind((ifname, ETH_P_ALL))
        socks[s.fileno()] = (s, ifname)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(list(socks), [], [])
        for fd in ready:
            s, ifname = socks[fd]
            frame, anc, _, addr = s.recvmsg(65536, 512)
            if addr[2] == PACKET_OUTGOING:
                continue
            t = None
            vlan = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    t = sec + nsec / 1e9
                elif level == SOL_PACKET and kind == PACKET_AUXDATA:
                    # struct tpacket_auxdata: status, len, snaplen, mac,
                    # net, vlan_tci, vlan_tpid.
                    status, _, _, _, _, tci, _ = struct.unpack("=IIIHHHH", data[:20])
                    if status & TP_STATUS_VLAN_VALID:
                        vlan = tci & 0x0FFF
            rec = decode(frame, ifname, t, addr[1], vlan)
            if rec is not None:
                out.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
