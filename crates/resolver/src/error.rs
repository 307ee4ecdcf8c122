use std::{io, path::Path};

/// Everything that can go wrong in the resolver's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cgroup2 (unified hierarchy) mount found in {0}; contain needs cgroup v2, mounted (pure v2 hosts mount it at /sys/fs/cgroup, hybrid ones at e.g. /sys/fs/cgroup/unified); or pass --cgroup-root")]
    NoCgroup2Mount(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("containerd at {socket}: {reason}")]
    Containerd { socket: String, reason: String },
    #[error("docker: {0}")]
    Docker(String),
    #[error("{0} timed out")]
    Timeout(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
