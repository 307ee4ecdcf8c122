//! Builds the benchmark-only eBPF programs (crates/contain-ebpf, its
//! `baselines` binary: the "pass" floor and the thesis-style scans) with
//! aya-build. They are the bench's own: the loader never embeds them.
//!
//! With `CONTAIN_EBPF_OBJ` set (a packager's build, no eBPF toolchain) the
//! object is left empty and the bench says it cannot load the baselines.

use std::{env, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("cargo sets OUT_DIR")?);
    println!("cargo:rerun-if-env-changed=CONTAIN_EBPF_OBJ");
    if env::var_os("CONTAIN_EBPF_OBJ").is_some() {
        std::fs::write(out_dir.join("baselines"), []).context("writing OUT_DIR")?;
        return Ok(());
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("cargo sets CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../contain-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../contain-common/src").display()
    );
    // The eBPF crate is its own workspace; aya-build runs cargo where the
    // build script runs.
    env::set_current_dir(&ebpf_dir).with_context(|| format!("cd {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "contain-ebpf",
            root_dir: ebpf_dir.to_str().context("the eBPF crate's path is not UTF-8")?,
            features: &["baselines"],
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the baselines eBPF object (needs the nightly toolchain with rust-src and bpf-linker: run scripts/setup.sh)")
}
