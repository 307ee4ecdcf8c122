//! The bpf-loader service: programs, links, maps and cgroups, nothing about
//! containers or policy syntax. Root only.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use kernel_model::{
    diff::MapDiff,
    state::{KernelState, Verdict},
};

#[tarpc::service]
pub trait Loader {
    /// API version and what the loader runs.
    async fn version() -> LoaderInfo;
    /// The cgroups the programs are attached to (`--attach-parent`, with
    /// `BPF_F_ALLOW_MULTI`: every cgroup below is covered from its first
    /// process). Only the loader's command line attaches: no client can
    /// detach them.
    async fn attachments() -> Vec<Attachment>;
    /// The host-side veths (the loader's network namespace) on which the
    /// kernel runs the veth backstop's programs first, read from the
    /// kernel at the call. A veth missing here (not attached, the
    /// attachment removed, or another program or filter before it) may
    /// pass packet-socket frames and forged sources unjudged. Since API
    /// version [`VETH_ATTACHMENTS_SINCE`].
    async fn veth_attachments() -> Vec<VethAttachment>;
    /// Applies a diff to the policy maps, all or nothing, if the loader is
    /// still at `diff.from_generation`. Returns the new generation.
    async fn apply(diff: MapDiff) -> Result<u64, LoaderError>;
    /// The policy maps as they are, with their generation.
    async fn state() -> Result<StateSnapshot, LoaderError>;
    /// Only the generation: a cheap check whether the maps changed.
    async fn generation() -> u64;
    /// Per-policy and global counters.
    async fn counters() -> Result<Counters, LoaderError>;
    /// Events with a sequence number above `after`, at most `max`, waiting
    /// up to `wait_ms` for the first one (long poll).
    async fn events(after: u64, max: u32, wait_ms: u32) -> EventBatch;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderInfo {
    pub api_version: u32,
    pub version: String,
    /// Where maps, programs and links are pinned.
    pub pin_dir: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Absolute path of the cgroup directory.
    pub cgroup: String,
    /// The same cgroup relative to the cgroup2 mount, as `/proc/<pid>/cgroup`
    /// writes it (`/contain.slice`; `/` for the root): the form the
    /// resolver reports containers' cgroups in.
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub programs: Vec<String>,
}

/// The API version whose loader answers `veth_attachments`.
pub const VETH_ATTACHMENTS_SINCE: u32 = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethAttachment {
    pub ifindex: u32,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    pub generation: u64,
    pub state: KernelState,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounters {
    pub policy_id: u32,
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Policies with any non-zero counter.
    pub policies: Vec<PolicyCounters>,
    /// Events the kernel could not queue because the ring buffer was full.
    pub events_dropped_kernel: u64,
    /// Events dropped by the loader because no client read them in time.
    pub events_dropped_loader: u64,
    /// Events the kernel held back because their cgroup exceeded its rate
    /// (each cgroup's next event carries its own count in `suppressed`).
    #[serde(default)]
    pub events_rate_limited: u64,
    /// Sockets refused at creation, and connect() calls refused, because the
    /// socket could not be stamped with
    /// their creator's identity.
    #[serde(default)]
    pub unstamped_sockets: u64,
    /// Packets the egress program could not parse (judged by their
    /// cgroup's miss verdict, and reported).
    #[serde(default)]
    pub unparsed_packets: u64,
    /// Frames of no container's socket let through on a veth of no known
    /// container (an unfiltered one's, or one policyd has not mapped yet).
    #[serde(default)]
    pub veth_unowned_frames: u64,
    /// Frames of a governed container whose source is none of its
    /// addresses (denied, or passed and reported in audit mode).
    #[serde(default)]
    pub forged_source_frames: u64,
    /// Socket options refused to a governed container because they let a
    /// packet socket's frame change after the veth backstop judged it
    /// (`PACKET_VNET_HDR`, AF_XDP transmit metadata).
    #[serde(default)]
    pub refused_socket_options: u64,
}

/// Which hook decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
    Egress,
    /// The backstop on the host side of the container's veth: a frame no
    /// cgroup program saw.
    Veth,
}

/// A deny or audit decision, attributed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub verdict: Verdict,
    pub hook: Hook,
    pub cgroup_id: u64,
    pub policy_id: u32,
    pub rule_id: u32,
    pub tgid: u32,
    pub uid: u32,
    pub comm: String,
    /// The executable as exec'd, when the kernel saw the exec.
    pub exe: Option<String>,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Events of this cgroup the kernel held back by its rate limit since
    /// the previous one reported.
    #[serde(default)]
    pub suppressed: u32,
    /// An established outbound TCP flow that a policy change revoked; the
    /// loader aborts its socket.
    #[serde(default)]
    pub revoked_flow: bool,
    /// The kernel's cookie of the socket, for revoked flows (0 otherwise).
    #[serde(default)]
    pub socket_cookie: u64,
    /// A veth event of a frame from a packet socket (AF_PACKET, AF_XDP):
    /// there is no process to attribute it to.
    #[serde(default)]
    pub link_layer: bool,
    /// A veth event of a packet from no socket of the container's (the
    /// kernel's, or a host process's in the container's namespace).
    #[serde(default)]
    pub unattributed: bool,
    /// A veth event of a frame whose source is none of the container's
    /// addresses: forged, whatever it was sent to.
    #[serde(default)]
    pub forged_source: bool,
    /// The ethertype of a denied frame that is not IP (then `proto` is 0
    /// and the addresses unspecified).
    #[serde(default)]
    pub ethertype: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<Event>,
    /// Events older than the loader's buffer that this client missed.
    pub missed: u64,
    /// The highest sequence number the loader has issued.
    pub last_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LoaderError {
    #[error("generation mismatch: the diff was computed against generation {expected}, the loader is at {actual}; fetch the state and diff again")]
    GenerationMismatch { expected: u64, actual: u64 },
    #[error("map {map}: {reason}; nothing was changed")]
    Map { map: String, reason: String },
    #[error("invalid diff: {0}; nothing was changed")]
    InvalidDiff(String),
    #[error("{0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use contain_common::capacity;
    use kernel_model::state::{
        CgroupEntry, DestPrefix, Entry, FileId, MapOp, PortPrefix, ProcessKey, ProcessMatch,
    };
    use tarpc::{ClientMessage, Response};

    use super::*;
    use crate::transport::Service;

    /// One entry of each map with every number at its widest, and how many
    /// of them policyd ever asks for (its compile refuses more).
    fn widest_entries() -> Vec<(Entry, u32)> {
        let widest_file = FileId {
            dev: u32::MAX,
            ino: u64::MAX,
            ctime_sec: i64::MIN,
            ctime_nsec: 999_999_999,
        };
        vec![
            (
                Entry::Cgroup {
                    id: u64::MAX,
                    value: CgroupEntry {
                        policy_id: u32::MAX,
                        audit: false,
                        unrestricted: false,
                        forwarded_dns: false,
                    },
                },
                capacity::CGROUPS,
            ),
            (
                Entry::Process {
                    key: ProcessKey {
                        policy_id: u32::MAX,
                        process: ProcessMatch::File(widest_file),
                    },
                    class: u32::MAX,
                },
                capacity::PROCESSES,
            ),
            (
                Entry::Dest {
                    key: DestPrefix {
                        policy_id: u32::MAX,
                        class: u32::MAX,
                        addr: [255; 16],
                        prefix_len: 128,
                    },
                    ruleset: u32::MAX,
                },
                capacity::DESTS,
            ),
            (
                Entry::Port {
                    key: PortPrefix {
                        ruleset: u32::MAX,
                        proto: u8::MAX,
                        port: u16::MAX,
                        port_bits: 16,
                    },
                    rule_id: u32::MAX,
                },
                capacity::PORTS,
            ),
            (
                Entry::Veth {
                    ifindex: u32::MAX,
                    cgroup_id: u64::MAX,
                },
                capacity::VETHS,
            ),
        ]
    }

    fn json_len(value: &impl Serialize) -> u64 {
        serde_json::to_vec(value).expect("serialises").len() as u64
    }

    /// The frame limits hold the largest messages the loader's socket
    /// carries: a full host's state and a diff that writes all of it.
    /// Sizes are added up entry by entry (the growth of the message per
    /// entry, comma included) rather than built: millions of entries.
    #[test]
    fn the_largest_state_and_diff_fit_the_loaders_frames() {
        let empty_state = Response {
            request_id: u64::MAX,
            message: Ok(LoaderResponse::State(Ok(StateSnapshot {
                generation: u64::MAX,
                state: KernelState::default(),
            }))),
        };
        let empty_diff = ClientMessage::Request(tarpc::Request {
            context: tarpc::context::current(),
            id: u64::MAX,
            message: LoaderRequest::Apply {
                diff: MapDiff {
                    from_generation: u64::MAX,
                    unknown_verdict: Some(Verdict::Audit),
                    ops: Vec::new(),
                },
            },
        });
        let (mut state_bytes, mut diff_bytes) = (json_len(&empty_state), json_len(&empty_diff));
        for (entry, count) in widest_entries() {
            let mut one = KernelState::default();
            one.apply_ops(&[MapOp::Upsert { entry }]);
            let per_state_entry = json_len(&one) - json_len(&KernelState::default()) + 1;
            let per_op = json_len(&MapOp::Upsert { entry }) + 1;
            state_bytes += per_state_entry * u64::from(count);
            diff_bytes += per_op * u64::from(count);
        }
        let limit_response = Service::Loader.max_response_bytes() as u64;
        let limit_request = Service::Loader.max_request_bytes() as u64;
        assert!(
            state_bytes <= limit_response,
            "a full state is {state_bytes} bytes, over the {limit_response}-byte response frame"
        );
        assert!(
            diff_bytes <= limit_request,
            "a diff writing a full state is {diff_bytes} bytes, over the {limit_request}-byte request frame"
        );
    }
}
