//! tarpc over Unix stream sockets, JSON-framed, with `SO_PEERCRED` checks.
//!
//! Every server accepts a connection only after the peer's uid/gid pass its
//! [`PeerPolicy`]; a refused peer is logged and dropped before any request is
//! read.

use std::{
    io, marker::PhantomData, os::unix::fs::PermissionsExt, path::Path, pin::Pin, time::Duration,
};

use futures::Future;
use serde::{
    de::{DeserializeOwned, IgnoredAny},
    Deserialize, Serialize,
};
use tarpc::{serde_transport::Transport, tokio_serde};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::{
    bytes::{Bytes, BytesMut},
    codec::LengthDelimitedCodec,
};

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

/// The length-delimited framing of every socket; public so that the fuzz
/// targets decode frames exactly as the servers do.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// The furthest deadline a request may carry. tarpc turns the relative
/// deadline a client sends into `Instant::now() + deadline`, which panics
/// when the sum overflows: one frame with `"secs": 18446744073709551615`
/// would kill the task serving its connection. A year is far beyond any
/// call contain makes and far from overflowing.
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What [`MAX_DEADLINE`] needs of tarpc's `ClientMessage`, read as tarpc
/// reads it: its variants and fields in tarpc's order, every field
/// defaulted and the rest ignored, so this reads at least as far into any
/// frame as tarpc does. That matters because tarpc panics as soon as it has
/// read the deadline, whatever follows. Fields never looked at are still
/// declared: serde also reads a struct from a JSON array, where each takes
/// its place.
#[derive(Deserialize)]
#[allow(dead_code)]
enum RequestProbe {
    Request(RequestFields),
    Cancel(IgnoredAny),
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RequestFields {
    #[serde(default)]
    context: ContextThenStop,
    #[serde(default)]
    id: IgnoredAny,
    #[serde(default)]
    message: IgnoredAny,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ContextFields {
    #[serde(default)]
    deadline: Option<Deadline>,
    #[serde(default)]
    trace_context: IgnoredAny,
}

const DEADLINE_REFUSED: &str = "request refused: its deadline is";

/// A deadline tarpc can add to `Instant::now()`; reading any other one
/// stops the probe with an error that starts with [`DEADLINE_REFUSED`].
struct Deadline;

impl<'de> Deserialize<'de> for Deadline {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let deadline = Duration::deserialize(deserializer)?;
        if deadline > MAX_DEADLINE {
            return Err(serde::de::Error::custom(format_args!(
                "{DEADLINE_REFUSED} {} s away, more than the {} s allowed",
                deadline.as_secs(),
                MAX_DEADLINE.as_secs()
            )));
        }
        Ok(Deadline)
    }
}

/// Reads the context, then stops the probe (with an error that is not
/// [`DEADLINE_REFUSED`]): tarpc writes the context first, so the request's
/// body, a diff of thousands of entries, is parsed only once, by tarpc.
#[derive(Default)]
struct ContextThenStop;

impl<'de> Deserialize<'de> for ContextThenStop {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ContextFields::deserialize(deserializer)?;
        Err(serde::de::Error::custom("context read"))
    }
}

/// Refuses a request frame whose deadline tarpc cannot represent. Any other
/// frame, well-formed or not, is left for the real decoding to judge; a
/// reply fails the probe at its first key, so clients pay next to nothing.
fn check_deadline(frame: &[u8]) -> io::Result<()> {
    match serde_json::from_slice::<RequestProbe>(frame) {
        Err(e) if e.to_string().starts_with(DEADLINE_REFUSED) => {
            Err(io::Error::new(io::ErrorKind::InvalidData, e))
        }
        _ => Ok(()),
    }
}

/// The JSON body of a frame, as tokio-serde's `Json` codec reads and writes
/// it, with requests' deadlines checked first ([`MAX_DEADLINE`]).
pub struct JsonCodec<Item, SinkItem> {
    // fn(..): Send, Sync and Unpin whatever the item types are.
    types: PhantomData<fn(SinkItem) -> Item>,
}

impl<Item, SinkItem> Default for JsonCodec<Item, SinkItem> {
    fn default() -> Self {
        JsonCodec { types: PhantomData }
    }
}

impl<Item: DeserializeOwned, SinkItem> tokio_serde::Deserializer<Item>
    for JsonCodec<Item, SinkItem>
{
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, frame: &BytesMut) -> io::Result<Item> {
        check_deadline(frame)?;
        Ok(serde_json::from_slice(frame)?)
    }
}

impl<Item, SinkItem: Serialize> tokio_serde::Serializer<SinkItem> for JsonCodec<Item, SinkItem> {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> io::Result<Bytes> {
        Ok(serde_json::to_vec(item)?.into())
    }
}

/// A JSON transport over a connected Unix stream.
pub fn framed<Item, SinkItem>(
    stream: UnixStream,
) -> Transport<UnixStream, Item, SinkItem, JsonCodec<Item, SinkItem>>
where
    Item: DeserializeOwned,
    SinkItem: Serialize,
{
    tarpc::serde_transport::new(
        tokio_util::codec::Framed::new(stream, codec()),
        JsonCodec::default(),
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
/// (with its credentials) to `on_connection`, which starts serving it, e.g.
/// (a sketch, not compiled: `MyServer` stands for a service's server):
///
/// ```text
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
    use proptest::prelude::*;
    use tarpc::{tokio_serde::Deserializer, ClientMessage, Response};
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::{
        loader::{LoaderRequest, LoaderResponse},
        policyd::{PolicydRequest, PolicydResponse},
        resolver::{ResolverRequest, ResolverResponse},
    };

    fn decode<Item: DeserializeOwned>(frame: &[u8]) -> io::Result<Item> {
        Pin::new(&mut JsonCodec::<Item, ()>::default()).deserialize(&BytesMut::from(frame))
    }

    const TRACE: &str = r#"{"trace_id":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"span_id":0,"sampling_decision":"Unsampled"}"#;

    #[test]
    fn a_request_with_a_deadline_decodes() {
        let frame = format!(
            r#"{{"Request":{{"context":{{"deadline":{{"secs":9,"nanos":0}},"trace_context":{TRACE}}},"id":2,"message":{{"Attach":{{"cgroup":"/x"}}}}}}}}"#
        );
        let message: ClientMessage<LoaderRequest> = decode(frame.as_bytes()).unwrap();
        let ClientMessage::Request(request) = message else {
            panic!("not a request: {message:?}");
        };
        assert!(matches!(request.message, LoaderRequest::Attach { cgroup } if cgroup == "/x"));
    }

    #[test]
    fn a_deadline_no_instant_can_hold_is_refused_not_a_panic() {
        // tarpc itself would compute Instant::now() + 2^64 s and panic.
        let far = r#"{"secs":18446744073709551615,"nanos":0}"#;
        let as_object = format!(
            r#"{{"Request":{{"context":{{"deadline":{far},"trace_context":{TRACE}}},"id":1,"message":{{"Version":{{}}}}}}}}"#
        );
        // serde reads a struct from an array as well: same request, no names.
        let as_array = format!(r#"{{"Request":[[{far},{TRACE}],1,{{"Version":{{}}}}]}}"#);
        // tarpc panics on reading the deadline, before it sees the rest is
        // no JSON (found by fuzz/ rpc_frames).
        let then_garbage = format!(r#"{{"Request":{{"context":{{"deadline":{far},"tr"#);
        for frame in [as_object, as_array, then_garbage] {
            let error = decode::<ClientMessage<LoaderRequest>>(frame.as_bytes()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{frame}");
            assert!(error.to_string().contains("deadline"), "{error}");
        }
    }

    /// Every frame a stream of `bytes` holds, decoded as each service's
    /// request and reply: errors are fine, panics are not.
    fn decode_stream(bytes: &[u8]) {
        let mut frames = codec();
        let mut stream = BytesMut::from(bytes);
        while let Ok(Some(frame)) = frames.decode_eof(&mut stream) {
            let _ = decode::<ClientMessage<LoaderRequest>>(&frame);
            let _ = decode::<ClientMessage<ResolverRequest>>(&frame);
            let _ = decode::<ClientMessage<PolicydRequest>>(&frame);
            let _ = decode::<Response<LoaderResponse>>(&frame);
            let _ = decode::<Response<ResolverResponse>>(&frame);
            let _ = decode::<Response<PolicydResponse>>(&frame);
        }
    }

    proptest! {
        #[test]
        fn any_bytes_on_a_socket_are_refused_or_decoded(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_stream(&bytes);
        }

        #[test]
        fn any_json_text_in_a_frame_is_refused_or_decoded(
            text in r#"\{"(Request|Cancel|request_id)":[\[\]{}",:0-9a-zA-Z_ -]{0,200}"#,
        ) {
            let mut bytes = (text.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(text.as_bytes());
            decode_stream(&bytes);
        }
    }

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
