//! tarpc over Unix stream sockets, JSON-framed, with `SO_PEERCRED` checks.
//!
//! Every server accepts a connection only after the peer's uid/gid pass its
//! [`PeerPolicy`]; a refused peer is logged and dropped before any request is
//! read. [`serve`] bounds what admitted peers can take: connections at once,
//! requests in flight per connection, and the size of each frame, which is
//! per service and per direction ([`Service`]).

use std::{
    collections::HashMap, io, marker::PhantomData, os::unix::fs::PermissionsExt, path::Path,
    pin::Pin, sync::Arc, time::Duration,
};

use futures::Future;
use serde::{
    de::{DeserializeOwned, IgnoredAny},
    Deserialize, Serialize,
};
use tarpc::{
    server::{limits::requests_per_channel::MaxRequests, BaseChannel, Channel},
    tokio_serde, ClientMessage, Response,
};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::{
    bytes::{Bytes, BytesMut},
    codec::{Decoder, Encoder, LengthDelimitedCodec},
};

/// contain's three services, for the limits of their sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Loader,
    Resolver,
    Policyd,
}

impl Service {
    /// The largest request a server of this service reads.
    pub const fn max_request_bytes(self) -> usize {
        match self {
            // A diff that writes a full host's whole state: about 350 MiB
            // of JSON at every map's capacity with the widest numbers
            // (`the_largest_state_and_diff_fit_the_loaders_frames`). Root
            // and policyd's user only.
            Service::Loader => 512 << 20,
            // Executable lookups: policyd sends up to 4 096 at once, each a
            // container id and a path of up to 4 KiB (root and policyd's
            // user only).
            Service::Resolver => 32 << 20,
            // The CLI's requests: flags and one explain query. The socket
            // is open to the `contain` group.
            Service::Policyd => 64 << 10,
        }
    }

    /// The largest response a client of this service reads.
    pub const fn max_response_bytes(self) -> usize {
        match self {
            // A full host's state: under 256 MiB of JSON (the same test).
            Service::Loader => 256 << 20,
            // The inventory of a big host.
            Service::Resolver => 64 << 20,
            // A dry run that lists every operation of the largest diff
            // (the loader's request above).
            Service::Policyd => 512 << 20,
        }
    }
}

/// Connections one server serves at once to one peer uid; more from that
/// uid are refused and logged. Per uid, so a client that leaks connections
/// (or a member of the `contain` group) cannot lock out another: policyd's
/// connections to the loader and the resolver, or root's CLI.
pub const MAX_CONNECTIONS_PER_UID: usize = 32;
/// Requests of one connection in flight at once; more are answered with
/// an error.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 32;

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

/// The credentials of a connected peer, as the kernel recorded them when
/// it connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`SO_PEERGROUPS`).
    pub groups: Vec<u32>,
}

impl PeerPolicy {
    pub fn admits(&self, peer: &PeerCred) -> bool {
        if peer.uid == 0 {
            return true;
        }
        match *self {
            PeerPolicy::RootOnly => false,
            PeerPolicy::RootOrGroup(gid) => peer.gid == gid || peer.groups.contains(&gid),
            PeerPolicy::RootOrUser(uid) => peer.uid == uid,
        }
    }
}

/// The length-delimited framing of every socket: frames up to `read`
/// bytes are read, up to `write` bytes written. Public so that the fuzz
/// targets decode frames exactly as the servers do.
pub struct Frames {
    read: LengthDelimitedCodec,
    write: LengthDelimitedCodec,
    /// Whether the write buffer grew past [`KEPT_BUFFER_BYTES`] since it
    /// was last made (its `capacity()` does not tell: once the socket took
    /// the bytes, it counts from their end).
    write_grown: bool,
}

impl Frames {
    pub fn new(read: usize, write: usize) -> Frames {
        let codec = |max| {
            LengthDelimitedCodec::builder()
                .max_frame_length(max)
                .new_codec()
        };
        Frames {
            read: codec(read),
            write: codec(write),
            write_grown: false,
        }
    }

    /// A server's framing: it reads requests and writes responses.
    pub fn server(service: Service) -> Frames {
        Frames::new(service.max_request_bytes(), service.max_response_bytes())
    }

    /// A client's framing: it writes requests and reads responses.
    pub fn client(service: Service) -> Frames {
        Frames::new(service.max_response_bytes(), service.max_request_bytes())
    }
}

/// A connection's write buffer that grew past this for a large frame (a
/// diff of 10 000 rules is 1.4 MB) is let go at the next frame that finds
/// it empty, not held at that size for the connection's life; a fresh one
/// starts at tokio's initial 8 KiB. (The read buffer hands a frame's
/// allocation over with the frame.)
const KEPT_BUFFER_BYTES: usize = 64 * 1024;
const FRESH_BUFFER_BYTES: usize = 8 * 1024;

impl Decoder for Frames {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        self.read.decode(src)
    }
}

impl Encoder<Bytes> for Frames {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        if dst.is_empty() && self.write_grown {
            *dst = BytesMut::with_capacity(FRESH_BUFFER_BYTES);
            self.write_grown = false;
        }
        self.write.encode(frame, dst)?;
        self.write_grown |= dst.capacity() > KEPT_BUFFER_BYTES;
        Ok(())
    }
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

/// A JSON transport over a connected Unix stream. (tarpc's own serde
/// transport fixes one frame limit for both directions.)
pub type JsonTransport<Item, SinkItem> = tokio_serde::Framed<
    tokio_util::codec::Framed<UnixStream, Frames>,
    Item,
    SinkItem,
    JsonCodec<Item, SinkItem>,
>;

fn framed<Item, SinkItem>(stream: UnixStream, frames: Frames) -> JsonTransport<Item, SinkItem> {
    tokio_serde::Framed::new(
        tokio_util::codec::Framed::new(stream, frames),
        JsonCodec::default(),
    )
}

/// A client's transport to `service` over a connected stream.
pub fn client<Req, Resp>(
    stream: UnixStream,
    service: Service,
) -> JsonTransport<Response<Resp>, ClientMessage<Req>>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    framed(stream, Frames::client(service))
}

/// One connection of a server, as [`serve`] hands it over.
pub type ServerChannel<Req, Resp> =
    MaxRequests<BaseChannel<Req, Resp, JsonTransport<ClientMessage<Req>, Response<Resp>>>>;

/// Who must be serving a socket for a client to speak to it. The sockets'
/// directory is writable by the group the daemons run as, and a socket is
/// missing while its daemon restarts: another member of that group could
/// bind one in its place. A client that spoke to whoever answered would take
/// a forged inventory for the real one (and tell the loader to leave those
/// containers unrestricted), or send the policy nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIs {
    /// Who besides root may serve.
    users: Vec<u32>,
}

impl ServerIs {
    /// Root alone: the loader and the resolver, for a client of another user.
    pub fn root() -> ServerIs {
        ServerIs { users: Vec::new() }
    }

    /// Root or one of `users`: policyd's own user for its socket, and the
    /// client's own (a daemon and its stand-ins run by one user in a test:
    /// only that user could have bound them).
    pub fn root_or(users: impl IntoIterator<Item = u32>) -> ServerIs {
        ServerIs {
            users: users.into_iter().filter(|&u| u != 0).collect(),
        }
    }

    pub fn admits(&self, uid: u32) -> bool {
        uid == 0 || self.users.contains(&uid)
    }
}

/// Connects to a server's socket, saying which socket failed and why, and
/// refuses a server that is not `server` (by `SO_PEERCRED`, which the
/// kernel fixed when the server called `listen`).
pub async fn connect(path: &Path, server: &ServerIs) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => format!(
                "this user may not use it: run as root, or as a member of group {group} (`usermod -aG {group} USER`, then log in again)",
                group = crate::paths::GROUP
            ),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                "is the daemon running?".to_string()
            }
            _ => "is the daemon running, and may this user use its socket?".to_string(),
        };
        io::Error::new(
            e.kind(),
            format!("cannot connect to {}: {e} ({hint})", path.display()),
        )
    })?;
    let uid = stream.peer_cred()?.uid();
    if !server.admits(uid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is served by uid {uid}, not by root{}: another process took the socket's \
                 place; stop it, then restart the daemon",
                path.display(),
                server
                    .users
                    .iter()
                    .map(|u| format!(" or uid {u}"))
                    .collect::<String>()
            ),
        ));
    }
    Ok(stream)
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

/// Reads `SO_PEERCRED` and `SO_PEERGROUPS` of a connected stream: both
/// were fixed when the peer connected, so neither a later `setgroups` nor
/// a pid reused since can change what is judged.
pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let cred = stream.peer_cred()?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        groups: crate::peer_groups::peer_groups(stream)?,
    })
}

/// Accepts connections until the listener fails, handing each admitted one
/// (with its credentials) to `on_connection`.
async fn accept_loop<F>(
    listener: UnixListener,
    policy: PeerPolicy,
    mut on_connection: F,
) -> io::Result<()>
where
    F: FnMut(UnixStream, PeerCred),
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors, or a peer gone before it was accepted:
            // the socket keeps serving once that passes.
            Err(e) if accept_error_is_transient(&e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
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

/// Serves `service` on `listener`: every connection `policy` admits, up to
/// [`MAX_CONNECTIONS_PER_UID`] at once per peer uid, each with at most
/// [`MAX_REQUESTS_PER_CONNECTION`] requests in flight and frames within the
/// service's limits. `serve_channel` runs one connection to its end, e.g.
/// (not compiled: `MyServer` stands for a service's server):
///
/// ```text
/// serve(listener, PeerPolicy::RootOnly, Service::Loader, |channel, _peer| {
///     channel.execute(MyServer.serve()).for_each(spawn_request)
/// })
/// ```
pub async fn serve<Req, Resp, F, Fut>(
    listener: UnixListener,
    policy: PeerPolicy,
    service: Service,
    mut serve_channel: F,
) -> io::Result<()>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnMut(ServerChannel<Req, Resp>, PeerCred) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut slots: HashMap<u32, Arc<Semaphore>> = HashMap::new();
    accept_loop(listener, policy, move |stream, peer| {
        let uid_slots = slots
            .entry(peer.uid)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_UID)));
        let Ok(slot) = uid_slots.clone().try_acquire_owned() else {
            tracing::warn!(
                uid = peer.uid,
                pid = ?peer.pid,
                ?service,
                "connection refused: this uid has {MAX_CONNECTIONS_PER_UID} connections open already"
            );
            return;
        };
        let channel = BaseChannel::with_defaults(framed(stream, Frames::server(service)))
            .max_concurrent_requests(MAX_REQUESTS_PER_CONNECTION);
        let connection = serve_channel(channel, peer);
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    })
    .await
}

fn accept_error_is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// Runs one request of a tarpc channel on its own task.
pub async fn spawn_request(fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(fut);
}

/// Requests one peer uid may have in flight at once over all its
/// connections, where a server runs them with [`spawn_request_within`]:
/// without it a uid could keep [`MAX_CONNECTIONS_PER_UID`] ×
/// [`MAX_REQUESTS_PER_CONNECTION`] expensive requests running.
pub const MAX_REQUESTS_PER_UID: usize = 32;

/// Each peer uid's share of [`MAX_REQUESTS_PER_UID`]. One entry per uid
/// ever admitted: the peer policy admits few (root and a group's members).
#[derive(Default)]
pub struct RequestsPerUid(HashMap<u32, Arc<Semaphore>>);

impl RequestsPerUid {
    /// The permits `uid`'s requests run under.
    pub fn permits(&mut self, uid: u32) -> Arc<Semaphore> {
        self.0
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_REQUESTS_PER_UID)))
            .clone()
    }
}

/// Runs one request on its own task once one of `permits` is free. Until
/// then the connection reads no further requests: its peer waits rather
/// than piling up work. Requests still end meanwhile: tarpc buffers 100
/// responses per connection, more than a uid has in flight.
pub async fn spawn_request_within(
    permits: Arc<Semaphore>,
    fut: impl Future<Output = ()> + Send + 'static,
) {
    // The semaphore is never closed, so acquiring only waits.
    let Ok(permit) = permits.acquire_owned().await else {
        return;
    };
    tokio::spawn(async move {
        fut.await;
        drop(permit);
    });
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
    use tarpc::tokio_serde::Deserializer;

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
            r#"{{"Request":{{"context":{{"deadline":{{"secs":9,"nanos":0}},"trace_context":{TRACE}}},"id":2,"message":{{"Events":{{"after":5,"max":10,"wait_ms":0}}}}}}}}"#
        );
        let message: ClientMessage<LoaderRequest> = decode(frame.as_bytes()).unwrap();
        let ClientMessage::Request(request) = message else {
            panic!("not a request: {message:?}");
        };
        assert!(matches!(
            request.message,
            LoaderRequest::Events {
                after: 5,
                max: 10,
                wait_ms: 0
            }
        ));
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
        let mut frames = Frames::server(Service::Loader);
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
    fn frames_beyond_a_services_limits_are_refused() {
        let header = |len: usize| BytesMut::from(&(len as u32).to_be_bytes()[..]);
        let mut policyd = Frames::server(Service::Policyd);
        let too_big = Service::Policyd.max_request_bytes() + 1;
        assert!(policyd.decode(&mut header(too_big)).is_err());
        // The same size is a fine response for the CLI to read.
        let mut cli = Frames::client(Service::Policyd);
        assert!(matches!(cli.decode(&mut header(too_big)), Ok(None)));
        // And a server does not write what its clients would refuse.
        let mut out = BytesMut::new();
        let huge = Bytes::from(vec![b' '; Service::Resolver.max_response_bytes() + 1]);
        assert!(Frames::server(Service::Resolver)
            .encode(huge, &mut out)
            .is_err());
    }

    /// Through a real connection: the socket takes a large frame, which
    /// leaves the write buffer empty with its allocation, and the next
    /// frame goes into a fresh buffer instead of that allocation.
    #[tokio::test]
    async fn a_large_frames_write_buffer_is_not_kept() {
        use futures::{SinkExt as _, StreamExt as _};
        let large = 1 << 20;
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut sender = tokio_util::codec::Framed::new(ours, Frames::new(2 * large, 2 * large));
        let mut receiver =
            tokio_util::codec::Framed::new(theirs, Frames::new(2 * large, 2 * large));
        let reader = tokio::spawn(async move {
            let mut sizes = Vec::new();
            while let Some(frame) = receiver.next().await {
                sizes.push(frame.unwrap().len());
            }
            sizes
        });
        sender.send(Bytes::from(vec![b' '; large])).await.unwrap();
        assert!(sender.write_buffer().is_empty());
        // Queued, not yet sent: the buffer it went into.
        sender.feed(Bytes::from_static(b"{}")).await.unwrap();
        let capacity = sender.write_buffer().capacity();
        assert!(capacity <= FRESH_BUFFER_BYTES, "{capacity}");
        sender.close().await.unwrap();
        drop(sender);
        assert_eq!(reader.await.unwrap(), [large, 2]);
    }

    #[test]
    fn a_server_must_be_root_or_the_daemons_user() {
        assert!(ServerIs::root().admits(0));
        assert!(!ServerIs::root().admits(1000));
        let policyd = ServerIs::root_or([999, 0]);
        assert!(policyd.admits(0));
        assert!(policyd.admits(999));
        assert!(!policyd.admits(1000));
    }

    /// A socket bound by another user in the daemon's place is refused
    /// before a byte is sent: as root, one bound by nobody; otherwise, one
    /// bound by this test's own user, which is not root.
    #[tokio::test]
    async fn a_client_refuses_a_socket_another_user_serves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken.sock");
        let me = nix::unistd::geteuid().as_raw();
        let (_listener, _squatter) = if me == 0 {
            let squatter = test_kit::rpc::Squatter::bind(&path).expect("nobody binds the socket");
            (None, Some(squatter))
        } else {
            (Some(UnixListener::bind(&path).unwrap()), None)
        };
        let err = connect(&path, &ServerIs::root())
            .await
            .expect_err("a socket root does not serve is refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string()
                .contains("another process took the socket's place"),
            "{err}"
        );
        if me != 0 {
            connect(&path, &ServerIs::root_or([me]))
                .await
                .expect("the daemon's own user is served");
        }
    }

    #[tokio::test]
    async fn a_uids_requests_beyond_the_cap_wait_for_one_to_end() {
        let mut requests = RequestsPerUid::default();
        // Each held request ends when it gets one of these.
        let ends = Arc::new(Semaphore::new(0));
        let held = || {
            let ends = ends.clone();
            async move { ends.acquire().await.unwrap().forget() }
        };
        for _ in 0..MAX_REQUESTS_PER_UID {
            spawn_request_within(requests.permits(1000), held()).await;
        }
        // Another uid is not held up.
        spawn_request_within(requests.permits(1001), async {}).await;
        let mut next = Box::pin(spawn_request_within(requests.permits(1000), held()));
        assert!(futures::poll!(&mut next).is_pending());
        ends.add_permits(1);
        next.await;
        assert_eq!(requests.permits(1000).available_permits(), 0);
        ends.add_permits(MAX_REQUESTS_PER_UID);
    }

    #[tarpc::service]
    trait Echo {
        async fn echo(n: u32) -> u32;
    }

    #[derive(Clone)]
    struct EchoServer;

    impl Echo for EchoServer {
        async fn echo(self, _: tarpc::context::Context, n: u32) -> u32 {
            n
        }
    }

    #[tokio::test]
    async fn a_uids_connections_beyond_the_limit_are_refused_until_one_ends() {
        use futures::StreamExt;

        let dir = std::env::temp_dir().join(format!("contain-serve-{}", std::process::id()));
        let socket = dir.join("echo.sock");
        let listener = bind(&socket, 0o600, None).unwrap();
        let server = tokio::spawn(serve(
            listener,
            PeerPolicy::RootOrUser(nix_uid()),
            Service::Policyd,
            |channel, _| channel.execute(EchoServer.serve()).for_each(spawn_request),
        ));
        let open = || async {
            let stream = connect(
                &socket,
                &ServerIs::root_or([nix::unistd::geteuid().as_raw()]),
            )
            .await
            .unwrap();
            EchoClient::new(Default::default(), client(stream, Service::Policyd)).spawn()
        };
        let mut clients = Vec::new();
        for n in 0..MAX_CONNECTIONS_PER_UID as u32 {
            let c = open().await;
            assert_eq!(c.echo(tarpc::context::current(), n).await.unwrap(), n);
            clients.push(c);
        }
        let refused = open().await;
        assert!(refused.echo(tarpc::context::current(), 1).await.is_err());
        // One ends: its slot serves the next connection.
        drop(clients.pop());
        let mut served = None;
        for _ in 0..100 {
            let c = open().await;
            if c.echo(tarpc::context::current(), 7).await.is_ok() {
                served = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served.is_some(), "a freed slot serves a new connection");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn nix_uid() -> u32 {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    }

    #[test]
    fn root_is_always_admitted() {
        let root = PeerCred {
            pid: None,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
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
            groups: vec![27, 4321],
        };
        assert!(!PeerPolicy::RootOnly.admits(&user));
        assert!(!PeerPolicy::RootOrGroup(1234).admits(&user));
        assert!(PeerPolicy::RootOrGroup(4321).admits(&user));
        assert!(PeerPolicy::RootOrGroup(1000).admits(&user));
        assert!(PeerPolicy::RootOrUser(1000).admits(&user));
        assert!(!PeerPolicy::RootOrUser(1001).admits(&user));
    }
}
