# contain, built from this repository with nixpkgs' own Rust toolchain.
#
# Two derivations:
#
#   ebpf      the kernel side (crates/contain-ebpf, its own Cargo workspace),
#             built for bpfel-unknown-none as bpf-loader's build.rs does through
#             aya-build (`cargo build --release` in that directory, which picks up
#             its .cargo/config.toml: target, build-std = ["core"], BTF flags;
#             the bench-only `baselines` feature stays off),
#             minus rustup's `nightly` toolchain. No rust-overlay/fenix:
#               - nixpkgs' stable rustc + cargo, with RUSTC_BOOTSTRAP=1 so they
#                 accept -Z build-std and the [unstable] config table;
#               - rust-src (rustPlatform.rustLibSrc) placed in the compiler's
#                 sysroot (rustc's `sysroot` override, as nixpkgs does for wasm
#                 builds that rebuild std), because build-std looks for the
#                 standard library sources there;
#               - the standard library's own crates.io dependencies, vendored from
#                 the rustc source tarball (rustPlatform.rustVendorSrc), merged
#                 with the crate's vendored dependencies: build-std resolves
#                 library/Cargo.lock offline through the same source replacement;
#               - pkgs.bpf-linker as the linker (rustc's default for bpf targets).
#             Constraint: bpf-linker's LLVM must be at least as new as rustc's
#             (it reads rustc's bitcode). Both come from the same nixpkgs, which
#             keeps them in step; if they ever drift, "Invalid record" from
#             bpf-linker is the symptom (see the version print in preBuild).
#   contain   the workspace (bpf-loader, resolver, policyd) with rustPlatform.
#             bpf-loader's build.rs embeds the object given by CONTAIN_EBPF_OBJ
#             instead of running cargo itself.
{
  lib,
  stdenv,
  buildPackages,
  rustPlatform,
  cargo,
  bpf-linker,
  symlinkJoin,
  runCommand,
}:

let
  root = ../.;

  cargoToml = lib.importTOML (root + "/Cargo.toml");
  version = cargoToml.workspace.package.version or "0.1.0";

  # Only what the Rust build reads: editing the Nix files, tests or docs does
  # not rebuild the package. Local build output (target/ directories) is left
  # out when the flake is used from a plain path rather than from git.
  crateNames = builtins.attrNames (builtins.readDir (root + "/crates"));
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.difference (lib.fileset.unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/crates")
      (lib.fileset.maybeMissing (root + "/.cargo"))
    ]) (lib.fileset.unions (map (c: lib.fileset.maybeMissing (root + "/crates/${c}/target")) crateNames));
  };

  ebpfDir = "crates/contain-ebpf";
  # The [[bin]] of crates/contain-ebpf/Cargo.toml; build.rs copies the same file.
  ebpfObjectName = "contain";

  # nixpkgs has rustVendorSrc since 2025; the fallback is the same recipe.
  rustVendorSrc =
    rustPlatform.rustVendorSrc or (runCommand "rust-vendor-src" { } ''
      tar --strip-components=1 -xzf ${buildPackages.rustc.src}
      mv vendor $out
    '');

  rustcWithLibSrc = buildPackages.rustc.override {
    sysroot = symlinkJoin {
      name = "rustc-unwrapped-with-lib-src";
      paths = [ buildPackages.rustc.unwrapped ];
      postBuild = ''
        mkdir -p $out/lib/rustlib/src/rust
        rm -rf $out/lib/rustlib/src/rust/library
        ln -s ${rustPlatform.rustLibSrc} $out/lib/rustlib/src/rust/library
      '';
    };
  };

  ebpf = stdenv.mkDerivation {
    pname = "contain-ebpf";
    inherit version src;

    # The eBPF crate is its own workspace with its own lock file.
    cargoRoot = ebpfDir;
    # Named "cargo-vendor-dir" because that is the directory the
    # .cargo/config.toml of importCargoLock names (`directory =
    # "cargo-vendor-dir"`, relative), and cargoSetupHook copies cargoDeps to
    # $NIX_BUILD_TOP/<cargoDeps' name> and appends that config: under any
    # other name cargo would find no vendored sources. The join keeps that
    # config and Cargo.lock (importCargoLock's output comes first).
    cargoDeps = symlinkJoin {
      name = "cargo-vendor-dir";
      paths = [
        (rustPlatform.importCargoLock {
          lockFile = root + "/${ebpfDir}/Cargo.lock";
          allowBuiltinFetchGit = true;
        })
        rustVendorSrc
      ];
    };

    nativeBuildInputs = [
      rustPlatform.cargoSetupHook
      cargo
      rustcWithLibSrc
      bpf-linker
    ];

    env = {
      # -Z build-std and the [unstable] table of the crate's .cargo/config.toml.
      RUSTC_BOOTSTRAP = "1";
      CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER = "bpf-linker";
    };

    preBuild = ''
      rustc --version --verbose | grep -E '^(release|LLVM)'
      bpf-linker --version || true
    '';

    buildPhase = ''
      runHook preBuild
      export CARGO_HOME="$NIX_BUILD_TOP/cargo-home"
      export CARGO_TARGET_DIR="$NIX_BUILD_TOP/ebpf-target"
      (cd ${ebpfDir} && cargo build --release --locked --offline)
      runHook postBuild
    '';

    installPhase = ''
      runHook preInstall
      install -Dm444 "$CARGO_TARGET_DIR/bpfel-unknown-none/release/${ebpfObjectName}" \
        "$out/lib/contain/contain.bpf.o"
      runHook postInstall
    '';

    # An eBPF ELF: nothing to strip, patch or shrink (stripping would drop BTF).
    dontFixup = true;

    meta = {
      description = "contain's eBPF programs (bpfel ELF object with BTF)";
      platforms = lib.platforms.linux;
    };
  };
in
rustPlatform.buildRustPackage {
  pname = "contain";
  inherit version src;

  cargoLock = {
    lockFile = root + "/Cargo.lock";
    allowBuiltinFetchGit = true;
  };

  env.CONTAIN_EBPF_OBJ = "${ebpf}/lib/contain/contain.bpf.o";

  cargoBuildFlags = [
    "--bin"
    "bpf-loader"
    "--bin"
    "resolver"
    "--bin"
    "policyd"
  ];

  # The unit tests run in CI with cargo (tier 1); the privileged tests need
  # root and a real kernel, which the build sandbox is not. The NixOS VM tests
  # (checks.*) exercise the binaries.
  doCheck = false;

  passthru = {
    inherit ebpf;
  };

  meta = {
    description = "Per-container, per-process egress firewall (eBPF) for Docker/containerd hosts";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "policyd";
    platforms = lib.platforms.linux;
  };
}
