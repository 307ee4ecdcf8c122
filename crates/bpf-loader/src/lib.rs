//! bpf-loader: owns contain's BPF programs, links and maps. It knows
//! cgroups and maps, nothing about containers or policy syntax.

pub mod btf;

/// The benchmark-only eBPF object (crates/contain-ebpf `baselines`: the
/// "pass" floor and the thesis-style scans), built by this crate's build
/// script next to the enforcement object. Empty when the object was
/// supplied prebuilt (`CONTAIN_EBPF_OBJ`).
pub static BASELINES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baselines.bpf.o"));

pub mod events;
pub mod fs;
pub mod kernel;
pub mod revoke;
pub mod service;
pub mod tracefs;
pub mod veths;
