#!/usr/bin/env bash
# Runs contain on this host: bpf-loader, resolver and policyd, with the
# default policy (deploy/policy.toml, or $CONTAIN_POLICY). Installs and
# builds what it needs first. Ctrl-C stops the daemons; the BPF programs and
# maps stay pinned and keep enforcing (scripts/uninstall.sh removes them).
#
# Docker containers are covered from their first packet when Docker puts
# them under the managed parent: "cgroup-parent": "contain.slice" in
# /etc/docker/daemon.json (systemd cgroup driver).
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"
export PATH="$HOME/.cargo/bin:$PATH"
say() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

[[ $EUID -eq 0 ]] || { echo "scripts/run.sh must run as root (it loads BPF programs)"; exit 1; }
policy="${CONTAIN_POLICY:-$root_dir/deploy/policy.toml}"
parent="${CONTAIN_CGROUP_PARENT:-contain.slice}"
run_dir=/run/contain
log_dir="${CONTAIN_LOG_DIR:-/var/log/contain}"

scripts/setup.sh
say "building (release)"
cargo build --release --quiet -p bpf-loader -p resolver -p policyd
bin="$root_dir/target/release"

say "checking $policy"
"$bin/policyd" check "$policy"

mkdir -p "$run_dir" "$log_dir"
pids=()
stop() {
  say "stopping the daemons (enforcement stays pinned in /sys/fs/bpf/contain)"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_for_socket() { # path name pid
  for _ in $(seq 1 300); do
    [[ -S "$1" ]] && return 0
    kill -0 "$3" 2>/dev/null || { echo "$2 exited; see $log_dir/$2.log"; tail -n 20 "$log_dir/$2.log"; return 1; }
    sleep 0.1
  done
  echo "$2 did not create $1 in 30 s; see $log_dir/$2.log"
  return 1
}

say "starting bpf-loader (attached to cgroup $parent); log: $log_dir/bpf-loader.log"
"$bin/bpf-loader" --socket "$run_dir/loader.sock" --attach-parent "$parent" 2>>"$log_dir/bpf-loader.log" &
pids+=($!)
wait_for_socket "$run_dir/loader.sock" bpf-loader "${pids[-1]}"

say "starting resolver; log: $log_dir/resolver.log"
"$bin/resolver" --socket "$run_dir/resolver.sock" 2>>"$log_dir/resolver.log" &
pids+=($!)
wait_for_socket "$run_dir/resolver.sock" resolver "${pids[-1]}"

say "starting policyd with $policy; log: $log_dir/policyd.log"
"$bin/policyd" daemon --policy "$policy" --socket "$run_dir/policyd.sock" 2>>"$log_dir/policyd.log" &
pids+=($!)
wait_for_socket "$run_dir/policyd.sock" policyd "${pids[-1]}"

say "contain is running. Try:  $bin/policyd status   $bin/policyd events --follow"
say "denied attempts are also logged as JSON lines in $log_dir/bpf-loader.log"
wait -n "${pids[@]}"
say "a daemon exited; see $log_dir"
exit 1
