#!/bin/bash
# The Debian package in the Debian 12 guest with real Docker: installed with apt, run by its own
# systemd units (no systemd-run), the default policy (the conffile) enforced on an egress=block
# container, judged by a capture in the peer's network namespace:
#
#  1. install: units active with their users and capabilities, contain.slice, /run/contain,
#     the conffile; `policyd status` names a container outside the managed parent;
#  2. `policyd setup docker` on Docker's real daemon.json (kept keys, backup, idempotent), Docker
#     restarted on it: new containers land under contain.slice; Docker and containerd refuse to
#     start while contain's programs are not attached (the loader masked, its links released),
#     saying why, and start once the loader is back;
#  3. enforce: nothing of the blocked container's reaches the peer, a container no policy
#     selects does (the capture's own control), the peer reaches the blocked container's server;
#  4. an edited conffile applied by `systemctl reload contain-policyd` (same process); a refused
#     one fails the reload, named with its line, and the running policy stays (at the capture);
#  4b. a reload that revokes an established flow: the loader, as its unit runs it, aborts the
#      socket (ECONNABORTED) and no data segment reaches the peer after the reload;
#  5. `systemctl restart` of each unit during a probe loop: 0 denied packets at the peer, 0
#     allowed requests failed;
#  6. upgrade to a rebuilt package of a higher version during a probe loop: the same, the
#     edited conffile kept, every daemon restarted;
#  7. apt remove: daemons stopped, the removal says filtering stays, and it does, a container
#     started afterwards included (the unknown-container verdict);
#  8. apt purge: pins, veth filters and /etc/contain gone, the blocked container reaches the
#     peer again (so the capture would have seen leaks had there been any).
#
# Needs /mnt/share/debs/ with two builds of the package, the second of a higher version
# (scripts/test.sh builds them into target/vm-debs; tests/vm/run.sh copies them).
. /mnt/share/lib/vmtest.sh

# The package's binaries, never the share's copies.
PATH=$(tr : '\n' <<<"$PATH" | grep -vx "$CONTAIN_BIN" | paste -sd:)
export PATH

NET=contain-pk
SUBNET=198.18.249.0/24
PEER_IP=198.18.249.10
ALLOWED_PORT=8080              # allowed to egress=block once the edited policy is applied
DENIED_PORT=9090               # never allowed to egress=block
INBOUND_PORT=7070              # a server in the blocked container
T=/opt/contain-pk              # helpers, bind-mounted into the containers (read-write: loop output)
CAP=/run/contain-pk-capture.txt
IMG=$CONTAIN_TEST_IMAGE
DEBS=$CONTAIN_SHARE/debs
LOOP_SECONDS=15                # each restart loop; the upgrade loop lasts as long as the upgrade
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q -o Dpkg::Options::=--force-confold --no-install-recommends)

pid_of() { docker inspect -f '{{.State.Pid}}' "$1"; }
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$1"; }
main_pid() { systemctl show -p MainPID --value "$1"; }
all_active() { systemctl is-active --quiet contain-bpf-loader contain-resolver contain-policyd; }
# every tc filter on the host-side veths, both directions (the backstop on kernel 6.1)
veth_filters() {
  local d dir
  for d in $(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
    for dir in ingress egress; do tc filter show dev "$d" "$dir" || return 1; done
  done
}
probe() { local c=$1; shift; { docker exec "$c" python3 $T/probe.py "$@" 2>&1 || true; } | tail -n1; }

# ---- the capture in the peer's network namespace ------------------------------------------------
# Text output redirected by the shell (AppArmor's tcpdump profile limits the files tcpdump
# itself may write). One line per packet.
CAP_PID=
capture_start() {
  : >"$CAP"
  nsenter -t "$(pid_of peer)" -n tcpdump -i eth0 -nn -l -U 'ip and (tcp or udp or icmp)' \
    >"$CAP" 2>"$CAP.err" &
  CAP_PID=$!
  retry 50 0.2 grep -qs "listening on" "$CAP.err" || fail "the capture did not start: $(cat "$CAP.err")"
}
capture_stop() {
  sleep 1 # the bridge delivers synchronously; a second covers tcpdump's own line output
  [[ -n $CAP_PID ]] && kill -INT "$CAP_PID" 2>/dev/null && wait "$CAP_PID" 2>/dev/null || true
  CAP_PID=
}
defer capture_stop
# arrived FROM_IP DPORT|icmp: packets from FROM_IP to the peer that the capture saw (TCP and UDP
# to DPORT: every SYN, segment and datagram; icmp: echo requests)
arrived() {
  if [[ $2 == icmp ]]; then
    grep -cE "IP $1 > $PEER_IP: ICMP echo request" "$CAP" || true
  else
    grep -cE "IP $1\.[0-9]+ > $PEER_IP\.$2: " "$CAP" || true
  fi
}
expect_arrived() { # DESC WANT(none|some) FROM_IP DPORT
  local n; n=$(arrived "$3" "$4")
  case $2 in
    none) [[ $n -eq 0 ]] && pass "$1: 0 packets arrived at the peer" || fail "$1: $n packets ARRIVED at the peer" ;;
    some) [[ $n -gt 0 ]] && pass "$1: $n packets arrived at the peer" || fail "$1: nothing arrived at the peer" ;;
  esac
}

# ---- the probe loop -----------------------------------------------------------------------------
loop_start() {
  docker exec blocked rm -f $T/stop $T/loop.out
  docker exec -d blocked sh -c "python3 $T/loop.py --peer $PEER_IP --allowed-port $ALLOWED_PORT \
    --denied-port $DENIED_PORT --stop-file $T/stop > $T/loop.out 2>&1"
  retry 50 0.2 bash -c "ps -eo args | grep -q '[l]oop.py --peer'"
}
# loop_finish DESC: stops the loop and judges it: the capture for the denied port, the loop's
# own counts for the allowed requests
loop_finish() {
  local desc=$1 out rounds ok failed
  touch $T/stop
  retry 60 0.5 test -s $T/loop.out || true
  capture_stop
  out=$(cat $T/loop.out 2>/dev/null || true)
  info "$desc: loop: $out"
  rounds=$(sed -nE 's/.*rounds=([0-9]+).*/\1/p' <<<"$out")
  ok=$(sed -nE 's/.*allowed_ok=([0-9]+).*/\1/p' <<<"$out")
  failed=$(sed -nE 's/.*allowed_failed=([0-9]+).*/\1/p' <<<"$out")
  if [[ -z $rounds || $rounds -lt 5 ]]; then
    fail "$desc: the probe loop did not run (${out:-no output})"
    return 0
  fi
  expect_arrived "$desc: denied TCP and UDP to $DENIED_PORT over $rounds rounds" none "$BLOCKED_IP" $DENIED_PORT
  [[ $failed -eq 0 && $ok -eq $rounds ]] && pass "$desc: allowed requests: $ok of $rounds answered" \
    || fail "$desc: allowed requests: $failed of $rounds failed ($out)"
}

# ---- the packages -------------------------------------------------------------------------------
step "the packages"
mapfile -t debs < <(ls "$DEBS"/contain_*.deb 2>/dev/null || true)
if [[ ${#debs[@]} -lt 2 ]]; then
  fail "need two builds of the package in $DEBS (found ${#debs[@]}): run scripts/package.sh twice, the second with CONTAIN_DEB_VERSION higher (scripts/test.sh does)"
  finish
fi
version_of() { dpkg-deb -f "$1" Version; }
FIRST=${debs[0]} UPGRADE=${debs[0]}
for d in "${debs[@]}"; do
  dpkg --compare-versions "$(version_of "$d")" lt "$(version_of "$FIRST")" && FIRST=$d
  dpkg --compare-versions "$(version_of "$d")" gt "$(version_of "$UPGRADE")" && UPGRADE=$d
done
info "install $(basename "$FIRST"), upgrade to $(basename "$UPGRADE")"
[[ $FIRST != "$UPGRADE" ]] && pass "two versions to upgrade between" || fail "all packages have one version"

mkdir -p $T
cp /mnt/share/lib/probe.py /mnt/share/lib/peer_server.py /mnt/share/lib/peer.py "$CONTAIN_EXTRA/package.d/loop.py" $T/
defer bash -c "journalctl -u contain-bpf-loader -u contain-resolver -u contain-policyd --no-pager \
  -o short-monotonic > /mnt/share/out/daemons.log"

export -f veth_filters

# ---- 1. install ---------------------------------------------------------------------------------
step "install"
cp "$FIRST" "$UPGRADE" /tmp/
out=$("${APT[@]}" install "/tmp/$(basename "$FIRST")" 2>&1) && pass "apt-get install $(basename "$FIRST")" \
  || { fail "apt-get install"; printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /'; finish; }
printf '%s\n' "$out" >/mnt/share/out/install.log
[[ $out == *"contain is installed and running"* && $out == *"policyd setup docker"* ]] \
  && pass "the installation says contain runs, and how to set up Docker" \
  || fail "the installation does not say that contain runs and how to set up Docker"
check "the three units are active" retry 100 0.2 all_active
check_output "systemd finds nothing to fault in the units" "units verified" bash -c \
  'out=$(systemd-analyze verify --man=no /lib/systemd/system/contain-{bpf-loader,resolver,policyd}.service \
     /lib/systemd/system/contain.slice 2>&1 | grep -E "contain[-.]" || true)
   printf "%s\n" "$out"; [[ -z $out ]] && echo "units verified"' 
check "the units are enabled" systemctl is-enabled --quiet contain-bpf-loader contain-resolver contain-policyd
check "bpf-loader is pulled in by docker.service" test -L /etc/systemd/system/docker.service.wants/contain-bpf-loader.service
check "bpf-loader is ordered before docker.service" bash -c \
  "systemctl show -p Before --value contain-bpf-loader | tr ' ' '\n' | grep -qx docker.service"
check "bpf-loader is ordered before containerd.service" bash -c \
  "systemctl show -p Before --value contain-bpf-loader | tr ' ' '\n' | grep -qx containerd.service"
# Active only once the loader said READY=1 (after its programs are attached), which a
# leftover socket file cannot fake: a restart over a planted one still waits for it.
check_output "bpf-loader's unit is Type=notify" notify systemctl show -p Type --value contain-bpf-loader
readies() { journalctl -u contain-bpf-loader --no-pager -o cat | grep -c "bpf-loader ready" || true; }
before=$(readies)
systemctl stop contain-bpf-loader
# The stopped loader's socket file stays behind (RuntimeDirectoryPreserve); one is planted if not.
[[ -S /run/contain/loader.sock ]] ||
  python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("/run/contain/loader.sock")'
check "a socket file is left behind" test -S /run/contain/loader.sock
check "bpf-loader starts again over a socket file left behind" systemctl start contain-bpf-loader
# systemctl start returns once READY=1 came (Type=notify), which the loader sends after it
# has attached and bound its socket, and then logs "bpf-loader ready".
check "the restarted loader attached, bound and said ready" retry 20 0.25 bash -c "(( \$(journalctl -u contain-bpf-loader --no-pager -o cat | grep -c 'bpf-loader ready') > $before ))"
check_output "the loader is active" active systemctl is-active contain-bpf-loader
check "user and group contain (sysusers)" bash -c "getent passwd contain && getent group contain"
check_output "/run/contain is root:contain 1770 (tmpfiles)" "1770 root contain" stat -c '%a %U %G' /run/contain
check_output "policy.toml is a conffile" "/etc/contain/policy.toml" dpkg-query -W -f='${Conffiles}' contain
check "contain.slice is active" systemctl is-active --quiet contain.slice
check "the programs are attached to contain.slice" bash -c \
  "bpftool cgroup show /sys/fs/cgroup/contain.slice | grep -q contain_"
check_output "policyd runs as contain" "contain" ps -o user= -p "$(main_pid contain-policyd)"
# CapBnd of the loader: CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21),
# CAP_PERFMON (38), CAP_BPF (39)
check_output "bpf-loader's capability bounding set" "CapBnd:	000000c000281000" \
  grep CapBnd "/proc/$(main_pid contain-bpf-loader)/status"
# CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19)
check_output "resolver's capability bounding set" "CapBnd:	0000000000080004" \
  grep CapBnd "/proc/$(main_pid contain-resolver)/status"
check_output "policyd has no capabilities" "CapBnd:	0000000000000000" \
  grep CapBnd "/proc/$(main_pid contain-policyd)/status"
check_output "ProtectSystem=strict" "strict" systemctl show -p ProtectSystem --value contain-policyd
# systemctl show prints 0 for an unset interval too: the unit itself says it.
check "journald does not rate-limit policyd's event log (LogRateLimitIntervalSec=0)" \
  bash -c "systemctl cat contain-policyd | grep -qx 'LogRateLimitIntervalSec=0'"
# systemd prints the set in no fixed order ("::/0 0.0.0.0/0" on some boots).
check_output "policyd may reach localhost only (IPAddressDeny=any)" "0.0.0.0/0 ::/0" \
  bash -c "systemctl show -p IPAddressDeny --value contain-policyd | tr ' ' '\n' | LC_ALL=C sort | xargs"
check "policyd status answers" retry 50 0.2 policyd status
check_output "policyd serves metrics on 127.0.0.1:9879" "contain_policy_loaded 1" \
  retry 50 0.2 curl -fsS http://127.0.0.1:9879/metrics

# ---- 2. Docker --------------------------------------------------------------------------------
step "policyd status names a container outside the managed parent"
docker network rm "$NET" >/dev/null 2>&1 || true
defer docker network rm "$NET"
defer docker rm -f outside peer blocked free late
check "network $NET" docker network create --subnet "$SUBNET" "$NET"
check "a container in system.slice" docker run -d --name outside --cgroup-parent system.slice \
  --network "$NET" "$IMG" sleep 3600
check "status lists it as not under the managed parent" retry 40 0.25 bash -c \
  "policyd status | sed -n '/NOT under the managed parent/,/^\$/p' | grep -qE '^/?outside .*system.slice'"
check_output "status --json says where it is" "system.slice" bash -c \
  "policyd --json status | python3 -c 'import json,sys; print([c[\"outside_managed_parent\"] for c in json.load(sys.stdin)[\"containers\"] if c[\"name\"].lstrip(\"/\") == \"outside\"][0])'"
docker rm -f outside >/dev/null 2>&1 || true

step "policyd setup docker"
# The image's daemon.json already names contain.slice; start from one that does not, with a
# setting of the administrator's to keep.
printf '{\n  "log-level": "warn",\n  "live-restore": false\n}\n' >/etc/docker/daemon.json
out=$(policyd setup docker 2>&1) && pass "policyd setup docker" || fail "policyd setup docker: $out"
info "$out"
[[ $out == *"systemctl restart docker"* ]] && pass "it says to restart Docker" || fail "it does not say to restart Docker"
check_output "cgroup-parent set, the other keys kept" "contain.slice warn False" python3 -c \
  'import json; d = json.load(open("/etc/docker/daemon.json")); print(d["cgroup-parent"], d["log-level"], d["live-restore"])'
check "a backup of the old file" bash -c "grep -q '\"log-level\"' /etc/docker/daemon.json.contain-backup-* && \
  ! grep -q cgroup-parent /etc/docker/daemon.json.contain-backup-*"
check_output "a second run changes nothing" "nothing to do" policyd setup docker
check "still one backup" bash -c "[[ \$(ls /etc/docker/daemon.json.contain-backup-* | wc -l) -eq 1 ]]"
printf '{"cgroup-parent": "other.slice"}' >/tmp/other.json
check_fails "another cgroup-parent is refused without --force" policyd setup docker --daemon-json /tmp/other.json
check_output "and left alone" '{"cgroup-parent": "other.slice"}' cat /tmp/other.json
printf '{"log-level": "warn",}' >/tmp/bad.json
check_output "invalid JSON is refused, naming the file" "/tmp/bad.json" bash -c "policyd setup docker --daemon-json /tmp/bad.json 2>&1; true"
check "Docker restarts on the merged file" systemctl restart docker
check "Docker is up" retry 60 0.5 docker info

step "Docker and containerd start only with contain's programs attached"
# Ordering alone would start them after a loader that failed (at boot, say), and their
# containers would run unfiltered: the package's drop-in makes each check first.
for unit in docker containerd; do
  check "$unit.service checks the programs before it starts" bash -c \
    "systemctl cat $unit | grep -qx 'ExecStartPre=/usr/sbin/bpf-loader --check-attached /sys/fs/cgroup/contain.slice'"
done
check "Docker and containerd stop" systemctl stop docker.socket docker containerd
# As at a boot where the loader failed: no loader, no link on contain.slice.
check "the loader stops, masked" bash -c "systemctl stop contain-bpf-loader && systemctl mask --runtime contain-bpf-loader"
check "its links on contain.slice are released" bash -c \
  "find /sys/fs/bpf/contain/links/cgroups -type f -delete; ! bpftool cgroup show /sys/fs/cgroup/contain.slice | grep -q contain_"
check_fails "containerd does not start" systemctl start containerd
check_fails "Docker does not start" systemctl start docker
check "containerd's journal says why" bash -c \
  "journalctl -u containerd --no-pager -o cat | grep -q \"contain's programs are not attached to /sys/fs/cgroup/contain.slice\""
check "the loader starts again" bash -c "systemctl unmask --runtime contain-bpf-loader && systemctl start contain-bpf-loader"
check "Docker starts" bash -c "systemctl reset-failed docker docker.socket containerd; systemctl start docker"
check "Docker is up" retry 60 0.5 docker info
check "the three units are active" retry 100 0.2 all_active

# ---- 3. enforce ---------------------------------------------------------------------------------
step "the default policy on an egress=block container"
run() { docker run -d --network "$NET" -v $T:$T "$@"; }
check "peer (servers on $ALLOWED_PORT, $DENIED_PORT)" run --name peer --ip $PEER_IP "$IMG" \
  python3 $T/peer_server.py $ALLOWED_PORT $DENIED_PORT
check "blocked (egress=block)" run --name blocked --label egress=block "$IMG" \
  python3 $T/peer_server.py $INBOUND_PORT
check "free (no policy)" run --name free "$IMG" sleep 3600
BLOCKED_IP=$(ip_of blocked)
FREE_IP=$(ip_of free)
check "blocked sits under contain.slice" grep -q contain.slice "/proc/$(pid_of blocked)/cgroup"
check "policyd maps blocked to the default policy" retry 40 0.25 bash -c \
  "policyd status | grep -E '^/?blocked ' | grep -q egress-block"
check "the peer answers free" retry 30 0.5 bash -c "[[ \$(docker exec free python3 $T/probe.py tcp $PEER_IP $DENIED_PORT) == ok ]]"
capture_start
for i in 1 2 3; do
  probe blocked tcp $PEER_IP $DENIED_PORT >/dev/null
  probe blocked udp-sendto $PEER_IP $DENIED_PORT >/dev/null
done
probe blocked tcp $PEER_IP $ALLOWED_PORT >/dev/null
probe blocked ping $PEER_IP >/dev/null
probe blocked icmp-raw $PEER_IP >/dev/null
check_output "free reaches the peer (no policy)" ok probe free tcp $PEER_IP $DENIED_PORT
check_output "the peer reaches blocked's server (inbound is not egress)" ok probe peer tcp "$BLOCKED_IP" $INBOUND_PORT
capture_stop
expect_arrived "blocked: TCP and UDP to $DENIED_PORT" none "$BLOCKED_IP" $DENIED_PORT
expect_arrived "blocked: TCP to $ALLOWED_PORT (nothing allowed yet)" none "$BLOCKED_IP" $ALLOWED_PORT
expect_arrived "blocked: ping and raw ICMP" none "$BLOCKED_IP" icmp
expect_arrived "free: TCP to $DENIED_PORT (the capture's control)" some "$FREE_IP" $DENIED_PORT

# ---- 4. reload ----------------------------------------------------------------------------------
step "systemctl reload contain-policyd applies the edited conffile"
# The shipped policy allows egress=block nothing; the administrator's edit: the peer's port.
sed -i "s|^allow = \\[\\]\$|allow = [{ to = [\"$PEER_IP\"], proto = \"tcp\", ports = [$ALLOWED_PORT] }]|" \
  /etc/contain/policy.toml
check "the conffile is edited" grep -qF "to = [\"$PEER_IP\"]" /etc/contain/policy.toml
check "the edited policy is valid" policyd check /etc/contain/policy.toml
pid_before=$(main_pid contain-policyd)
check "systemctl reload contain-policyd" systemctl reload contain-policyd
check "blocked reaches peer:$ALLOWED_PORT after the reload" retry 40 0.25 bash -c \
  "[[ \$(docker exec blocked python3 $T/probe.py tcp $PEER_IP $ALLOWED_PORT) == ok ]]"
check_output "blocked: peer:$DENIED_PORT still denied" denied:EPERM probe blocked tcp $PEER_IP $DENIED_PORT
check_output "policyd was reloaded, not restarted" "$pid_before" main_pid contain-policyd

step "a refused policy: systemctl reload fails and says where; the running policy stays"
cp /etc/contain/policy.toml $T/policy.good.toml
# The edit opens the denied port but misspells the mode: the whole file is refused.
sed -i -e "s|ports = \[$ALLOWED_PORT\]|ports = [$ALLOWED_PORT, $DENIED_PORT]|" \
  -e 's|^mode = "enforce"|mode = "enforcing"|' /etc/contain/policy.toml
check_fails "policyd check refuses the edit" policyd check /etc/contain/policy.toml
since=$(date '+%Y-%m-%d %H:%M:%S')
check_fails "systemctl reload contain-policyd fails on it" systemctl reload contain-policyd
check "the unit's journal names the file, line and column" retry 20 0.25 bash -c \
  "journalctl -u contain-policyd --since '$since' --no-pager | grep -qE '/etc/contain/policy.toml:[0-9]+:[0-9]+'"
check_output "policyd is still running, not restarted" "$pid_before" main_pid contain-policyd
capture_start
for i in 1 2 3; do probe blocked tcp $PEER_IP $DENIED_PORT >/dev/null; done
probe blocked tcp $PEER_IP $ALLOWED_PORT >/dev/null
capture_stop
expect_arrived "after the refused reload, blocked: TCP to $DENIED_PORT" none "$BLOCKED_IP" $DENIED_PORT
expect_arrived "after the refused reload, blocked: TCP to $ALLOWED_PORT (the capture's control)" some "$BLOCKED_IP" $ALLOWED_PORT
cp $T/policy.good.toml /etc/contain/policy.toml
check "systemctl reload on the good file again" systemctl reload contain-policyd

# ---- 4b. revocation under the units ---------------------------------------------------------------
step "a reload that removes a port aborts its established flow (as the units run the loader)"
# The loader aborts a revoked flow's socket from inside the container's network namespace: its
# unit must let it open /proc/<pid>/ns/net (CAP_SYS_PTRACE) and enter it (RestrictNamespaces=net).
# The flow sends data, pauses (every segment acknowledged), the reload removes its port, and it
# sends again: the sender must get ECONNABORTED, and no data segment may reach the peer after
# the pause.
STREAM_PORT=9191
data_segments() { grep -cE "IP $BLOCKED_IP\.[0-9]+ > $PEER_IP\.$STREAM_PORT: .* length [1-9]" "$CAP" || true; }
sed -i "s|ports = \[$ALLOWED_PORT\]|ports = [$ALLOWED_PORT, $STREAM_PORT]|" /etc/contain/policy.toml
check "systemctl reload (allows $STREAM_PORT)" systemctl reload contain-policyd
docker exec -d peer python3 $T/peer.py sink $STREAM_PORT
check "the peer's sink listens on $STREAM_PORT" retry 50 0.2 bash -c \
  "nsenter -t \$(docker inspect -f '{{.State.Pid}}' peer) -n ss -Hltn 'sport = :$STREAM_PORT' | grep -q ."
check "blocked may open flows to $STREAM_PORT" retry 40 0.25 bash -c \
  "docker exec blocked python3 $T/probe.py tcp $PEER_IP $STREAM_PORT | grep -qv denied"
capture_start
rm -f $T/rev.pause $T/rev.go $T/rev.out $T/rev.done
docker exec -d blocked sh -c "python3 $T/probe.py stream $PEER_IP $STREAM_PORT --pause $T/rev.pause \
  --go $T/rev.go --seconds 60 >$T/rev.out 2>&1; touch $T/rev.done"
check "the flow's data reaches the peer" retry 100 0.2 bash -c "(( \$(grep -cE 'IP $BLOCKED_IP\.[0-9]+ > $PEER_IP\.$STREAM_PORT: .* length [1-9]' $CAP) > 0 ))"
touch $T/rev.pause
check "the flow pauses" retry 100 0.2 grep -q paused $T/rev.out
sed -i "s|ports = \[$ALLOWED_PORT, $STREAM_PORT\]|ports = [$ALLOWED_PORT]|" /etc/contain/policy.toml
check "systemctl reload (removes $STREAM_PORT)" systemctl reload contain-policyd
check "a new flow to $STREAM_PORT is denied (the reload is in force)" retry 40 0.25 bash -c \
  "[[ \$(docker exec blocked python3 $T/probe.py tcp $PEER_IP $STREAM_PORT) == denied:EPERM ]]"
sleep 1
paused_segments=$(data_segments)
touch $T/rev.go
check "the revoked flow's sender ended" retry 120 0.5 test -f $T/rev.done
capture_stop
check_output "the revoked flow's sender got ECONNABORTED (the loader aborted its socket)" \
  error:ECONNABORTED tail -n1 $T/rev.out
n=$(( $(data_segments) - paused_segments ))
[[ $n -eq 0 ]] && pass "0 data segments of the revoked flow reached the peer after the reload" \
  || fail "$n data segments of the revoked flow ARRIVED at the peer after the reload"
if journalctl -u contain-bpf-loader -o cat | grep -q "could not abort the socket"; then
  fail "bpf-loader logged a failed abort: $(journalctl -u contain-bpf-loader -o cat | grep "could not abort" | tail -n1)"
fi

# ---- 5. restarts --------------------------------------------------------------------------------
step "systemctl restart of each unit during a probe loop"
capture_start
loop_start
for unit in contain-bpf-loader contain-resolver contain-policyd; do
  sleep $((LOOP_SECONDS / 4))
  old=$(main_pid $unit)
  check "systemctl restart $unit" systemctl restart $unit
  check "$unit runs a new process" bash -c "[[ \$(systemctl show -p MainPID --value $unit) != $old ]]"
done
sleep $((LOOP_SECONDS / 4))
check "all units active" retry 50 0.2 all_active
loop_finish "restarts"

# ---- 6. upgrade ---------------------------------------------------------------------------------
step "upgrade to $(version_of "$UPGRADE") during a probe loop"
pids_before="$(main_pid contain-bpf-loader) $(main_pid contain-resolver) $(main_pid contain-policyd)"
capture_start
loop_start
sleep 2
t=$(date +%s)
out=$("${APT[@]}" install "/tmp/$(basename "$UPGRADE")" 2>&1) && pass "apt-get install $(basename "$UPGRADE") ($(( $(date +%s) - t )) s)" \
  || { fail "the upgrade"; printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /'; }
printf '%s\n' "$out" >/mnt/share/out/upgrade.log
sleep 3
check "all units active after the upgrade" retry 50 0.2 all_active
loop_finish "upgrade"
check_output "the new version is installed" "$(version_of "$UPGRADE")" dpkg-query -W -f='${Version}' contain
for unit in contain-bpf-loader contain-resolver contain-policyd; do
  check "$unit was restarted by the upgrade" bash -c "[[ ' $pids_before ' != *' \$(systemctl show -p MainPID --value $unit) '* ]]"
done
check "the edited conffile was kept" grep -qF "to = [\"$PEER_IP\"]" /etc/contain/policy.toml
check "the bpf-loader adopted its pinned links" bash -c \
  "journalctl -u contain-bpf-loader -o cat | grep -q 're-attached to cgroup'"

# ---- 7. remove ----------------------------------------------------------------------------------
step "apt remove: the daemons stop, filtering stays, and the removal says so"
out=$("${APT[@]}" remove contain 2>&1) && pass "apt-get remove contain" \
  || fail "apt-get remove: $(tail -n 20 <<<"$out")"
printf '%s\n' "$out" >/mnt/share/out/remove.log
[[ $out == *"FILTERING STAYS IN FORCE"* && $out == *"apt purge contain"* && $out == *"until the next boot"* ]] \
  && pass "the removal says filtering stays, until the next boot, and how to remove it" || fail "the removal does not say what stays"
check_fails "no unit is active" bash -c "systemctl is-active contain-bpf-loader contain-resolver contain-policyd | grep -qx active"
check_fails "the binaries are gone" test -e /usr/bin/policyd
check_output "the package is removed, its configuration kept" "deinstall ok config-files" dpkg-query -W -f='${Status}' contain
check "the programs are still attached to contain.slice" bash -c \
  "bpftool cgroup show /sys/fs/cgroup/contain.slice | grep -q contain_"
check "the veth backstop is still on the containers' veths" bash -c "veth_filters | grep -q contain_veth"
# A container started after the removal has no entry: the unknown-container verdict (deny).
check "late (no label), started after the removal" run --name late "$IMG" sleep 3600
LATE_IP=$(ip_of late)
check "late sits under contain.slice" grep -q contain.slice "/proc/$(pid_of late)/cgroup"
capture_start
probe blocked tcp $PEER_IP $DENIED_PORT >/dev/null
probe blocked udp-sendto $PEER_IP $DENIED_PORT >/dev/null
check_output "blocked: the last policy still allows peer:$ALLOWED_PORT" ok probe blocked tcp $PEER_IP $ALLOWED_PORT
probe late tcp $PEER_IP $ALLOWED_PORT >/dev/null
probe late udp-sendto $PEER_IP $ALLOWED_PORT >/dev/null
capture_stop
expect_arrived "after remove, blocked: TCP and UDP to $DENIED_PORT" none "$BLOCKED_IP" $DENIED_PORT
expect_arrived "after remove, blocked: TCP to $ALLOWED_PORT (the capture's control)" some "$BLOCKED_IP" $ALLOWED_PORT
expect_arrived "after remove, late: TCP and UDP to $ALLOWED_PORT (unknown container)" none "$LATE_IP" $ALLOWED_PORT

# ---- 8. purge -----------------------------------------------------------------------------------
step "apt purge: configuration, pins and veth filters gone"
out=$("${APT[@]}" purge contain 2>&1) && pass "apt-get purge contain" \
  || fail "apt-get purge: $(tail -n 20 <<<"$out")"
printf '%s\n' "$out" >/mnt/share/out/purge.log
[[ $out == *"nothing is filtered any more"* ]] && pass "the purge says filtering is gone" || fail "the purge does not say filtering is gone"
check_fails "the pins are gone" test -e /sys/fs/bpf/contain
check "no program on contain.slice" bash -c \
  "out=\$(bpftool cgroup show /sys/fs/cgroup/contain.slice) && ! grep -q contain_ <<<\"\$out\""
check "no veth filter left" bash -c "out=\$(veth_filters) && ! grep -q contain_veth <<<\"\$out\""
check "no contain program left in the kernel" retry 20 0.5 bash -c \
  "out=\$(bpftool prog show) && ! grep -q contain_ <<<\"\$out\""
check_fails "/etc/contain is gone" test -e /etc/contain
check_output "the package is gone" "not-installed" bash -c "dpkg-query -W -f='\${Status}' contain 2>&1 | grep -q 'no packages found' && echo not-installed"
check_output "Docker's daemon.json is left as it is" contain.slice python3 -c \
  'import json; print(json.load(open("/etc/docker/daemon.json"))["cgroup-parent"])'
capture_start
probe blocked tcp $PEER_IP $DENIED_PORT >/dev/null
probe late tcp $PEER_IP $ALLOWED_PORT >/dev/null
capture_stop
expect_arrived "after purge, blocked: TCP to $DENIED_PORT (unfiltered now)" some "$BLOCKED_IP" $DENIED_PORT
expect_arrived "after purge, late: TCP to $ALLOWED_PORT (unfiltered now)" some "$LATE_IP" $ALLOWED_PORT

finish
