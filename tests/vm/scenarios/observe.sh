#!/bin/bash
# Observability on a real Docker host (issue 15): the three daemons under systemd, an
# enforce-mode and an audit-mode container. A denied probe moves
# contain_container_verdicts_total for that container (and policy) and no other, and
# contain_policy_verdicts_total for its policy; a real Prometheus in the guest scrapes it and
# promtool lints the page; policyd's JSON line in the journal names the container, its id and
# image, the process and the destination. Then the audit -> review -> enforce workflow:
# `policyd suggest` turns the audited container's events into a policy that `policyd check`
# accepts and that, enforced, allows what was seen and nothing else.
. /mnt/share/lib/vmtest.sh

NET=contain-obs
SUBNET=198.18.252.0/24
PEER_IP=198.18.252.10
T=/opt/contain-test
IMG=$CONTAIN_TEST_IMAGE
METRICS=http://127.0.0.1:9879/metrics
TOOLS=$CONTAIN_SHARE/tools

probe() { local c=$1; shift; { docker exec "$c" python3 $T/probe.py "$@" 2>&1 || true; } | tail -n1; }
# value SERIES: the sample's value on the metrics page, 0 when the series is absent.
value() { curl -sf "$METRICS" | awk -v s="$1" '$1 == s { print $2; found = 1 } END { if (!found) print 0 }'; }
# moved SERIES BEFORE: the series is above BEFORE now.
moved() { awk -v a="$(value "$1")" -v b="$2" 'BEGIN { exit !(a > b) }'; }

# write_policy: lockdown for egress=block, and for watched the audit policy "observe" or, once
# reviewed, the suggested policy in its place (policyd check refuses a policy that a first one
# shadows entirely).
write_policy() {
  local watched='[[policy]]
name = "observe"
mode = "audit"
select = { name = "watched" }'
  [[ -s /tmp/suggested.toml ]] && watched=$(cat /tmp/suggested.toml)
  cat >/etc/contain/policy.toml <<EOF
mode = "enforce"
unknown_container = "deny"

[[policy]]
name = "lockdown"
select = { label = { egress = "block" } }
allow = [{ to = ["$PEER_IP"], proto = "tcp", ports = [8080] }]

$watched
EOF
}

step "contain under systemd, metrics on 127.0.0.1:9879"
install_contain
mkdir -p $T /etc/contain
cp /mnt/share/lib/probe.py /mnt/share/lib/peer_server.py $T/
getent group contain >/dev/null || groupadd --system contain
write_policy
check "policy is valid" policyd check /etc/contain/policy.toml
check "start bpf-loader" systemd-run --unit=contain-bpf-loader -p Restart=always \
  /usr/local/bin/bpf-loader --attach-parent contain.slice
# The loader verifies its programs before it serves: 10-20 s under TCG,
# more while the host is busy.
check "loader socket" retry 300 0.2 test -S /run/contain/loader.sock
check "start resolver" systemd-run --unit=contain-resolver -p Restart=always /usr/local/bin/resolver
check "resolver socket" retry 100 0.2 test -S /run/contain/resolver.sock
check "start policyd" systemd-run --unit=contain-policyd -p Restart=always \
  /usr/local/bin/policyd daemon --policy /etc/contain/policy.toml
check "policyd socket" retry 100 0.2 test -S /run/contain/policyd.sock
check "metrics are served" retry 50 0.2 curl -sf -o /dev/null "$METRICS"
defer bash -c "journalctl -u contain-bpf-loader -u contain-resolver -u contain-policyd --no-pager -o cat \
  > /mnt/share/out/daemons.log"

step "containers: peer, blocked (enforce), watched (audit)"
docker network rm "$NET" >/dev/null 2>&1 || true
defer docker network rm "$NET"
defer docker rm -f peer blocked watched
check "network $NET" docker network create --subnet "$SUBNET" "$NET"
run() { docker run -d --network "$NET" -v $T:$T:ro "$@"; }
check "peer (servers on 8080, 9090, 9091)" run --name peer --ip $PEER_IP "$IMG" \
  python3 $T/peer_server.py 8080 9090 9091
check "blocked (egress=block)" run --name blocked --label egress=block "$IMG" sleep 3600
check "watched (audit mode)" run --name watched "$IMG" sleep 3600
status_mode() { policyd --json status | python3 -c "import json,sys; s=json.load(sys.stdin); print(*[c['mode'] for c in s['containers'] if c['name']=='$1'])"; }
mode_is() { [[ $(status_mode "$1") == "$2" ]]; }
check "blocked is enforced" retry 80 0.25 mode_is blocked enforce
check "watched is audited" retry 80 0.25 mode_is watched audit
both_states() { moved 'contain_containers{state="enforced"}' 0 && moved 'contain_containers{state="audited"}' 0; }
check "the metrics count them by state (enforced, audited)" retry 40 0.25 both_states

step "a denied probe moves its container's counter, and its policy's"
BLOCKED_DENY='contain_container_verdicts_total{action="deny",policy="lockdown",container="blocked"}'
WATCHED_DENY='contain_container_verdicts_total{action="deny",policy="observe",container="watched"}'
POLICY_DENY='contain_policy_verdicts_total{action="deny",policy="lockdown"}'
before_container=$(value "$BLOCKED_DENY")
before_policy=$(value "$POLICY_DENY")
before_watched=$(value "$WATCHED_DENY")
info "before: $BLOCKED_DENY $before_container, $POLICY_DENY $before_policy"
out=$(probe blocked tcp $PEER_IP 9090)
[[ $out == denied:EPERM ]] && pass "blocked: TCP to peer:9090 denied ($out)" || fail "blocked: TCP 9090: $out"
check "contain_container_verdicts_total moved for blocked" retry 50 0.2 moved "$BLOCKED_DENY" "$before_container"
check "contain_policy_verdicts_total moved for lockdown" retry 50 0.2 moved "$POLICY_DENY" "$before_policy"
info "after: $BLOCKED_DENY $(value "$BLOCKED_DENY"), $POLICY_DENY $(value "$POLICY_DENY")"
check "no denial counted for watched" test "$(value "$WATCHED_DENY")" = "$before_watched"
curl -sf "$METRICS" >/mnt/share/out/metrics.txt

step "promtool and a real Prometheus"
if [[ -x $TOOLS/promtool && -x $TOOLS/prometheus ]]; then
  check "promtool check metrics" bash -c "curl -sf $METRICS | $TOOLS/promtool check metrics"
  mkdir -p /tmp/prom
  cat >/tmp/prom/prometheus.yml <<EOF
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: contain
    static_configs:
      - targets: ['127.0.0.1:9879']
EOF
  $TOOLS/prometheus --config.file=/tmp/prom/prometheus.yml --storage.tsdb.path=/tmp/prom/data \
    --web.listen-address=127.0.0.1:19090 >/mnt/share/out/prometheus.log 2>&1 &
  PROM_PID=$!
  defer kill "$PROM_PID"
  # promql_positive QUERY: Prometheus answers QUERY with a value above 0.
  promql_positive() {
    curl -sf --get --data-urlencode "query=$1" http://127.0.0.1:19090/api/v1/query | python3 -c \
      "import json,sys; r=json.load(sys.stdin)['data']['result']; sys.exit(0 if r and float(r[0]['value'][1]) > 0 else 1)"
  }
  check "Prometheus scrapes policyd (up == 1)" retry 60 1 promql_positive 'up{job="contain"}'
  check "Prometheus has blocked's denial" retry 30 1 promql_positive "$BLOCKED_DENY"
else
  fail "promtool and prometheus were not given to the guest: install Debian's prometheus package on the host (scripts/setup.sh)"
fi

step "the JSON line in the journal names the container"
BLOCKED_ID=$(docker inspect -f '{{.Id}}' blocked)
line() { journalctl -u contain-policyd -o cat --no-pager | grep '"container.name":"blocked"' | grep '"destination.port":9090' | tail -n1; }
has_line() { [[ -n $(line) ]]; }
check "policyd logged the denial" retry 50 0.2 has_line
line >/mnt/share/out/deny-line.json || true
check "its fields: verdict, reason, policy, container id and image, process, destination" python3 - <<EOF
import json, sys
l = json.load(open("/mnt/share/out/deny-line.json"))
want = {
    "contain.verdict": "deny", "contain.reason": "not_allowed", "contain.policy": "lockdown",
    "container.name": "blocked", "container.id": "$BLOCKED_ID",
    "container.image.name": "contain-test", "process.executable.name": "python3",
    "network.transport": "tcp", "destination.address": "$PEER_IP", "destination.port": 9090,
}
bad = {k: (l.get(k), v) for k, v in want.items() if l.get(k) != v}
exe = l.get("process.executable.path", "")
if not exe.startswith("/usr/bin/python3"):
    bad["process.executable.path"] = (exe, "/usr/bin/python3*")
if not isinstance(l.get("process.pid"), int) or l["process.pid"] <= 0:
    bad["process.pid"] = (l.get("process.pid"), "a pid")
print(json.dumps(l))
if bad:
    print("wrong (got, wanted):", bad)
    sys.exit(1)
EOF
check "the loader logs no second line for it" bash -c \
  "! journalctl -u contain-bpf-loader -o cat --no-pager | grep -q '198.18.252.10'"

step "audit -> review -> enforce"
out=$(probe watched tcp $PEER_IP 9090)
[[ $out == ok ]] && pass "watched (audit): TCP 9090 passes ($out)" || fail "watched (audit): TCP 9090: $out"
out=$(probe watched tcp $PEER_IP 9090)
[[ $out == ok ]] && pass "watched (audit): TCP 9090 again ($out)" || fail "watched (audit): TCP 9090 again: $out"
check "policyd logged the audit" retry 50 0.2 bash -c \
  "journalctl -u contain-policyd -o cat | grep '\"container.name\":\"watched\"' | grep -q '\"contain.verdict\":\"audit\"'"
check "policyd suggest --container watched" bash -c \
  "policyd suggest --container watched --since '-10min' >/tmp/suggested.toml 2>/mnt/share/out/suggest.err"
cp /tmp/suggested.toml /mnt/share/out/suggested.toml
info "suggested:"; sed 's/^/    /' /tmp/suggested.toml
check_output "the suggestion allows what watched did" "{ to = [\"$PEER_IP\"], proto = \"tcp\", ports = [9090] }" \
  cat /tmp/suggested.toml
check "policyd check accepts the suggestion alone" policyd check /tmp/suggested.toml
write_policy
check "policyd check accepts it in place of the audit policy" policyd check /etc/contain/policy.toml
check "policyd reload" policyd reload
check "watched is now enforced by the suggested policy" retry 40 0.25 mode_is watched enforce
policy_of() { policyd --json status | python3 -c "import json,sys; s=json.load(sys.stdin); print(*[c['policy'] for c in s['containers'] if c['name']=='$1'])"; }
check_output "by the suggested policy (named after it)" watched policy_of watched
out=$(probe watched tcp $PEER_IP 9090)
[[ $out == ok ]] && pass "enforced: what was seen is allowed ($out)" || fail "enforced: TCP 9090: $out"
out=$(probe watched tcp $PEER_IP 9091)
[[ $out == denied:EPERM ]] && pass "enforced: what was not seen is denied ($out)" || fail "enforced: TCP 9091: $out"
finish
