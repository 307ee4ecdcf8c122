#!/bin/bash
# A UDP reply allowance forged through a PIM register device (helper-94's attack): a raw IGMP
# socket (CAP_NET_RAW, Docker's default) makes the container's namespace a multicast router
# (MRT_INIT) and adds a register device (MRT_ADD_VIF, VIFF_REGISTER: "pimreg"); a PIM Register
# sent to 127.0.0.1 is unwrapped onto pimreg, and its inner datagram, "from" a denied peer,
# reaches a UDP socket, which then answers that peer. Debian's 6.1 routes multicast (the host's
# kernel does not): the attack is made here. The ingress program notes a datagram's sender only
# when it came in on an Ethernet device, so the answer is judged by the rules: refused, and
# nothing at the peer's capture; the same script in an unrestricted container is answered, which
# shows the attack and the capture work.
. /mnt/share/lib/vmtest.sh
NET=pim-net
PEER_IP=198.18.252.10
T=/opt/contain-test
IMG=$CONTAIN_TEST_IMAGE

step "contain"
install_contain
mkdir -p $T /etc/contain
cp /mnt/share/lib/frames.py /mnt/share/extra/pim-register.d/pim.py /mnt/share/extra/pim-register.d/pim_frag.py $T/
getent group contain >/dev/null || groupadd --system contain
cat >/etc/contain/policy.toml <<EOP
mode = "enforce"
unknown_container = "deny"
allow_loopback = true

[[policy]]
name = "blocked"
select = { label = { egress = "block" } }
allow = [
  { to = ["$PEER_IP"], proto = "tcp", ports = [8080] },
]
EOP
check "policy is valid" policyd check /etc/contain/policy.toml
start_contain

step "containers"
defer docker rm -f peer blocked free
check "network" docker network create --subnet 198.18.252.0/24 "$NET"
run() { docker run -d --network "$NET" -v $T:$T:ro "$@"; }
check "peer" run --name peer --ip $PEER_IP "$IMG" sleep 3600
check "blocked (egress=block)" run --name blocked --label egress=block "$IMG" sleep 3600
check "free (no policy)" run --name free "$IMG" sleep 3600
check "policyd maps blocked" retry 60 0.25 bash -c "policyd status | grep blocked | grep -q blocked"

CAP=/run/pim-capture.txt
: >$CAP
nsenter -t "$(docker inspect -f '{{.State.Pid}}' peer)" -n python3 $T/frames.py sniff "$CAP" eth0 \
  >/run/pim-sniff.out 2>&1 &
SNIFF_PID=$!
defer kill $SNIFF_PID
retry 50 0.2 grep -q ready /run/pim-sniff.out || fail "capture did not start"

step "the attack from an unrestricted container (control)"
docker exec free python3 $T/pim.py 4 $PEER_IP 5353 free4 >/run/pim-free.out 2>&1 || true
sed 's/^/    free: /' /run/pim-free.out
step "the attack from a container whose policy denies the peer's port 5353"
docker exec blocked python3 $T/pim.py 4 $PEER_IP 5353 leak4 >/run/pim-blocked.out 2>&1 || true
sed 's/^/    blocked: /' /run/pim-blocked.out
step "helper-96's variant: the datagram in two fragments, the last looped back on eth0"
docker exec free python3 $T/pim_frag.py $PEER_IP 5353 fragfree >/run/pim-frag-free.out 2>&1 || true
sed 's/^/    free: /' /run/pim-frag-free.out
docker exec blocked python3 $T/pim_frag.py $PEER_IP 5353 fragleak >/run/pim-frag-blocked.out 2>&1 || true
sed 's/^/    blocked: /' /run/pim-frag-blocked.out
sleep 2
step "judged at the peer"
check "the register device was made with Docker's default capabilities" \
  grep -q "register vif added: pimreg" /run/pim-blocked.out
check "the unwrapped datagram from the denied peer reached the container's socket" \
  grep -q "received b'knock' from ('$PEER_IP', 5353)" /run/pim-blocked.out
check "its answer to the denied peer was refused" \
  grep -q "reply send 0: 1 Operation not permitted" /run/pim-blocked.out
check "the control's answer arrived at the peer" grep -q -F 'MK{free4}' $CAP
check_fails "no answer of the blocked container's arrived at the peer" grep -q -F 'MK{leak4}' $CAP
check_fails "none of its plain sends arrived either" grep -q -F 'MK{leak4-' $CAP
check "fragments: the put-together datagram from the denied peer reached the container's socket" \
  grep -q "received 1192 bytes from ('$PEER_IP', 5353)" /run/pim-frag-blocked.out
check "fragments: its answer to the denied peer was refused" \
  grep -q "reply: 1 Operation not permitted" /run/pim-frag-blocked.out
check "fragments: the control's answer arrived at the peer" grep -q -F 'MK{fragfree}' $CAP
check_fails "fragments: no answer of the blocked container's arrived at the peer" grep -q -F 'MK{fragleak}' $CAP
finish
