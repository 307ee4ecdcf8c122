//! The resolver service: the live container inventory.
//!
//! Every change to the inventory (a container appearing, changing or
//! vanishing) gets its own generation number. A client keeps the generation
//! of the last snapshot or change it applied and asks [`Resolver::watch`] for
//! what came after it, so it never misses a change; when the resolver no
//! longer holds that far back (or restarted), the reply is a full
//! [`WatchReply::Resync`] snapshot instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[tarpc::service]
pub trait Resolver {
    /// API version, what the resolver runs and how its sources are doing.
    async fn status() -> ResolverStatus;
    /// The whole inventory, with the generation it is at.
    async fn list() -> Snapshot;
    /// The changes after generation `after_generation`, waiting up to
    /// `wait_ms` (capped at [`MAX_WATCH_WAIT_MS`], and cut short before the
    /// call's deadline) for the first one (long poll). An empty `Changes`
    /// means nothing happened in that time.
    async fn watch(after_generation: u64, wait_ms: u32) -> WatchReply;
    /// The files `path`s name inside containers, resolved in each
    /// container's own root (its mount namespace's view, symlinks followed
    /// without leaving it), in request order.
    async fn executables(lookups: Vec<ExeLookup>) -> Vec<Result<ExeFile, String>>;
}

/// One executable to resolve inside one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExeLookup {
    /// The container's runtime namespace: containerd's namespaces may each
    /// hold a container of the same id.
    pub namespace: String,
    pub container_id: String,
    /// Absolute path inside the container.
    pub path: String,
    /// Also hash the file's content (for a policy's `sha256` pin).
    pub sha256: bool,
}

/// What a path names inside a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExeFile {
    pub file: kernel_model::state::FileId,
    /// Lowercase hex SHA-256 of the content, when asked for.
    pub sha256: Option<String>,
    /// The file's own path inside the container's root, symlinks followed
    /// (`/bin/busybox` for `/usr/bin/wget` on Alpine); `None` when it could
    /// not be told, or from a resolver that does not say.
    #[serde(default)]
    pub final_path: Option<String>,
    /// The file's hard links (`st_nlink`); 0 from a resolver that does not
    /// say.
    #[serde(default)]
    pub links: u64,
}

impl ExeFile {
    /// Whether the file `path` resolved to is also other commands: see
    /// [`shared_file`].
    pub fn shared(&self, path: &str) -> Option<SharedFile> {
        shared_file(path, self.final_path.as_deref(), self.links)
    }
}

/// A process rule's file that is more than the command the rule names: the
/// kernel knows the file, not the name it was run by, so every name of it
/// (every applet of a multi-call binary such as BusyBox, its shell among
/// them) gets the rule's allowances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFile {
    /// The file's own name, where it is not the last component of the
    /// rule's path (the path is, or passes through, a symlink to it).
    pub other_name: Option<String>,
    /// The file's hard links, where it has more than one.
    pub links: Option<u64>,
}

/// Whether a rule's `path`, which resolved to the file at `final_path`
/// (inside the container's root; `None`: not known) with `links` hard
/// links (0: not known), names a file that is also other commands: one
/// whose name is not the path's last component, or one with more than one
/// hard link. `None` when neither holds or nothing is known.
pub fn shared_file(path: &str, final_path: Option<&str>, links: u64) -> Option<SharedFile> {
    let name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let other_name = final_path
        .map(name)
        .filter(|own| !own.is_empty() && *own != name(path));
    let links = (links > 1).then_some(links);
    (other_name.is_some() || links.is_some()).then_some(SharedFile { other_name, links })
}

/// Longest a `watch` call waits before answering with no changes. The
/// server also answers shortly before the call's deadline, so a client with
/// tarpc's default 10 s deadline gets an empty reply, not an error.
pub const MAX_WATCH_WAIT_MS: u32 = 30_000;

/// Which runtime runs a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Docker (containerd namespace `moby`); name and labels are Docker's.
    Docker,
    /// Plain containerd, including Kubernetes' CRI (namespace `k8s.io`).
    Containerd,
}

impl Runtime {
    pub fn as_str(&self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host-side interface whose peer lives in a container's network
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostVeth {
    /// Interface index in the host (the resolver's) network namespace.
    pub ifindex: u32,
    pub name: String,
    /// The peer's interface index inside the container's namespace.
    pub peer_ifindex: u32,
}

/// One running container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Runtime id (Docker's 64-hex id, or the containerd container id).
    pub id: String,
    /// Docker's name (without the leading `/`); for containerd, in
    /// Kubernetes' namespace `<namespace>/<pod>/<container>` from the
    /// kubelet's labels, elsewhere the `nerdctl/name` label; else the id.
    pub name: String,
    pub runtime: Runtime,
    /// containerd namespace (`moby` for Docker).
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Image reference as the user gave it (empty if unknown).
    pub image: String,
    /// The container's processes (its cgroup and the cgroups below it), as
    /// of the last resolution; the first is the init process.
    pub pids: Vec<u32>,
    /// cgroup v2 path relative to the cgroup2 mount, as in
    /// `/proc/<pid>/cgroup` (`0::<path>`); empty if the process is in no v2
    /// cgroup of its own.
    pub cgroup_path: String,
    /// Inode of the cgroup v2 directory (what `bpf_get_current_cgroup_id`
    /// and `bpf_skb_cgroup_id` return); 0 if unknown.
    pub cgroup_id: u64,
    /// Inode of the network namespace (`/proc/<pid>/ns/net`); 0 if unknown.
    pub netns_inode: u64,
    /// Host interfaces whose peer is in this container's network namespace.
    pub host_veths: Vec<HostVeth>,
    /// The container shares the host's (the resolver's) network namespace.
    pub host_network: bool,
    /// The addresses of the container's network namespace on its
    /// interfaces, loopback ones aside (IPv6 link-local included), sorted:
    /// the only sources its frames may carry out of its veths. Empty until
    /// read (the veth backstop then refuses every routable source).
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    /// The runtime's name and labels are known. False for a Docker container
    /// whose Docker record could not be read yet: its name is its id and
    /// its labels are missing, so a policy must not be chosen from them.
    pub metadata_complete: bool,
    /// The runtime mounts the container's root filesystem read-only
    /// (`None`: the runtime did not say). A writable root lets root in the
    /// container replace the files its process rules name.
    #[serde(default)]
    pub readonly_rootfs: Option<bool>,
}

impl Container {
    /// `namespace/id`: unique across the inventory.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.id)
    }
}

/// The whole inventory at one generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Identifies one run of the resolver; a new value means it restarted.
    pub instance: u64,
    pub generation: u64,
    /// Sorted by [`Container::key`].
    pub containers: Vec<Container>,
    /// The runtimes whose containers are not in it yet: the resolver
    /// serves without a runtime that did not answer its first listing in
    /// time, and until it does, the containers missing here are not gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlisted_sources: Vec<String>,
}

/// What happened to one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ChangeKind {
    Added {
        container: Container,
    },
    Updated {
        container: Container,
    },
    Removed {
        namespace: String,
        id: String,
        cgroup_id: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The generation this change created.
    pub generation: u64,
    #[serde(flatten)]
    pub kind: ChangeKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum WatchReply {
    /// Every change after the requested generation, in order, up to
    /// `generation` (the current one).
    Changes {
        instance: u64,
        generation: u64,
        changes: Vec<Change>,
    },
    /// The requested generation is older than what the resolver keeps, or
    /// from another run of it: replace everything with this snapshot and
    /// watch from its generation.
    Resync { snapshot: Snapshot, reason: String },
}

impl WatchReply {
    /// The run of the resolver this reply comes from.
    pub fn instance(&self) -> u64 {
        match self {
            WatchReply::Changes { instance, .. } => *instance,
            WatchReply::Resync { snapshot, .. } => snapshot.instance,
        }
    }

    /// Folds this reply into a client's copy of the inventory (keyed by
    /// [`Container::key`]); returns the generation to watch from next. The
    /// one fold every client uses, so a watcher's copy cannot drift from the
    /// server's list by a client's own reading of a change.
    pub fn apply_to(self, copy: &mut BTreeMap<String, Container>) -> u64 {
        match self {
            WatchReply::Resync { snapshot, .. } => {
                *copy = snapshot
                    .containers
                    .into_iter()
                    .map(|c| (c.key(), c))
                    .collect();
                snapshot.generation
            }
            WatchReply::Changes {
                generation,
                changes,
                ..
            } => {
                for change in changes {
                    match change.kind {
                        ChangeKind::Added { container } | ChangeKind::Updated { container } => {
                            copy.insert(container.key(), container);
                        }
                        ChangeKind::Removed { namespace, id, .. } => {
                            copy.remove(&format!("{namespace}/{id}"));
                        }
                    }
                }
                generation
            }
        }
    }
}

/// Health of one source of information (containerd, rtnetlink, Docker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub connected: bool,
    /// Last error, if the source is not connected or had trouble.
    pub last_error: Option<String>,
    /// Full resynchronisations done (start, reconnects, gaps).
    pub resyncs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverStatus {
    pub api_version: u32,
    pub version: String,
    pub instance: u64,
    pub generation: u64,
    pub containers: u32,
    /// The cgroup2 mount the cgroup paths are relative to.
    pub cgroup_root: String,
    pub sources: Vec<SourceStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Container {
        Container {
            id: "abc".into(),
            name: "curler".into(),
            runtime: Runtime::Docker,
            namespace: "moby".into(),
            labels: BTreeMap::from([("egress".into(), "block".into())]),
            image: "curlimages/curl:8".into(),
            pids: vec![42, 43],
            cgroup_path: "/system.slice/docker-abc.scope".into(),
            cgroup_id: 1234,
            netns_inode: 4026532181,
            host_veths: vec![HostVeth {
                ifindex: 7,
                name: "veth1".into(),
                peer_ifindex: 2,
            }],
            host_network: false,
            addresses: Vec::new(),
            metadata_complete: true,
            readonly_rootfs: None,
        }
    }

    #[test]
    fn runtime_serialises_as_lowercase_string() {
        assert_eq!(
            serde_json::to_string(&Runtime::Docker).unwrap(),
            "\"docker\""
        );
        assert_eq!(
            serde_json::to_string(&Runtime::Containerd).unwrap(),
            "\"containerd\""
        );
    }

    #[test]
    fn a_symlink_to_a_file_of_another_name_is_shared() {
        // Alpine: /usr/bin/wget -> /bin/busybox, which is /bin/sh too.
        assert_eq!(
            shared_file("/usr/bin/wget", Some("/bin/busybox"), 1),
            Some(SharedFile {
                other_name: Some("busybox".into()),
                links: None
            })
        );
        assert_eq!(
            shared_file("/usr/bin/python3", Some("/usr/bin/python3.12"), 1)
                .and_then(|s| s.other_name)
                .as_deref(),
            Some("python3.12")
        );
    }

    #[test]
    fn a_file_with_more_than_one_hard_link_is_shared() {
        assert_eq!(
            shared_file("/bin/wget", Some("/bin/wget"), 3),
            Some(SharedFile {
                other_name: None,
                links: Some(3)
            })
        );
        // Both at once.
        assert_eq!(
            shared_file("/usr/bin/nc", Some("/bin/busybox"), 2),
            Some(SharedFile {
                other_name: Some("busybox".into()),
                links: Some(2)
            })
        );
        // Not knowing the path leaves the link count to tell.
        assert_eq!(
            shared_file("/usr/bin/wget", None, 2).map(|s| s.links),
            Some(Some(2))
        );
    }

    #[test]
    fn a_file_of_its_own_name_and_one_link_is_not_shared() {
        assert_eq!(shared_file("/usr/bin/curl", Some("/usr/bin/curl"), 1), None);
        // A symlinked directory on the way changes the directory, not the
        // name: /bin -> /usr/bin.
        assert_eq!(shared_file("/bin/curl", Some("/usr/bin/curl"), 1), None);
        // Nothing known (an older resolver): nothing said.
        assert_eq!(shared_file("/usr/bin/wget", None, 0), None);
        assert_eq!(shared_file("/usr/bin/wget", None, 1), None);
        // A path the resolver could not have meant as a file's is ignored,
        // never taken for another name.
        assert_eq!(shared_file("/usr/bin/wget", Some("/"), 1), None);
        assert_eq!(shared_file("/usr/bin/wget", Some(""), 1), None);
    }

    #[test]
    fn an_exe_file_from_an_older_resolver_still_parses() {
        let old = r#"{"file":{"dev":1,"ino":2,"ctime_sec":3,"ctime_nsec":4},"sha256":null}"#;
        let got: ExeFile = serde_json::from_str(old).unwrap();
        assert_eq!((got.final_path, got.links), (None, 0));
        assert_eq!(got.file.ino, 2);
    }

    #[test]
    fn watch_reply_round_trips() {
        let reply = WatchReply::Changes {
            instance: 1,
            generation: 3,
            changes: vec![
                Change {
                    generation: 2,
                    kind: ChangeKind::Added {
                        container: sample(),
                    },
                },
                Change {
                    generation: 3,
                    kind: ChangeKind::Removed {
                        namespace: "moby".into(),
                        id: "abc".into(),
                        cgroup_id: 1234,
                    },
                },
            ],
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<WatchReply>(&text).unwrap(), reply);
        assert_eq!(sample().key(), "moby/abc");
    }
}
