#!/usr/bin/env python3
"""One network probe, with the exact socket type the test asks for.

Prints one line and exits 0 when the exchange completed:
  ok                     the peer answered
  denied:EPERM           the kernel refused the syscall (contain's socket hooks)
  timeout                nothing came back (dropped on the way out)
  error:<ERRNO or text>  anything else (refused, unreachable, ...)

One kind runs longer: `stream` sends marked chunks on one connection to a
reader (`tests/bypass/peer.py sink`), `MK{revbefore}` until the file
--pause exists, then (it says "paused") nothing until --go exists, then
`MK{revafter}` until an error or --seconds, so every "after" chunk is sent
after whatever the test did in the pause.

Used by the privileged integration tests and the VM scenarios, so that
"ping", "a raw ICMP socket" and "connected UDP" mean exactly one thing.
"""

import argparse
import ctypes
import errno
import os
import socket
import struct
import sys
import time

TIMEOUT = 2.0


def set_comm(name):
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NAME = 15
    if libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident, seq, v6=False):
    kind = 128 if v6 else 8
    payload = b"contain-probe"
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        # The kernel fills in the ICMPv6 checksum for ping and raw ICMPv6 sockets.
        return header + payload
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload


def tcp(host, port, family):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
        data = s.recv(64)
        if not data:
            raise OSError(errno.ECONNRESET, "no data")


def udp(host, port, family, connected):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        if connected:
            s.connect((host, port))
            s.send(b"ping")
            s.recv(64)
        else:
            s.sendto(b"ping", (host, port))
            s.recvfrom(64)


def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.02)


def stream(host, port, pause, go, seconds):
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        while not os.path.exists(pause):
            s.send(b"MK{revbefore} " * 8)
            time.sleep(0.02)
        print("paused", flush=True)
        wait_for(go)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            try:
                s.send(b"MK{revafter} " * 8)
            except socket.timeout:
                pass
            time.sleep(0.02)


def icmp(host, family, raw):
    v6 = family == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    kind = socket.SOCK_RAW if raw else socket.SOCK_DGRAM
    with socket.socket(family, kind, proto) as s:
        s.settimeout(TIMEOUT)
        ident = os.getpid() & 0xFFFF
        s.sendto(echo_request(ident, 1, v6), (host, 0))
        deadline = time.monotonic() + TIMEOUT
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            data, _ = s.recvfrom(1500)
            if raw and not v6:
                data = data[(data[0] & 0x0F) * 4:]  # raw IPv4 sockets see the IP header
            reply = 129 if v6 else 0
            if data and data[0] == reply:
                return


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["tcp", "tcp6", "tcp-mapped", "udp-connect", "udp-sendto", "udp6-sendto",
                                    "ping", "ping6", "icmp-raw", "icmp6-raw", "stream"])
    p.add_argument("host")
    p.add_argument("port", nargs="?", type=int, default=0)
    p.add_argument("--comm", help="rename this process (prctl PR_SET_NAME) first")
    p.add_argument("--pause", help="stream: stop sending once this file exists")
    p.add_argument("--go", help="stream: send again once this file exists")
    p.add_argument("--seconds", type=float, default=30, help="stream: at most this long after --go")
    a = p.parse_args()
    if a.comm:
        set_comm(a.comm)
    try:
        if a.kind == "tcp":
            tcp(a.host, a.port, socket.AF_INET)
        elif a.kind == "tcp6":
            tcp(a.host, a.port, socket.AF_INET6)
        elif a.kind == "tcp-mapped":
            tcp("::ffff:" + a.host, a.port, socket.AF_INET6)
        elif a.kind == "udp-connect":
            udp(a.host, a.port, socket.AF_INET, True)
        elif a.kind == "udp-sendto":
            udp(a.host, a.port, socket.AF_INET, False)
        elif a.kind == "udp6-sendto":
            udp(a.host, a.port, socket.AF_INET6, False)
        elif a.kind == "ping":
            icmp(a.host, socket.AF_INET, raw=False)
        elif a.kind == "ping6":
            icmp(a.host, socket.AF_INET6, raw=False)
        elif a.kind == "icmp-raw":
            icmp(a.host, socket.AF_INET, raw=True)
        elif a.kind == "icmp6-raw":
            icmp(a.host, socket.AF_INET6, raw=True)
        elif a.kind == "stream":
            stream(a.host, a.port, a.pause, a.go, a.seconds)
    except socket.timeout:
        print("timeout")
        return 1
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e))
        print(("denied:" if e.errno == errno.EPERM else "error:") + name)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
