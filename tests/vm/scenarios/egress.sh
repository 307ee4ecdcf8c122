#!/bin/bash
# contain end to end with real Docker and containerd in the Debian 12 guest (kernel 6.1): the
# three daemons under systemd, an egress=block label, a per-process policy, ping, curl and raw
# ICMP allowed and denied, IPv6, first-packet coverage of a new container, a live reload, and
# kill -9 of each daemon while a probe loop runs.
. /mnt/share/lib/vmtest.sh

NET=contain-net
SUBNET=198.18.251.0/24
SUBNET6=2001:db8:251::/64
PEER_IP=198.18.251.10
PEER_IP6=2001:db8:251::10
T=/opt/contain-test            # probe.py, peer_server.py and peer.py, bind-mounted into containers
IMG=$CONTAIN_TEST_IMAGE

# probe CONTAINER ARGS...: the probe's one-line outcome (ok, denied:EPERM, timeout, error:...)
probe() { local c=$1; shift; { docker exec "$c" python3 $T/probe.py "$@" 2>&1 || true; } | tail -n1; }
# expect DESC WANT CONTAINER ARGS...: WANT is ok, denied (EPERM or timeout) or denied:EPERM
expect() {
  local desc=$1 want=$2; shift 2
  local got; got=$(probe "$@")
  case "$want:$got" in
    ok:ok | denied:denied:EPERM | denied:timeout | denied:EPERM:denied:EPERM) pass "$desc ($got)" ;;
    *) fail "$desc: wanted $want, got $got" ;;
  esac
}

write_policy() { # extra TCP port allowed for egress=block, besides 8080
  cat >/etc/contain/policy.toml <<EOF
mode = "enforce"
unknown_container = "deny"
allow_loopback = true

[[policy]]
name = "blocked"
select = { label = { egress = "block" } }
allow = [
  { to = ["$PEER_IP", "$PEER_IP6"], proto = "tcp", ports = [8080$1] },
]

[[policy]]
name = "curler"
select = { name = "curler" }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = ["$PEER_IP"], proto = "tcp", ports = [8080] }]
EOF
}

step "contain under systemd"
install_contain
mkdir -p $T /etc/contain
cp /mnt/share/lib/probe.py /mnt/share/lib/peer_server.py /mnt/share/lib/peer.py /mnt/share/lib/frames.py $T/
getent group contain >/dev/null || groupadd --system contain
write_policy ""
check "policy is valid" policyd check /etc/contain/policy.toml
start_contain
defer journalctl -u contain-bpf-loader -u contain-resolver -u contain-policyd --no-pager -o cat \
  --output-fields=MESSAGE > /mnt/share/out/daemons.log

step "containers"
docker network rm "$NET" >/dev/null 2>&1 || true
defer docker network rm "$NET"
defer docker rm -f peer blocked free curler first
check "network $NET" docker network create --ipv6 --subnet "$SUBNET" --subnet "$SUBNET6" "$NET"
run() { docker run -d --network "$NET" -v $T:$T:ro "$@"; }
check "peer (servers on 8080, 9090, 5353)" run --name peer --ip $PEER_IP --ip6 $PEER_IP6 "$IMG" \
  python3 $T/peer_server.py 8080 9090 5353
check "blocked (egress=block)" run --name blocked --label egress=block "$IMG" sleep 3600
check "free (no policy)" run --name free "$IMG" sleep 3600
check "curler (per-process policy)" run --name curler "$IMG" sleep 3600
check "the peer answers" retry 30 0.5 bash -c "[[ \$(docker exec free python3 $T/probe.py tcp $PEER_IP 8080) == ok ]]"
check "containers sit under contain.slice" \
  bash -c "grep -q contain.slice /proc/\$(docker inspect -f '{{.State.Pid}}' blocked)/cgroup"
check "policyd maps blocked to its policy" retry 40 0.25 bash -c "policyd status | grep blocked | grep -q blocked"

step "egress=block: only TCP 8080 to the peer"
expect "blocked: curl-like TCP to peer:8080" ok blocked tcp $PEER_IP 8080
expect "blocked: TCP to peer:9090" denied:EPERM blocked tcp $PEER_IP 9090
expect "blocked: ping (ICMP datagram socket)" denied blocked ping $PEER_IP
expect "blocked: raw ICMP socket" denied blocked icmp-raw $PEER_IP
expect "blocked: UDP sendto" denied:EPERM blocked udp-sendto $PEER_IP 5353
expect "blocked: UDP connected" denied:EPERM blocked udp-connect $PEER_IP 5353
expect "blocked: IPv6 TCP to peer:8080" ok blocked tcp6 $PEER_IP6 8080
expect "blocked: IPv6 TCP to peer:9090" denied:EPERM blocked tcp6 $PEER_IP6 9090
expect "blocked: IPv6 ping" denied blocked ping6 $PEER_IP6
expect "blocked: v4-mapped IPv6 to peer:9090" denied:EPERM blocked tcp-mapped $PEER_IP 9090
check_fails "blocked: busybox ping" docker exec blocked timeout 5 ping -c1 -W2 $PEER_IP
check_fails "blocked: curl to peer:9090" docker exec blocked curl -sS --max-time 5 http://$PEER_IP:9090/
check "blocked: curl to peer:8080" docker exec blocked curl -sS --max-time 5 http://$PEER_IP:8080/
check "the peer can still reach blocked's servers (inbound is not egress)" bash -c \
  "docker exec -d blocked python3 $T/peer_server.py 7070 && sleep 2 && \
   [[ \$(docker exec peer python3 $T/probe.py tcp \$(docker inspect -f '{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}' blocked) 7070) == ok ]]"

step "a container without policy is left alone"
expect "free: TCP 9090" ok free tcp $PEER_IP 9090
expect "free: ping" ok free ping $PEER_IP
expect "free: raw ICMP" ok free icmp-raw $PEER_IP

step "per process: only /usr/bin/curl in curler"
check "curler: curl to peer:8080" docker exec curler curl -sS --max-time 5 http://$PEER_IP:8080/
check_fails "curler: busybox wget to peer:8080" docker exec curler timeout 5 wget -q -O- http://$PEER_IP:8080/
check_fails "curler: a renamed copy of curl" docker exec curler sh -c \
  "cp /usr/bin/curl /tmp/curl && /tmp/curl -sS --max-time 5 http://$PEER_IP:8080/"
expect "curler: python TCP to peer:8080" denied:EPERM curler tcp $PEER_IP 8080
expect "curler: python renamed to curl (comm)" denied:EPERM curler tcp $PEER_IP 8080 --comm curl

step "first packet of a new container"
out=$(docker run --rm --network "$NET" -v $T:$T:ro --label egress=block --name first "$IMG" \
  python3 $T/probe.py tcp $PEER_IP 9090 2>&1 | tail -n1 || true)
[[ $out == denied:* || $out == timeout ]] && pass "a denied connect as the container's first act is denied ($out)" \
  || fail "first packet of a new egress=block container escaped: $out"

# A capture in the peer's namespace: every marker that arrives there, for the steps that judge at
# the receiver.
CAP=/run/contain-eg-capture.txt
: >$CAP
nsenter -t "$(docker inspect -f '{{.State.Pid}}' peer)" -n python3 $T/frames.py sniff "$CAP" eth0 \
  >/run/contain-eg-sniff.out 2>&1 &
SNIFF_PID=$!
defer kill $SNIFF_PID
retry 50 0.2 grep -q ready /run/contain-eg-sniff.out || fail "the peer's capture did not start"

step "policyd reload changes access live"
write_policy ", 9090"
check "policyd reload" policyd reload
expect "blocked: TCP 9090 after the reload" ok blocked tcp $PEER_IP 9090

step "policyd reload revokes an established flow"
# A flow to a sink on 9191 sends MK{revbefore} chunks, pauses, the reload removes 9191, then it
# sends MK{revafter} chunks: none may reach the peer, and the sender must be told.
docker exec -d peer python3 $T/peer.py sink 9191
check "the peer's sink listens on 9191" retry 50 0.2 bash -c \
  "nsenter -t \$(docker inspect -f '{{.State.Pid}}' peer) -n ss -Hltn 'sport = :9191' | grep -q ."
write_policy ", 9090, 9191"
check "policyd reload (allows 9191)" policyd reload
docker exec -d blocked sh -c "python3 $T/probe.py stream $PEER_IP 9191 --pause /tmp/rev.pause \
  --go /tmp/rev.go --seconds 60 >/tmp/rev.out 2>&1; touch /tmp/rev.done"
check "the flow's chunks reach the peer" retry 100 0.2 grep -q -F "MK{revbefore}" $CAP
docker exec blocked touch /tmp/rev.pause
check "the flow pauses" retry 100 0.2 docker exec blocked grep -q paused /tmp/rev.out
write_policy ", 9090"
check "policyd reload (revokes 9191)" policyd reload
check "the flow sends again" docker exec blocked touch /tmp/rev.go
check "the sender ended" retry 120 0.5 docker exec blocked test -f /tmp/rev.done
out=$(docker exec blocked tail -n1 /tmp/rev.out || true)
[[ $out == error:ECONNABORTED ]] && pass "the revoked flow's sender got ECONNABORTED (the loader aborted its socket)" \
  || fail "the revoked flow's sender: $out, not error:ECONNABORTED"
sleep 1
check "the peer's capture still runs" kill -0 $SNIFF_PID
n=$(grep -c -F "MK{revafter}" "$CAP" || true)
[[ $n -eq 0 ]] && pass "0 chunks the revoked flow sent after the reload arrived at the peer" \
  || fail "$n chunks the revoked flow sent after the reload ARRIVED at the peer"
write_policy ""
check "policyd reload (revert)" policyd reload
expect "blocked: TCP 9090 after reverting" denied:EPERM blocked tcp $PEER_IP 9090
cp /etc/contain/policy.toml /tmp/good.toml
echo 'mode = "sideways"' >/etc/contain/policy.toml
check_fails "an invalid policy is refused" policyd reload
expect "the old policy keeps enforcing" denied:EPERM blocked tcp $PEER_IP 9090
cp /tmp/good.toml /etc/contain/policy.toml

step "the thesis' JSON allow-list, as is (policyd restarted on it)"
cat >/etc/contain/allowlist.json <<EOF
[
  { "container_name": "blocked",
    "policy": [ { "process": "python3", "allow": [ { "cidr4": "$PEER_IP/32", "ports": [9090, 0] } ] } ] }
]
EOF
start_policyd() { # policy file
  systemctl stop contain-policyd >/dev/null 2>&1 || true
  retry 50 0.1 bash -c '! systemctl is-active --quiet contain-policyd'
  rm -f /run/contain/policyd.sock
  systemd-run --unit=contain-policyd -p Restart=always -p RestartSec=0.2 \
    /usr/local/bin/policyd daemon --policy "$1" && retry 100 0.2 test -S /run/contain/policyd.sock
}
check "policyd on /etc/contain/allowlist.json" start_policyd /etc/contain/allowlist.json
check "converged on the JSON policy" retry 40 0.25 bash -c \
  "[[ \$(docker exec blocked python3 $T/probe.py tcp $PEER_IP 9090) == ok ]]"
expect "thesis JSON: python3 may ping the peer (port 0 = ICMP)" ok blocked ping $PEER_IP
expect "thesis JSON: python3 may not reach peer:8080" denied:EPERM blocked tcp $PEER_IP 8080
check_fails "thesis JSON: curl (another process) may not reach peer:9090" \
  docker exec blocked curl -sS --max-time 5 http://$PEER_IP:9090/
check "policyd back on the TOML policy" start_policyd /etc/contain/policy.toml
check "converged back" retry 40 0.25 bash -c \
  "[[ \$(docker exec blocked python3 $T/probe.py tcp $PEER_IP 9090) == denied:EPERM ]]"

step "kill -9 of each daemon while a probe loop runs"
# Besides the connects, judged by their outcome, marked frames and raw IP through the whole
# window, judged by a capture in the peer's namespace: a packet socket's UDP frames and an
# IP_HDRINCL SYN to the denied port, and to the allowed port a packet socket's SYN and the raw
# SYN (the capture's controls: they arrive).
PEER_MAC=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").MacAddress}}" peer)
# It sends until the daemons are back and told to stop (the loader takes 10-20 s to serve under
# TCG, the probe loop a minute or more on a slow host); 300 s is only a bound.
docker exec -d blocked python3 $T/frames.py send --dst-mac "$PEER_MAC" --dst4 $PEER_IP \
  --port 9090 --duration 300 --until /tmp/frames.stop --interval 0.01 --out /tmp/frames.out \
  killraw=raw-udp4 killdgram=dgram-udp4 killipraw=ipraw-tcp4@9090 \
  killokpkt=raw-tcp4@8080 killokipraw=ipraw-tcp4@8080
docker exec -d blocked sh -c "for i in \$(seq 1 25); do python3 $T/probe.py tcp $PEER_IP 8080; \
  python3 $T/probe.py tcp $PEER_IP 9090; done > /tmp/loop.out 2>&1; touch /tmp/loop.done"
for unit in contain-bpf-loader contain-resolver contain-policyd; do
  sleep 2
  check "kill -9 $unit" systemctl kill -s KILL "$unit"
done
check "probe loop finished" retry 120 1 docker exec blocked test -f /tmp/loop.done
check "all daemons are back" retry 100 0.2 systemctl is-active --quiet contain-bpf-loader contain-resolver contain-policyd
check "bpf-loader is ready again" retry 150 0.2 bash -c \
  "[[ \$(journalctl -u contain-bpf-loader -o cat | grep -c 'bpf-loader ready') -ge 2 ]]"
check_fails "the frame sender still runs once they are back" docker exec blocked test -s /tmp/frames.out
docker exec blocked touch /tmp/frames.stop
check "the frame sender finished" retry 120 0.5 docker exec blocked test -s /tmp/frames.out
frames=$(docker exec blocked cat /tmp/frames.out || true)
info "frames sent through the kills: $(tr '\n' ' ' <<<"$frames")"
# The raw SYN to the denied port is refused at the send (EPERM), or not: the capture judges it.
for name in killraw killdgram killokpkt killokipraw; do
  grep -qE "^$name sent=[1-9][0-9]* errors=0$" <<<"$frames" \
    || fail "$name: the sender did not send ($(grep -E "^$name " <<<"$frames"))"
done
sleep 1
for name in killraw killdgram killipraw; do
  n=$(grep -c -F "MK{$name} " "$CAP" || true)
  [[ $n -eq 0 ]] && pass "during the kills, $name to the denied port: 0 arrived at the peer" \
    || fail "during the kills, $name to the denied port: $n ARRIVED at the peer"
done
for name in killokpkt killokipraw; do
  n=$(grep -c -F "MK{$name} " "$CAP" || true)
  [[ $n -gt 0 ]] && pass "during the kills, $name to the allowed port: $n arrived (the capture's control)" \
    || fail "during the kills, $name to the allowed port: nothing arrived"
done
loop=$(docker exec blocked cat /tmp/loop.out || true)
allowed_ok=$(awk 'NR % 2 == 1 && $0 == "ok"' <<<"$loop" | wc -l)
denied_ok=$(awk 'NR % 2 == 0 && $0 == "ok"' <<<"$loop" | wc -l)
[[ $denied_ok -eq 0 ]] && pass "no denied connection passed during the kills" \
  || fail "$denied_ok denied connections passed during the kills"
[[ $allowed_ok -eq 25 ]] && pass "allowed connections kept working (25/25)" \
  || fail "allowed connections: $allowed_ok/25 worked"

step "a plain containerd container (ctr)"
ctr -n default images import --all-platforms /dev/null >/dev/null 2>&1 || true
if docker save "$IMG" | ctr -n default images import - >/dev/null 2>&1; then
  pass "image imported into containerd"
  ref=$(ctr -n default images ls -q | grep contain-test | head -n1)
  defer ctr -n default tasks kill -s KILL ctr-blocked
  defer ctr -n default containers rm ctr-blocked
  check "ctr run (egress=block, under contain.slice)" ctr -n default run -d --net-host \
    --runc-systemd-cgroup --cgroup contain.slice:ctr:blocked --label egress=block \
    --mount type=bind,src=$T,dst=$T,options=rbind:ro "$ref" ctr-blocked sleep 3600
  check "policyd maps the containerd container" retry 40 0.25 bash -c "policyd status | grep -q ctr-blocked"
  out=$(ctr -n default tasks exec --exec-id p1 ctr-blocked python3 $T/probe.py tcp $PEER_IP 9090 2>&1 | tail -n1 || true)
  [[ $out == denied:EPERM ]] && pass "ctr container: TCP 9090 denied" || fail "ctr container: TCP 9090: $out"
  out=$(ctr -n default tasks exec --exec-id p2 ctr-blocked python3 $T/probe.py tcp $PEER_IP 8080 2>&1 | tail -n1 || true)
  [[ $out == ok ]] && pass "ctr container: TCP 8080 allowed" || fail "ctr container: TCP 8080: $out"
else
  fail "could not import $IMG into containerd"
fi

step "denials are logged with attribution"
check "policyd logged denials as JSON" bash -c \
  "journalctl -u contain-policyd -o cat | grep '\"contain.verdict\":\"deny\"' | grep -q '\"process.executable.name\":\"python3\"'"
finish
