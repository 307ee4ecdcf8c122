//! What an `exe` path names inside a container: the file itself (device,
//! inode, change time, as the kernel records the executed file at exec),
//! optionally a SHA-256 of its content, and where the path's symlinks end
//! and the file's link count: a rule whose file has other names (BusyBox's
//! applets, its shell among them) gives them all its allowances.
//!
//! The path is resolved in the container's own root, `/proc/<pid>/root`
//! opened as a directory, with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: absolute symlinks and `..` stay inside that
//! root, as they do for the container's own exec, and no `/proc` magic link
//! leads out of it.
//!
//! Root in the container can `chroot` (a Docker default capability) any of
//! its processes, the init process included (`exec chroot /copy sh` keeps
//! pid 1), and `/proc/<pid>/root` then names the copy, where it put its own
//! `/usr/bin/curl`. So the root the runtime gave the container is recorded
//! when the resolver first sees the container ([`RootId`], read from the
//! runtime's init process right after it started), and a process whose
//! root is another one is never used to resolve a path.

use std::{
    fs::File,
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use kernel_model::state::FileId;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use proto::resolver::ExeFile;
use sha2::{Digest, Sha256};

/// A file's identity from its `stat`, as the exec tracepoint records it.
pub fn file_id(meta: &std::fs::Metadata) -> FileId {
    FileId::from_stat(meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

/// A container's root directory: device and inode, in `stat`'s terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RootId {
    pub dev: u64,
    pub ino: u64,
}

impl RootId {
    fn of(meta: &std::fs::Metadata) -> RootId {
        RootId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The root directory of `pid` as `proc` shows it, or `None`.
pub fn root_of(proc_root: &Path, pid: u32) -> Option<RootId> {
    std::fs::metadata(proc_root.join(pid.to_string()).join("root"))
        .ok()
        .map(|m| RootId::of(&m))
}

/// Opens the container's root through the first of `pids` whose root is
/// `expected`; says why none could be used otherwise.
pub fn open_root(
    proc_root: &Path,
    container: &str,
    pids: &[u32],
    expected: Option<RootId>,
) -> Result<File, String> {
    let Some(expected) = expected else {
        return Err(format!(
            "the root filesystem of container {container} was not recorded when it started"
        ));
    };
    let mut other_root = false;
    for &pid in pids {
        let path = proc_root.join(pid.to_string()).join("root");
        // O_DIRECTORY through the magic link: the process's root itself.
        let Ok(dir) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&path)
        else {
            continue;
        };
        match dir.metadata() {
            Ok(meta) if RootId::of(&meta) == expected => return Ok(dir),
            Ok(_) => other_root = true,
            Err(_) => continue,
        }
    }
    Err(if other_root {
        format!("no process of container {container} has the root filesystem it started with (chrooted elsewhere?); not resolved")
    } else {
        format!("container {container} has no live process")
    })
}

fn open_in(root: &File, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    open_in_how(root, path, flags, ResolveFlag::empty())
}

fn open_in_how(
    root: &File,
    path: &str,
    flags: OFlag,
    resolve: ResolveFlag,
) -> nix::Result<OwnedFd> {
    // openat2 refuses flags O_PATH ignores (EINVAL) where openat drops them.
    let flags = if flags.contains(OFlag::O_PATH) {
        flags | OFlag::O_CLOEXEC
    } else {
        flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK
    };
    let how = OpenHow::new()
        .flags(flags)
        .resolve(resolve | ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), path, how)?;
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves `path` in the container root `root` (see [`open_root`]):
/// the file it names, which must be a regular file, and with `sha256` its
/// content's hash.
pub fn resolve_in(
    root: &File,
    container: &str,
    path: &str,
    sha256: bool,
) -> Result<ExeFile, String> {
    if !path.starts_with('/') {
        return Err(format!("{path}: not an absolute path"));
    }
    let why = |e: nix::Error| match e {
        nix::Error::ENOENT => format!("{path}: no such file in container {container}"),
        nix::Error::ENOTDIR => {
            format!("{path}: a parent is not a directory in container {container}")
        }
        nix::Error::ELOOP => format!(
            "{path}: too many symlinks, or a link out of the container, in container {container}"
        ),
        nix::Error::EXDEV => format!("{path}: leads out of container {container}'s root"),
        nix::Error::EACCES => format!("{path}: permission denied in container {container}"),
        nix::Error::ENOSYS => {
            format!("{path}: this kernel has no openat2 (Linux 5.6 or later is needed)")
        }
        e => format!("{path}: {e} in container {container}"),
    };
    // O_PATH first: stat without opening what may be a FIFO or a device.
    let handle = File::from(open_in(root, path, OFlag::O_PATH).map_err(why)?);
    let meta = handle.metadata().map_err(|e| format!("{path}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "{path}: not a regular file in container {container}"
        ));
    }
    let file = file_id(&meta);
    if sha256 && meta.len() > MAX_HASHED_BYTES {
        // A file root in the container planted to keep the resolver busy.
        return Err(format!(
            "{path}: {} bytes in container {container}, more than the {} MiB hashed for a sha256 pin",
            meta.len(),
            MAX_HASHED_BYTES >> 20
        ));
    }
    let sha256 = if sha256 {
        let mut content = File::from(open_in(root, path, OFlag::O_RDONLY).map_err(why)?);
        let again = content.metadata().map_err(|e| format!("{path}: {e}"))?;
        if (again.dev(), again.ino()) != (meta.dev(), meta.ino()) {
            return Err(format!(
                "{path}: replaced while being resolved in container {container}"
            ));
        }
        let digest = hash(&mut (&mut content).take(MAX_HASHED_BYTES + 1))
            .map_err(|e| format!("{path}: reading it: {e}"))?;
        if file_id(&content.metadata().map_err(|e| format!("{path}: {e}"))?) != file {
            return Err(format!(
                "{path}: changed while being hashed in container {container}"
            ));
        }
        Some(digest)
    } else {
        None
    };
    Ok(ExeFile {
        file,
        sha256,
        final_path: final_path(root, &handle, &meta),
        links: meta.nlink(),
    })
}

/// The path of `handle`, a file opened in `root`, inside `root`: where the
/// symlinks of the path it was opened by end (`/bin/busybox` for Alpine's
/// `/usr/bin/wget`). `None` when that cannot be told (the file was renamed
/// or unlinked since, a path the kernel cannot show): the link count alone
/// then says whether the file is also other commands.
///
/// The kernel shows a descriptor's path (`/proc/self/fd/N`) from the top of
/// the mount namespace it lies in: for a container's file, its path in the
/// container (a root the runtime put at `/`), or, for a root that is a
/// directory of the resolver's own tree, the path through that directory.
/// So the root's own path is taken off where it leads the file's, and a
/// candidate is kept only if, resolved in `root` with no symlink followed,
/// it is the very file.
fn final_path(root: &File, handle: &File, meta: &std::fs::Metadata) -> Option<String> {
    let shown = |f: &File| -> Option<String> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
        link.into_os_string().into_string().ok()
    };
    let root_path = shown(root)?;
    let file_path = shown(handle)?;
    in_root_candidates(&root_path, &file_path)
        .into_iter()
        .find(|candidate| {
            open_in_how(
                root,
                candidate,
                OFlag::O_PATH | OFlag::O_NOFOLLOW,
                ResolveFlag::RESOLVE_NO_SYMLINKS,
            )
            .ok()
            .map(File::from)
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        })
}

/// The paths inside a root shown as `root_path` that a file shown as
/// `file_path` may have there, likeliest first: the file's path less the
/// root's, where the root's leads it, then the file's path as shown.
/// Neither is trusted: [`final_path`] checks each.
fn in_root_candidates(root_path: &str, file_path: &str) -> Vec<String> {
    if !file_path.starts_with('/') {
        // `anon_inode:…` and the like: no path at all.
        return Vec::new();
    }
    let mut candidates = Vec::new();
    if root_path != "/" {
        if let Some(rest) = file_path
            .strip_prefix(root_path)
            .filter(|rest| rest.starts_with('/'))
        {
            candidates.push(rest.to_string());
        }
    }
    candidates.push(file_path.to_string());
    candidates
}

/// Largest file hashed for a `sha256` pin.
pub const MAX_HASHED_BYTES: u64 = 1 << 30;

/// Lowercase hex SHA-256 of everything `reader` yields.
pub fn hash(reader: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn device_numbers_take_the_kernels_encoding() {
        let dev = |major, minor| FileId::from_stat(libc::makedev(major, minor), 1, 0, 0).dev;
        assert_eq!(dev(8, 1), (8 << 20) | 1);
        assert_eq!(dev(0, 52), 52);
        assert_eq!(dev(259, 0x12345), (259 << 20) | 0x12345);
    }

    #[test]
    fn sha256_of_known_content() {
        assert_eq!(
            hash(&mut &b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "contain-resolver-exe-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        dir
    }

    #[test]
    fn resolves_inside_a_root_and_never_out_of_it() {
        let dir = scratch("inroot");
        let mut f = File::create(dir.join("usr/bin/curl")).unwrap();
        f.write_all(b"abc").unwrap();
        drop(f);
        std::os::unix::fs::symlink("/usr/bin", dir.join("bin")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/passwd", dir.join("usr/bin/up")).unwrap();
        let root = File::open(&dir).unwrap();

        let got = resolve_in(&root, "c", "/usr/bin/curl", true).unwrap();
        let meta = std::fs::metadata(dir.join("usr/bin/curl")).unwrap();
        assert_eq!(got.file, file_id(&meta));
        assert_eq!(
            got.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        // An absolute symlink is followed inside the root, as exec does
        // inside the container.
        let via_link = resolve_in(&root, "c", "/bin/curl", false).unwrap();
        assert_eq!((via_link.file, via_link.sha256), (got.file, None));
        // `..` stops at the root: the host's /etc/passwd is not reached.
        let up = resolve_in(&root, "c", "/usr/bin/up", false).unwrap_err();
        assert!(up.contains("no such file in container c"), "{up}");

        let missing = resolve_in(&root, "c", "/usr/bin/wget", false).unwrap_err();
        assert_eq!(missing, "/usr/bin/wget: no such file in container c");
        let dir_err = resolve_in(&root, "c", "/usr/bin", false).unwrap_err();
        assert_eq!(dir_err, "/usr/bin: not a regular file in container c");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_to_another_name_and_a_hard_link_are_told() {
        let dir = scratch("shared");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/busybox"), b"multi-call").unwrap();
        std::fs::hard_link(dir.join("bin/busybox"), dir.join("bin/sh")).unwrap();
        // Alpine's applets: absolute and relative symlinks to the one file.
        std::os::unix::fs::symlink("/bin/busybox", dir.join("usr/bin/wget")).unwrap();
        std::os::unix::fs::symlink("../../bin/busybox", dir.join("usr/bin/nc")).unwrap();
        std::fs::write(dir.join("usr/bin/curl"), b"curl").unwrap();
        std::os::unix::fs::symlink("/usr/bin", dir.join("sbin")).unwrap();
        let root = File::open(&dir).unwrap();
        let busybox = file_id(&std::fs::metadata(dir.join("bin/busybox")).unwrap());

        let wget = resolve_in(&root, "c", "/usr/bin/wget", false).unwrap();
        assert_eq!(wget.file, busybox);
        assert_eq!(
            (wget.final_path.as_deref(), wget.links),
            (Some("/bin/busybox"), 2)
        );
        assert_eq!(
            wget.shared("/usr/bin/wget").and_then(|s| s.other_name),
            Some("busybox".to_string())
        );
        let nc = resolve_in(&root, "c", "/usr/bin/nc", false).unwrap();
        assert_eq!(nc.final_path.as_deref(), Some("/bin/busybox"));

        // A hard link has its own name: only the link count tells.
        let sh = resolve_in(&root, "c", "/bin/sh", false).unwrap();
        assert_eq!(
            (sh.file, sh.final_path.as_deref()),
            (busybox, Some("/bin/sh"))
        );
        let shared = sh.shared("/bin/sh").unwrap();
        assert_eq!((shared.other_name, shared.links), (None, Some(2)));

        // A file of its own, also through a symlinked directory: nothing.
        let curl = resolve_in(&root, "c", "/usr/bin/curl", false).unwrap();
        assert_eq!(
            (curl.final_path.as_deref(), curl.links),
            (Some("/usr/bin/curl"), 1)
        );
        assert_eq!(curl.shared("/usr/bin/curl"), None);
        let via_dir = resolve_in(&root, "c", "/sbin/curl", false).unwrap();
        assert_eq!(via_dir.final_path.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(via_dir.shared("/sbin/curl"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_files_path_in_its_root_is_the_shown_path_less_the_roots() {
        // A root that is a directory of the resolver's tree.
        assert_eq!(
            in_root_candidates("/var/lib/c/rootfs", "/var/lib/c/rootfs/bin/busybox"),
            ["/bin/busybox", "/var/lib/c/rootfs/bin/busybox"]
        );
        // A container's own mount namespace: shown from its top, `/`.
        assert_eq!(in_root_candidates("/", "/bin/busybox"), ["/bin/busybox"]);
        // A prefix of a name is not the root's path.
        assert_eq!(
            in_root_candidates("/var/lib/c/root", "/var/lib/c/rootfs/bin/sh"),
            ["/var/lib/c/rootfs/bin/sh"]
        );
        assert_eq!(in_root_candidates("/r", "/r"), ["/r"]);
        assert!(in_root_candidates("/", "anon_inode:[eventfd]").is_empty());
        assert!(in_root_candidates("/", "").is_empty());
    }

    #[test]
    fn a_file_unlinked_after_it_was_opened_has_no_final_path() {
        let dir = scratch("unlinked");
        std::fs::write(dir.join("usr/bin/curl"), b"curl").unwrap();
        let root = File::open(&dir).unwrap();
        let handle = File::open(dir.join("usr/bin/curl")).unwrap();
        let meta = handle.metadata().unwrap();
        assert_eq!(
            final_path(&root, &handle, &meta).as_deref(),
            Some("/usr/bin/curl")
        );
        // The kernel now shows "… (deleted)", which names no file.
        std::fs::remove_file(dir.join("usr/bin/curl")).unwrap();
        assert_eq!(final_path(&root, &handle, &meta), None);
        // Another file at the same path is not this one.
        std::fs::write(dir.join("usr/bin/curl"), b"other").unwrap();
        assert_eq!(final_path(&root, &handle, &meta), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_root_resolves_like_the_files_own_stat() {
        // The test's own /proc/<pid>/root is the host's root.
        let me = std::process::id();
        let proc = Path::new("/proc");
        let expected = root_of(proc, me);
        let root = open_root(proc, "self", &[u32::MAX, me], expected).unwrap();
        let exe = std::env::current_exe().unwrap();
        let got = resolve_in(&root, "self", exe.to_str().unwrap(), false).unwrap();
        assert_eq!(got.file, file_id(&std::fs::metadata(&exe).unwrap()));
        let canonical = std::fs::canonicalize(&exe).unwrap();
        assert_eq!(got.final_path.as_deref(), canonical.to_str());
    }

    #[test]
    fn a_process_with_another_root_is_not_used() {
        let dir = scratch("otherroot");
        let me = std::process::id();
        let proc = Path::new("/proc");
        let elsewhere = RootId::of(&std::fs::metadata(&dir).unwrap());
        let err = open_root(proc, "c", &[me], Some(elsewhere)).unwrap_err();
        assert!(err.contains("chrooted elsewhere"), "{err}");
        let err = open_root(proc, "c", &[u32::MAX], Some(elsewhere)).unwrap_err();
        assert_eq!(err, "container c has no live process");
        let err = open_root(proc, "c", &[me], None).unwrap_err();
        assert!(err.contains("was not recorded"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
