#!/usr/bin/env python3
"""The peer side of the test topology: TCP (HTTP-ish) and UDP echo servers
on every address of the namespace, IPv4 and IPv6, on the given ports.
Runs until killed. ICMP echo is answered by the kernel itself."""

import socket
import sys
import threading


def serve_tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(128)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def answer(conn):
    with conn:
        conn.settimeout(5)
        try:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except OSError:
            pass


def serve_udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)


def main():
    ports = [int(p) for p in sys.argv[1:]]
    for port in ports:
        threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
        threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
