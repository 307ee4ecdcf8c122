//! Builds the eBPF object (crates/contain-ebpf) so that `cargo build` at the
//! workspace root is the only build anyone runs. The kernel side needs the
//! nightly toolchain (pinned in crates/contain-ebpf/rust-toolchain.toml),
//! `rust-src` and `bpf-linker`; scripts/setup.sh installs them.
//!
//! `CONTAIN_EBPF_OBJ=/path/to/object` skips the build and embeds a prebuilt
//! object instead (used by packagers such as the Nix flake).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest_dir.join("../contain-ebpf");
    let common_dir = manifest_dir.join("../contain-common");
    let embedded = out_dir.join("contain.bpf.o");
    let baselines = out_dir.join("baselines.bpf.o");

    println!("cargo:rerun-if-env-changed=CONTAIN_EBPF_OBJ");
    if let Some(prebuilt) = env::var_os("CONTAIN_EBPF_OBJ") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        copy(&prebuilt, &embedded);
        // Benchmarks only; an empty file makes them say the baseline is missing.
        std::fs::write(&baselines, []).expect("writing OUT_DIR");
        return;
    }
    for dir in [&ebpf_dir.join("src"), &common_dir.join("src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(file).display());
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(&ebpf_dir)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir);
    // Let rustup pick the eBPF crate's own toolchain file, not the host's
    // pinned stable toolchain that is running this build script.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().unwrap_or_else(|e| {
        panic!(
            "cannot run cargo for the eBPF crate in {}: {e}",
            ebpf_dir.display()
        )
    });
    if !status.success() {
        panic!(
            "building the eBPF object failed ({status}). It needs the nightly toolchain with \
             rust-src and bpf-linker: run scripts/setup.sh, or set CONTAIN_EBPF_OBJ to a prebuilt object."
        );
    }
    let objects = target_dir.join("bpfel-unknown-none/release");
    copy(&objects.join("contain"), &embedded);
    copy(&objects.join("baselines"), &baselines);
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| {
        panic!(
            "cannot copy eBPF object {} to {}: {e}",
            from.display(),
            to.display()
        )
    });
}
