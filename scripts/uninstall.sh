#!/usr/bin/env bash
# Removes contain from this host's kernel: unpinning the links detaches the
# programs; unpinning the maps frees them. Stop the daemons first.
set -euo pipefail
pin_dir="${1:-/sys/fs/bpf/contain}"
[[ $EUID -eq 0 ]] || { echo "must run as root"; exit 1; }
if [[ -d "$pin_dir" ]]; then
  rm -rf "$pin_dir"
  echo "removed $pin_dir: contain's programs are detached and its maps freed"
else
  echo "nothing pinned at $pin_dir"
fi
