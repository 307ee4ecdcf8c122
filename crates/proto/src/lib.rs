//! The wire between contain's daemons: tarpc service traits, the serde types
//! they exchange, where their sockets live, and a Unix-socket transport that
//! checks each peer's credentials before serving it; and what more than one
//! daemon reads of the host the same way (`mounts`, `cgroups`).

pub mod cgroups;
pub mod loader;
pub mod mounts;
pub mod peer_groups;
pub mod policyd;
pub mod resolver;
pub mod runtime;
pub mod transport;

/// Bumped when a service trait or a shared type changes incompatibly, or
/// gains a method: a server that does not know a request closes the
/// connection, so a client asks for a newer method only of a peer that
/// reports the version that brought it.
pub const API_VERSION: u32 = 4;

/// Where the daemons listen by default.
pub mod paths {
    pub const RUN_DIR: &str = "/run/contain";
    pub const LOADER_SOCKET: &str = "/run/contain/loader.sock";
    pub const RESOLVER_SOCKET: &str = "/run/contain/resolver.sock";
    pub const POLICYD_SOCKET: &str = "/run/contain/policyd.sock";
    /// Group allowed on the policyd socket; it owns the daemons' sockets.
    pub const GROUP: &str = "contain";
    /// The user policyd runs as: the one client besides root the loader
    /// (with `--client-user`) and the resolver admit.
    pub const USER: &str = "contain";
}
