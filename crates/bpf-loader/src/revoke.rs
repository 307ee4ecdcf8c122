//! Aborting the socket of a revoked TCP flow.
//!
//! When a policy change revokes an established outbound TCP flow, the
//! egress program drops its every segment from then on, but TCP would keep
//! retransmitting for many minutes before telling the sender. The kernel
//! reports the revocation once (an event with `revoked_flow`), and the
//! loader aborts that one socket with `SOCK_DESTROY` (what `ss -K` does,
//! `CONFIG_INET_DIAG_DESTROY`): the sender's next call fails with
//! ECONNABORTED. The request is made from inside the socket's network
//! namespace, since sock_diag looks sockets up in the requester's: its
//! creator's, or, when the creator has exited (a child holds the socket, or
//! the pid now names another process), that of a process of the socket's
//! cgroup. The request names the socket's cookie, so asking in a wrong
//! namespace finds nothing and destroys nothing.
//!
//! The message is a fixed 72-byte `nlmsghdr` + `inet_diag_req_v2`; the
//! netlink crates in the ecosystem model dumps, not this one request.

use std::{
    collections::HashSet, fs::File, io, net::IpAddr, os::unix::fs::MetadataExt, path::PathBuf,
};

use nix::{
    sched::{setns, CloneFlags},
    sys::socket::{
        recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    },
};
use thiserror::Error;

/// The flow whose socket to abort, as the kernel reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevokedFlow {
    /// The socket's creator: it may have exited, or its pid may name
    /// another process by now.
    pub tgid: u32,
    /// The socket's cgroup: its processes share the socket's namespace.
    pub cgroup_id: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub socket_cookie: u64,
}

#[derive(Debug, Error)]
pub enum AbortError {
    #[error("opening the network namespace of pid {tgid}: {source} (the process may have exited; EACCES or EPERM: the loader lacks CAP_SYS_PTRACE)")]
    Netns { tgid: u32, source: io::Error },
    #[error("entering the network namespace of pid {tgid}: {source} (EPERM: the loader lacks CAP_SYS_ADMIN, or its unit's RestrictNamespaces= does not list net)")]
    Setns { tgid: u32, source: nix::Error },
    #[error("starting the thread that enters a network namespace: {0}")]
    Thread(io::Error),
    #[error("sock_diag request: {0}")]
    Netlink(nix::Error),
    #[error("the kernel refused SOCK_DESTROY: {0} (EOPNOTSUPP: a kernel without CONFIG_INET_DIAG_DESTROY; EPERM: the loader lacks CAP_NET_ADMIN)")]
    Refused(nix::Error),
    #[error("the socket is in none of the network namespaces searched: its creator's (pid {tgid}: {creator}) and {searched} of the processes in and below its cgroup {cgroup_id} ({cgroup}); it is closed already, or only processes outside that cgroup hold it")]
    NotFound {
        tgid: u32,
        cgroup_id: u64,
        creator: String,
        searched: usize,
        cgroup: String,
    },
    #[error("malformed sock_diag reply ({0} bytes)")]
    Reply(usize),
    #[error("mixed address families in {0:?}")]
    Family(RevokedFlow),
}

const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_HDR_LEN: usize = 16;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const ALL_TCP_STATES: u32 = u32::MAX;

/// At most this many processes of the socket's cgroup are asked about: a
/// container's processes share one namespace, and a container with many
/// must not make each abort open as many namespace files.
const MOST_PROCESSES: usize = 256;

/// Aborts the socket of `flow`, asked for in its creator's network
/// namespace and then, until one has it, in those of the processes in and
/// below the socket's cgroup, found below the cgroups `cgroup_roots` lists.
/// Returns the pid whose namespace had it. Blocking: call it off the async
/// runtime.
pub fn abort(
    flow: &RevokedFlow,
    cgroup_roots: impl FnOnce() -> Vec<PathBuf>,
) -> Result<u32, AbortError> {
    let request = destroy_request(flow)?;
    let mut searched = HashSet::new();
    let creator = match ask_from(flow.tgid, &request, &mut searched) {
        Ok(Asked::Aborted) => return Ok(flow.tgid),
        Ok(Asked::NotThere) => "not in its namespace".to_string(),
        Err(e) if e.of_this_process() => e.to_string(),
        Err(e) => return Err(e),
    };
    let Some(cgroup) = crate::fs::find_cgroup(&cgroup_roots(), flow.cgroup_id) else {
        return Err(AbortError::NotFound {
            tgid: flow.tgid,
            cgroup_id: flow.cgroup_id,
            creator,
            searched: 0,
            cgroup: "not found below the cgroups the loader is attached to".into(),
        });
    };
    for pid in proto::cgroups::procs_below(&cgroup, MOST_PROCESSES) {
        match ask_from(pid, &request, &mut searched) {
            Ok(Asked::Aborted) => return Ok(pid),
            Ok(Asked::NotThere) => {}
            Err(e) if e.of_this_process() => {}
            Err(e) => return Err(e),
        }
    }
    Err(AbortError::NotFound {
        tgid: flow.tgid,
        cgroup_id: flow.cgroup_id,
        creator,
        searched: searched.len(),
        cgroup: cgroup.display().to_string(),
    })
}

impl AbortError {
    /// A failure of this one process (gone, or its namespace not entered):
    /// another process's namespace may still be asked.
    fn of_this_process(&self) -> bool {
        matches!(self, AbortError::Netns { .. } | AbortError::Setns { .. })
    }
}

/// What one namespace's kernel said.
enum Asked {
    Aborted,
    /// No socket with the flow's addresses there (ENOENT), one with them
    /// but another cookie (not the flow's: ENOENT on 6.18, ESTALE, the
    /// cookie check's own errno, where a kernel passes it on), or a
    /// namespace already asked.
    NotThere,
}

/// Sends `request` from the network namespace of `tgid`, unless that
/// namespace was asked already (`searched`, by device and inode).
fn ask_from(
    tgid: u32,
    request: &[u8],
    searched: &mut HashSet<(u64, u64)>,
) -> Result<Asked, AbortError> {
    let (netns, id) = File::open(format!("/proc/{tgid}/ns/net"))
        .and_then(|f| f.metadata().map(|m| (f, (m.dev(), m.ino()))))
        .map_err(|source| AbortError::Netns { tgid, source })?;
    if searched.contains(&id) {
        return Ok(Asked::NotThere);
    }
    // setns() moves only the calling thread: a thread of its own, so the
    // loader's other threads stay in the host namespace.
    let answer = std::thread::scope(|scope| {
        let asking = std::thread::Builder::new()
            .name("revoke-netns".into())
            .spawn_scoped(scope, || {
                setns(&netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| AbortError::Setns { tgid, source })?;
                send_request(request)
            })
            .map_err(AbortError::Thread)?;
        asking.join().unwrap_or_else(|_| {
            Err(AbortError::Thread(io::Error::other(
                "the thread asking from the namespace panicked",
            )))
        })
    });
    match answer {
        Ok(()) => Ok(Asked::Aborted),
        Err(AbortError::Refused(errno))
            if errno == nix::Error::ENOENT || errno == nix::Error::ESTALE =>
        {
            searched.insert(id);
            Ok(Asked::NotThere)
        }
        Err(e) => Err(e),
    }
}

/// The netlink message: `nlmsghdr` then `inet_diag_req_v2` for the exact
/// socket (4-tuple and cookie), in native byte order but for the ports
/// and addresses, which the kernel keeps in network order.
pub fn destroy_request(flow: &RevokedFlow) -> Result<Vec<u8>, AbortError> {
    let (family, src, dst) = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&s.octets());
            dst[..4].copy_from_slice(&d.octets());
            (libc::AF_INET as u8, src, dst)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (libc::AF_INET6 as u8, s.octets(), d.octets()),
        _ => return Err(AbortError::Family(*flow)),
    };
    let total = NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.push(family);
    msg.push(libc::IPPROTO_TCP as u8);
    msg.push(0); // no extensions
    msg.push(0);
    msg.extend_from_slice(&ALL_TCP_STATES.to_ne_bytes());
    msg.extend_from_slice(&flow.src_port.to_be_bytes());
    msg.extend_from_slice(&flow.dst_port.to_be_bytes());
    msg.extend_from_slice(&src);
    msg.extend_from_slice(&dst);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    msg.extend_from_slice(&(flow.socket_cookie as u32).to_ne_bytes());
    msg.extend_from_slice(&((flow.socket_cookie >> 32) as u32).to_ne_bytes());
    debug_assert_eq!(msg.len(), total);
    Ok(msg)
}

fn send_request(request: &[u8]) -> Result<(), AbortError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(AbortError::Netlink)?;
    // The kernel answers at once; a bound all the same, so a blocking
    // thread never waits for good.
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )
    .map_err(AbortError::Netlink)?;
    use std::os::fd::AsRawFd as _;
    sendto(
        fd.as_raw_fd(),
        request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(AbortError::Netlink)?;
    let mut reply = [0u8; 256];
    let n = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty()).map_err(AbortError::Netlink)?;
    ack_status(&reply[..n])
}

/// The status in the kernel's `NLMSG_ERROR` acknowledgement.
pub fn ack_status(reply: &[u8]) -> Result<(), AbortError> {
    if reply.len() < NLMSG_HDR_LEN + 4 {
        return Err(AbortError::Reply(reply.len()));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != NLMSG_ERROR {
        return Err(AbortError::Reply(reply.len()));
    }
    let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    match code {
        0 => Ok(()),
        e => Err(AbortError::Refused(nix::Error::from_raw(-e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, dst: &str) -> RevokedFlow {
        RevokedFlow {
            tgid: 1,
            cgroup_id: 1,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 40000,
            dst_port: 443,
            socket_cookie: 0x1122_3344_5566_7788,
        }
    }

    #[test]
    fn request_names_the_exact_ipv4_socket() {
        let m = destroy_request(&flow("10.0.0.2", "10.0.0.1")).unwrap();
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], libc::IPPROTO_TCP as u8);
        assert_eq!(&m[24..26], &40000u16.to_be_bytes());
        assert_eq!(&m[26..28], &443u16.to_be_bytes());
        assert_eq!(&m[28..32], &[10, 0, 0, 2]);
        assert_eq!(&m[44..48], &[10, 0, 0, 1]);
        assert_eq!(
            u32::from_ne_bytes(m[64..68].try_into().unwrap()),
            0x5566_7788
        );
        assert_eq!(
            u32::from_ne_bytes(m[68..72].try_into().unwrap()),
            0x1122_3344
        );
    }

    #[test]
    fn request_for_ipv6_and_refusal_of_mixed_families() {
        let m = destroy_request(&flow("2001:db8::2", "2001:db8::1")).unwrap();
        assert_eq!(m[16], libc::AF_INET6 as u8);
        assert_eq!(
            m[28..44],
            "2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert!(matches!(
            destroy_request(&flow("10.0.0.2", "2001:db8::1")),
            Err(AbortError::Family(_))
        ));
    }

    #[test]
    fn acknowledgements_are_read() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(ack_status(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(matches!(ack_status(&ack), Err(AbortError::Refused(_))));
        assert!(matches!(ack_status(&ack[..8]), Err(AbortError::Reply(8))));
    }
}
