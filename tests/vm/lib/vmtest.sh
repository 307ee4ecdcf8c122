# Helpers for VM test scenarios. Source it from a scenario (it runs in the guest):
#
#   . /mnt/share/lib/vmtest.sh
#   step "two containers on a bridge"
#   defer docker rm -f a b               # cleanup, run at exit in reverse order
#   check "ping a -> b"   docker exec a ping -c1 -W2 b
#   check_fails "blocked" docker exec a wget -T3 -qO- http://b/
#   check_output "body" "contain-test ok" docker exec a wget -qO- http://b:8080/
#   finish                               # summary; exit 1 if any check failed
#
# Every check prints one line "PASS: what" or "FAIL: what" (with the command's output on
# failure). The scenario's exit code is what the host's run.sh exits with.
set -euo pipefail

CONTAIN_SHARE=${CONTAIN_SHARE:-/mnt/share}
CONTAIN_BIN=${CONTAIN_BIN:-$CONTAIN_SHARE/bin}
CONTAIN_TEST_IMAGE=${CONTAIN_TEST_IMAGE:-contain-test:latest}
VMTEST_PASSED=0
VMTEST_FAILED=0
VMTEST_DEFERRED=()
VMTEST_T0=$(date +%s.%N)

_vmt_elapsed() { awk -v t0="$VMTEST_T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%6.1f", t1 - t0 }'; }
info() { echo "[$(_vmt_elapsed)s] $*"; }
step() { echo; echo "[$(_vmt_elapsed)s] == $*"; }
pass() { VMTEST_PASSED=$((VMTEST_PASSED + 1)); echo "[$(_vmt_elapsed)s] PASS: $*"; }
fail() { VMTEST_FAILED=$((VMTEST_FAILED + 1)); echo "[$(_vmt_elapsed)s] FAIL: $*"; }

# check DESC CMD...: PASS if CMD exits 0.
check() {
  local desc=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if [[ $rc -eq 0 ]]; then pass "$desc"; else fail "$desc (exit $rc: $*)"; printf '%s\n' "$out" | sed 's/^/    /'; fi
  return 0
}

# check_fails DESC CMD...: PASS if CMD exits non-zero (e.g. traffic that must be denied).
check_fails() {
  local desc=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if [[ $rc -ne 0 ]]; then pass "$desc (exit $rc)"; else fail "$desc (succeeded but must fail: $*)"; printf '%s\n' "$out" | sed 's/^/    /'; fi
  return 0
}

# check_output DESC EXPECTED CMD...: PASS if CMD exits 0 and its output contains EXPECTED.
check_output() {
  local desc=$1 want=$2 out rc=0
  shift 2
  out=$("$@" 2>&1) || rc=$?
  if [[ $rc -eq 0 && $out == *"$want"* ]]; then pass "$desc"; else
    fail "$desc (exit $rc, wanted output containing '$want': $*)"; printf '%s\n' "$out" | sed 's/^/    /'; fi
  return 0
}

# retry TRIES DELAY CMD...: run CMD until it succeeds (for things that settle asynchronously).
retry() {
  local tries=$1 delay=$2 i
  shift 2
  for ((i = 1; i <= tries; i++)); do
    "$@" && return 0
    [[ $i -lt $tries ]] && sleep "$delay"
  done
  return 1
}

# defer CMD...: run CMD at exit (reverse order), errors ignored. The guest is thrown away after
# each scenario, but cleaning up keeps scenarios composable and honest.
defer() { VMTEST_DEFERRED+=("$(printf '%q ' "$@")"); }
_vmt_exit() {
  local rc=$? i
  for ((i = ${#VMTEST_DEFERRED[@]} - 1; i >= 0; i--)); do eval "${VMTEST_DEFERRED[i]}" >/dev/null 2>&1 || true; done
  if [[ $rc -ne 0 && ${VMTEST_FINISHED:-0} != 1 ]]; then
    echo "[$(_vmt_elapsed)s] FAIL: scenario aborted with exit $rc (a command outside check failed)"
  fi
  exit "$rc"
}
trap _vmt_exit EXIT

# install_contain: copy the contain binaries from the share to /usr/local/bin (9p is slow to
# exec from and may be unmounted; a scenario usually wants them on the root file system).
install_contain() {
  local b
  for b in "$CONTAIN_BIN"/*; do [[ -x $b ]] && install -m 755 "$b" /usr/local/bin/; done
  info "installed in /usr/local/bin: $(cd "$CONTAIN_BIN" && ls | tr "\n" " ")"
}

# start_contain: the three daemons as transient systemd units, restarted when they exit (the
# loader attached to contain.slice, policyd on /etc/contain/policy.toml), each waited for until
# its socket is there.
start_contain() {
  check "start bpf-loader" systemd-run --unit=contain-bpf-loader -p Restart=always -p RestartSec=0.2 \
    /usr/local/bin/bpf-loader --attach-parent contain.slice
  # The loader verifies its programs before it serves: 10-20 s under TCG, more while the host is
  # busy.
  check "loader socket" retry 300 0.2 test -S /run/contain/loader.sock
  check "start resolver" systemd-run --unit=contain-resolver -p Restart=always -p RestartSec=0.2 \
    /usr/local/bin/resolver
  check "resolver socket" retry 100 0.2 test -S /run/contain/resolver.sock
  check "start policyd" systemd-run --unit=contain-policyd -p Restart=always -p RestartSec=0.2 \
    /usr/local/bin/policyd daemon --policy /etc/contain/policy.toml
  check "policyd socket" retry 100 0.2 test -S /run/contain/policyd.sock
}

# finish: summary line; exit 1 if any check failed or nothing was checked.
finish() {
  VMTEST_FINISHED=1
  echo
  if [[ $VMTEST_FAILED -eq 0 && $VMTEST_PASSED -gt 0 ]]; then
    echo "[$(_vmt_elapsed)s] RESULT: PASS ($VMTEST_PASSED checks)"
    exit 0
  fi
  echo "[$(_vmt_elapsed)s] RESULT: FAIL ($VMTEST_FAILED of $((VMTEST_PASSED + VMTEST_FAILED)) checks failed)"
  exit 1
}
