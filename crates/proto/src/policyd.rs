//! The policyd service: reloads, status, explain and events for the CLI.
//! Served on `/run/contain/policyd.sock` to root and the `contain` group.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use kernel_model::{
    diff::OpCounts,
    state::{MapOp, Verdict},
};

use crate::loader::{Event, LoaderError};

#[tarpc::service]
pub trait Policyd {
    /// API version and what the daemon runs.
    async fn version() -> PolicydInfo;
    /// Re-reads the policy file and converges the loader to it. With
    /// `dry_run`, computes and returns the diff without applying it. An
    /// invalid file is refused and the running policy stays in force.
    async fn reload(dry_run: bool, max_ops: u32) -> Result<ReloadReport, PolicydError>;
    /// Containers, the policy each got, modes, counters.
    async fn status() -> Result<Status, PolicydError>;
    /// Which rule decides a flow, and why.
    async fn explain(query: ExplainQuery) -> Result<Explanation, PolicydError>;
    /// Deny and audit events with a sequence number above `after`, at most
    /// `max`, waiting up to `wait_ms` for the first (long poll), attributed
    /// to containers, policies and rules.
    async fn events(after: u64, max: u32, wait_ms: u32) -> Result<EventBatch, PolicydError>;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicydInfo {
    pub api_version: u32,
    pub version: String,
    pub policy_file: String,
}

/// A finding about the policy file, located and rendered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// "error" or "warning".
    pub severity: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
    /// `file:line:col: severity: message` with the source line and a caret.
    pub rendered: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub dry_run: bool,
    /// Whether a diff was sent to the loader (false for a dry run or when
    /// nothing changed).
    pub applied: bool,
    /// The loader's generation after the apply (before, for a dry run).
    pub generation: u64,
    /// FNV-1a of the policy file, hex.
    pub policy_digest: String,
    /// New verdict for unknown cgroups, if it changes.
    pub unknown_verdict: Option<Verdict>,
    /// How many operations the diff has, per map.
    pub counts: OpCounts,
    /// The operations, the first `max_ops` of them (a first install of a
    /// big policy is tens of thousands).
    pub ops: Vec<MapOp>,
    /// Why a valid policy is not applied yet (e.g. waiting for the first
    /// container inventory); it will be, without another reload.
    pub pending: Option<String>,
    pub warnings: Vec<Diagnostic>,
    /// Time to read, validate and compile, microseconds.
    pub compile_us: u64,
    /// Time to diff and apply through the loader, microseconds.
    pub apply_us: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connected: bool,
    /// Where, e.g. a socket path or an inventory file.
    pub endpoint: String,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCounts {
    pub cgroups: u64,
    pub processes: u64,
    pub dests: u64,
    pub ports: u64,
    #[serde(default)]
    pub veths: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub image: String,
    pub cgroup_id: Option<u64>,
    /// The policy that applies, if any.
    pub policy: Option<String>,
    /// Later policies whose selectors also match (the first wins).
    pub also_matched: Vec<String>,
    /// cgroup v2 path relative to the cgroup2 mount, when known.
    pub cgroup_path: Option<String>,
    /// "enforce" or "audit" (the policy's mode, and the loader's programs
    /// are attached at or above the container's cgroup), "unenforced" (they
    /// are not: the map entries exist but no program looks at them),
    /// "unverified" (that cannot be checked), "unrestricted" (no policy
    /// selects it) or "unmapped" (no cgroup id yet: the unknown-container
    /// verdict applies).
    pub mode: String,
    /// For "unenforced" and "unverified": why.
    pub unenforced_reason: Option<String>,
    /// For a container a policy selects: why the veth backstop does not
    /// judge frames from its packet sockets (AF_PACKET, which no cgroup
    /// program sees) under its policy; `None` when it does.
    #[serde(default)]
    pub packet_sockets_uncovered: Option<String>,
    /// The runtime mounts the container's root filesystem read-only
    /// (`None`: it did not say). Where it is writable, root in the
    /// container can replace the files its process rules name.
    #[serde(default)]
    pub readonly_rootfs: Option<bool>,
    /// Its cgroup, when that is below no cgroup the loader's programs are
    /// attached to (whether a policy selects it or not): no first-packet
    /// coverage, no unknown-container verdict. Docker containers created
    /// before `cgroup-parent` named the managed parent are such.
    #[serde(default)]
    pub outside_managed_parent: Option<String>,
    /// Each `exe` path of the selecting policy's process entries, and what
    /// it names in this container.
    #[serde(default)]
    pub executables: Vec<ExecutableStatus>,
}

/// What one `exe` path of a process entry names in one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutableStatus {
    /// The process entry, e.g. `exe /usr/bin/curl|/bin/curl`.
    pub entry: String,
    pub path: String,
    /// The file the kernel recognises for the entry there.
    pub file: Option<kernel_model::state::FileId>,
    /// Why there is none: its processes get the container-wide rules.
    pub problem: Option<String>,
    /// The file's own path inside the container's root, symlinks followed
    /// (see `proto::resolver::ExeFile::final_path`).
    #[serde(default)]
    pub final_path: Option<String>,
    /// The file's hard links; 0: not known.
    #[serde(default)]
    pub links: u64,
}

impl ExecutableStatus {
    /// Whether the file the kernel recognises for the entry is also other
    /// commands (see [`crate::resolver::shared_file`]); `None` when the
    /// entry recognises no file here.
    pub fn shared(&self) -> Option<crate::resolver::SharedFile> {
        self.file.and_then(|_| {
            crate::resolver::shared_file(&self.path, self.final_path.as_deref(), self.links)
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    pub policy_id: u32,
    pub mode: String,
    pub rules: u32,
    pub processes: u32,
    pub containers: u32,
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub api_version: u32,
    pub policy_file: String,
    /// Digest of the policy in force, if one was loaded.
    pub policy_digest: Option<String>,
    pub mode: Option<String>,
    /// The verdict the loader's maps give containers they do not know, as
    /// policyd last read or applied them while still the maps' generation;
    /// `None` when policyd does not know the maps (the policy file's may
    /// not be applied).
    pub unknown_container: Option<Verdict>,
    /// The loader's generation, when the maps are the ones policyd last
    /// read or applied.
    pub generation: Option<u64>,
    pub loader: Connection,
    pub inventory: Connection,
    pub containers: Vec<ContainerStatus>,
    pub policies: Vec<PolicyStatus>,
    pub entries: EntryCounts,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Unix seconds of the last successful convergence.
    pub last_applied_unix: Option<u64>,
    /// Why the last reload or convergence failed, if it did.
    pub last_error: Option<String>,
    pub warnings: Vec<Diagnostic>,
    pub events_dropped_kernel: u64,
    pub events_dropped_loader: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainQuery {
    /// Container name, id, unique id prefix, or `NAMESPACE:ID`.
    pub container: String,
    pub dest: IpAddr,
    /// tcp, udp, icmp, icmpv6, or a protocol number; `None` lists what is
    /// allowed to `dest` instead of judging one flow.
    pub proto: Option<String>,
    /// A port for tcp/udp; `TYPE[/CODE]` or a type name for ICMP.
    pub port: Option<String>,
    /// A comm, or an executable path (starts with `/`).
    pub process: Option<String>,
}

/// The rule that decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub rule_id: u32,
    /// e.g. `policy "curler", process exe /usr/bin/curl, allow[0]: tcp/80, tcp/443 to 1.1.1.0/24`.
    pub description: String,
    /// `file:line:col`.
    pub location: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub container: String,
    pub container_id: String,
    pub cgroup_id: Option<u64>,
    pub policy: Option<String>,
    pub policy_id: u32,
    /// "enforce", "audit", "unrestricted", "unmapped", or "unenforced" /
    /// "unverified" when the loader's programs do not (or may not) see the
    /// container (see `ContainerStatus::mode`); `reason` then says why first.
    pub mode: String,
    /// Which process class the kernel would pick, and by what.
    pub process_class: u32,
    pub process: String,
    pub dest: IpAddr,
    pub proto: Option<u8>,
    /// Port, or `type << 8 | code` for ICMP.
    pub port: Option<u16>,
    /// The verdict for the flow; `None` when no protocol was given.
    pub verdict: Option<Verdict>,
    /// The destination prefix the kernel's longest match lands on.
    pub matched_prefix: Option<String>,
    pub ruleset: Option<u32>,
    pub rule: Option<RuleRef>,
    /// Everything this process may send to `dest`.
    pub allowed_here: Vec<String>,
    /// One sentence for people.
    pub reason: String,
}

/// A loader event with names attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributedEvent {
    pub event: Event,
    pub container: Option<String>,
    pub policy: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<AttributedEvent>,
    /// Events the client missed (older than the loader's buffer).
    pub missed: u64,
    pub last_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PolicydError {
    #[error("the policy file is invalid; the running policy stays in force:\n{}", render(.diagnostics))]
    InvalidPolicy { diagnostics: Vec<Diagnostic> },
    #[error("no valid policy is loaded yet: {0}")]
    NoPolicy(String),
    #[error("the loader is unavailable: {0}")]
    LoaderUnavailable(String),
    #[error("the loader refused the change: {0}")]
    Loader(LoaderError),
    #[error("{0}")]
    NotFound(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| d.rendered.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}
