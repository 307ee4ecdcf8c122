#!/bin/bash
# Smoke test of the VM harness itself (no contain involved): two containers from
# contain-test:latest on a user-defined Docker bridge network reach each other by ICMP and TCP
# (busybox httpd + wget/curl, an nc echo server, python3 sockets), and nothing leaves the guest.
. /mnt/share/lib/vmtest.sh

NET=smoke-net
SUBNET=172.31.250.0/24
A=smoke-a
B=smoke-b

step "guest"
info "kernel $(uname -r); docker $(docker version --format '{{.Server.Version}}'); cgroup $(stat -fc %T /sys/fs/cgroup)"
info "contain binaries in $CONTAIN_BIN: $(ls "$CONTAIN_BIN" | tr '\n' ' ')"
# Only lo and Docker's bridge exist: the VM has no NIC, so test traffic cannot leave it.
check "no network interface but lo and docker0" \
  bash -c '! ip -o link show | grep -vE "^[0-9]+: (lo|docker0):"'
check "image $CONTAIN_TEST_IMAGE is present" docker image inspect "$CONTAIN_TEST_IMAGE"

step "network $NET and containers $A, $B"
# Survive leftovers of an earlier run (matters only if the guest is ever reused).
docker rm -f "$A" "$B" >/dev/null 2>&1 || true
docker network rm "$NET" >/dev/null 2>&1 || true
defer docker network rm "$NET"
defer docker rm -f "$A" "$B"
check "create bridge network $NET ($SUBNET)" \
  docker network create --driver bridge --subnet "$SUBNET" "$NET"
# A serves HTTP on 8080 (busybox httpd, /www/index.html) and a persistent TCP echo on 9000.
check "start $A (httpd :8080, nc echo :9000)" \
  docker run -d --name "$A" --network "$NET" "$CONTAIN_TEST_IMAGE" \
  sh -c 'httpd -p 8080 -h /www && exec nc -ll -p 9000 -e cat'
check "start $B (idle)" docker run -d --name "$B" --network "$NET" "$CONTAIN_TEST_IMAGE" sleep 3600
IP_A=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$A")
IP_B=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$B")
info "$A=$IP_A $B=$IP_B"
# The servers start asynchronously in A: wait until the HTTP port answers.
# (busybox 1.35's `wget -T` segfaults: bound wget with `timeout` instead, or use curl.)
check "$A's httpd comes up" retry 20 0.5 docker exec "$B" timeout 3 wget -q -O /dev/null "http://$IP_A:8080/"

step "ICMP"
check "ping $B -> $A by IP" docker exec "$B" ping -c 2 -W 2 "$IP_A"
check "ping $A -> $B by name (Docker's embedded DNS)" docker exec "$A" ping -c 2 -W 2 "$B"

step "TCP"
check_output "wget $B -> $A:8080 (HTTP)" "contain-test ok" \
  docker exec "$B" timeout 5 wget -q -O - "http://$A:8080/"
check_output "curl $B -> $A:8080 (HTTP)" "contain-test ok" \
  docker exec "$B" curl -sS --max-time 5 "http://$IP_A:8080/"
check_output "nc $B -> $A:9000 (echo)" "hello-over-tcp" \
  docker exec "$B" sh -c 'echo hello-over-tcp | nc -w 3 '"$IP_A"' 9000'
check_output "python3 socket $B -> $A:9000 (echo)" "py-echo" \
  docker exec "$B" python3 -c "
import socket
s = socket.create_connection(('$IP_A', 9000), timeout=5)
s.sendall(b'py-echo\n')
print(s.recv(100).decode().strip())"

step "negative controls"
check_fails "TCP to a closed port is refused" docker exec "$B" nc -w 3 "$IP_A" 9999
# TEST-NET-1 (192.0.2.0/24) is never routed; with no NIC the guest has no route out at all.
check_fails "nothing leaves the guest (192.0.2.1:80 unreachable)" \
  docker exec "$B" curl -sS --max-time 3 -o /dev/null http://192.0.2.1/

finish
