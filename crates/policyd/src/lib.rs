//! policyd: contain's policy daemon and operator CLI, as a library.
//!
//! The pure core, in the order data flows through it:
//!
//! * [`policy`]: parse and validate a policy file (TOML, or the thesis' JSON
//!   allow-list) into a [`policy::PolicySet`], with located errors and
//!   warnings;
//! * [`compile`]: policy × [`inventory::Inventory`] → the kernel state the
//!   loader's maps should hold, with stable ids ([`ids`]);
//! * [`explain`]: which rule decides a flow, from the kernel model's
//!   decision (`kernel_model::decide`) and the policy text;
//! * [`coverage`]: whether the loader's programs, attached to parent
//!   cgroups, see a container at all.
//!
//! [`setup`] edits Docker's configuration for the managed parent (a pure
//! merge, with the file I/O apart).
//!
//! [`daemon`] and [`cli`] are the edges: sockets, signals, files, output.

pub mod cli;
pub mod compile;
pub mod coverage;
pub mod daemon;
pub mod diagnostic;
pub mod docker_dns;
pub mod eventlog;
pub mod explain;
pub mod glob;
pub mod ids;
pub mod inventory;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod setup;
pub mod suggest;
