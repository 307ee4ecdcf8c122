#!/usr/bin/env bash
# Removes contain from this host's kernel: unpinning the links detaches the
# programs; unpinning the maps frees them. Stop the daemons first.
# On kernels before 6.6 the veth backstop is a tc filter (no link to
# unpin): it is deleted from every veth here.
set -euo pipefail
pin_dir="${1:-/sys/fs/bpf/contain}"
[[ $EUID -eq 0 ]] || { echo "must run as root"; exit 1; }
filters=0
for dev in $(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
  for direction in ingress egress; do
    if tc filter show dev "$dev" "$direction" 2>/dev/null | grep -q 'contain_veth'; then
      tc filter del dev "$dev" "$direction" pref 1 handle 0xc0a70001 bpf
      filters=$((filters + 1))
    fi
  done
done
((filters == 0)) || echo "removed $filters tc filter(s) of the veth backstop"
if [[ -d "$pin_dir" ]]; then
  rm -rf "$pin_dir"
  echo "removed $pin_dir: contain's programs are detached and its maps freed"
else
  echo "nothing pinned at $pin_dir"
fi
