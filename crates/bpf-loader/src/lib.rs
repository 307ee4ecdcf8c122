//! bpf-loader: owns contain's BPF programs, links and maps. It knows
//! cgroups and maps, nothing about containers or policy syntax.

pub mod attached;
pub mod btf;
pub mod events;
pub mod fs;
pub mod kernel;
pub mod revoke;
pub mod service;
pub mod tracefs;
pub mod veths;
