#!/usr/bin/env bash
# Installs what contain needs to build and test on a fresh Debian 12 machine
# of this kind, idempotently: Debian packages, the rustup pieces (stable
# components, nightly rust-src), bpf-linker built against the nightly
# toolchain's own LLVM, and cargo-fuzz (scripts/fuzz.sh). A second run only
# checks and prints "ok" lines.
#
#   scripts/setup.sh            build + test prerequisites
#   scripts/setup.sh --package  also what the Debian package needs (scripts/package.sh)
#   scripts/setup.sh --vm       also what the VM tests need (QEMU, debootstrap), and
#                               the packaging tools (the VM tier installs the package)
set -euo pipefail

want_vm=0
want_package=0
for arg in "$@"; do
  case "$arg" in
    --vm) want_vm=1; want_package=1 ;;
    --package) want_package=1 ;;
    *) echo "scripts/setup.sh: unknown option $arg (known: --package, --vm)" >&2; exit 64 ;;
  esac
done

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $EUID -ne 0 ]]; then
  SUDO=sudo
else
  SUDO=
fi

# --- Debian packages ---------------------------------------------------------
packages=(protobuf-compiler iproute2 iputils-ping curl python3 util-linux procps gcc libc6-dev
          containerd runc busybox-static jq socat nftables iperf3 bpftool
          prometheus    # prometheus and promtool: the metrics test scrapes and lints /metrics
          strace)       # holds a restarting loader at each release of its predecessor's links
if (( want_vm )); then
  packages+=(debootstrap e2fsprogs zstd qemu-utils)
fi
if (( want_package )); then
  packages+=(dpkg-dev debhelper lintian help2man)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package enables a Prometheus server on :9090; the tests start their own on loopback.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
else
  say "ok: Debian packages"
fi
if (( want_vm )) && ! command -v qemu-system-x86_64 >/dev/null; then
  # qemu-utils 10 from bookworm-backports is on these machines; the matching
  # qemu-system-x86 must come from there too.
  say "installing qemu-system-x86 (bookworm-backports when available)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null 2>&1 \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi

# --- Rust toolchains ---------------------------------------------------------
command -v rustup >/dev/null || { echo "rustup is required (it is preinstalled on these machines)" >&2; exit 1; }
stable="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$root_dir/rust-toolchain.toml")"
if ! rustup component list --toolchain "$stable" --installed 2>/dev/null | grep -q '^clippy'; then
  say "adding rustfmt and clippy to $stable"
  rustup component add rustfmt clippy --toolchain "$stable"
else
  say "ok: $stable with rustfmt and clippy"
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  say "adding rust-src to nightly (for -Z build-std=core)"
  rustup component add rust-src --toolchain nightly
else
  say "ok: nightly with rust-src"
fi

# --- bpf-linker, linked against nightly's own LLVM ---------------------------
bpf_linker_version=0.13.0
if bpf-linker --version 2>/dev/null | grep -q "$bpf_linker_version"; then
  say "ok: bpf-linker $bpf_linker_version"
else
  sysroot="$(rustc +nightly --print sysroot)"
  libllvm="$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)"
  [[ -n "$libllvm" ]] || { echo "no libLLVM in $sysroot/lib: cannot build bpf-linker" >&2; exit 1; }
  llvm_major="$(basename "$libllvm" | sed -n 's/libLLVM\.so\.\([0-9]*\).*/\1/p')"
  prefix="$(mktemp -d)"
  mkdir -p "$prefix/lib"
  ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
  say "building bpf-linker $bpf_linker_version against $(basename "$libllvm") (about 3 minutes)"
  LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib" \
    cargo +nightly install bpf-linker --version "$bpf_linker_version" --locked \
      --no-default-features --features "llvm-$llvm_major"
  rm -rf "$prefix"
fi

# --- cargo-fuzz, which builds the libFuzzer targets in fuzz/ -----------------
cargo_fuzz_version=0.13.1
if cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  say "ok: cargo-fuzz $cargo_fuzz_version"
else
  say "building cargo-fuzz $cargo_fuzz_version (about a minute)"
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi
say "done"
