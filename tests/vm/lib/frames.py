#!/usr/bin/env python3
"""Link-layer probes for the VM scenarios (python3 stdlib only: it runs both in the guest and
in the contain-test container image).

  frames.py send [options] NAME=KIND[+MOD...][@PORT] ...
      Writes whole frames on AF_PACKET sockets, each carrying the marker MK{NAME} in its
      payload. KIND:
        raw-udp4, raw-udp6     SOCK_RAW: the Ethernet header is ours
        dgram-udp4, dgram-udp6 SOCK_DGRAM: the kernel writes the Ethernet header
        raw-tcp4               SOCK_RAW, a TCP SYN (port 8080 by default) with the marker
        raw-ether              SOCK_RAW, ethertype 0x88b5 (local experimental), not IP
        raw-vlan               SOCK_RAW, an 802.1Q tag (VID 5) in front of IPv4/UDP
        ipraw-tcp4             no frame: the TCP SYN's IPv4 header from an IP_HDRINCL raw
                               socket (an IP socket, judged by the cgroup programs)
      MOD: bypass (PACKET_QDISC_BYPASS), bcast (destination MAC ff:ff:ff:ff:ff:ff), spoof
      (the source address is not the sender's: its last byte's high bit flipped), othermac
      (SOCK_RAW: the Ethernet source is a neighbour's MAC, NEIGHBOUR_MAC, not the interface's).
      Prints one line per probe: "NAME sent=N errors=E [first_error=...]" and a last line
      "first_send_ms=T since_start_ms=S" (T: from this script's start to the first frame the
      kernel took; S: how long the process had run then, from /proc/self/stat).
  frames.py sniff OUT IFACE
      Appends "MARKER LEN ETHERTYPE" to OUT for every marker in every frame that arrives on
      IFACE (frames this side sends are skipped); prints "ready" once capturing.
  frames.py dns ADDR NAME ANSWER LOG
      A tiny UDP DNS server on ADDR:53: NAME/A is ANSWER, NAME/other types are empty answers,
      other names NXDOMAIN. Appends "SRC QNAME QTYPE" to LOG for every query.
  frames.py dns-query SERVER NAME
      One A query over UDP (3 s): prints the first address, "nxdomain", "timeout" or
      "error:...".
  frames.py dns-forge NAME [--count N]
      An A query for NAME written on lo by an AF_PACKET socket, from 127.0.0.1 straight to the
      port Docker's embedded DNS listens on at 127.0.0.11 (read from /proc/net/udp: its
      iptables DNAT from port 53 is for packets the stack sends, not for frames received on
      lo). Prints "forged to 127.0.0.11:PORT sent=N", or "no embedded DNS socket".
"""

import argparse
import errno
import os
import re
import select
import socket
import struct
import sys
import time

T_START = time.monotonic()

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_EXPERIMENTAL = 0x88B5
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
PACKET_OUTGOING = 4
SIOCGIFADDR = 0x8915
MARKER = re.compile(rb"MK\{[0-9A-Za-z_-]{1,40}\}")
BROADCAST = b"\xff" * 6
# A MAC no device has: a neighbour's, for the bridge.
NEIGHBOUR_MAC = b"\x02\x00\x5e\x00\xbe\xef"


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total >> 16) + (total & 0xFFFF)
    return ~total & 0xFFFF


def mac_bytes(text):
    return bytes(int(x, 16) for x in text.split(":"))


def own_mac(iface):
    with open(f"/sys/class/net/{iface}/address") as f:
        return mac_bytes(f.read().strip())


def own_ipv4(iface):
    try:
        import fcntl
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("256s", iface.encode()[:15])
            return fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24]
    except OSError:
        return bytes(4)


def own_ipv6(iface):
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                addr, _, _, scope, _, name = line.split()
                if name == iface and scope == "00":
                    return bytes.fromhex(addr)
    except OSError:
        pass
    return bytes(16)


def ipv4(src, dst, proto, payload):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x4242, 0, 64, proto, 0,
                         src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(src, dst, proto, payload):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, 64, src, dst) + payload


def pseudo(src, dst, proto, length):
    if len(src) == 4:
        return struct.pack("!4s4sBBH", src, dst, 0, proto, length)
    return struct.pack("!16s16sIxxxB", src, dst, length, proto)


def udp(src, dst, sport, dport, data):
    length = 8 + len(data)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + data
    csum = checksum(pseudo(src, dst, 17, length) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def tcp_syn(src, dst, sport, dport, data):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 0x12345678, 0, 5 << 4, 0x02, 64240, 0, 0) + data
    csum = checksum(pseudo(src, dst, 6, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


class Probe:
    def __init__(self, spec, args, macs, addrs):
        name, _, kind = spec.partition("=")
        if not name or not kind:
            raise SystemExit(f"bad probe {spec!r}: NAME=KIND[+MOD...][@PORT]")
        kind, _, port = kind.partition("@")
        kind, *mods = kind.split("+")
        self.name, self.kind, self.mods = name, kind, set(mods)
        self.port = int(port) if port else (8080 if kind.endswith("tcp4") else args.port)
        self.sent = self.errors = 0
        self.first_error = None
        self.skipped = None
        marker = f"MK{{{name}}}".encode()
        src_mac, dst_mac = macs
        if "bcast" in self.mods:
            dst_mac = BROADCAST
        if "othermac" in self.mods:
            src_mac = NEIGHBOUR_MAC
        src4, dst4, src6, dst6 = addrs
        if "spoof" in self.mods:
            # An address of no one's on the container's subnet: a forged source.
            src4 = src4[:3] + bytes([src4[3] ^ 0x80])
            if src6 is not None:
                src6 = src6[:15] + bytes([src6[15] ^ 0x80])
        sport = 40000 + sum(marker) % 20000
        v6 = kind.endswith("6")
        if v6 and dst6 is None:
            self.skipped = "no IPv6 destination"
            return
        if kind in ("raw-udp4", "dgram-udp4", "raw-vlan"):
            l3, ethertype = ipv4(src4, dst4, 17, udp(src4, dst4, sport, self.port, marker)), ETH_P_IP
        elif kind in ("raw-udp6", "dgram-udp6"):
            l3, ethertype = ipv6(src6, dst6, 17, udp(src6, dst6, sport, self.port, marker)), ETH_P_IPV6
        elif kind in ("raw-tcp4", "ipraw-tcp4"):
            l3, ethertype = ipv4(src4, dst4, 6, tcp_syn(src4, dst4, sport, self.port, marker)), ETH_P_IP
        elif kind == "raw-ether":
            l3, ethertype = marker.ljust(46, b"."), ETH_P_EXPERIMENTAL
        else:
            raise SystemExit(f"unknown kind {kind!r}")
        if kind.startswith("ipraw-"):
            # An IP socket whose header is the sender's (IP_HDRINCL): no frame, the
            # kernel routes it by the sendto address.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.data = l3
            self.addr = (socket.inet_ntop(socket.AF_INET, dst4), 0)
        elif kind.startswith("dgram-"):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ethertype))
            self.data = l3
            self.addr = (args.iface, ethertype, 0, 0, dst_mac)
        else:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.sock.bind((args.iface, 0))
            if kind == "raw-vlan":
                self.data = dst_mac + src_mac + struct.pack("!HHH", ETH_P_8021Q, 5, ethertype) + l3
            else:
                self.data = dst_mac + src_mac + struct.pack("!H", ethertype) + l3
            self.addr = None
        if "bypass" in self.mods:
            self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)

    def send(self):
        if self.skipped:
            return False
        try:
            if self.addr is None:
                self.sock.send(self.data)
            else:
                self.sock.sendto(self.data, self.addr)
            self.sent += 1
            return True
        except OSError as e:
            self.errors += 1
            if self.first_error is None:
                self.first_error = errno.errorcode.get(e.errno, str(e))
            return False

    def report(self):
        if self.skipped:
            return f"{self.name} skipped ({self.skipped})"
        extra = f" first_error={self.first_error}" if self.first_error else ""
        return f"{self.name} sent={self.sent} errors={self.errors}{extra}"


def process_age_ms():
    """How long this process has run, from its start time in /proc/self/stat."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return int((uptime - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError):
        return -1


def cmd_send(args):
    macs = (own_mac(args.iface), mac_bytes(args.dst_mac))
    addrs = (own_ipv4(args.iface), socket.inet_pton(socket.AF_INET, args.dst4),
             own_ipv6(args.iface),
             socket.inet_pton(socket.AF_INET6, args.dst6) if args.dst6 else None)
    probes = [Probe(spec, args, macs, addrs) for spec in args.probes]
    first = None
    deadline = time.monotonic() + args.duration if args.duration else None
    rounds = 0
    while True:
        for p in probes:
            if p.send() and first is None:
                first = (time.monotonic() - T_START, process_age_ms())
        rounds += 1
        if deadline is not None:
            if time.monotonic() >= deadline or (args.until and os.path.exists(args.until)):
                break
            time.sleep(args.interval)
        else:
            if rounds >= args.count:
                break
            time.sleep(0.002)
    lines = [p.report() for p in probes]
    if first is None:
        lines.append("first_send_ms=none since_start_ms=none")
    else:
        lines.append(f"first_send_ms={int(first[0] * 1000)} since_start_ms={first[1]}")
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(text)
        os.rename(args.out + ".tmp", args.out)
    sys.stdout.write(text)


def cmd_sniff(args):
    out = open(args.out, "a", buffering=1)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((args.iface, ETH_P_ALL))
    print("ready", flush=True)
    while True:
        frame, addr = s.recvfrom(65536)
        if addr[2] == PACKET_OUTGOING:
            continue
        for m in MARKER.findall(frame):
            out.write(f"{m.decode()} {len(frame)} {addr[1]:04x}\n")


def dns_name(msg, off):
    labels = []
    while off < len(msg):
        n = msg[off]
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode(errors="replace"))
        off += n
    return ".".join(labels).lower(), off


def cmd_dns(args):
    want = args.name.lower().rstrip(".")
    answer = socket.inet_aton(args.answer)
    log = open(args.log, "a", buffering=1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.addr, 53))
    print("ready", flush=True)
    while True:
        msg, src = s.recvfrom(4096)
        if len(msg) < 12:
            continue
        qid, _, qdcount = struct.unpack("!HHH", msg[:6])
        if qdcount < 1:
            continue
        qname, off = dns_name(msg, 12)
        if off + 4 > len(msg):
            continue
        qtype, _ = struct.unpack("!HH", msg[off:off + 4])
        log.write(f"{src[0]} {qname} {qtype}\n")
        question = msg[12:off + 4]
        if qname != want:
            reply = struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
        elif qtype == 1:
            reply = (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question
                     + struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + answer)
        else:
            reply = struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
        s.sendto(reply, src)


def cmd_dns_query(args):
    qid = os.getpid() & 0xFFFF
    qname = b"".join(bytes([len(l)]) + l.encode() for l in args.name.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        try:
            s.sendto(query, (args.server, 53))
            while True:
                msg, _ = s.recvfrom(4096)
                if len(msg) >= 12 and struct.unpack("!H", msg[:2])[0] == qid:
                    break
        except socket.timeout:
            print("timeout")
            return
        except OSError as e:
            print(f"error:{errno.errorcode.get(e.errno, str(e))}")
            return
    if msg[3] & 0x0F == 3:
        print("nxdomain")
        return
    ancount = struct.unpack("!H", msg[6:8])[0]
    _, off = dns_name(msg, 12)
    off += 4
    for _ in range(ancount):
        if msg[off] & 0xC0 == 0xC0:
            off += 2
        else:
            _, off = dns_name(msg, off)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            print(socket.inet_ntoa(msg[off:off + 4]))
            return
        off += rdlen
    print("noanswer")


def embedded_dns_port():
    """The UDP port bound on 127.0.0.11 in this namespace, or None."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            local = line.split()[1]
            addr, port = local.split(":")
            if addr == "0B00007F":  # 127.0.0.11, as the kernel prints it (little-endian)
                return int(port, 16)
    return None


def cmd_dns_forge(args):
    port = embedded_dns_port()
    if port is None:
        print("no embedded DNS socket")
        return
    qname = b"".join(bytes([len(l)]) + l.encode() for l in args.name.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    src, dst = socket.inet_aton(args.src), socket.inet_aton("127.0.0.11")
    packet = ipv4(src, dst, 17, udp(src, dst, 40053, port, query))
    frame = bytes(6) + bytes(6) + struct.pack("!H", ETH_P_IP) + packet
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("lo", 0))
        for _ in range(args.count):
            sent += s.send(frame) == len(frame)
            time.sleep(0.01)
    print(f"forged to 127.0.0.11:{port} sent={sent}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("send")
    p.add_argument("--iface", default="eth0")
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--dst4", required=True)
    p.add_argument("--dst6")
    p.add_argument("--port", type=int, default=9999, help="UDP destination port")
    p.add_argument("--count", type=int, default=20, help="frames per probe")
    p.add_argument("--duration", type=float, help="send in a loop for this many seconds instead")
    p.add_argument("--interval", type=float, default=0.0005,
                   help="seconds between rounds of the --duration loop")
    p.add_argument("--until", help="end the --duration loop early once this file exists")
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("probes", nargs="+")
    p = sub.add_parser("sniff")
    p.add_argument("out")
    p.add_argument("iface")
    p = sub.add_parser("dns")
    p.add_argument("addr")
    p.add_argument("name")
    p.add_argument("answer")
    p.add_argument("log")
    p = sub.add_parser("dns-query")
    p.add_argument("server")
    p.add_argument("name")
    p = sub.add_parser("dns-forge")
    p.add_argument("name")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--src", default="127.0.0.1", help="the query's source address")
    args = ap.parse_args()
    {"send": cmd_send, "sniff": cmd_sniff, "dns": cmd_dns, "dns-query": cmd_dns_query,
     "dns-forge": cmd_dns_forge}[args.cmd](args)


if __name__ == "__main__":
    main()
