//! The one kit of contain's tests and benchmarks: what they need from the
//! host (namespaces, veths, cgroups, a private containerd, crafted packets,
//! test runs of BPF programs, seeded randomness) and the stand-ins they run
//! the daemons against (the in-memory loader, synthetic policies and
//! inventories).
//!
//! Nothing here ships: the daemons take this crate as a dev-dependency
//! only, and the bench (never packaged) as a dependency.
//!
//! Everything a run creates on the host carries the run's pid in its name
//! ([`cleanup`]), is removed when its guard drops, and is swept by the
//! next run if the process died first.

pub mod cgroup;
pub mod cleanup;
pub mod containerd;
pub mod lab;
pub mod memory_loader;
pub mod packets;
pub mod privileged;
pub mod process;
pub mod random;
pub mod rpc;
pub mod synthetic;
pub mod tc_program;
pub mod testrun;

use std::path::{Path, PathBuf};

/// What a kit operation could not do, and on what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run `{command}`: {source} (is it installed?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds [`Error::Io`] for an operation on `path`.
pub(crate) fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// The repository's root (tests/, scripts/ and the helper programs live
/// there).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}
