#!/usr/bin/env python3
"""The peer's active side in bypass probes (runs in the peer netns).

  peer.py sink PORT                     TCP server that reads and discards
                                        until EOF (the revocation probe's
                                        stream needs a reader that never
                                        closes first); prints "ready"
  peer.py udp-first SPORT HOST PORT     one UDP datagram from SPORT, so the
                                        container's socket has a peer that
                                        spoke first
  peer.py tcp-in HOST PORT              connects in to a server in the
                                        container and reads for a while
  peer.py udp-connect HOST PORT         connected UDP socket: one datagram,
                                        then waits for an answer; prints ok,
                                        error:ECONNREFUSED (an ICMP port
                                        unreachable came back) or timeout
  peer.py udp-echo PORT                 UDP server on every address that
                                        answers each datagram with itself
                                        (the upstream DNS of the Docker DNS
                                        probe); prints "ready"
  peer.py from SRC KIND HOST            one packet from the peer's address
                                        SRC to HOST, of KIND: udp (a
                                        datagram to port 9), icmp-error (a
                                        port unreachable quoting a datagram
                                        HOST sent SRC, as a router or any
                                        host can send, conntrack letting it
                                        in as related) or later-fragment (a
                                        UDP datagram's fragment at offset
                                        800); prints "sent"
"""

import errno
import resource
import socket
import struct
import sys
import threading
import time


def sink(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    # Room for thousands of connections at once (the revoked-ring test).
    s.listen(4096)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def drain(conn):
    with conn:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass


def udp_first(sport, host, port, size=0):
    """A datagram from `sport` to host:port; of `size` bytes when given
    (larger than the link's MTU, the IP layer sends it in fragments)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
        body = b"hello from the peer"
        s.sendto(body.ljust(int(size), b".") if size else body, (host, port))
    print("sent", flush=True)


def tcp_in(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((host, port))
        print("connected", flush=True)
        deadline = time.monotonic() + 3
        try:
            while time.monotonic() < deadline and s.recv(4096):
                pass
        except OSError:
            pass


def udp_connect(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
            s.send(b"anyone there?")
            s.recv(64)
            print("ok")
        except socket.timeout:
            print("timeout")
        except OSError as e:
            print("error:" + errno.errorcode.get(e.errno, str(e)))


def udp_echo(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(4096)
        s.sendto(data, addr)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def from_source(src, kind, host):
    v6 = ":" in host
    family = socket.AF_INET6 if v6 else socket.AF_INET
    # A datagram HOST sent SRC, as an ICMP error quotes it.
    udp = struct.pack("!HHHH", 40000, 53, 8, 0)
    if kind == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.sendto(b"spoken", (host, 9))
    elif kind == "icmp-error" and v6:
        s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        s.bind((src, 0))
        quoted = (
            struct.pack("!IHBB", 6 << 28, 8, 17, 64)
            + socket.inet_pton(family, host)
            + socket.inet_pton(family, src)
            + udp
        )
        # The kernel fills in an ICMPv6 checksum.
        s.sendto(struct.pack("!BBHI", 1, 4, 0, 0) + quoted, (host, 0))
    elif kind == "icmp-error":
        s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.bind((src, 0))
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 28, 1, 0, 64, 17, 0)
        ip += socket.inet_pton(family, host) + socket.inet_pton(family, src)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        body = struct.pack("!I", 0) + ip + udp
        header = struct.pack("!BBH", 3, 3, 0)
        message = header + body
        message = header[:2] + struct.pack("!H", checksum(message)) + body
        s.sendto(message, (host, 0))
    elif kind == "later-fragment" and v6:
        s = socket.socket(family, socket.SOCK_RAW, 44)
        s.bind((src, 0))
        fragment = struct.pack("!BBHI", 17, 0, 100 << 3, 0x0C0FFEE)
        s.sendto(fragment + b"a later fragment", (host, 0))
    elif kind == "later-fragment":
        s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        payload = b"a later fragment"
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0xBEEF, 100, 64, 17, 0)
        ip += socket.inet_pton(family, src) + socket.inet_pton(family, host)
        # The kernel fills in an IP_HDRINCL header's checksum.
        s.sendto(ip + payload, (host, 0))
    else:
        sys.exit(f"unknown kind {kind}")
    s.close()
    print("sent", flush=True)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "sink":
        sink(int(args[0]))
    elif cmd == "udp-first":
        udp_first(int(args[0]), args[1], int(args[2]), *args[3:4])
    elif cmd == "tcp-in":
        tcp_in(args[0], int(args[1]))
    elif cmd == "udp-connect":
        udp_connect(args[0], int(args[1]))
    elif cmd == "udp-echo":
        udp_echo(int(args[0]))
    elif cmd == "from":
        from_source(args[0], args[1], args[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
