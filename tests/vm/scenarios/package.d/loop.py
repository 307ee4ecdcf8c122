#!/usr/bin/env python3
"""The probe loop of the package scenario, run inside a filtered container while units restart
and the package is upgraded. Until STOP_FILE exists (or --max-seconds pass), every round makes
one allowed request (TCP connect, send, read the peer's answer) and two denied attempts to the
denied port (a TCP connect and a UDP datagram). Then it prints one line of counts.

What the sender sees is a cross-check only: whether a denied packet got out is judged by the
capture in the peer's network namespace."""

import argparse
import os
import socket
import time


def allowed_request(host, port, timeout):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def denied_tcp_connected(host, port, timeout):
    """True if the connection was established (the denial failed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def denied_udp_sent(host, port):
    """True if the kernel accepted the datagram (the hook did not refuse it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"contain-loop", (host, port))
            return True
        except OSError:
            return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True)
    ap.add_argument("--allowed-port", type=int, required=True)
    ap.add_argument("--denied-port", type=int, required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--interval", type=float, default=0.1)
    a = ap.parse_args()
    t0 = time.monotonic()
    rounds = allowed_ok = 0
    allowed_failed_at = []
    tcp_connected = udp_sent = 0
    while not os.path.exists(a.stop_file) and time.monotonic() - t0 < a.max_seconds:
        rounds += 1
        if allowed_request(a.peer, a.allowed_port, 3.0):
            allowed_ok += 1
        else:
            allowed_failed_at.append(round(time.monotonic() - t0, 1))
        tcp_connected += denied_tcp_connected(a.peer, a.denied_port, 1.0)
        udp_sent += denied_udp_sent(a.peer, a.denied_port)
        time.sleep(a.interval)
    print(
        f"rounds={rounds} allowed_ok={allowed_ok} allowed_failed={len(allowed_failed_at)} "
        f"denied_tcp_connected={tcp_connected} denied_udp_sent={udp_sent} "
        f"seconds={time.monotonic() - t0:.1f} allowed_failed_at={allowed_failed_at[:10]}",
        flush=True,
    )


if __name__ == "__main__":
    main()
