//! The benchmark-only eBPF programs (crates/contain-ebpf, its `baselines`
//! binary: the "pass" floor and the thesis-style scans) come from
//! bpf-loader's build script, which builds them with the loader's object
//! when a dependent turns on its `baselines` feature (this crate does) and
//! names the file in `DEP_CONTAIN_EBPF_BASELINES` (its `links`). They are
//! the bench's own: the loader never embeds them. Copied to this crate's
//! OUT_DIR, where `programs.rs` includes them from.
//!
//! With `CONTAIN_EBPF_OBJ` set (a packager's build, no eBPF toolchain) the
//! file is empty and the bench says it cannot load the baselines.

use std::{env, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("cargo sets OUT_DIR")?);
    let built = PathBuf::from(env::var_os("DEP_CONTAIN_EBPF_BASELINES").context(
        "bpf-loader's build script names the baselines object when its `baselines` feature is on",
    )?);
    println!("cargo:rerun-if-changed={}", built.display());
    std::fs::copy(&built, out_dir.join("baselines"))
        .with_context(|| format!("copying {} to OUT_DIR", built.display()))?;
    Ok(())
}
