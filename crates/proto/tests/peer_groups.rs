//! The group check judges the groups the kernel recorded when the peer
//! connected (`SO_PEERGROUPS`): a process that is a member of the socket's
//! group only through a supplementary group is admitted, one that is not
//! is refused, whatever `/proc` says later. Root only: the test drops a
//! child to another uid with chosen groups.

use std::{
    os::unix::{net::UnixListener, process::CommandExt as _},
    process::{Command, Stdio},
};

use proto::transport::{peer_cred, PeerPolicy};

/// A group and uid no account on a test machine is likely to use.
const MEMBER_GROUP: u32 = 48_611;
const OTHER_GROUP: u32 = 48_612;
const UID: u32 = 48_613;

/// The credentials a child with `groups` as its supplementary groups (and
/// `OTHER_GROUP` as its primary one) shows when it connects to `listener`.
fn peer_with_groups(
    listener: &UnixListener,
    path: &str,
    groups: &[u32],
) -> proto::transport::PeerCred {
    let groups = groups.to_vec();
    let mut child = Command::new("python3");
    child
        .args([
            "-c",
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.recv(1)",
            path,
        ])
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(OTHER_GROUP) != 0
                || libc::setuid(UID) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = child.spawn().expect("spawn python3");
    let (stream, _) = listener.accept().expect("accept the child");
    stream.set_nonblocking(true).expect("nonblocking");
    let peer = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let stream = tokio::net::UnixStream::from_std(stream).expect("tokio stream");
        peer_cred(&stream).expect("peer credentials")
    };
    // Closing the stream ends the child's recv.
    child.wait().expect("child exits");
    peer
}

#[test]
fn the_group_check_reads_the_groups_recorded_at_connect() {
    if !test_kit::privileged::root_or_skip(
        "proto peer_groups",
        "dropping a child to another uid with chosen groups",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("contain-peer-groups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The child (another uid) must reach the socket.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let path_str = path.to_str().expect("utf-8 path");

    let member = peer_with_groups(&listener, path_str, &[MEMBER_GROUP]);
    assert_eq!((member.uid, member.gid), (UID, OTHER_GROUP));
    assert_eq!(member.groups, vec![MEMBER_GROUP]);
    assert!(PeerPolicy::RootOrGroup(MEMBER_GROUP).admits(&member));

    let stranger = peer_with_groups(&listener, path_str, &[]);
    assert!(stranger.groups.is_empty());
    assert!(!PeerPolicy::RootOrGroup(MEMBER_GROUP).admits(&stranger));
    // Its primary group still counts.
    assert!(PeerPolicy::RootOrGroup(OTHER_GROUP).admits(&stranger));

    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}
