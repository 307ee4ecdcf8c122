//! What /proc says about one process: when it started (to tell a reused pid
//! from the process the runtime announced), its cgroup v2 path, its
//! network namespace and that namespace's addresses. `cgroup` is read by
//! the `procfs` crate; `stat` is not: its parser slices the text unchecked
//! (it panics on a line that is not the kernel's) and wants every field,
//! where only the start time is needed.

use std::{
    fs::File,
    io::Read as _,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{addresses, cgroup};

/// The most of one `/proc/<pid>/net` file read: a namespace's routing
/// tables are its own to grow (a container with `CAP_NET_ADMIN` may hold a
/// full routing table), and the resolver's memory is not theirs.
pub const MAX_NET_FILE_BYTES: u64 = 16 << 20;

/// The most threads of one process looked at for one whose network
/// namespace can be seen (its main thread having ended): a process's
/// thread count is its container's to choose, within its pids limit.
const MAX_THREADS_SEARCHED: usize = 4096;

/// The start time of a process (field 22 of `/proc/<pid>/stat`, clock ticks
/// since boot). The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`.
pub fn parse_stat_starttime(text: &str) -> Option<u64> {
    let after_comm = &text[text.rfind(')')? + 1..];
    // After the comm come field 3 (state) ... field 22 (starttime).
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// A view of a /proc tree (the host's `/proc`, or another for tests).
#[derive(Clone, Debug)]
pub struct Proc {
    root: PathBuf,
}

impl Default for Proc {
    fn default() -> Self {
        Proc {
            root: PathBuf::from("/proc"),
        }
    }
}

impl Proc {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Proc { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pid_path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(file)
    }

    /// Start time of `pid`, or `None` if it does not exist (any more).
    pub fn start_time(&self, pid: u32) -> Option<u64> {
        let text = std::fs::read_to_string(self.pid_path(pid, "stat")).ok()?;
        parse_stat_starttime(&text)
    }

    /// The v2 cgroup path of `pid` (`0::` entry of `/proc/<pid>/cgroup`).
    pub fn cgroup_path(&self, pid: u32) -> Option<String> {
        let text = std::fs::read(self.pid_path(pid, "cgroup")).ok()?;
        cgroup::parse_proc_cgroup(&text)
    }

    /// The /proc directory through which `pid`'s network namespace is
    /// seen: its own, or, once its main thread has ended while other
    /// threads run on, the lowest-numbered of those (`task/<tid>`). A
    /// thread group leader that calls `exit` (not `exit_group`) keeps its
    /// pid and start time but has no namespace left to show, so without
    /// this a container's init could make its namespace, its veths and
    /// its addresses vanish from the resolver's view while it runs on.
    fn netns_dir(&self, pid: u32) -> PathBuf {
        let own = self.root.join(pid.to_string());
        if own.join("ns/net").exists() {
            return own;
        }
        let tasks = own.join("task");
        let Ok(entries) = std::fs::read_dir(&tasks) else {
            return own;
        };
        let mut tids: Vec<u32> = entries
            .take(MAX_THREADS_SEARCHED)
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        tids.into_iter()
            .map(|tid| tasks.join(tid.to_string()))
            .find(|dir| dir.join("ns/net").exists())
            .unwrap_or(own)
    }

    /// Inode of the network namespace of `pid`.
    pub fn netns_inode(&self, pid: u32) -> Option<u64> {
        std::fs::metadata(self.netns_dir(pid).join("ns/net"))
            .ok()
            .map(|m| m.ino())
    }

    /// Opens the network namespace of `pid`, returning the file (usable as a
    /// namespace fd) and its inode, read from the same open file so they
    /// cannot disagree.
    pub fn open_netns(&self, pid: u32) -> Option<(File, u64)> {
        let file = File::open(self.netns_dir(pid).join("ns/net")).ok()?;
        let ino = file.metadata().ok()?.ino();
        Some((file, ino))
    }

    /// The text of `/proc/<pid>/net/<file>`: the file of the network
    /// namespace `pid` is in when it is opened (through a thread of it
    /// when its main thread has ended, as for [`Proc::open_netns`]). Its bytes as text, any
    /// that are not UTF-8 replaced (an interface's name may hold any byte
    /// but `/`, `:` and white space, and no parser reads names); an error
    /// past [`MAX_NET_FILE_BYTES`].
    pub fn net_file(&self, pid: u32, file: &str) -> std::io::Result<String> {
        let path = self.netns_dir(pid).join("net").join(file);
        let mut bytes = Vec::new();
        File::open(&path)?
            .take(MAX_NET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_NET_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "over {MAX_NET_FILE_BYTES} bytes"
            )));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The addresses of the network namespace `pid` is in, loopback ones
    /// aside, sorted (see [`addresses`]): IPv4 from its `fib_trie`, IPv6
    /// from its `if_inet6`. Needs no privilege beyond seeing `/proc/<pid>`.
    ///
    /// The two files are opened one after the other, each in whatever
    /// namespace `pid` is in at that moment: the caller checks that the
    /// process, and its namespace, are the same after the read as before.
    pub fn addresses(&self, pid: u32) -> Result<Vec<IpAddr>, String> {
        let read = |file: &str| {
            self.net_file(pid, file)
                .map_err(|e| format!("/proc/{pid}/net/{file}: {e}"))
        };
        let fib_trie = read("fib_trie")?;
        let if_inet6 = match self.net_file(pid, "if_inet6") {
            Ok(text) => Some(text),
            // A kernel without IPv6 (ipv6.disable=1) has no such file in
            // any namespace. (A process that exited meanwhile has none
            // either: the caller's check after the read tells.)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("/proc/{pid}/net/if_inet6: {e}")),
        };
        addresses::namespace_addresses(&fib_trie, if_inet6.as_deref())
            .map_err(|e| format!("/proc/{pid}/net/{e}"))
    }

    /// Inode of the resolver's own network namespace: "the host" for veths
    /// and for host-network containers.
    pub fn own_netns_inode(&self) -> Option<u64> {
        std::fs::metadata(self.root.join("self/ns/net"))
            .ok()
            .map(|m| m.ino())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starttime_of_a_plain_comm() {
        let stat = "1234 (sleep) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 8462336 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_starttime(stat), Some(987654));
    }

    #[test]
    fn starttime_with_spaces_and_parens_in_comm() {
        let stat = "77 (evil) S 1 2 ) x) R 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0";
        assert_eq!(parse_stat_starttime(stat), Some(4242));
    }

    #[test]
    fn truncated_or_garbage_stat_is_none() {
        assert_eq!(parse_stat_starttime(""), None);
        assert_eq!(parse_stat_starttime("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_starttime("no parens at all"), None);
        assert_eq!(
            parse_stat_starttime("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber"),
            None
        );
    }

    #[test]
    fn own_process_is_readable() {
        let proc = Proc::default();
        let me = std::process::id();
        assert!(proc.start_time(me).is_some());
        assert_eq!(proc.netns_inode(me), proc.own_netns_inode());
        assert!(proc.start_time(u32::MAX).is_none());
    }
}
