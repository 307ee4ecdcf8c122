//! contain's kernel-state contract as plain data, in one place:
//!
//! - [`state`]: what the policy maps hold ([`state::KernelState`]) and one
//!   change to them ([`state::MapOp`]);
//! - [`diff`]: the one diff between two states and the order its
//!   operations reach the kernel in;
//! - [`validate`]: what the loader accepts (the real one and the in-memory
//!   one alike);
//! - [`repr`]: conversion to and from the kernel's `#[repr(C)]` keys and
//!   values in `contain-common`;
//! - [`prefix`]: the 128-bit destination prefixes and port blocks the maps
//!   are keyed by;
//! - [`decide`]: a model of the egress program's decision on that state,
//!   held equal to the kernel's by a differential test;
//! - [`veth`]: a model of the veth backstop's decision on a frame, held
//!   equal to the kernel's by another.
//!
//! Pure: no I/O, no BPF.

pub mod decide;
pub mod diff;
pub mod prefix;
pub mod repr;
pub mod state;
pub mod validate;
pub mod veth;
