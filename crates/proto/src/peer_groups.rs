//! The supplementary groups of a Unix socket's peer, as the kernel recorded
//! them when it connected (`SO_PEERGROUPS`, Linux 4.13), so a group check
//! needs no read of `/proc/<pid>/status`, whose pid may be gone or reused
//! by the time it is read. Neither nix nor rustix wraps this option yet.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

/// The peer's supplementary groups (its primary gid is in `SO_PEERCRED`).
pub fn peer_groups(socket: &impl AsFd) -> io::Result<Vec<u32>> {
    let fd = socket.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(groups.as_slice()))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is valid for writes of `len` bytes and the kernel
        // writes at most `len`; `fd` is borrowed from a live socket.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // ERANGE: the kernel wrote the length it needs.
        if error.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_peer_has_the_groups_of_the_process_that_made_it() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut got = peer_groups(&ours).unwrap();
        got.sort_unstable();
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        want.sort_unstable();
        want.dedup();
        got.dedup();
        assert_eq!(got, want);
        drop(theirs);
    }

    #[test]
    fn a_socket_that_is_not_connected_has_no_peer_groups() {
        let listener = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert!(peer_groups(&listener).is_err());
    }
}
