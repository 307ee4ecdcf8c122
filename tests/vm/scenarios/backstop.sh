#!/bin/bash
# The veth backstop with real Docker 20.10 in the Debian 12 guest (kernel 6.1, tc clsact): frames
# from AF_PACKET sockets of containers at Docker's default capabilities (CAP_NET_RAW), judged
# where it counts, by a capture in the receiving peer's network namespace.
#
#  1. self-check, contain not running: every link-layer probe arrives (the capture sees leaks),
#     and so does a fresh container that sends frames as its first act;
#  2. contain enforcing (egress=block): AF_PACKET SOCK_RAW and SOCK_DGRAM, IPv4 and IPv6, with
#     and without PACKET_QDISC_BYPASS, broadcast, non-IP ethertype and 802.1Q: nothing arrives;
#     a frame the container-wide rules allow does, one only a per-process rule allows does not;
#     the allowed SYN from a forged source, as a frame or from an IP_HDRINCL raw socket, or as
#     a frame from a neighbour's MAC, does not (from the container's own address and MAC it
#     does); TCP through sockets works both ways;
#     veth events with link_layer, policyd's log with forged_source; status names blocked's veth
#     once its filter is removed behind the loader's back, and not once a restarted loader is on;
#  3. first frame: 8 fresh egress=block containers, started at once, whose entrypoint (a static
#     binary) sends frames for 1 s from its first millisecond: nothing arrives (the same command leaks before
#     contain runs, and in a container no policy selects); which starts sent before policyd had
#     mapped the container (the unknown-container verdict) is reported;
#  4. Docker's embedded DNS forwarding from inside the container's namespace: allowed with
#     allow_docker_dns = true, dropped (and reported) with false, seen at the upstream or not;
#  5. --network host: policyd status says its packet sockets are not covered, and why.
#     --network container:X: a joining container's frames are judged under its own policy and
#     the joined container's under its own, whichever owns the shared veth, and status must say
#     no different; dockerd's forwarded DNS from the shared namespace is judged under the
#     veth owner's policy.
. /mnt/share/lib/vmtest.sh

NET=contain-bs
BR=contain-bs0                 # the bridge's name in the guest's root namespace
SUBNET=198.18.252.0/24
SUBNET6=2001:db8:252::/64
PEER_IP=198.18.252.10
PEER_IP6=2001:db8:252::10
DENIED_PORT=9999               # UDP: no policy below lets egress=block reach it
DNS_IP=198.18.253.53           # the embedded DNS's upstream, on the guest's lo
DNS_NAME=backstop-test.example
DNS_ANSWER=198.18.253.99
T=/opt/contain-test            # probe.py, peer_server.py, frames.py (bind-mounted read-only)
FF=/opt/contain-ff             # first-frame senders' reports (bind-mounted as /out)
CAP=/run/contain-bs-capture.txt  # the peer's capture: "MK{...} LEN ETHERTYPE" per marker
DNSLOG=/run/contain-bs-dns.txt   # the upstream's log: "SRC QNAME QTYPE" per query
FIRST_STARTS=8
IMG=$CONTAIN_TEST_IMAGE
OUT=/mnt/share/out

# ---- helpers -----------------------------------------------------------------------------------

# arrived MARKER: frames carrying MK{MARKER} the peer received so far
arrived() { grep -c -F "MK{$1} " "$CAP" || true; }
BARRIERS=0
# barrier: a frame from the guest's root namespace over the bridge to the peer (no veth
# ingress on its way); once the capture has it, it has processed everything sent before.
barrier() {
  BARRIERS=$((BARRIERS + 1))
  local m=barrier$BARRIERS
  python3 $T/frames.py send --iface $BR --dst-mac "$PEER_MAC" --dst4 $PEER_IP --count 1 \
    "$m=raw-udp4" >/dev/null
  retry 60 0.25 bash -c "grep -q -F 'MK{$m} ' $CAP" || { fail "capture barrier $m never arrived"; return 0; }
  sleep 0.5
}
# send_in CONTAINER ARGS...: frames.py send inside CONTAINER, to the peer
send_in() {
  local c=$1; shift
  docker exec "$c" python3 $T/frames.py send --dst-mac "$PEER_MAC" --dst4 $PEER_IP \
    --dst6 $PEER_IP6 --port $DENIED_PORT "$@" 2>&1 || true
}
# sent_ok REPORT NAME: the sender's report says NAME went out (sent > 0, no errors)
sent_ok() { grep -qE "^$2 sent=[1-9][0-9]* errors=0$" <<<"$1"; }
# expect_frames WANT REPORT DESC NAME...: WANT is "none" (0 arrive), "all" (every one sent
# arrives) or "some" (at least one)
expect_frames() {
  local want=$1 report=$2 desc=$3 name n sent; shift 3
  for name in "$@"; do
    if ! sent_ok "$report" "$name"; then
      fail "$desc $name: the sender did not send: $(grep -E "^$name " <<<"$report" || echo "$report" | tail -n3)"
      continue
    fi
    sent=$(sed -nE "s/^$name sent=([0-9]+).*/\1/p" <<<"$report")
    n=$(arrived "$name")
    case $want in
      none) [[ $n -eq 0 ]] && pass "$desc $name: 0 of $sent frames arrived" \
              || fail "$desc $name: $n of $sent frames ARRIVED at the peer" ;;
      all) [[ $n -ge $sent ]] && pass "$desc $name: $n of $sent frames arrived" \
              || fail "$desc $name: only $n of $sent frames arrived" ;;
      some) [[ $n -gt 0 ]] && pass "$desc $name: $n of $sent frames arrived" \
              || fail "$desc $name: 0 of $sent frames arrived" ;;
    esac
  done
}
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$1"; }
ip6_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").GlobalIPv6Address}}" "$1"; }
pid_of() { docker inspect -f '{{.State.Pid}}' "$1"; }
id_of() { docker inspect -f '{{.Id}}' "$1"; }
# status_of NAME FIELD: one field of the container in `policyd --json status` (ABSENT if none)
status_of() {
  { policyd --json status 2>/dev/null || true; } | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
except ValueError:
    print("NOSTATUS")
    sys.exit(0)
for c in s["containers"]:
    if c["name"].lstrip("/") == sys.argv[1]:
        if sys.argv[2] not in c:
            print("NOFIELD")
        else:
            v = c[sys.argv[2]]
            print("null" if v is None else v)
        break
else:
    print("ABSENT")' "$1" "$2"
}
has_policy() { [[ $(status_of "$1" policy) == "$2" ]]; }
has_field() { [[ $(status_of "$1" "$2") == "$3" ]]; }
uncovered_says() { [[ $(status_of "$1" packet_sockets_uncovered) == *"$2"* ]]; }
has_mode() { [[ $(status_of "$1" mode) == "$2" ]]; }
# check_eq DESC WANT CMD...: PASS if CMD prints exactly WANT
check_eq() {
  local desc=$1 want=$2 got; shift 2
  got=$("$@" 2>&1 || true)
  [[ $got == "$want" ]] && pass "$desc" || fail "$desc: wanted '$want', got '$got'"
}
# veth_events CONTAINER FLAG [DPORT]: veth events of CONTAINER with FLAG (link_layer,
# unattributed) set; prints how many and the first one
veth_events() {
  { policyd --json events 2>/dev/null || true; } | python3 -c '
import json, sys
name, flag = sys.argv[1], sys.argv[2]
port = int(sys.argv[3]) if len(sys.argv) > 3 else None
hits = []
for line in sys.stdin:
    try:
        a = json.loads(line)
    except ValueError:
        continue
    e = a["event"]
    if (a.get("container") or "").lstrip("/") == name and e["hook"] == "veth" and e.get(flag) \
            and (port is None or e["dst_port"] == port):
        hits.append(e)
print(len(hits))
if hits:
    e = hits[0]
    print("first: verdict=%s dst=%s:%s proto=%s ethertype=%s comm=%r link_layer=%s unattributed=%s"
          % (e["verdict"], e["dst"], e["dst_port"], e["proto"], e.get("ethertype"), e["comm"],
             e.get("link_layer"), e.get("unattributed")))' "$@"
}
# host_veth CONTAINER: the host-side veth of the container's eth0
host_veth() {
  local idx
  idx=$(nsenter -t "$(pid_of "$1")" -n ip -o link show eth0 | sed -nE 's/^[0-9]+: eth0@if([0-9]+):.*/\1/p')
  ip -o link show | awk -F': ' -v i="$idx" '$1 == i { split($2, a, "@"); print a[1] }'
}
# upstream_saw ADDR...: queries for the test name the upstream got from any of ADDR
upstream_saw() {
  local a n=0
  for a in "$@"; do
    [[ -n $a ]] || continue
    n=$((n + $(grep -c -F "$a $DNS_NAME " "$DNSLOG" || true)))
  done
  echo $n
}

# ---- setup -------------------------------------------------------------------------------------

step "setup (contain not running yet)"
info "docker $(docker version -f '{{.Server.Version}}' 2>/dev/null), kernel $(uname -r)"
install_contain
mkdir -p $T $FF /etc/contain
cp /mnt/share/lib/probe.py /mnt/share/lib/peer_server.py /mnt/share/lib/frames.py /mnt/share/lib/first_frames $T/
getent group contain >/dev/null || groupadd --system contain
cat >/etc/contain/policy.toml <<EOF
mode = "enforce"
unknown_container = "deny"
allow_loopback = true

[[policy]]
name = "blocked"
select = { label = { egress = "block" } }
allow = [
  { to = ["$PEER_IP", "$PEER_IP6"], proto = "tcp", ports = [8080] },
]

[[policy]]
name = "dns"
select = { label = { egress = "dns" } }
allow_docker_dns = true
allow = [
  { to = ["$PEER_IP"], proto = "tcp", ports = [8080] },
]

# Per-process rules only: a frame has no process, so none of them may allow one.
[[policy]]
name = "curler"
select = { label = { egress = "curler" } }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = ["$PEER_IP"], proto = "tcp", ports = [8080] }]

# A joining container's own, looser policy: UDP to the peer, and Docker's DNS.
[[policy]]
name = "joiner"
select = { label = { egress = "joiner" } }
allow_docker_dns = true
allow = [
  { to = ["$PEER_IP", "$PEER_IP6"], proto = "udp", ports = [5353, $DENIED_PORT] },
]
EOF
check "policy is valid" policyd check /etc/contain/policy.toml

# The embedded DNS's upstream: a tiny server on the guest's lo, which containers reach through
# their default route (the bridge). Docker takes the upstreams from the host's resolv.conf
# when it sets up a container, so this comes before any container.
ip addr add $DNS_IP/32 dev lo
defer ip addr del $DNS_IP/32 dev lo
python3 $T/frames.py dns $DNS_IP $DNS_NAME $DNS_ANSWER $DNSLOG >/run/contain-bs-dns.out 2>&1 &
DNS_PID=$!
defer kill $DNS_PID
check "DNS upstream on $DNS_IP" retry 40 0.25 grep -q ready /run/contain-bs-dns.out
cp -P /etc/resolv.conf /run/contain-bs-resolv.conf.orig 2>/dev/null || true
defer bash -c "rm -f /etc/resolv.conf && cp -P /run/contain-bs-resolv.conf.orig /etc/resolv.conf"
rm -f /etc/resolv.conf
echo "nameserver $DNS_IP" >/etc/resolv.conf
check_output "the guest's own resolver finds the test name" "$DNS_ANSWER" \
  python3 $T/frames.py dns-query $DNS_IP $DNS_NAME

docker network rm "$NET" >/dev/null 2>&1 || true
defer docker network rm "$NET"
defer docker rm -f peer blocked dnsok curler ffpre ffctl hostnet joiner victim nsowner
check "network $NET (bridge $BR, IPv4 and IPv6)" docker network create --ipv6 \
  --subnet "$SUBNET" --subnet "$SUBNET6" -o com.docker.network.bridge.name=$BR "$NET"
run() { docker run -d --network "$NET" -v $T:$T:ro "$@"; }
check "peer (TCP/UDP servers on 8080, 9090, 5353)" run --name peer --ip $PEER_IP --ip6 $PEER_IP6 \
  "$IMG" python3 $T/peer_server.py 8080 9090 5353
check "blocked (egress=block)" run --name blocked --label egress=block "$IMG" sleep 3600
check "dnsok (egress=dns: allow_docker_dns = true)" run --name dnsok --label egress=dns "$IMG" sleep 3600
check "curler (egress=curler: only /usr/bin/curl may reach peer:8080)" run --name curler --label egress=curler "$IMG" sleep 3600
PEER_MAC=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").MacAddress}}" peer)
BLOCKED_IP=$(ip_of blocked) BLOCKED_IP6=$(ip6_of blocked)
DNSOK_IP=$(ip_of dnsok) DNSOK_IP6=$(ip6_of dnsok)
info "peer $PEER_IP $PEER_IP6 $PEER_MAC; blocked $BLOCKED_IP $BLOCKED_IP6; dnsok $DNSOK_IP"
[[ -n $BLOCKED_IP6 ]] && pass "the network has IPv6 (blocked has $BLOCKED_IP6)" || fail "blocked has no IPv6 address"
capeff=$(docker exec blocked sed -n 's/^CapEff:[[:space:]]*//p' /proc/1/status)
(( (16#${capeff:-0} >> 13) & 1 )) && pass "blocked runs with CAP_NET_RAW, Docker's default (CapEff $capeff)" \
  || fail "blocked lacks CAP_NET_RAW (CapEff $capeff): the scenario would prove nothing"

# The receiver's eye: a capture in the peer's namespace (a host process there, no docker exec).
: >"$CAP"
nsenter -t "$(pid_of peer)" -n python3 $T/frames.py sniff "$CAP" eth0 >/run/contain-bs-sniff.out 2>&1 &
SNIFF_PID=$!
defer kill $SNIFF_PID
defer cp "$CAP" $OUT/capture.txt
defer cp "$DNSLOG" $OUT/dns-upstream.txt
check "capture in the peer's namespace" retry 40 0.25 grep -q ready /run/contain-bs-sniff.out
check "the peer answers" retry 30 0.5 bash -c "[[ \$(docker exec blocked python3 $T/probe.py tcp $PEER_IP 8080) == ok ]]"

# Every link-layer probe, by name suffix (a phase prefix makes the markers unique):
DENIED_KINDS=(r4=raw-udp4 d4=dgram-udp4 r4q=raw-udp4+bypass d4q=dgram-udp4+bypass
  r6=raw-udp6 d6=dgram-udp6 r6q=raw-udp6+bypass d6q=dgram-udp6+bypass
  bc=raw-udp4+bcast et=raw-ether vl=raw-vlan)
ALLOWED_KINDS=(tcp=raw-tcp4@8080 iptcp=ipraw-tcp4@8080)
# A TCP SYN to peer:8080, which egress=block's rules allow, from a forged source: as a frame and
# from an IP_HDRINCL raw socket (which the cgroup programs judge, by its destination).
# And the same SYN from the container's own address and a neighbour's MAC (frames.py's
# NEIGHBOUR_MAC), which the bridge would learn on the container's port.
FORGED_KINDS=(sptcp=raw-tcp4+spoof@8080 spiptcp=ipraw-tcp4+spoof@8080 mactcp=raw-tcp4+othermac@8080)
specs() { local p=$1 k; shift; for k in "$@"; do echo "$p$k"; done; }
names() { local p=$1 k; shift; for k in "$@"; do echo "$p${k%%=*}"; done; }
# The first-frame sender: the container's entrypoint, frames from its first millisecond, for 1 s
# (lib/first_frames.c: frames.py's probes NAMEa=raw-udp4 NAMEb=dgram-udp4+bypass NAMEc=raw-udp6
# and its report, from a static binary; python3 would start seconds later, after policyd has
# mapped the container).
ff_cmd() { # NAME [SECONDS]
  echo $T/first_frames "$1" "${2:-1}" "$PEER_MAC" $PEER_IP $PEER_IP6 $DENIED_PORT /out/$1
}
ff_arrived() { echo $(( $(arrived "${1}a") + $(arrived "${1}b") + $(arrived "${1}c") )); }
ff_sent() { awk -F'[ =]' '/ sent=/ { s += $3 } END { print s + 0 }' "$FF/$1" 2>/dev/null || echo 0; }

# ---- 1. self-check -----------------------------------------------------------------------------

step "1. self-check: without contain, every link-layer probe reaches the peer"
check "no contain programs anywhere yet" bash -c "! test -e /sys/fs/bpf/contain"
report=$(send_in blocked --count 20 $(specs pre "${DENIED_KINDS[@]}" "${ALLOWED_KINDS[@]}" "${FORGED_KINDS[@]}"))
barrier
expect_frames all "$report" "no contain:" $(names pre "${DENIED_KINDS[@]}" "${ALLOWED_KINDS[@]}" "${FORGED_KINDS[@]}")
check "ffpre: a fresh egress=block container sending frames as its first act" \
  docker run -d --network "$NET" -v $T:$T:ro -v $FF:/out --label egress=block --name ffpre "$IMG" $(ff_cmd ffpre)
retry 60 0.5 test -s $FF/ffpre || true
barrier
n=$(ff_arrived ffpre)
[[ $n -gt 0 ]] && pass "no contain: ffpre's first-frame sender leaks ($n of $(ff_sent ffpre) frames arrived; $(tail -n1 $FF/ffpre 2>/dev/null))" \
  || fail "no contain: ffpre's first-frame sender leaked nothing ($(ff_sent ffpre) sent): the probe cannot see leaks"

# ---- contain -----------------------------------------------------------------------------------

step "contain under systemd"
start_contain
defer bash -c "journalctl -u contain-bpf-loader -u contain-resolver -u contain-policyd --no-pager \
  -o short-monotonic > $OUT/daemons.log"
check "policyd maps blocked to its policy" retry 80 0.25 has_policy blocked blocked
check "policyd maps dnsok to its policy" retry 80 0.25 has_policy dnsok dns
check "policyd maps curler to its policy" retry 80 0.25 has_policy curler curler
BLOCKED_VETH=$(host_veth blocked)
info "blocked's host-side veth: $BLOCKED_VETH"
check_output "contain_veth on tc ingress of blocked's veth (attached at loader start)" contain_veth \
  tc filter show dev "$BLOCKED_VETH" ingress
check_output "the loader reports the attachment" "backstop attached to veth" \
  journalctl -u contain-bpf-loader -o cat --no-pager
# veth is a module here, loaded by Docker before the loader started: the MAC checks below read
# the container's MAC through the offset the module's own (split) BTF gives.
check_output "the loader read veth_priv.peer from the veth module's BTF" "veth_priv.peer read from BTF" \
  journalctl -u contain-bpf-loader -o cat --no-pager
check_eq "blocked's packet sockets are covered (status names no gap for it)" null \
  status_of blocked packet_sockets_uncovered

# ---- 2. enforcement ----------------------------------------------------------------------------

step "2. egress=block: link-layer frames to a denied port do not arrive"
report=$(send_in blocked --count 20 $(specs enf "${DENIED_KINDS[@]}" "${ALLOWED_KINDS[@]}" "${FORGED_KINDS[@]}"))
barrier
expect_frames none "$report" "blocked, AF_PACKET:" $(names enf "${DENIED_KINDS[@]}")
expect_frames all "$report" "blocked, TCP SYN to peer:8080 from its own address (a container-wide rule allows it):" \
  $(names enf "${ALLOWED_KINDS[@]}")
expect_frames none "$report" "blocked, the same SYN from a forged source:" $(names enf "${FORGED_KINDS[@]}")
check_output "blocked: TCP to peer:8080 through a socket" ok docker exec blocked python3 $T/probe.py tcp $PEER_IP 8080
check_output "blocked: IPv6 TCP to peer:8080 through a socket" ok docker exec blocked python3 $T/probe.py tcp6 $PEER_IP6 8080
check_output "blocked: UDP to peer:$DENIED_PORT through a socket is refused" denied:EPERM \
  bash -c "docker exec blocked python3 $T/probe.py udp-sendto $PEER_IP $DENIED_PORT; true"
check "blocked: a server there (TCP and UDP 7070)" bash -c \
  "docker exec -d blocked python3 $T/peer_server.py 7070 && sleep 2"
check_output "the peer reaches blocked's TCP server" ok docker exec peer python3 $T/probe.py tcp $BLOCKED_IP 7070
check_output "the peer gets answers from blocked's UDP server" ok \
  docker exec peer python3 $T/probe.py udp-sendto $BLOCKED_IP 7070
check_output "the peer reaches blocked's TCP server over IPv6" ok docker exec peer python3 $T/probe.py tcp6 $BLOCKED_IP6 7070
check "curler: curl to peer:8080 (its process rule)" docker exec curler curl -sS --max-time 10 http://$PEER_IP:8080/
report=$(send_in curler --count 20 curtcp=raw-tcp4@8080)
barrier
expect_frames none "$report" "curler, AF_PACKET TCP SYN to peer:8080 (only a per-process rule allows it):" curtcp
out=$(veth_events blocked link_layer)
[[ ${out%%$'\n'*} -gt 0 ]] && pass "policyd events: ${out%%$'\n'*} veth events with link_layer for blocked (${out#*$'\n'})" \
  || fail "policyd events: no veth event with link_layer for blocked"
check "policyd's event log has them too" bash -c \
  "journalctl -u contain-policyd -o cat | grep '\"contain.hook\":\"veth\"' | grep -q '\"contain.reason\":\"packet_socket\"'"
check "policyd's event log names the forged sources" bash -c \
  "journalctl -u contain-policyd -o cat | grep '\"contain.hook\":\"veth\"' | grep -q '\"contain.reason\":\"forged_source\"'"

# Kernel 6.1: the backstop is a clsact filter here, not a tcx link, and another tool can delete it
# (`tc filter del`, `tc qdisc del ... clsact`). The loader, which checks every 2 s, attaches it again
# without a restart: tc lists it, status is clear, and blocked's frames stop again.
bveth_index=$(docker exec blocked cat /sys/class/net/eth0/iflink)
bveth=$(ip -o link show | awk -F': ' -v i="$bveth_index" '$1 == i { sub(/@.*/, "", $2); print $2 }')
if [[ -n $bveth ]] && tc filter del dev "$bveth" ingress; then
  info "tc filter del dev $bveth ingress; now: $(tc filter show dev "$bveth" ingress | head -c 200)"
  check "the loader notices blocked's veth $bveth (ifindex $bveth_index) lost its ingress filter" \
    retry 40 0.25 bash -c "journalctl -u contain-bpf-loader -o cat | grep 'the backstop is gone from this veth' | grep -qE '\"ifindex\":$bveth_index[,}]'"
  check "tc lists the backstop's filter on $bveth again, without a restart" \
    retry 40 0.25 bash -c "tc filter show dev $bveth ingress | grep -q contain_veth"
  check "status: blocked's packet sockets are covered again" \
    retry 40 0.25 has_field blocked packet_sockets_uncovered null
  report=$(send_in blocked --count 20 $(specs rep "${DENIED_KINDS[@]}" "${ALLOWED_KINDS[@]}"))
  barrier
  expect_frames none "$report" "blocked, AF_PACKET, after the loader attached the filter again:" \
    $(names rep "${DENIED_KINDS[@]}")
  expect_frames all "$report" "blocked, TCP SYN to peer:8080, after the loader attached the filter again:" \
    $(names rep "${ALLOWED_KINDS[@]}")
  check "tc qdisc del dev $bveth clsact" tc qdisc del dev "$bveth" clsact
  check "tc lists the backstop's filters on $bveth again after its clsact qdisc was deleted" \
    retry 40 0.25 bash -c "tc filter show dev $bveth ingress | grep -q contain_veth && tc filter show dev $bveth egress | grep -q contain_veth_in"
  check "status: blocked's packet sockets are covered" \
    retry 40 0.25 has_field blocked packet_sockets_uncovered null
  report=$(send_in blocked --count 20 $(specs req "${DENIED_KINDS[@]}" "${ALLOWED_KINDS[@]}"))
  barrier
  expect_frames none "$report" "blocked, AF_PACKET, after the loader attached the qdisc's filters again:" \
    $(names req "${DENIED_KINDS[@]}")
  expect_frames all "$report" "blocked, TCP SYN to peer:8080, after the loader attached the qdisc's filters again:" \
    $(names req "${ALLOWED_KINDS[@]}")
  # Another tool's filter before the backstop's (a classic BPF filter at its priority, added later,
  # so walked first; this one matches nothing, so frames still reach the backstop): reported by
  # status, logged once, left where it is.
  check "another filter before the backstop on $bveth" tc filter add dev "$bveth" ingress pref 1 \
    handle 0x2 protocol all bpf bytecode '1,6 0 0 0,'
  check "status: blocked's veth with a filter before the backstop is named" \
    retry 40 0.25 uncovered_says blocked "does not run the backstop first on its veth (ifindex $bveth_index)"
  info "status said: $(status_of blocked packet_sockets_uncovered)"
  sleep 5 # two more of the loader's checks
  check_eq "the loader logged the filter before it once" 1 bash -c \
    "journalctl -u contain-bpf-loader -o cat | grep 'the backstop is not what runs first on this veth' | grep -cE '\"ifindex\":$bveth_index[,}]'"
  check "the loader left it there" bash -c "tc filter show dev $bveth ingress | grep -q 'handle 0x2 '"
  report=$(send_in blocked --count 20 $(specs fil "${DENIED_KINDS[@]}"))
  barrier
  expect_frames none "$report" "blocked, AF_PACKET, past a filter that matches nothing:" \
    $(names fil "${DENIED_KINDS[@]}")
  check "remove the other filter" tc filter del dev "$bveth" ingress pref 1 handle 0x2 protocol all bpf
  check "status: blocked's packet sockets are covered once it is gone" \
    retry 40 0.25 has_field blocked packet_sockets_uncovered null
else
  fail "cannot remove blocked's veth filter (veth '${bveth}', ifindex ${bveth_index:-?})"
fi

# ---- 3. first frame ----------------------------------------------------------------------------

step "3. first frame: $FIRST_STARTS fresh egress=block containers send frames as their first act"
t0=$(date +%s)
# CPU time of contain's daemons across the starts (each start costs them a link and a runtime
# event): under TCG, what they take is taken from dockerd and the containers.
daemons_cpu() {
  for u in contain-bpf-loader contain-resolver contain-policyd; do
    printf '%s=%s ' "$u" "$(systemctl show -P CPUUsageNSec $u)"
  done
}
cpu0=$(daemons_cpu)
# All at once, as a host starts a stack: a burst of link and runtime events that the resolver
# and policyd take in batches, the harder case for mapping each container before its first frame.
starts=()
for i in $(seq -w 1 $FIRST_STARTS); do
  (
    ts=$(date +%s.%N)
    docker run -d --rm --network "$NET" -v $T:$T:ro -v $FF:/out --label egress=block \
      --name ff$i "$IMG" $(ff_cmd ff$i) >/dev/null 2>$FF/.ff$i.err && touch $FF/.ff$i.started
    echo "ff$i docker run took $(awk -v a="$ts" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >>$FF/.ff$i.err
  ) &
  starts+=($!)
done
wait "${starts[@]}" # these only: the capture and the DNS server run on in the background
started=0
for i in $(seq -w 1 $FIRST_STARTS); do
  if [[ -e $FF/.ff$i.started ]]; then started=$((started + 1)); else fail "docker run ff$i: $(tr '\n' ' ' <$FF/.ff$i.err)"; fi
done
info "$(cat $FF/.ff*.err | tr '\n' ';')"
retry 60 0.5 bash -c "[[ \$(ls $FF | grep -c '^ff[0-9]*\$') -ge $started ]]" || true
barrier
total_sent=0 total_arrived=0 reports=0 firsts="" after_exec=""
for i in $(seq -w 1 $FIRST_STARTS); do
  [[ -s $FF/ff$i ]] && reports=$((reports + 1))
  total_sent=$((total_sent + $(ff_sent ff$i)))
  n=$(ff_arrived ff$i)
  total_arrived=$((total_arrived + n))
  [[ $n -eq 0 ]] || info "ff$i: $n frames ARRIVED: $(tr '\n' ' ' <$FF/ff$i)"
  firsts+="$(sed -nE 's/^first_send_ms=([0-9a-z]+) since_start_ms=([-0-9a-z]+)/\2/p' $FF/ff$i 2>/dev/null) "
  after_exec+="$(sed -nE 's/^first_send_ms=([0-9a-z]+) .*/\1/p' $FF/ff$i 2>/dev/null) "
done
# runc creates the process (and the cgroup: containerd's create event) seconds before Docker
# has it exec the entrypoint: the gap between these two is Docker's, not the sender's.
info "each sender's first frame, in ms since runc created its process: $firsts"
info "... and in ms since its main() began: $after_exec"
info "daemons' CPU over the $FIRST_STARTS starts, in ms: $(echo "$cpu0 $(daemons_cpu)" | tr ' ' '\n' |
  awk -F= 'NF == 2 { if ($1 in a) printf "%s %d ", substr($1, 9), ($2 - a[$1]) / 1e6; else a[$1] = $2 }')"
cp -r $FF $OUT/first-frame-reports 2>/dev/null || true
[[ $started -eq $FIRST_STARTS ]] && pass "$started of $FIRST_STARTS containers started in $(( $(date +%s) - t0 )) s" \
  || fail "only $started of $FIRST_STARTS containers started"
[[ $reports -eq $started && $total_sent -gt 0 ]] && pass "every sender reported: $total_sent frames sent in all" \
  || fail "$reports of $started senders reported ($total_sent frames sent)"
[[ $total_arrived -eq 0 ]] && pass "first frame: 0 of $total_sent frames from $started fresh containers arrived" \
  || fail "first frame: $total_arrived of $total_sent frames from fresh egress=block containers ARRIVED"
# Which starts met the backstop before policyd had mapped the container (frames judged under
# the unknown-container verdict) and which after: policyd's veth events since the first start,
# per cgroup (names from the resolver's log, where it saw the container).
journalctl -u contain-resolver -o cat --no-pager >$OUT/ff-resolver.log 2>&1 || true
journalctl -u contain-policyd -o cat --no-pager --since "@$t0" >$OUT/ff-policyd.log 2>&1 || true
info "$(python3 - "$OUT/ff-resolver.log" "$OUT/ff-policyd.log" <<'PY'
import json, re, sys
names = {}
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the resolver's log is in colour
    m = re.search(r"container added .*name=(ff[0-9]+) .*cgroup_id=([0-9]+)", line)
    if m:
        names[int(m.group(2))] = m.group(1)
per = {}
for line in open(sys.argv[2], errors="replace"):
    if '"contain.hook":"veth"' not in line:
        continue
    try:
        e = json.loads(line[line.index("{"):])
    except ValueError:
        continue
    c = per.setdefault(e.get("contain.cgroup_id"), [0, 0])
    c[0 if "contain.policy" not in e else 1] += 1  # no policy: the unknown-container verdict
unknown_only = [c for c, (u, m) in per.items() if u and not m]
both = [c for c, (u, m) in per.items() if u and m]
mapped_only = [c for c, (u, m) in per.items() if m and not u]
label = lambda cs: " ".join(names.get(c, f"cgroup {c}") for c in sorted(cs)) or "-"
print(f"veth deny events since the first start: {len(per)} cgroups; frames judged only as "
      f"unknown (unmapped for all of their sending): {len(unknown_only)} [{label(unknown_only)}]; "
      f"unknown then mapped: {len(both)} [{label(both)}]; mapped before the first frame: "
      f"{len(mapped_only)} [{label(mapped_only)}]; the resolver logged {len(names)} of them as added")
PY
)"
# ffpre above was the control with the very same command (the capture sees such leaks). Here:
# contain leaves a container no policy selects alone. It sends for 10 s, not 1: until policyd
# has mapped a new container (seconds under TCG) the unknown-container verdict (deny) applies.
if ffctl_id=$(docker run -d --network "$NET" -v $T:$T:ro -v $FF:/out --name ffctl "$IMG" $(ff_cmd ffctl 10)); then
  pass "control: ffctl, the same entrypoint (sending for 10 s) in a container no policy selects"
else
  fail "control: docker run ffctl"
fi
retry 60 0.5 test -s $FF/ffctl || true
barrier
n=$(ff_arrived ffctl)
# How the resolver reported ffctl: "name=<its id>" means without Docker's name and labels
# (metadata incomplete), which policyd keeps unmapped: the unknown-container verdict (deny).
seen=$(journalctl -u contain-resolver -o cat --no-pager | sed 's/\x1b\[[0-9;]*m//g' \
  | grep -F "moby/${ffctl_id:-none}" | grep -o 'container [a-z]* .*' | sed -E 's/ (generation|container|runtime|pid|cgroup|netns|veths|host_network)=[^ ]*//g' | tr '\n' ';' || true)
info "the resolver on ffctl: ${seen:-nothing}"
[[ $n -gt 0 ]] && pass "control: ffctl's frames arrive ($n of $(ff_sent ffctl); $(tail -n1 $FF/ffctl 2>/dev/null))" \
  || fail "control: none of ffctl's $(ff_sent ffctl) frames arrived (resolver: ${seen:-nothing})"
info "backstop attachments so far: $(journalctl -u contain-bpf-loader -o cat | grep -c 'backstop attached to veth')"

# ---- 4. Docker's embedded DNS ------------------------------------------------------------------

step "4. Docker's embedded DNS: forwarded queries leave only with allow_docker_dns = true"
check_output "dnsok (allow_docker_dns = true): nslookup $DNS_NAME" "$DNS_ANSWER" \
  bash -c "docker exec dnsok timeout 20 nslookup $DNS_NAME 2>&1; true"
n=$(upstream_saw "$DNSOK_IP" "$DNSOK_IP6")
[[ $n -gt 0 ]] && pass "the upstream saw $n forwarded queries from dnsok's namespace" \
  || fail "the upstream saw no query from dnsok's namespace ($DNSOK_IP)"
check_fails "blocked (allow_docker_dns = false): nslookup $DNS_NAME fails" \
  bash -c "docker exec blocked timeout 20 nslookup $DNS_NAME | grep -F $DNS_ANSWER"
# The veth's own judgement of a host process's DNS socket in a container's namespace (what
# dockerd's forwarder is), without the cgroup hooks in front: nsenter from the guest.
check_output "a host process in dnsok's namespace: DNS to the upstream passes" "$DNS_ANSWER" \
  nsenter -t "$(pid_of dnsok)" -n python3 $T/frames.py dns-query $DNS_IP $DNS_NAME
check_output "a host process in blocked's namespace: DNS to the upstream is dropped" timeout \
  nsenter -t "$(pid_of blocked)" -n python3 $T/frames.py dns-query $DNS_IP $DNS_NAME
n=$(upstream_saw "$BLOCKED_IP" "$BLOCKED_IP6")
[[ $n -eq 0 ]] && pass "the upstream saw no query from blocked's namespace" \
  || fail "the upstream saw $n queries from blocked's namespace ($BLOCKED_IP)"
out=$(veth_events blocked unattributed 53)
[[ ${out%%$'\n'*} -gt 0 ]] && pass "policyd events: the dropped DNS query is reported, unattributed (${out#*$'\n'})" \
  || fail "policyd events: no unattributed veth event to port 53 for blocked"

# ---- 5. shared and host namespaces -------------------------------------------------------------

step "5. --network host and --network container: in policyd status"
check "hostnet (egress=block, --network host)" \
  docker run -d --network host -v $T:$T:ro --label egress=block --name hostnet "$IMG" sleep 3600
check "policyd maps hostnet" retry 80 0.25 has_policy hostnet blocked
check_output "status (JSON): hostnet's packet sockets are not covered, with the reason" \
  "uses the host network" status_of hostnet packet_sockets_uncovered
check_output "status (table): says so" "not covered against packet sockets: uses the host network" \
  bash -c "policyd status | grep hostnet"
# What that gap means (documented, not a failure): frames straight onto the bridge.
report=$(docker exec hostnet python3 $T/frames.py send --iface $BR --dst-mac "$PEER_MAC" \
  --dst4 $PEER_IP --count 20 hostr4=raw-udp4 2>&1 || true)
barrier
info "documented gap: hostnet's AF_PACKET frames on $BR: $(arrived hostr4) of 20 arrived ($report)"

# A container joining blocked's namespace with a policy of its own (UDP 9999 and 5353 to the
# peer, Docker's DNS). policyd gives the shared veth to the lowest container id (Docker's
# --network container: leaves no trace in the inventory), so which one owns it is chance: the
# expectations below follow from the owner where they depend on it.
check "joiner (egress=joiner, --network container:blocked)" docker run -d --name joiner \
  --network container:blocked -v $T:$T:ro --label egress=joiner "$IMG" sleep 3600
check "policyd maps joiner" retry 80 0.25 has_policy joiner joiner
if [[ $(id_of blocked) < $(id_of joiner) ]]; then owner=blocked other=joiner; else owner=joiner other=blocked; fi
info "the shared veth's owner (lowest id): $owner (blocked $(id_of blocked | cut -c1-12), joiner $(id_of joiner | cut -c1-12))"
check_eq "status: $owner, which owns the veth, is covered" null status_of $owner packet_sockets_uncovered
check_output "joiner: UDP to peer:5353 through a socket (its own policy)" ok \
  bash -c "docker exec joiner python3 $T/probe.py udp-sendto $PEER_IP 5353; true"
# The self-check's frames from the neighbour's MAC taught the bridge that MAC: forget it.
bridge fdb show br $BR | awk '$1 == "02:00:5e:00:be:ef" { print $3 }' | while read -r port; do
  bridge fdb del 02:00:5e:00:be:ef dev "$port" master || true
done
report=$(send_in joiner --count 20 joinr4=raw-udp4 joind4=dgram-udp4 joinx4=raw-udp4@7777 \
  joinm4=raw-udp4+othermac)
report+=$'\n'$(send_in blocked --count 20 blkj4=raw-udp4)
barrier
# contain_veth judges a packet socket's frames under the policy of the cgroup that made the
# socket (veth.rs), whoever owns the veth: joiner's rules apply to joiner's frames only.
expect_frames all "$report" "joiner's AF_PACKET frames to UDP $DENIED_PORT, which its own policy allows (owner $owner):" joinr4 joind4
expect_frames none "$report" "joiner's AF_PACKET frames to UDP 7777, which its own policy denies (owner $owner):" joinx4
# The MAC Docker set on the interface (joinr4 arrived from it) is the only one a packet
# socket's frame may carry: from a neighbour's, the bridge would hand the container its traffic.
expect_frames none "$report" "joiner's AF_PACKET frames the same, from a neighbour's MAC:" joinm4
check "the bridge $BR did not learn the neighbour's MAC" \
  bash -c "! bridge fdb show br $BR | grep -q '^02:00:5e:00:be:ef '"
expect_frames none "$report" "blocked's AF_PACKET frames with joiner beside it (owner $owner):" blkj4
# What status says must match that.
claim=$(status_of $other packet_sockets_uncovered)
info "status for $other's packet sockets: $claim"
[[ $claim != *"judged under \"$owner\"'s"* ]] \
  && pass "status (JSON): no claim that $other's frames are judged under $owner's policy" \
  || fail "status claims $other's packet-socket frames are judged under $owner's policy, but the kernel judges each container's frames under its own (joinr4 $(arrived joinr4)/20 and joind4 $(arrived joind4)/20 to a port only joiner's policy allows arrived, joinx4 $(arrived joinx4)/20, blkj4 $(arrived blkj4)/20): '$claim'"
# dockerd answers joiner's query (its policy allows Docker's DNS) and forwards it from the
# shared namespace; the veth judges that under the owner's policy (allow_docker_dns: blocked
# false, joiner true).
before=$(upstream_saw "$BLOCKED_IP" "$BLOCKED_IP6")
if [[ $owner == blocked ]]; then
  check_fails "joiner: nslookup through Docker's DNS, forwarded under blocked's policy, fails" \
    bash -c "docker exec joiner timeout 20 nslookup $DNS_NAME | grep -F $DNS_ANSWER"
  n=$(upstream_saw "$BLOCKED_IP" "$BLOCKED_IP6")
  [[ $n -eq $before ]] && pass "the upstream saw no query dockerd forwarded from the shared namespace" \
    || fail "the upstream saw $((n - before)) queries dockerd forwarded from the shared namespace"
  out=$(veth_events blocked unattributed 53)
  info "unattributed veth events to port 53 for blocked: ${out//$'\n'/; }"
else
  check_output "joiner: nslookup through Docker's DNS, forwarded under joiner's policy, works" "$DNS_ANSWER" \
    bash -c "docker exec joiner timeout 20 nslookup $DNS_NAME 2>&1; true"
  n=$(upstream_saw "$BLOCKED_IP" "$BLOCKED_IP6")
  [[ $n -gt $before ]] && pass "the upstream saw $((n - before)) queries dockerd forwarded from the shared namespace" \
    || fail "the upstream saw no query dockerd forwarded from the shared namespace"
fi

step "5b. a filtered container joins one no policy selects"
# victim (egress=block) joins nsowner (no policy). Which one owns the shared veth depends on
# the ids (the lowest wins); either way victim's frames are victim's to answer for.
if check "nsowner (no policy)" run --name nsowner "$IMG" sleep 3600 \
  && docker run -d --name victim --network container:nsowner -v $T:$T:ro --label egress=block "$IMG" sleep 3600 >/dev/null; then
  pass "victim (egress=block, --network container:nsowner)"
  check "policyd maps victim" retry 80 0.25 has_policy victim blocked
  if [[ $(id_of nsowner) < $(id_of victim) ]]; then owner=nsowner; else owner=victim; fi
  info "the shared veth's owner (lowest id): $owner (nsowner $(id_of nsowner | cut -c1-12), victim $(id_of victim | cut -c1-12))"
  report=$(send_in victim --count 20 vict4=raw-udp4 vicd6=dgram-udp6)
  report+=$'\n'$(send_in nsowner --count 20 nso4=raw-udp4)
  barrier
  expect_frames none "$report" "victim's AF_PACKET frames (its own policy denies them; owner $owner):" vict4 vicd6
  expect_frames all "$report" "nsowner's AF_PACKET frames (no policy selects it; owner $owner):" nso4
  claim=$(status_of victim packet_sockets_uncovered)
  info "status for victim's packet sockets: $claim"
  [[ $claim != *"they pass"* ]] \
    && pass "status (JSON): no claim that victim's frames pass (owner $owner)" \
    || fail "status claims victim's packet-socket frames pass (judged under the unselected nsowner), but the kernel drops them (vict4 $(arrived vict4)/20, vicd6 $(arrived vicd6)/20 arrived): '$claim'"
  # What the owner does decide: packets of no container socket in the namespace (a host
  # process's DNS query here, as dockerd's forwarder sends) are judged under the owner's policy.
  info "a host process's DNS query from the shared namespace (owner $owner): $(nsenter -t "$(pid_of victim)" -n python3 $T/frames.py dns-query $DNS_IP $DNS_NAME 2>&1)"
else
  fail "could not start nsowner and victim"
fi

finish
