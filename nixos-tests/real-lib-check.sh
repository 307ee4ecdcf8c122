#!/usr/bin/env bash
# The package's derivations (nix/package.nix through flake.nix) evaluated with
# nixpkgs' real library instead of the stub, where offline-check.sh cannot:
# it needs a Nix that reads current nixpkgs (Debian 12's 2.8 does not) and a
# copy of the library, which CI cannot fetch. Run by hand:
#
#   nixos-tests/real-lib-check.sh /path/to/nixpkgs.lib    (nix-community/nixpkgs.lib,
#                                                          or a nixpkgs checkout)
#
# Checks that the eBPF build's merged vendor directory has the name
# importCargoLock's cargo config gives it (see nix/package.nix), with every
# lib function the package calls being nixpkgs' own (lib.fileset, importTOML,
# ...). Builders stay stubs (nixos-tests/stub/pkgs.nix): nothing is built.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lib_dir="${1:?usage: $0 NIXPKGS_LIB_DIR (a directory holding lib/default.nix)}"
[[ -f "$lib_dir/lib/default.nix" ]] || { echo "$lib_dir/lib/default.nix: no such file; pass a nixpkgs.lib or nixpkgs checkout" >&2; exit 64; }
lib_dir="$(cd "$lib_dir" && pwd)"
echo "using $(nix-instantiate --version), lib $(nix-instantiate --eval --expr "(import $lib_dir/lib).version" 2>/dev/null || echo '?')"
# The verdict is computed by Nix itself: the check needs nothing else.
verdict="$(nix-instantiate --option build-users-group '' --eval --strict --json --expr "
  let
    p = (import $here/stub/eval-flake-with-lib.nix { lib = import $lib_dir/lib; }).packages;
    e = p.ebpf;
  in {
    ok = builtins.head e.cargoConfigVendorDirectories == e.cargoDepsName
      && builtins.head e.cargoDeps == \"cargo-vendor-dir\";
    message = \"ebpf: cargoDeps is named \${e.cargoDepsName}; importCargoLock's cargo config names \"
      + builtins.toJSON e.cargoConfigVendorDirectories + \"; the join holds \" + builtins.toJSON e.cargoDeps
      + \"; package \${p.default.name}, ebpf \${e.storePath}\";
  }")"
echo "$verdict"
[[ $verdict == *'"ok":true'* ]] && echo "1 passed, 0 failed" || { echo "0 passed, 1 failed"; exit 1; }
