#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   formatting, clippy, unit tests, privileged integration tests (root: real
#   kernel, namespaces, cgroups, BPF), bounded fuzzing (scripts/fuzz.sh), the
#   NixOS module's offline evaluation, the Debian package (built, lintian),
#   and the VM tests with real Docker in a Debian 12 guest (one of which
#   installs, upgrades and purges that package).
# Installs what it needs first (scripts/setup.sh). Ends with one line:
#   "N passed, N failed"
#
#   scripts/test.sh            everything
#   CONTAIN_SKIP_VM=1 ...      everything but the VM tier (for quick local runs;
#                              CI never sets it)
set -uo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

# As root, scratch space of root's own: the tests name their directories
# after their pid in $TMPDIR, and in a world-writable /tmp another user could
# make those paths first (a symlink at a log file's name then has root write
# wherever it points). Others may pass through (mode 0711: a test runs the
# CLI as another user against a socket in there), never create.
if [[ $EUID -eq 0 ]]; then
  TMPDIR=/var/tmp/contain-test
  if [[ -L $TMPDIR ]] || { [[ -e $TMPDIR ]] && [[ $(stat -c %u:%a "$TMPDIR") != 0:711 ]]; }; then
    rm -rf "$TMPDIR"
  fi
  mkdir -p -m 0711 "$TMPDIR"
  if [[ -L $TMPDIR ]] || [[ $(stat -c %u:%a "$TMPDIR") != 0:711 ]]; then
    echo "test.sh: $TMPDIR is not root's (mode 0711); another user made it: remove it and run again" >&2
    exit 1
  fi
  export TMPDIR
fi

# Each phase's wall time goes to the summary at the end (the suite must stay
# well inside CI's limit: this shows where its time goes).
phase_times=()
phase_name=""
phase_start=$SECONDS
end_phase() {
  [[ -n $phase_name ]] && phase_times+=("$(printf '%5d s  %s' $((SECONDS - phase_start)) "$phase_name")")
  phase_name=""
}
say() {
  end_phase
  phase_name="$*"
  phase_start=$SECONDS
  printf '\n\033[1m[test]\033[0m %s\n' "$*"
}
passed=0
failed=0
skipped=0
failures=()
log_dir="$(mktemp -d "${TMPDIR:-/tmp}/contain-test.XXXXXX")"

record() { # name status
  if [[ $2 -eq 0 ]]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$1")
  fi
}

# Adds the counts of every "test result:" line of a cargo test log; a run
# that died before reporting counts as one failure.
count_cargo() { # log status name
  local p f i
  p=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$1" | awk '{s+=$4} END {print s+0}')
  f=$(grep -Eo '[0-9]+ failed;' "$1" | awk '{s+=$1} END {print s+0}')
  # Ignored tests did not run: skipped, never passed (each says why).
  i=$(grep -Eo '[0-9]+ ignored;' "$1" | awk '{s+=$1} END {print s+0}')
  passed=$((passed + p))
  failed=$((failed + f))
  skipped=$((skipped + i))
  if [[ $2 -ne 0 && $f -eq 0 ]]; then
    failed=$((failed + 1))
  fi
  if [[ $2 -ne 0 ]]; then failures+=("$3"); fi
}

# Adds a suite's own "N passed, N failed" line.
count_summary() { # log status name
  local line p f s
  line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n1)
  p=$(grep -Eo '[0-9]+ passed' <<<"$line" | grep -Eo '[0-9]+')
  f=$(grep -Eo '[0-9]+ failed' <<<"$line" | grep -Eo '[0-9]+')
  s=$(grep -Eo '[0-9]+ skipped' <<<"$line" | grep -Eo '[0-9]+')
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  skipped=$((skipped + ${s:-0}))
  if [[ $2 -ne 0 && ${f:-0} -eq 0 ]]; then failed=$((failed + 1)); fi
  if [[ $2 -ne 0 ]]; then failures+=("$3"); fi
}

say "setup"
want_vm=--vm
[[ "${CONTAIN_SKIP_VM:-0}" == 1 ]] && want_vm=
scripts/setup.sh $want_vm || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

if [[ $EUID -ne 0 ]]; then
  echo "NOTE: not root: the privileged integration tests and VM tests do not apply and will say so."
fi

# The VM image (debootstrap, a kernel, a disk: minutes on a fresh machine, mostly one core and
# the disk) builds in the background beside the host phases; the VM tier waits for it. Cached:
# seconds when its inputs have not changed.
image_pid=
if [[ -n $want_vm && $EUID -eq 0 && -x tests/vm/build-image.sh ]]; then
  # Its own process group: an interrupted suite stops debootstrap and apt too.
  setsid tests/vm/build-image.sh >"$log_dir/vm-image.log" 2>&1 &
  image_pid=$!
fi

# The release daemons (the package and the VM tier need them) and the fuzz targets build in
# the background too, at the lowest priority: the foreground's compiles leave gaps, and the
# privileged tests spend much of their time waiting (captures, timeouts). Their phases below
# wait for them; a failed build there is built again in the foreground, which reports it.
declare -A build_pid=()
start_background_build() { # name command...
  local name=$1
  shift
  # A session of its own (so the EXIT trap stops the whole build) is an autogroup of its own
  # too, which the scheduler weighs against the suite's whatever the processes' nice values:
  # the build lowers its autogroup's weight first.
  setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' _ "$@" \
    >"$log_dir/$name.log" 2>&1 &
  build_pid[$name]=$!
}
wait_background_build() { # name
  local name=$1
  [[ -n ${build_pid[$name]:-} ]] || return 0
  wait "${build_pid[$name]}" || echo "the $name beside the tests failed (its log below); the phase builds again"
  sed "s/^/  $name: /" "$log_dir/$name.log"
  unset "build_pid[$name]"
}
start_background_build release-build cargo build --release --locked --quiet -p bpf-loader -p resolver -p policyd
start_background_build fuzz-build scripts/fuzz.sh --build-only
trap 'for p in $image_pid "${build_pid[@]}"; do kill -- -"$p" 2>/dev/null; done' EXIT

say "cargo fmt --check"
cargo fmt --all --check && (cd crates/contain-ebpf && cargo fmt --check) && (cd fuzz && cargo fmt --check)
record "cargo fmt" $?

say "cargo clippy --all-targets -- -D warnings (workspace and eBPF crate)"
cargo clippy --workspace --all-targets --quiet -- -D warnings \
  && (cd crates/contain-ebpf && cargo clippy --release --all-features --quiet -- -D warnings)
record "cargo clippy" $?

say "cargo test (unit and privileged integration tests)"
# A root-only test that finds no root returns early, which cargo counts as
# passed: it records why in this file instead, and is counted as skipped.
export CONTAIN_SKIPPED_LOG="$log_dir/skipped-root.log"
: >"$CONTAIN_SKIPPED_LOG"
# One check of a test that ran (a probe of a hole known to be open):
# skipped, but the test's pass stands.
export CONTAIN_SKIPPED_CHECKS_LOG="$log_dir/skipped-checks.log"
: >"$CONTAIN_SKIPPED_CHECKS_LOG"
cargo test --workspace --no-fail-fast 2>&1 | tee "$log_dir/cargo-test.log"
count_cargo "$log_dir/cargo-test.log" "${PIPESTATUS[0]}" "cargo test"
not_run=$(wc -l <"$CONTAIN_SKIPPED_LOG")
passed=$((passed - not_run))
skipped=$((skipped + not_run + $(wc -l <"$CONTAIN_SKIPPED_CHECKS_LOG")))

# Bounded fuzzing of every input another party controls (policy files,
# socket frames, kernel events, resolver inputs), from the seeds in
# fuzz/corpus/. CONTAIN_FUZZ_SECONDS: time per target (CI leaves the default).
say "fuzzing, ${CONTAIN_FUZZ_SECONDS:-25} s per target"
wait_background_build fuzz-build
scripts/fuzz.sh "${CONTAIN_FUZZ_SECONDS:-25}" 2>&1 | tee "$log_dir/fuzz.log"
count_summary "$log_dir/fuzz.log" "${PIPESTATUS[0]}" "fuzzing"

if [[ -x nixos-tests/offline-check.sh ]]; then
  say "NixOS module and flake: offline parse and evaluation"
  nixos-tests/offline-check.sh 2>&1 | tee "$log_dir/nix.log"
  count_summary "$log_dir/nix.log" "${PIPESTATUS[0]}" "nix offline check"
fi

# The Debian package, built twice: the release, and the same code as a
# higher version, which the VM tier's package scenario upgrades to
# (tests/vm/run.sh passes target/vm-debs to the guest). Each build ends with
# lintian, which fails it on any error or warning not overridden.
build_debs() {
  rm -rf target/vm-debs
  CONTAIN_DEB_OUT="$root_dir/target/vm-debs" scripts/package.sh \
    && CONTAIN_DEB_OUT="$root_dir/target/vm-debs" \
      CONTAIN_DEB_VERSION="$(dpkg-parsechangelog -S Version)+vmupgrade1" scripts/package.sh
}
say "Debian package (scripts/package.sh, lintian)"
wait_background_build release-build
build_debs 2>&1 | tee "$log_dir/package.log"
record "debian package" "${PIPESTATUS[0]}"

if [[ "${CONTAIN_SKIP_VM:-0}" == 1 ]]; then
  echo "VM tier skipped: CONTAIN_SKIP_VM=1 (CI runs it)"
elif [[ -x tests/vm/run-all.sh ]]; then
  say "VM tests: Debian 12 guest, real Docker and containerd"
  if [[ -n $image_pid ]]; then
    # run-all.sh builds the image again if this failed, and fails with its reason.
    wait "$image_pid" || echo "the VM image's build beside the host phases failed; run-all.sh tries again"
    image_pid=
    sed 's/^/  image: /' "$log_dir/vm-image.log"
  fi
  cargo build --release --quiet -p bpf-loader -p resolver -p policyd
  CONTAIN_BIN_DIR="$root_dir/target/release" tests/vm/run-all.sh 2>&1 | tee "$log_dir/vm.log"
  count_summary "$log_dir/vm.log" "${PIPESTATUS[0]}" "VM tests"
fi

# Last: each security check the README says a test proves is taken out of
# the code, and its test must fail (tests/mutations/catalogue.toml). It edits
# and rebuilds the tree, so nothing may build beside it or after it.
say "mutation checks (tests/mutations/run.py)"
tree_state() { git status --porcelain 2>&1; git diff HEAD 2>&1 | sha256sum; }
tree_before=$(tree_state)
tests/mutations/run.py 2>&1 | tee "$log_dir/mutations.log"
count_summary "$log_dir/mutations.log" "${PIPESTATUS[0]}" "mutation checks"
if [[ $(tree_state) != "$tree_before" ]]; then
  echo "the mutation checks left the tree changed:"
  git status --short
  record "mutation checks left the tree as they found it" 1
fi

end_phase
echo
echo "time per phase (${SECONDS} s in all):"
printf '  %s\n' "${phase_times[@]}"
if (( ${#failures[@]} )); then
  echo "failed suites: ${failures[*]} (logs in $log_dir)"
fi
if (( skipped )); then
  echo "skipped (did not run, or the check of a hole known to be open), with the reason:"
  grep -E '^test .* \.\.\. ignored' "$log_dir/cargo-test.log" | sed 's/^/  /'
  sed 's/^/  /' "$CONTAIN_SKIPPED_LOG" "$CONTAIN_SKIPPED_CHECKS_LOG"
  grep -E '^SKIP ' "$log_dir/mutations.log" 2>/dev/null | sed 's/^/  mutation /'
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[[ $failed -eq 0 && ${#failures[@]} -eq 0 ]]
