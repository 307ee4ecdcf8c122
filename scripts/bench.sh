#!/usr/bin/env bash
# Runs contain's benchmark suite and writes the report:
#
#   docs/benchmarks.md     tables, with the plots docs/*.svg
#   docs/benchmarks.json   the raw results (machine, kernel, commit included)
#
# Per-packet program cost (BPF_PROG_TEST_RUN) of contain (egress program,
# full decision and an established flow's packet, and veth backstop), a
# thesis-style linear scan and the floor; added ping
# and TCP request/response latency against no filter, the thesis-style scan
# and nftables, contain with and without its veth backstop; iperf3
# throughput; policyd reload, container create → policy in force, daemon
# memory; connect() and sendto() per call with contain's socket hooks and
# without (phase `syscalls`); an established flow's packet on contain's
# egress program against the floor, by the kernel's bpf_stats (`flow`);
# the full decision with cold caches: 100 containers sending to
# destinations drawn at random from the rule list, against the same
# traffic warm and the floor, by bpf_stats (`cold`);
# one container start on hosts of 10, 100 and 500 containers: time to the
# policy in force and the resolver's and policyd's CPU per start (`scale`).
# About a quarter of an hour. Needs root. Installs what it needs first, idempotently
# (scripts/setup.sh: iperf3, nftables, containerd, the eBPF toolchain).
# Plots are SVG, drawn with the plotters crate (its SVG backend: no system
# font libraries).
#
#   sudo scripts/bench.sh                      # the whole suite
#   sudo scripts/bench.sh --before docs/benchmarks.json
#                                              # ... and a table of what moved since that report
#   sudo scripts/bench.sh --quick --out /tmp/bench   # a smoke run (under a minute, noisy)
#   sudo scripts/bench.sh --phases prog,latency --out /tmp/bench
#
# Arguments go to `contain-bench run` (see `contain-bench run --help`).
# Everything it creates (namespaces cbench-<pid>-*, cgroups, bpffs pins,
# nftables tables inside its namespaces, a private containerd under
# /var/lib/cbench-<pid>-cp) is removed at the end; leftovers of a killed
# run are removed by the next one.
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"
export PATH="$HOME/.cargo/bin:$PATH"
say() { printf '\033[1m[bench]\033[0m %s\n' "$*"; }

[[ $EUID -eq 0 ]] || { echo "scripts/bench.sh must run as root (it loads BPF programs, creates namespaces and cgroups)"; exit 1; }

scripts/setup.sh
for p in iperf3 nftables; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    say "installing $p"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
  fi
done

say "building (release)"
cargo build --release --quiet -p bpf-loader -p resolver -p policyd -p bench

defaults=(--bin-dir "$root_dir/target/release")
[[ " $* " == *" --out "* || " $* " == *" --out="* ]] || defaults+=(--out "$root_dir/docs")
say "running the suite"
exec "$root_dir/target/release/contain-bench" run "${defaults[@]}" "$@"
