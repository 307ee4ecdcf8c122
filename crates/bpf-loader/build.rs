//! Builds the eBPF object (crates/contain-ebpf, its `contain` binary) with
//! aya-build, so that `cargo build` at the workspace root is the only build
//! anyone runs. It needs the nightly toolchain with `rust-src` and
//! `bpf-linker`; scripts/setup.sh installs them.
//!
//! `CONTAIN_EBPF_OBJ=/path/to/object` embeds a prebuilt object instead
//! (packagers such as the Nix flake build it on their own).
//!
//! With the `baselines` feature (the bench turns it on; nothing shipped
//! does) the same eBPF build also makes the benchmark-only programs, the
//! `baselines` binary, which the loader never embeds (empty with
//! `CONTAIN_EBPF_OBJ`). Dependents find both files through `links`:
//! `DEP_CONTAIN_EBPF_OBJECT` and `DEP_CONTAIN_EBPF_BASELINES`.

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{ensure, Context as _};

/// The object the loader embeds must be an ELF file: an empty or stale one
/// would only fail when the loader starts on a host.
fn ensure_elf(path: &Path, what: &str) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))?;
    ensure!(
        bytes.starts_with(b"\x7fELF"),
        "{what}: {} is not an ELF object ({} bytes)",
        path.display(),
        bytes.len()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("cargo sets OUT_DIR")?);
    let (object, baselines) = (out_dir.join("contain"), out_dir.join("baselines"));
    let with_baselines = env::var_os("CARGO_FEATURE_BASELINES").is_some();
    println!("cargo:rerun-if-env-changed=CONTAIN_EBPF_OBJ");
    println!("cargo:object={}", object.display());
    if with_baselines {
        println!("cargo:baselines={}", baselines.display());
    }
    if let Some(prebuilt) = env::var_os("CONTAIN_EBPF_OBJ") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        ensure_elf(&prebuilt, "CONTAIN_EBPF_OBJ")?;
        std::fs::copy(&prebuilt, &object)
            .with_context(|| format!("CONTAIN_EBPF_OBJ={}: cannot copy it", prebuilt.display()))?;
        if with_baselines {
            std::fs::write(&baselines, []).context("writing OUT_DIR")?;
        }
        return Ok(());
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("cargo sets CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../contain-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../contain-common/src").display()
    );
    // The eBPF crate is its own workspace (another target, another
    // toolchain); aya-build runs cargo where the build script runs.
    env::set_current_dir(&ebpf_dir).with_context(|| format!("cd {}", ebpf_dir.display()))?;
    // aya-build leaves OUT_DIR as it is when told to skip (AYA_BUILD_SKIP):
    // no object from an earlier build may pass for this one.
    if object.exists() {
        std::fs::remove_file(&object).with_context(|| format!("removing {}", object.display()))?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "contain-ebpf",
            root_dir: ebpf_dir.to_str().context("the eBPF crate's path is not UTF-8")?,
            features: if with_baselines { &["baselines"] } else { &[] },
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF object (needs the nightly toolchain with rust-src and bpf-linker: run scripts/setup.sh, or set CONTAIN_EBPF_OBJ to a prebuilt object)")?;
    ensure_elf(
        &object,
        "the eBPF build (is AYA_BUILD_SKIP set? unset it, or set CONTAIN_EBPF_OBJ)",
    )
}
