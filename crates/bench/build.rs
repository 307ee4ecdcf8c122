//! Builds the benchmark-only eBPF object (`baselines` in crates/contain-ebpf:
//! the "pass" floor and the thesis-style linear scan) and embeds it.
//! bpf-loader's build script builds the same object but keeps it in its own
//! OUT_DIR, out of this crate's reach.
//!
//! `CONTAIN_BASELINES_OBJ=/path/to/object` skips the build and embeds a
//! prebuilt object instead.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest_dir.join("../contain-ebpf");
    let embedded = out_dir.join("baselines.bpf.o");

    println!("cargo:rerun-if-env-changed=CONTAIN_BASELINES_OBJ");
    if let Some(prebuilt) = env::var_os("CONTAIN_BASELINES_OBJ") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        std::fs::copy(&prebuilt, &embedded).expect("copying CONTAIN_BASELINES_OBJ");
        return;
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("src/baselines.rs").display()
    );
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
        .args(["build", "--release", "--locked", "--bin", "baselines"])
        .arg("--target-dir")
        .arg(&target_dir);
    // Let rustup pick the eBPF crate's own (nightly) toolchain.
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
    let status = cargo
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo in {}: {e}", ebpf_dir.display()));
    if !status.success() {
        panic!(
            "building the baselines eBPF object failed ({status}); it needs what bpf-loader's \
             build needs (scripts/setup.sh), or set CONTAIN_BASELINES_OBJ"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/baselines");
    std::fs::copy(&built, &embedded).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}
