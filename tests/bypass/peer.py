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
"""

import errno
import resource
import socket
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


def udp_first(sport, host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
        s.sendto(b"hello from the peer", (host, port))
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


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "sink":
        sink(int(args[0]))
    elif cmd == "udp-first":
        udp_first(int(args[0]), args[1], int(args[2]))
    elif cmd == "tcp-in":
        tcp_in(args[0], int(args[1]))
    elif cmd == "udp-connect":
        udp_connect(args[0], int(args[1]))
    elif cmd == "udp-echo":
        udp_echo(int(args[0]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
