#!/usr/bin/env bash
# Fuzzes, for a bounded time, every input another party controls: the policy
# files (TOML, thesis JSON), the frames of every daemon's socket, the
# kernel's event records, and what the resolver reads from /proc, mountinfo,
# Docker and containerd. Builds the libFuzzer targets in fuzz/ (nightly,
# cargo-fuzz, AddressSanitizer, debug assertions on so that an overflow is a
# crash) and runs each one, starting from its committed seeds in
# fuzz/corpus/<target>/. Prints one line per target, then
# "N passed, N failed".
#
# A crash, a leak, a timeout or running out of memory fails the target and
# leaves the input in fuzz/artifacts/<target>/; the target's binary given
# that file replays it. Once the bug is fixed, copy the input into
# fuzz/corpus/<target>/ so that every later run replays it first.
#
#   scripts/fuzz.sh                     25 s per target (what CI runs)
#   scripts/fuzz.sh 600                 longer, e.g. before a release
#   scripts/fuzz.sh 0                   replay the seeds only
#   scripts/fuzz.sh 60 rpc_frames       some targets only
#   scripts/fuzz.sh --build-only        build the targets, run none (the suite
#                                       builds them beside the privileged tests)
#   CONTAIN_FUZZ_TARGET_DIR=...         where to build (default
#                                       /var/cache/contain-fuzz/target, or
#                                       fuzz/target if that is not writable)
set -uo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

build_only=0
if [[ ${1:-} == --build-only ]]; then
  build_only=1
  shift
fi
seconds="${1:-25}"
targets=("${@:2}")

# The build lives outside the work tree when it can, so that CI, which
# starts from a fresh clone every time, rebuilds only what changed (a cold
# build of the targets and their dependencies takes several minutes).
target_dir="${CONTAIN_FUZZ_TARGET_DIR:-/var/cache/contain-fuzz/target}"
if ! mkdir -p "$target_dir" 2>/dev/null || [[ ! -w "$target_dir" ]]; then
  target_dir="$root_dir/fuzz/target"
  mkdir -p "$target_dir"
fi
target_dir="$(cd "$target_dir" && pwd)"
work="fuzz/target/contain-fuzz"
mkdir -p "$work"
# The targets decode events; they never load programs. An ELF object with
# no programs in it (bpf-loader's build.rs refuses anything but ELF) spares
# building the eBPF crate a second time. Created once: a new mtime would
# make cargo rebuild bpf-loader.
no_programs="$target_dir/no-programs.o"
if [[ "$(head -c 4 "$no_programs" 2>/dev/null | od -An -c | tr -d ' ')" != '177ELF' ]]; then
  : | cc -x c -c -o "$no_programs" - || { echo "FAIL build: cc cannot make $no_programs"; echo "0 passed, 1 failed"; exit 1; }
fi
export CONTAIN_EBPF_OBJ="$no_programs"

started=$(date +%s)
if ! cargo +nightly fuzz build --debug-assertions --target-dir "$target_dir" >"$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log"
  echo "FAIL build (log: $work/build.log)"
  echo "0 passed, 1 failed"
  exit 1
fi
built=$(date +%s)
echo "built the fuzz targets in $((built - started)) s (in $target_dir)"
(( build_only )) && exit 0

if (( ${#targets[@]} == 0 )); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"

# Each target runs libFuzzer on one core: as many at once as there are cores, so the
# bound per target holds and the phase takes a fraction of the sum.
fuzz_one() { # target: writes its verdict line to $work/$target.result
  local target=$1 binary seeds scratch artifacts log bound status runs artifact reason
  binary="$target_dir/$host/release/$target"
  seeds="fuzz/corpus/$target"
  # libFuzzer adds what it finds to the first directory: a scratch one, so
  # the committed seeds change only by hand.
  scratch="$work/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  log="$work/$target.log"
  mkdir -p "$scratch" "$artifacts"
  if [[ ! -x "$binary" || ! -d "$seeds" ]]; then
    echo "FAIL $target: no such target or no seeds in $seeds" >"$work/$target.result"
    return
  fi
  if [[ $seconds -eq 0 ]]; then
    bound=(-runs=0) # libFuzzer reads 0 s as "no limit"
  else
    bound=(-max_total_time="$seconds")
  fi
  "$binary" "$scratch" "$seeds" "${bound[@]}" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
  status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  if [[ $status -eq 0 ]]; then
    echo "PASS $target: ${runs:-?} inputs in ${seconds} s, $(find "$scratch" "$seeds" -type f | wc -l) in the corpus"
  else
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    reason=$(grep -m1 -E '^==[0-9]+== ERROR|panicked at|^thread .* panicked' "$log")
    echo "FAIL $target: ${reason:-exit $status}; input: ${artifact:-none}; replay: $binary <input> (log: $log)"
  fi >"$work/$target.result"
}

at_once=$(nproc)
for target in "${targets[@]}"; do
  rm -f "$work/$target.result"
  while (( $(jobs -rp | wc -l) >= at_once )); do wait -n; done
  fuzz_one "$target" &
done
wait
passed=0
failed=0
for target in "${targets[@]}"; do
  line=$(cat "$work/$target.result" 2>/dev/null || echo "FAIL $target: it reported nothing")
  echo "$line"
  if [[ $line == PASS* ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "fuzzing took $(($(date +%s) - started)) s (build $((built - started)) s)"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
