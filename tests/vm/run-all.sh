#!/usr/bin/env bash
# Run VM scenarios one after the other and print a summary.
#
#   tests/vm/run-all.sh [SCENARIO...]      (default: tests/vm/scenarios/*.sh)
#
# A directory next to a scenario named like it without .sh plus .d (scenarios/foo.d/ for
# scenarios/foo.sh) is passed along as EXTRA_DIR: the guest sees it at /mnt/share/extra/foo.d/.
# Same environment as run.sh (CONTAIN_BIN_DIR, CONTAIN_VM_LOG_DIR, ...). Exits 1 if any failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -gt 0 ]]; then
  scenarios=("$@")
else
  scenarios=("$HERE"/scenarios/*.sh)
fi

"$HERE/build-image.sh" # once, not per scenario
export CONTAIN_VM_SKIP_BUILD=1

results=()
failed=0
T0=$(date +%s)
for s in "${scenarios[@]}"; do
  extra=()
  [[ -d ${s%.sh}.d ]] && extra=("${s%.sh}.d")
  t=$(date +%s)
  rc=0
  "$HERE/run.sh" "$s" "${extra[@]}" || rc=$?
  [[ $rc -eq 0 ]] || failed=$((failed + 1))
  results+=("$(printf '%-4s %4ss  %s%s' "$([[ $rc -eq 0 ]] && echo PASS || echo FAIL)" \
    "$(( $(date +%s) - t ))" "$(basename "$s")" "$([[ $rc -eq 0 ]] || echo " (exit $rc)")")")
done

echo
echo "== VM scenarios: $(( ${#scenarios[@]} - failed )) passed, $failed failed, $(( $(date +%s) - T0 )) s"
printf '   %s\n' "${results[@]}"
[[ $failed -eq 0 ]]
