//! The contract between contain's eBPF programs and userspace: map names, the
//! `#[repr(C)]` keys and values stored in them, and the few pure functions both
//! sides must compute identically (identity hashes, address encoding).
//!
//! `no_std` so the kernel side can use it; the `user` feature adds `aya::Pod`
//! impls for userspace.
#![no_std]

/// Bytes of a task's `comm`, including the terminating NUL.
pub const COMM_LEN: usize = 16;
/// Bytes of an executable path kept for attribution (events).
pub const EXE_PATH_LEN: usize = 256;
/// Policy ids index the per-policy counter array, so they are bounded.
pub const MAX_POLICIES: u32 = 4096;
/// Policy id the kernel reports for a cgroup it has no entry for.
pub const UNKNOWN_POLICY_ID: u32 = 0;

/// Names of the maps, as pinned under the loader's bpffs directory.
pub mod map_names {
    pub const CGROUPS: &str = "CONTAIN_CGROUPS";
    pub const PROCESSES: &str = "CONTAIN_PROCESSES";
    pub const DESTS: &str = "CONTAIN_DESTS";
    pub const HOSTS: &str = "CONTAIN_HOSTS";
    pub const PORTS: &str = "CONTAIN_PORTS";
    pub const EXACT_PORTS: &str = "CONTAIN_EXACT_PORTS";
    pub const CONFIG: &str = "CONTAIN_CONFIG";
    pub const COUNTERS: &str = "CONTAIN_COUNTERS";
    pub const STATS: &str = "CONTAIN_STATS";
    pub const REFUSED_SOCKOPTS: &str = "CONTAIN_REFUSED_SOCKOPTS";
    pub const EVENTS: &str = "CONTAIN_EVENTS";
    pub const REVOKED_FLOWS: &str = "CONTAIN_REVOKED_FLOWS";
    pub const SOCKETS: &str = "CONTAIN_SOCKETS";
    pub const EXECS: &str = "CONTAIN_EXECS";
    pub const EXE_PATHS: &str = "CONTAIN_EXE_PATHS";
    pub const INBOUND_PEERS: &str = "CONTAIN_INBOUND";
    pub const EVENT_RATES: &str = "CONTAIN_EVENT_RATES";
    pub const VETHS: &str = "CONTAIN_VETHS";
    pub const ATTACHED_CGROUPS: &str = "CONTAIN_ATTACHED_CGROUPS";
    pub const VETH_PEERS: &str = "CONTAIN_VETH_PEERS";
    pub const VETH_SOURCES: &str = "CONTAIN_VETH_SOURCES";
    pub const NEW_VETHS: &str = "CONTAIN_NEW_VETHS";
    pub const ALL: &[&str] = &[
        CGROUPS,
        PROCESSES,
        DESTS,
        HOSTS,
        PORTS,
        EXACT_PORTS,
        CONFIG,
        COUNTERS,
        STATS,
        REFUSED_SOCKOPTS,
        EVENTS,
        REVOKED_FLOWS,
        SOCKETS,
        EXECS,
        EXE_PATHS,
        INBOUND_PEERS,
        EVENT_RATES,
        VETHS,
        ATTACHED_CGROUPS,
        VETH_PEERS,
        VETH_SOURCES,
        NEW_VETHS,
    ];
}

/// Capacities of the policy maps. They bound what one host can hold; the
/// loader reports a clear error when a diff would exceed them.
pub mod capacity {
    pub const CGROUPS: u32 = 16_384;
    pub const PROCESSES: u32 = 65_536;
    pub const DESTS: u32 = 1_048_576;
    pub const HOSTS: u32 = 1_048_576;
    pub const PORTS: u32 = 1_048_576;
    pub const EXACT_PORTS: u32 = 1_048_576;
    pub const EXECS: u32 = 65_536;
    pub const EXE_PATHS: u32 = 16_384;
    pub const INBOUND_PEERS: u32 = 65_536;
    /// Cgroups whose event rate is followed at once (per CPU), as many as
    /// `CGROUPS` holds: beyond that (or sooner on a host with many CPUs,
    /// whose free lists hold some back), the one that reported least
    /// recently starts afresh.
    pub const EVENT_RATES: u32 = 16_384;
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// The revoked flows' own ring (2 184 events of 120 bytes): denials from every
    /// container share the other one, and may fill it.
    pub const REVOKED_FLOWS_BYTES: u32 = 1 << 18;
    pub const VETHS: u32 = 16_384;
    pub const ATTACHED_CGROUPS: u32 = 16_384;
    pub const VETH_PEERS: u32 = 65_536;
    pub const VETH_SOURCES: u32 = 65_536;
}

/// Cgroup levels the veth program walks up from a socket's cgroup to find
/// one contain's cgroup programs are attached to (the root is level 0).
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Names of the programs in the object, as the loader attaches them.
pub mod program_names {
    pub const SOCK_CREATE: &str = "contain_sock_create";
    pub const CONNECT4: &str = "contain_connect4";
    pub const CONNECT6: &str = "contain_connect6";
    pub const SENDMSG4: &str = "contain_sendmsg4";
    pub const SENDMSG6: &str = "contain_sendmsg6";
    pub const EGRESS: &str = "contain_egress";
    pub const INGRESS: &str = "contain_ingress";
    pub const SETSOCKOPT: &str = "contain_setsockopt";
    pub const EXEC: &str = "contain_exec";
    pub const NEWTASK: &str = "contain_newtask";
    pub const EXIT: &str = "contain_exit";
    /// The classifiers on the host side of each container's veth: what the
    /// container sends (tc ingress there) and what it receives (tc egress).
    pub const VETH: &str = "contain_veth";
    pub const VETH_INBOUND: &str = "contain_veth_inbound";
    /// The tracepoint programs, with the (category, event) each attaches to.
    pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
        // task_newtask, unlike sched_process_fork, carries the clone flags:
        // threads share their process's entry and get none of their own.
        (NEWTASK, "task", "task_newtask"),
        (EXIT, "sched", "sched_process_exit"),
    ];
    /// The raw tracepoint programs (they see the tracepoint's arguments,
    /// `sched_process_exec`'s `linux_binprm` included), with their event.
    pub const RAW_TRACEPOINTS: &[(&str, &str)] = &[(EXEC, "sched_process_exec")];
    /// The programs attached to a cgroup, in attach order.
    pub const CGROUP: &[&str] = &[
        SOCK_CREATE,
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        EGRESS,
        INGRESS,
        SETSOCKOPT,
    ];
}

/// IP protocol numbers the policy names.
pub mod ip_proto {
    /// "Any protocol" in keys.
    pub const ANY: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IGMP: u8 = 2;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Whether an ICMP (`proto` 1) or ICMPv6 (58) message of `icmp_type` is an
/// error about another packet, which it quotes: what conntrack lets into a
/// container as related to one of its flows, from whichever router or host
/// claims to have seen that flow (the kernel's `icmp_is_err`, and every
/// ICMPv6 type below 128). Its source never spoke for itself.
pub const fn is_icmp_error(proto: u8, icmp_type: u8) -> bool {
    match proto {
        ip_proto::ICMP => matches!(icmp_type, 3 | 4 | 5 | 11 | 12),
        ip_proto::ICMPV6 => icmp_type < 128,
        _ => false,
    }
}

/// What the kernel does when no rule allows a flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deny = 0,
    Allow = 1,
    /// Let it pass and report what would have been denied.
    Audit = 2,
}

impl Verdict {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Deny),
            1 => Some(Self::Allow),
            2 => Some(Self::Audit),
            _ => None,
        }
    }
}

/// Which program decided, reported in events.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 1,
    Connect6 = 2,
    Sendmsg4 = 3,
    Sendmsg6 = 4,
    Egress = 5,
    /// The backstop on the host side of a container's veth.
    Veth = 6,
}

impl Hook {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Connect4),
            2 => Some(Self::Connect6),
            3 => Some(Self::Sendmsg4),
            4 => Some(Self::Sendmsg6),
            5 => Some(Self::Egress),
            6 => Some(Self::Veth),
            _ => None,
        }
    }
}

/// `CGROUPS` value, keyed by cgroup v2 id (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupPolicy {
    pub policy_id: u32,
    /// `CGROUP_*` flags.
    pub flags: u32,
}

/// Report instead of deny: the policy is in audit mode.
pub const CGROUP_AUDIT: u32 = 1;
/// A known container no policy selects: contain leaves it alone.
pub const CGROUP_UNRESTRICTED: u32 = 2;
/// The policy lets the container use Docker's embedded DNS, so the queries
/// dockerd forwards for it from inside its network namespace may leave.
pub const CGROUP_FORWARDED_DNS: u32 = 4;

/// An address on one host-side veth (by ifindex). `VETH_PEERS` keys: an
/// address that sent a packet into a container through its veth, whose
/// answers from the kernel (echo replies, resets, ICMP errors) may leave
/// through that veth. `VETH_SOURCES` keys: an address of the container's
/// own interface behind the veth, the only sources its frames may carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VethAddrKey {
    pub ifindex: u32,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// `VETHS` value, keyed by the host-side ifindex (`u32`) of a container's
/// veth: the container whose frames come in on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VethOwner {
    pub cgroup_id: u64,
}

/// `PROCESSES` key: which process class of a policy a socket's creator
/// belongs to, by executable path hash or by comm hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub policy_id: u32,
    pub kind: u32,
    pub ident: u64,
}

/// By the executed file's identity ([`file_id`]).
pub const PROCESS_BY_FILE: u32 = 1;
pub const PROCESS_BY_COMM: u32 = 2;

/// `PROCESSES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessClass {
    /// 0 is "any process of the container".
    pub class: u32,
    pub _pad: u32,
    /// For a `PROCESS_BY_FILE` key, the file its keyed hash stands for (the
    /// loader reads its maps back from this); zero otherwise.
    pub file: FileStamp,
}

/// What identifies an executed file, as the exec tracepoint reads it from
/// the kernel's inode: the filesystem's device (kernel encoding,
/// `major << 20 | minor`), the inode number and the inode change time. A
/// copy, a replacement or another filesystem's file differs in one of
/// them; a file written in place gets a new change time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileStamp {
    pub ino: u64,
    pub ctime_sec: i64,
    pub dev: u32,
    pub ctime_nsec: u32,
}

/// The exe id of a file: SipHash-2-4 of its stamp under the loader's
/// per-boot key ([`Config::exe_key`]), so no process in a container can
/// search offline for a file whose id collides with an allowed one. 0 is
/// "no identity", never an id.
#[inline(always)]
pub fn file_id(key: [u64; 2], file: &FileStamp) -> u64 {
    let words = [
        file.ino,
        file.ctime_sec as u64,
        (file.dev as u64) | ((file.ctime_nsec as u64) << 32),
    ];
    let id = siphash24(key, &words);
    if id == 0 {
        1
    } else {
        id
    }
}

/// SipHash-2-4 of whole little-endian 64-bit words (the reference
/// algorithm over their bytes).
#[inline(always)]
fn siphash24(key: [u64; 2], words: &[u64; 3]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    #[inline(always)]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut i = 0;
    while i < words.len() {
        v[3] ^= words[i];
        round(&mut v);
        round(&mut v);
        v[0] ^= words[i];
        i += 1;
    }
    // The final block: no bytes left over, the message length in bytes on top.
    let last = ((words.len() as u64 * 8) & 0xff) << 56;
    v[3] ^= last;
    round(&mut v);
    round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The matched part of a `DESTS` LPM key: every address is stored as IPv6,
/// IPv4 as `::ffff:a.b.c.d`, so IPv4-mapped IPv6 destinations meet the IPv4
/// rules by construction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub policy_id: u32,
    pub class: u32,
    pub addr: [u8; 16],
}

/// Where a destination entry lives: single hosts (/128, which includes
/// IPv4 /32) in the `HOSTS` hash map, shorter prefixes in the `DESTS` LPM
/// trie. The kernel tries the hash first: a host entry is always the
/// longest match, and a hash lookup does not grow with the rule count.
pub const fn dest_is_host(prefix_len: u32) -> bool {
    prefix_len == 128
}

/// Where a port entry lives: exact ports in `EXACT_PORTS` (hash), ranges,
/// ICMP types and "any" in `PORTS` (LPM).
pub const fn port_is_exact(port_bits: u32) -> bool {
    port_bits == 16
}

/// Bits of a `DestKey` before the address: always matched in full.
pub const DEST_KEY_FIXED_BITS: u32 = 64;

/// `DESTS` value: the set of (protocol, port) allowances that applies to the
/// longest matching prefix, with enclosing prefixes' allowances folded in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestValue {
    pub ruleset: u32,
    pub _pad: u32,
}

/// The matched part of a `PORTS` LPM key. `port` is big-endian so a port
/// range is a handful of prefixes; for ICMP it holds `type << 8 | code`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub ruleset: u32,
    pub proto: u8,
    pub port: [u8; 2],
    pub _pad: u8,
}

/// Bits of a `PortKey` before the port: always matched in full.
pub const PORT_KEY_FIXED_BITS: u32 = 40;

/// `PORTS` value: which rule allowed, for attribution and counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortValue {
    pub rule_id: u32,
    pub _pad: u32,
}

/// `CONFIG[0]`: global knobs the loader owns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bumped on every applied diff: the loader's concurrency token.
    pub generation: u64,
    /// Bumped when a diff changes what an existing entry decides (rules,
    /// process classes, a cgroup's policy or mode, the unknown verdict), not
    /// when a container's cgroup is only added or removed: cached socket
    /// verdicts and UDP reply allowances of an older epoch are judged
    /// again. Caches also hold the policy id they were decided under, so a
    /// cgroup that gains or loses its entry misses them without a bump.
    pub rules_epoch: u64,
    /// Bumped with every rules epoch and whenever a cgroup entry is removed.
    /// A socket's cached allow stamped with the current value was checked
    /// against its cgroup's entry since that entry last changed or went, so
    /// an established flow's packet is allowed without looking it up.
    pub cgroup_epoch: u64,
    /// How long a UDP peer that spoke first may be answered after its last
    /// datagram (conntrack's `nf_conntrack_udp_timeout` is 30 s).
    pub udp_reply_timeout_ns: u64,
    /// The key of [`file_id`], drawn by the loader when it creates the maps
    /// (so per boot) and never shown to any other process.
    pub exe_key: [u64; 2],
    /// Deny/audit events one cgroup may report per second; the rest are
    /// counted and the count rides on its next event.
    pub events_per_second: u32,
    /// [`Verdict`] for a cgroup under a managed parent with no entry yet.
    pub unknown_verdict: u8,
    /// 1 while `PROCESSES` holds any entry. At 0 a decision skips the
    /// process-class lookups: every process is class 0, whose rules each
    /// class's include, so a 0 while entries exist is stricter, never looser.
    pub process_classes: u8,
    pub _pad: [u8; 2],
}

/// Default of [`Config::udp_reply_timeout_ns`].
pub const DEFAULT_UDP_REPLY_TIMEOUT_NS: u64 = 30_000_000_000;
/// Default of the loader's `--new-veth-hold-secs`: how long a veth that
/// appeared while the loader ran holds frames of no socket to the
/// unknown-container verdict while no container owns it (`NEW_VETHS`): a
/// new container's namespace forwards nothing before policyd has named it.
/// Past this, a veth no container owns is taken for none's.
pub const DEFAULT_NEW_VETH_HOLD_SECS: u64 = 10;
/// Default of [`Config::events_per_second`].
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 100;

/// `COUNTERS[policy_id]`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

/// `STATS` indexes, per CPU.
pub mod stat {
    /// Events lost because the ring buffer was full.
    pub const EVENTS_DROPPED: u32 = 0;
    /// Packets the egress program could not parse (passed or denied per
    /// policy, counted here).
    pub const UNPARSED: u32 = 1;
    /// Events not reported because their cgroup exceeded its rate.
    pub const EVENTS_RATE_LIMITED: u32 = 2;
    /// Sockets that could not be stamped, refused at creation or at
    /// connect().
    pub const UNSTAMPED_SOCKETS: u32 = 3;
    /// Packets of no container's socket on a veth contain knows no
    /// container for, let through (a veth of an unfiltered container, or
    /// one policyd has not mapped yet).
    pub const VETH_UNOWNED: u32 = 4;
    /// Frames of a governed container whose source is none of its
    /// addresses (denied, or let through and reported in audit mode).
    pub const FORGED_SOURCE: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// `SOCKETS` (socket storage): who created the socket, and the last verdict
/// so every later packet of a flow costs one comparison.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    // The cached verdict comes first: an established flow's packet reads
    // only these fields, which share one cache line with the storage's
    // own header.
    /// The rules epoch the cached verdict was decided under.
    pub cache_epoch: u64,
    /// The [`Config::cgroup_epoch`] under which the egress program last
    /// found the cached verdict's policy to be the socket's cgroup's
    /// (0: never): while it is current, the cached allow needs no lookup.
    pub cache_cgroup_epoch: u64,
    pub cache_addr: [u8; 16],
    /// The policy the cached verdict was decided under.
    pub cache_policy_id: u32,
    pub cache_port: u16,
    pub cache_proto: u8,
    /// `CACHE_*`.
    pub cache_state: u8,
    pub cgroup_id: u64,
    pub exe_id: u64,
    pub tgid: u32,
    pub uid: u32,
    pub comm: [u8; COMM_LEN],
    /// `SOCK_*` flags.
    pub flags: u32,
    /// The cached verdict's sequence lock: odd while a program writes it.
    /// (Where padding was: storage an older object wrote reads as 0.)
    pub cache_seq: u32,
}

/// The socket made an outbound connection (connect allowed).
pub const SOCK_OUTBOUND: u32 = 1;
pub const CACHE_EMPTY: u8 = 0;
pub const CACHE_ALLOW: u8 = 1;
pub const CACHE_DENY: u8 = 2;
pub const CACHE_AUDIT: u8 = 3;

/// `EXECS` value, keyed by tgid: the executable the process last exec'd.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecInfo {
    pub exe_id: u64,
}

/// `EXE_PATHS` value, keyed by exe id: the path the file was exec'd as, for
/// events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExePath {
    pub path: [u8; EXE_PATH_LEN],
}

/// `INBOUND_PEERS` key: a UDP peer that sent a datagram to one socket of a
/// filtered cgroup (by socket cookie); that socket may answer it (UDP
/// servers). No other socket may, and only until the allowance expires.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InboundKey {
    pub socket_cookie: u64,
    pub peer_addr: [u8; 16],
    pub peer_port: u16,
    // Scalars, not a byte array: zeroing `[u8; 6]` is a `memset` call in
    // BPF, a byte loop on the per-packet path.
    pub _pad1: u16,
    pub _pad2: u32,
}

/// `INBOUND_PEERS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundPeer {
    /// `bpf_ktime_get_ns` of the peer's last datagram.
    pub last_seen_ns: u64,
    /// The rules epoch it was seen under: a policy change ends it, so a
    /// reply to a flow the container started and a reload revoked is not
    /// an allowance.
    pub rules_epoch: u64,
}

/// A cgroup's `EVENT_RATES` entry on one CPU: a one-second window of its
/// reported events, and how many were held back. An entry of its own, so
/// neither another cgroup's flood nor containers taking turns can move a
/// cgroup's window; a second one for the unattributed frames on its veth,
/// which a neighbour can make.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub reported: u32,
    pub suppressed: u32,
}

/// A deny or audit decision, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub exe_id: u64,
    pub tgid: u32,
    pub uid: u32,
    pub policy_id: u32,
    pub rule_id: u32,
    pub comm: [u8; COMM_LEN],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6 (of the packet or sockaddr, before v4-mapping).
    pub family: u8,
    pub proto: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// [`Hook`].
    pub hook: u8,
    /// [`Verdict`]: `Deny` or `Audit`.
    pub verdict: u8,
    /// `EVENT_*` flags.
    pub flags: u8,
    pub _pad: u8,
    /// Events of this cgroup held back by the rate limit since its last
    /// reported one.
    pub suppressed: u32,
    /// The socket's cookie, for revoked flows (0 otherwise).
    pub socket_cookie: u64,
}

/// An established outbound TCP flow that a policy change revoked: the
/// loader aborts the socket so the sender learns of it.
pub const EVENT_REVOKED_FLOW: u8 = 1;
/// A veth event: the frame came from a packet socket (AF_PACKET, AF_XDP),
/// which no cgroup program sees.
pub const EVENT_LINK_LAYER: u8 = 2;
/// A veth event: the packet came from no socket of a container's (the
/// kernel's own, or a host process working in the container's namespace,
/// such as dockerd forwarding DNS queries).
pub const EVENT_UNATTRIBUTED: u8 = 4;
/// A veth event: the frame's source is no address of the container's
/// (forged), whatever its destination.
pub const EVENT_FORGED_SOURCE: u8 = 8;

/// FNV-1a, 64 bit, over bytes up to the first NUL (or `limit`). The kernel
/// hashes exec'd paths and comms with exactly this; userspace hashes the
/// policy's strings with it.
#[inline(always)]
pub fn fnv1a_start() -> u64 {
    0xcbf2_9ce4_8422_2325
}

#[inline(always)]
pub fn fnv1a_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Hash of a NUL-terminated (or full) byte string, as the kernel computes it.
pub fn identity_hash(bytes: &[u8], limit: usize) -> u64 {
    let mut hash = fnv1a_start();
    for &b in bytes.iter().take(limit) {
        if b == 0 {
            break;
        }
        hash = fnv1a_step(hash, b);
    }
    hash
}

/// Hash of a comm (the kernel truncates comms to 15 bytes).
pub fn comm_hash(comm: &[u8]) -> u64 {
    identity_hash(comm, COMM_LEN - 1)
}

/// An IPv4 address as the 16 key bytes `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Prefix length of an IPv4 CIDR in the 128-bit key space.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding fields and no
    // pointers; every bit pattern is valid.
    unsafe impl aya::Pod for CgroupPolicy {}
    unsafe impl aya::Pod for ProcessKey {}
    unsafe impl aya::Pod for ProcessClass {}
    unsafe impl aya::Pod for DestKey {}
    unsafe impl aya::Pod for DestValue {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PolicyCounters {}
    unsafe impl aya::Pod for ExePath {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for VethOwner {}
    unsafe impl aya::Pod for VethAddrKey {}
    unsafe impl aya::Pod for FileStamp {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    #[allow(deprecated)] // SipHasher is the reference SipHash-2-4
    fn file_id_is_siphash24_of_the_stamp() {
        use core::hash::Hasher;
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let file = FileStamp {
            ino: 1_234_567,
            ctime_sec: 1_764_000_000,
            dev: (8 << 20) | 1,
            ctime_nsec: 999_999_999,
        };
        let mut reference = core::hash::SipHasher::new_with_keys(key[0], key[1]);
        reference.write(&file.ino.to_le_bytes());
        reference.write(&(file.ctime_sec as u64).to_le_bytes());
        reference.write(&((file.dev as u64) | ((file.ctime_nsec as u64) << 32)).to_le_bytes());
        assert_eq!(file_id(key, &file), reference.finish());
        let touched = FileStamp {
            ctime_nsec: 0,
            ..file
        };
        assert_ne!(file_id(key, &file), file_id(key, &touched));
        assert_ne!(file_id(key, &file), file_id([1, 2], &file));
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<CgroupPolicy>(), 8);
        assert_eq!(size_of::<ProcessKey>(), 16);
        assert_eq!(size_of::<DestKey>(), 24);
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(
            size_of::<SockInfo>(),
            8 + 8 + 16 + 4 + 2 + 1 + 1 + 8 + 8 + 4 + 4 + 16 + 4 + 4
        );
        assert_eq!(size_of::<InboundKey>(), 8 + 16 + 2 + 6);
        assert_eq!(size_of::<InboundPeer>(), 16);
        assert_eq!(size_of::<EventBudget>(), 16);
        assert_eq!(size_of::<Config>(), 8 * 4 + 16 + 4 + 1 + 3);
        assert_eq!(size_of::<FileStamp>(), 24);
        assert_eq!(size_of::<ProcessClass>(), 32);
        assert_eq!(
            size_of::<Event>(),
            8 * 3 + 4 * 4 + 16 * 3 + 2 * 2 + 6 + 2 + 4 + 8
        );
    }

    #[test]
    fn hash_stops_at_nul_and_limit() {
        assert_eq!(comm_hash(b"curl\0garbage"), comm_hash(b"curl"));
        assert_ne!(comm_hash(b"curl"), comm_hash(b"curl2"));
        // The kernel keeps 15 bytes of comm; longer names compare by prefix.
        assert_eq!(
            comm_hash(b"0123456789abcdefXYZ"),
            comm_hash(b"0123456789abcde")
        );
        assert_ne!(comm_hash(b"curl"), comm_hash(b"curl2"));
    }

    #[test]
    fn fnv_matches_reference_vector() {
        // FNV-1a 64 of "a", from the reference test suite.
        assert_eq!(identity_hash(b"a", 16), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(identity_hash(b"", 16), fnv1a_start());
    }

    #[test]
    fn v4_mapping_is_rfc4291() {
        assert_eq!(
            v4_mapped([10, 1, 2, 3]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
        );
    }
}
