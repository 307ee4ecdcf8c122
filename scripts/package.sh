#!/usr/bin/env bash
# Builds the Debian package: target/debian/contain_<version>_amd64.deb, then
# runs lintian on it. One command, as root on a fresh Debian 12 machine of
# this kind; installs what it needs first (scripts/setup.sh).
#
#   scripts/package.sh                       version from debian/changelog
#   CONTAIN_DEB_VERSION=0.1.0+1 scripts/package.sh   another version (upgrade tests)
#   CONTAIN_DEB_OUT=DIR scripts/package.sh   where the .deb goes (default target/debian)
#
# debian/rules builds with the workspace's target directory, so after a
# `cargo build --release` only packaging is left to do.
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"
export PATH="$HOME/.cargo/bin:$PATH"
say() { printf '\033[1m[package]\033[0m %s\n' "$*"; }

scripts/setup.sh --package >/dev/null
out="${CONTAIN_DEB_OUT:-$root_dir/target/debian}"
export CONTAIN_DEB_OUT="$out"
mkdir -p "$out"
version="${CONTAIN_DEB_VERSION:-$(dpkg-parsechangelog -S Version)}"
deb="$out/contain_${version}_amd64.deb"
rm -f "$deb"

say "building contain $version"
dpkg-checkbuilddeps
# debian/rules directly rather than dpkg-buildpackage: the same build and
# binary targets, without the .changes and .buildinfo files that
# dpkg-buildpackage would write next to the source tree (outside it).
# Rules-Requires-Root: no, so no fakeroot.
debian/rules clean
debian/rules build
debian/rules binary
[[ -f "$deb" ]] || { echo "debian/rules did not produce $deb" >&2; exit 1; }

say "lintian $deb"
# --fail-on warning: any error or warning not overridden (with its reason,
# debian/contain.lintian-overrides) fails the build.
lintian --fail-on error,warning --info "$deb"
debian/rules clean >/dev/null # the staging tree under debian/; the .deb stays
say "built $deb"
