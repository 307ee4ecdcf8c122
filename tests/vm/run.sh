#!/usr/bin/env bash
# Run one VM test scenario in the Debian 12 guest.
#
#   tests/vm/run.sh SCENARIO_SCRIPT [EXTRA_DIR...]
#
# SCENARIO_SCRIPT is a bash script that runs in the guest as root (see README.md for the API).
# It finds, under /mnt/share:  bin/ (contain binaries), debs/ (packages), lib/ (vmtest.sh,
# lib/*.py, probe.py...),
# extra/<basename of each EXTRA_DIR>/, out/ (files to bring back).
# Exits with the scenario's exit code; 124 = a phase timed out; 125 = harness/guest failure.
#
# Environment:
#   CONTAIN_BIN_DIR          where bpf-loader, resolver, policyd are taken from
#                            (default: <repo>/target/release; missing ones are skipped)
#   CONTAIN_VM_DEB_DIR       the .deb files the guest finds in /mnt/share/debs (default:
#                            <repo>/target/vm-debs, which scripts/test.sh fills; none if absent)
#   CONTAIN_VM_CACHE         image + saved state cache (default /var/cache/contain-vm)
#   CONTAIN_VM_SNAPSHOT=0    always cold boot (no saved VM state)
#   CONTAIN_VM_TIMEOUT       seconds the scenario itself may take (default 900)
#   CONTAIN_VM_BOOT_TIMEOUT  seconds for a cold boot to "docker ready" (default 420)
#   CONTAIN_VM_RESTORE_TIMEOUT seconds for a restore to reach the agent (default 90)
#   CONTAIN_VM_LOG_DIR       if set, logs are copied to $CONTAIN_VM_LOG_DIR/<scenario>/
#   CONTAIN_VM_KEEP=1        keep the run directory (disk overlay, sockets, logs)
#   CONTAIN_VM_SKIP_BUILD=1  do not call build-image.sh first
#   CONTAIN_VM_ACCEL         auto (default) | tcg | kvm
#   CONTAIN_VM_CPU           QEMU's -cpu under TCG (default qemu64)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${CONTAIN_VM_CACHE:-/var/cache/contain-vm}
BIN_DIR=${CONTAIN_BIN_DIR:-$REPO/target/release}
DEB_DIR=${CONTAIN_VM_DEB_DIR:-$REPO/target/vm-debs}
CONTAIN_BINS=(bpf-loader resolver policyd)

log() { printf '[run %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 125; }

[[ $# -ge 1 ]] || { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
SCENARIO=$1
shift
[[ -f $SCENARIO ]] || die "no such scenario: $SCENARIO"
NAME=$(basename "$SCENARIO" .sh)
for d in "$@"; do [[ -d $d ]] || die "EXTRA_DIR is not a directory: $d"; done

# The image build is a cheap no-op when the cache is current.
if [[ ${CONTAIN_VM_SKIP_BUILD:-0} != 1 ]]; then
  "$HERE/build-image.sh" || die "image build failed"
fi
IMG=$CACHE/image
[[ -s $IMG/base.qcow2 ]] || die "no image in $IMG: run tests/vm/build-image.sh"

# Short path: QEMU's unix sockets live here (108-byte limit on socket paths).
RUN=$(mktemp -d "${TMPDIR:-/tmp}/contain-vm.XXXXXX")
SHARE=$RUN/share
cleanup() {
  local rc=$?
  if [[ -n ${CONTAIN_VM_LOG_DIR:-} ]]; then
    local dst=$CONTAIN_VM_LOG_DIR/$NAME
    mkdir -p "$dst"
    cp -f "$SHARE/log" "$dst/scenario.log" 2>/dev/null || true
    cp -f "$RUN/console.log" "$dst/console.log" 2>/dev/null || true
    cp -f "$RUN/qemu.log" "$dst/qemu.log" 2>/dev/null || true
    cp -rf "$SHARE/out" "$dst/" 2>/dev/null || true
  fi
  if [[ ${CONTAIN_VM_KEEP:-0} == 1 ]]; then
    log "kept $RUN"
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT

# The share: the scenario, the helper library, the contain binaries and the extra dirs.
# Copies, not the repo itself: the guest gets write access to the share.
mkdir -p "$SHARE"/{bin,debs,lib,extra,out}
install -m 755 "$SCENARIO" "$SHARE/scenario.sh"
install -m 644 "$HERE/lib/vmtest.sh" "$SHARE/lib/vmtest.sh"
# VM-only python helpers (frames.py: packet-socket probes, a capture, a tiny DNS server).
for f in "$HERE"/lib/*.py; do if [[ -e $f ]]; then install -m 755 "$f" "$SHARE/lib/"; fi; done
# The same probe and peer server as the privileged host tests, so "ping", "raw ICMP" and
# "connected UDP" mean one thing in both tiers.
install -m 755 "$REPO/tests/probe.py" "$REPO/tests/peer_server.py" "$REPO/tests/bypass/peer.py" "$SHARE/lib/"
# The first-frame sender: static, so that it runs in the busybox container image.
cc -static -O2 -Wall -Werror -o "$SHARE/lib/first_frames" "$HERE/lib/first_frames.c" \
  || { log "cannot build lib/first_frames.c (needs cc and libc6-dev: scripts/setup.sh --vm)"; exit 1; }
found=()
for b in "${CONTAIN_BINS[@]}"; do
  if [[ -x $BIN_DIR/$b ]]; then
    install -m 755 "$BIN_DIR/$b" "$SHARE/bin/$b"
    found+=("$b")
  fi
done
log "contain binaries from $BIN_DIR: ${found[*]:-(none)}"
debs=()
for f in "$DEB_DIR"/*.deb; do
  if [[ -f $f ]]; then install -m 644 "$f" "$SHARE/debs/"; debs+=("$(basename "$f")"); fi
done
log "packages from $DEB_DIR: ${debs[*]:-(none)}"
for d in "$@"; do cp -a "$d" "$SHARE/extra/$(basename "$d")"; done
# The host's Prometheus and promtool (Debian's prometheus package; libc only, so they run in the
# Debian 12 guest too): the metrics scenario scrapes and lints with the real tools.
mkdir -p "$SHARE/tools"
for t in prometheus promtool; do
  if command -v "$t" >/dev/null; then install -m 755 "$(command -v "$t")" "$SHARE/tools/"; fi
done

state_args=(--state-dir "$CACHE/state")
[[ ${CONTAIN_VM_SNAPSHOT:-1} == 0 ]] && state_args=(--no-state)

log "scenario $NAME"
T0=$(date +%s)
# vmctl.py runs in the background so that a TERM/INT/HUP to this script reaches it at once
# (bash would otherwise wait for it to finish first); it then stops its QEMU and exits.
set +e
python3 "$HERE/vmctl.py" run --image "$IMG/base.qcow2" --kernel "$IMG/vmlinuz" \
  --initrd "$IMG/initrd.img" --share "$SHARE" --run-dir "$RUN" "${state_args[@]}" &
VMCTL=$!
trap 'kill -TERM "$VMCTL" 2>/dev/null' TERM INT HUP
wait "$VMCTL"
rc=$?
while kill -0 "$VMCTL" 2>/dev/null; do wait "$VMCTL"; rc=$?; done
trap - TERM INT HUP
set -e
case $rc in
  0) verdict=PASS ;;
  124) verdict="FAIL (timeout)" ;;
  125) verdict="FAIL (harness or guest error, no exit code from the scenario)" ;;
  *) verdict="FAIL (exit $rc)" ;;
esac
log "scenario $NAME: $verdict in $(( $(date +%s) - T0 )) s"
exit "$rc"
