#!/usr/bin/env bash
# What the loader's backstop check costs at rest: bpf-loader (release) in a network namespace
# of its own with N veth pairs (2N veths, every one of which gets the backstop), its CPU time
# over SECONDS once it is ready. Root; removes its namespace, pins and socket at the end.
#
#   sudo scripts/bench-veth-check.sh [N=500] [SECONDS=60]
set -uo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
n=${1:-500}
seconds=${2:-60}
bin="$root_dir/target/release/bpf-loader"
[[ $EUID -eq 0 ]] || { echo "needs root (it loads BPF programs)"; exit 1; }
[[ -x $bin ]] || { echo "no $bin: cargo build --release -p bpf-loader"; exit 1; }
ns=cvcheck-$$
pins=/sys/fs/bpf/$ns
sock=/tmp/$ns.sock
log=$(mktemp /tmp/$ns.XXXXXX.log)
loader=
cleanup() {
  [[ -n $loader ]] && kill "$loader" 2>/dev/null && wait "$loader" 2>/dev/null
  rm -rf "$pins" "$sock"
  ip netns del "$ns" 2>/dev/null
}
trap cleanup EXIT
ip netns add "$ns" || exit 1
for i in $(seq "$n"); do echo "link add v${i}a type veth peer name v${i}b"; done | ip -n "$ns" -batch - || exit 1
# nsenter rather than `ip netns exec`, which mounts a /sys of its own and hides bpffs.
nsenter --net="/run/netns/$ns" "$bin" --socket "$sock" --pin-dir "$pins" --log-format text 2>"$log" &
loader=$!
for _ in $(seq 1200); do
  grep -q "bpf-loader ready" "$log" && break
  kill -0 "$loader" 2>/dev/null || { echo "bpf-loader exited:"; tail "$log"; exit 1; }
  sleep 0.5
done
grep -q "bpf-loader ready" "$log" || { echo "bpf-loader not ready after 10 minutes"; exit 1; }
sleep 5
cpu() { awk '{print $14 + $15}' "/proc/$loader/stat"; }
before=$(cpu)
sleep "$seconds"
after=$(cpu)
echo "bpf-loader at rest with $((2 * n)) veths ($(grep -c 'backstop attached' "$log") attached):" \
  "$(awk -v d=$((after - before)) -v hz="$(getconf CLK_TCK)" -v s="$seconds" 'BEGIN {printf "%.2f", 100 * d / hz / s}') % of one CPU over $seconds s;" \
  "$(grep -ciE ' (warn|error) ' "$log") warnings or errors in its log ($log)"
