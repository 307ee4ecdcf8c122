#!/bin/bash
# Docker's embedded DNS when the host's resolver is on its loopback (127.0.0.1 here, as a local
# dnsmasq or unbound would be): dockerd marks that upstream `HostLoopback` and forwards the
# container's queries to it from the host's namespace, where contain sees nothing. Judged by
# the upstream's log of every query it gets.
#
#  1. without contain: a container's query reaches the upstream from 127.0.0.1 (the forwarding
#     really is from the host's namespace), and so does one a packet socket forges on the
#     container's lo straight to the embedded resolver's port, once route_localnet is on in
#     the container's namespace; with the namespace's default (off) the kernel drops that
#     frame as a martian destination and nothing arrives;
#  2. contain enforcing: the container's own query is judged at its socket (allow_docker_dns =
#     false: nothing arrives; true: it arrives); the forged frame, with route_localnet off,
#     still arrives nowhere; with it on, it reaches the upstream whatever the policy says,
#     which the README names out of reach (reported here, not checked);
#  3. the host turns net.ipv4.conf.all.route_localnet on: a container made then copies it, and
#     policyd status names the forged query as a packet-socket gap for the Docker containers
#     whose policy does not allow Docker's DNS (and not for one whose policy does).
. /mnt/share/lib/vmtest.sh

NET=contain-hl
SUBNET=198.18.251.0/24
UPSTREAM=127.0.0.1
DNS_NAME=hostloop-test.example
DNS_ANSWER=198.18.251.99
T=/opt/contain-test
DNSLOG=/run/contain-hl-dns.txt   # the upstream's log: "SRC QNAME QTYPE" per query
IMG=$CONTAIN_TEST_IMAGE
OUT=/mnt/share/out

pid_of() { docker inspect -f '{{.State.Pid}}' "$1"; }
status_of() {
  { policyd --json status 2>/dev/null || true; } | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for c in s["containers"]:
    if c["name"].lstrip("/") == sys.argv[1]:
        print(c.get(sys.argv[2]))' "$1" "$2"
}
has_policy() { [[ $(status_of "$1" policy) == "$2" ]]; }
# seen NAME: queries for NAME the upstream got, and from where
seen() { grep -F " $1 " "$DNSLOG" | awk '{ print $1 }' | sort -u | xargs; }
# query CONTAINER NAME: the container's own query to Docker's DNS, over a UDP socket
query() { docker exec "$1" python3 $T/frames.py dns-query 127.0.0.11 "$2" 2>&1 || true; }
# forge CONTAINER NAME: the query as a frame a packet socket writes on the container's lo
forge() { docker exec "$1" python3 $T/frames.py dns-forge "$2" --src 10.9.9.9 --count 3 2>&1 || true; }
# route_localnet CONTAINER 0|1: the setting in the container's namespace (a new namespace
# copies the host's net.ipv4.conf.all and .default, so a host with it on gives it to every
# container); set from the host, as the container cannot (its /proc/sys is read-only)
route_localnet() {
  nsenter -t "$(pid_of "$1")" -n sysctl -qw net.ipv4.conf.all.route_localnet="$2" \
    net.ipv4.conf.lo.route_localnet="$2"
}
# arrives NAME: wait for the upstream to log NAME (dockerd forwards within milliseconds; a
# generous wait, as TCG is slow); fails if it never does
arrives() { retry 40 0.25 grep -q -F " $1 " "$DNSLOG"; }
# stays_away NAME: 5 s with no query for NAME at the upstream
stays_away() { sleep 5; ! grep -q -F " $1 " "$DNSLOG"; }

step "setup (contain not running yet)"
info "docker $(docker version -f '{{.Server.Version}}' 2>/dev/null), kernel $(uname -r)"
install_contain
mkdir -p $T /etc/contain
cp /mnt/share/lib/frames.py $T/
getent group contain >/dev/null || groupadd --system contain
cat >/etc/contain/policy.toml <<EOF
mode = "enforce"
unknown_container = "deny"
allow_loopback = true

[[policy]]
name = "blocked"
select = { label = { egress = "block" } }

[[policy]]
name = "dns"
select = { label = { egress = "dns" } }
allow_docker_dns = true
EOF
check "policy is valid" policyd check /etc/contain/policy.toml

# The upstream on the host's loopback address, named by the host's resolv.conf before any
# container starts (dockerd reads it when it sets one up).
: >"$DNSLOG"
python3 $T/frames.py dns $UPSTREAM $DNS_NAME $DNS_ANSWER $DNSLOG >/run/contain-hl-dns.out 2>&1 &
defer kill $!
check "DNS upstream on $UPSTREAM:53" retry 40 0.25 grep -q ready /run/contain-hl-dns.out
defer cp "$DNSLOG" $OUT/dns-upstream.txt
cp -P /etc/resolv.conf /run/contain-hl-resolv.conf.orig 2>/dev/null || true
defer bash -c "rm -f /etc/resolv.conf && cp -P /run/contain-hl-resolv.conf.orig /etc/resolv.conf"
rm -f /etc/resolv.conf
echo "nameserver $UPSTREAM" >/etc/resolv.conf

docker network rm "$NET" >/dev/null 2>&1 || true
defer docker network rm "$NET"
defer docker rm -f blocked dnsok
check "network $NET (user-defined: Docker's embedded DNS)" docker network create --subnet "$SUBNET" "$NET"
run() { docker run -d --network "$NET" -v $T:$T:ro "$@"; }
check "blocked (egress=block: allow_docker_dns = false)" run --name blocked --label egress=block "$IMG" sleep 3600
check "dnsok (egress=dns: allow_docker_dns = true)" run --name dnsok --label egress=dns "$IMG" sleep 3600
capeff=$(docker exec blocked sed -n 's/^CapEff:[[:space:]]*//p' /proc/1/status)
(( (16#${capeff:-0} >> 13) & 1 )) && pass "blocked runs with CAP_NET_RAW, Docker's default (CapEff $capeff)" \
  || fail "blocked lacks CAP_NET_RAW (CapEff $capeff): the scenario would prove nothing"
check_output "blocked's namespace has route_localnet off (the default)" 0 \
  nsenter -t "$(pid_of blocked)" -n sysctl -n net.ipv4.conf.lo.route_localnet

# ---- 1. self-check -----------------------------------------------------------------------------

step "1. without contain: what reaches the upstream"
check_output "blocked's own query is answered" "$DNS_ANSWER" query blocked $DNS_NAME
query blocked pre-sock.test >/dev/null
check "blocked's own query reaches the upstream" arrives pre-sock.test
check_output "... from the host's namespace ($UPSTREAM), where contain sees nothing" "$UPSTREAM" \
  seen pre-sock.test
check_output "the forged frame finds the embedded resolver's port" "forged to 127.0.0.11:" \
  forge blocked pre-forged.test
check "route_localnet off: the kernel drops the forged frame (nothing reaches the upstream)" \
  stays_away pre-forged.test
route_localnet blocked 1
check_output "route_localnet on: the forged frame is sent" "sent=3" forge blocked pre-forged-rl.test
check "route_localnet on: the forged query reaches the upstream (the probe can leak)" \
  arrives pre-forged-rl.test
route_localnet blocked 0

# ---- contain -----------------------------------------------------------------------------------

step "contain under systemd"
start_contain
defer bash -c "journalctl -u contain-bpf-loader -u contain-resolver -u contain-policyd --no-pager \
  -o short-monotonic > $OUT/daemons.log"
check "policyd maps blocked to its policy" retry 80 0.25 has_policy blocked blocked
check "policyd maps dnsok to its policy" retry 80 0.25 has_policy dnsok dns

# ---- 2. enforcement ----------------------------------------------------------------------------

step "2. contain enforcing: the container's own query is judged at its socket"
check_output "dnsok (allow_docker_dns = true): its query is answered" "$DNS_ANSWER" query dnsok $DNS_NAME
query dnsok sock-dnsok.test >/dev/null
check "dnsok's query reaches the upstream" arrives sock-dnsok.test
check_output "blocked (allow_docker_dns = false): its query is refused at the socket" "error:EPERM" \
  query blocked sock-blocked.test
check "blocked's query reaches no upstream" stays_away sock-blocked.test
forge blocked forged.test >/dev/null
check "route_localnet off: the forged frame reaches no upstream" stays_away forged.test
check_output "status names no packet-socket gap for blocked (route_localnet off on the host)" None \
  status_of blocked packet_sockets_uncovered
route_localnet blocked 1
forge blocked forged-rl.test >/dev/null
sleep 5
n=$(grep -c -F " forged-rl.test " "$DNSLOG" || true)
info "out of reach (README): with route_localnet on in its namespace, blocked's forged query reached the upstream $n times"
route_localnet blocked 0

# ---- 3. a host with route_localnet on ----------------------------------------------------------

step "3. the host turns route_localnet on (as kube-proxy does): status must say what that opens"
defer sysctl -qw net.ipv4.conf.all.route_localnet=0
sysctl -qw net.ipv4.conf.all.route_localnet=1
check "late (egress=block), made after the change" run --name late --label egress=block "$IMG" sleep 3600
defer docker rm -f late
check_output "late's namespace copied route_localnet from the host" 1 \
  nsenter -t "$(pid_of late)" -n sysctl -n net.ipv4.conf.all.route_localnet
check "policyd maps late to its policy" retry 80 0.25 has_policy late blocked
check_output "status names the forged query for late" "route_localnet is 1 on this host" \
  status_of late packet_sockets_uncovered
check_output "... and for blocked (said of the host as it is now)" "route_localnet is 1 on this host" \
  status_of blocked packet_sockets_uncovered
check_output "... but not for dnsok, whose policy allows Docker's DNS" None \
  status_of dnsok packet_sockets_uncovered
forge late forged-late.test >/dev/null
sleep 5
n=$(grep -c -F " forged-late.test " "$DNSLOG" || true)
info "out of reach (README), as status says: late's forged query reached the upstream $n times"

finish
