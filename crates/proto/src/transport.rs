//! tarpc over Unix stream sockets, JSON-framed, with `SO_PEERCRED` checks.
//!
//! Every server accepts a connection only after the peer's uid/gid pass its
//! [`PeerPolicy`]; a refused peer is logged and dropped before any request is
//! read.

use std::{io, os::unix::fs::PermissionsExt, path::Path};

use futures::Future;
use serde::{de::DeserializeOwned, Serialize};
use tarpc::{serde_transport::Transport, tokio_serde::formats::Json};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::LengthDelimitedCodec;

/// Largest frame accepted: a full state dump of a big host fits.
const MAX_FRAME_BYTES: usize = 256 << 20;

/// Who may talk to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerPolicy {
    /// uid 0 only.
    RootOnly,
    /// uid 0, or a process whose uid or primary gid is the given group, or
    /// that is a member of it.
    RootOrGroup(u32),
    /// uid 0, or exactly this uid (a daemon's service user).
    RootOrUser(u32),
}

/// The credentials of a connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

impl PeerPolicy {
    pub fn admits(&self, peer: &PeerCred) -> bool {
        if peer.uid == 0 {
            return true;
        }
        match *self {
            PeerPolicy::RootOnly => false,
            PeerPolicy::RootOrGroup(gid) => {
                peer.gid == gid || peer.pid.is_some_and(|pid| process_in_group(pid, gid))
            }
            PeerPolicy::RootOrUser(uid) => peer.uid == uid,
        }
    }
}

/// Supplementary groups of a live process, from /proc.
fn process_in_group(pid: i32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// A JSON transport over a connected Unix stream.
pub fn framed<Item, SinkItem>(
    stream: UnixStream,
) -> Transport<UnixStream, Item, SinkItem, Json<Item, SinkItem>>
where
    Item: DeserializeOwned,
    SinkItem: Serialize,
{
    tarpc::serde_transport::new(
        tokio_util::codec::Framed::new(stream, codec()),
        Json::default(),
    )
}

/// Connects to a server's socket, saying which socket failed and why.
pub async fn connect(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to {}: {e} (is the daemon running, and may this user use its socket?)",
                path.display()
            ),
        )
    })
}

/// Binds a listening socket at `path` with file mode `mode` (and group
/// `gid` if given), replacing a stale socket file from a previous run.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Reads `SO_PEERCRED` of a connected stream.
pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let cred = stream.peer_cred()?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// Accepts connections until the listener fails, handing each admitted one
/// (with its credentials) to `on_connection`, which starts serving it, e.g.:
///
/// ```ignore
/// accept_loop(listener, PeerPolicy::RootOnly, |stream, _peer| {
///     let channel = BaseChannel::with_defaults(framed(stream));
///     tokio::spawn(channel.execute(MyServer.serve()).for_each(spawn_request));
/// })
/// ```
pub async fn accept_loop<F>(
    listener: UnixListener,
    policy: PeerPolicy,
    mut on_connection: F,
) -> io::Result<()>
where
    F: FnMut(UnixStream, PeerCred),
{
    loop {
        let (stream, _) = listener.accept().await?;
        let peer = match peer_cred(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; connection dropped");
                continue;
            }
        };
        if !policy.admits(&peer) {
            tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "peer refused by credential check");
            continue;
        }
        on_connection(stream, peer);
    }
}

/// Runs one request of a tarpc channel on its own task.
pub async fn spawn_request(fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(fut);
}

/// Context for a call that may take up to `secs` (tarpc's default is 10 s).
pub fn context_with_deadline(secs: u64) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_always_admitted() {
        let root = PeerCred {
            pid: None,
            uid: 0,
            gid: 0,
        };
        assert!(PeerPolicy::RootOnly.admits(&root));
        assert!(PeerPolicy::RootOrGroup(1234).admits(&root));
    }

    #[test]
    fn non_root_needs_the_group() {
        let user = PeerCred {
            pid: None,
            uid: 1000,
            gid: 1000,
        };
        assert!(!PeerPolicy::RootOnly.admits(&user));
        assert!(!PeerPolicy::RootOrGroup(1234).admits(&user));
        assert!(PeerPolicy::RootOrGroup(1000).admits(&user));
        assert!(PeerPolicy::RootOrUser(1000).admits(&user));
        assert!(!PeerPolicy::RootOrUser(1001).admits(&user));
    }
}
