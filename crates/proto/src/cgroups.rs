//! The processes of a cgroup v2 subtree, as the daemons read them: the
//! resolver's for a container's namespace and addresses, the loader's for
//! the namespace of a revoked flow's socket.

use std::path::Path;

/// How far below the given cgroup a walk goes (the depth contain's
/// programs look up, `contain_common::MAX_CGROUP_DEPTH`).
const MAX_DEPTH: usize = 16;

/// A cgroup v2 directory's id: its inode number, as the kernel's
/// `bpf_get_current_cgroup_id` and `bpf_skb_cgroup_id` report it (I/O).
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).map(|m| m.ino())
}

/// Parses `cgroup.procs` (one pid per line); junk lines are skipped.
pub fn parse_pids(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Every process in the cgroup at `dir` and the cgroups below it, at most
/// `limit` of them, depth-first, those of `dir` itself first (I/O). Errors
/// (a cgroup vanishing while it is read) end that branch.
pub fn procs_below(dir: &Path, limit: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(parse_pids(&text));
        }
        if pids.len() >= limit {
            pids.truncate(limit);
            break;
        }
        if depth >= MAX_DEPTH {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_skip_junk() {
        assert_eq!(parse_pids("1\n22\n\nx\n333\n"), vec![1, 22, 333]);
    }

    #[test]
    fn processes_are_listed_below_a_cgroup_its_own_first_up_to_the_limit() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        let deep = a.join("b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(a.join("cgroup.procs"), "10\n11\n").unwrap();
        std::fs::write(deep.join("cgroup.procs"), "12\n").unwrap();
        assert_eq!(procs_below(&a, 10), [10, 11, 12]);
        assert_eq!(procs_below(&a, 2), [10, 11]);
    }
}
