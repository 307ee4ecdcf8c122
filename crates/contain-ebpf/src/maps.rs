//! Every map of the object. Names are the pin names userspace uses
//! (`contain_common::map_names`); the loader pins them all, so a restarted or
//! upgraded loader keeps the same maps and the enforcement they carry.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{
        Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, SkStorage,
    },
    macros::btf_map,
};
use contain_common::{
    capacity, CgroupPolicy, Config, DestKey, DestValue, EventBudget, ExePath, ExecInfo, InboundKey,
    InboundPeer, PolicyCounters, PortKey, PortValue, ProcessClass, ProcessKey, SockInfo,
    VethAddrKey, VethOwner, MAX_POLICIES,
};

/// A hash map the loader writes and programs only read: its elements are
/// allocated as entries are added (`BPF_F_NO_PREALLOC`), not all at
/// creation. Preallocated, an empty HOSTS alone would hold about 100 MB of
/// kernel memory (a million elements); allocated on demand, the maps take
/// their buckets and what the policy needs. Maps pinned by an earlier
/// loader keep their flags until they are removed (a reboot, a purge).
type LoaderHashMap<K, V, const MAX_ENTRIES: usize> =
    HashMap<K, V, MAX_ENTRIES, { BPF_F_NO_PREALLOC as usize }>;

#[btf_map(name = "CONTAIN_CGROUPS")]
pub static CGROUPS: LoaderHashMap<u64, CgroupPolicy, { capacity::CGROUPS as usize }> =
    LoaderHashMap::new();

#[btf_map(name = "CONTAIN_PROCESSES")]
pub static PROCESSES: LoaderHashMap<ProcessKey, ProcessClass, { capacity::PROCESSES as usize }> =
    LoaderHashMap::new();

#[btf_map(name = "CONTAIN_DESTS")]
pub static DESTS: LpmTrie<DestKey, DestValue, { capacity::DESTS as usize }> = LpmTrie::new();

#[btf_map(name = "CONTAIN_HOSTS")]
pub static HOSTS: LoaderHashMap<DestKey, DestValue, { capacity::HOSTS as usize }> =
    LoaderHashMap::new();

#[btf_map(name = "CONTAIN_EXACT_PORTS")]
pub static EXACT_PORTS: LoaderHashMap<PortKey, PortValue, { capacity::EXACT_PORTS as usize }> =
    LoaderHashMap::new();

#[btf_map(name = "CONTAIN_PORTS")]
pub static PORTS: LpmTrie<PortKey, PortValue, { capacity::PORTS as usize }> = LpmTrie::new();

#[btf_map(name = "CONTAIN_CONFIG")]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map(name = "CONTAIN_COUNTERS")]
pub static COUNTERS: PerCpuArray<PolicyCounters, { MAX_POLICIES as usize }> = PerCpuArray::new();

#[btf_map(name = "CONTAIN_STATS")]
pub static STATS: PerCpuArray<u64, { contain_common::stat::COUNT as usize }> = PerCpuArray::new();

/// Socket options `contain_setsockopt` refused (one counter, per CPU): a map
/// of its own, so `STATS` keeps its layout.
#[btf_map(name = "CONTAIN_REFUSED_SOCKOPTS")]
pub static REFUSED_SOCKOPTS: PerCpuArray<u64, 1> = PerCpuArray::new();

#[btf_map(name = "CONTAIN_EVENTS")]
pub static EVENTS: RingBuf<contain_common::Event, { capacity::EVENTS_BYTES as usize }> =
    RingBuf::new();

/// Events of revoked flows only, which the loader acts on (it aborts their
/// sockets): a flood of denials that fills `EVENTS` cannot crowd them out.
#[btf_map(name = "CONTAIN_REVOKED_FLOWS")]
pub static REVOKED_FLOWS: RingBuf<
    contain_common::Event,
    { capacity::REVOKED_FLOWS_BYTES as usize },
> = RingBuf::new();

#[btf_map(name = "CONTAIN_SOCKETS")]
pub static SOCKETS: SkStorage<SockInfo> = SkStorage::new();

#[btf_map(name = "CONTAIN_EXECS")]
pub static EXECS: LruHashMap<u32, ExecInfo, { capacity::EXECS as usize }> = LruHashMap::new();

#[btf_map(name = "CONTAIN_EXE_PATHS")]
pub static EXE_PATHS: LruHashMap<u64, ExePath, { capacity::EXE_PATHS as usize }> =
    LruHashMap::new();

#[btf_map(name = "CONTAIN_INBOUND")]
pub static INBOUND_PEERS: LruHashMap<
    InboundKey,
    InboundPeer,
    { capacity::INBOUND_PEERS as usize },
> = LruHashMap::new();

/// Each cgroup's event rate window, per CPU, by cgroup id.
#[btf_map(name = "CONTAIN_EVENT_RATES")]
pub static EVENT_RATES: LruPerCpuHashMap<u64, EventBudget, { capacity::EVENT_RATES as usize }> =
    LruPerCpuHashMap::new();

/// One path buffer per CPU: too big for the 512-byte BPF stack.
#[btf_map]
pub static PATH_SCRATCH: PerCpuArray<ExePath, 1> = PerCpuArray::new();

/// Two events' flows per CPU, assembled off the programs' stacks: one for
/// a program and one for a program that interrupts it on the same CPU (the
/// egress program runs in process context with softirqs on, and a softirq
/// runs the egress and veth programs too). Lent by
/// [`crate::decide::with_event_scratch`].
#[btf_map]
pub static EVENT_FLOW_SCRATCH: PerCpuArray<crate::decide::EventFlow, 2> = PerCpuArray::new();

/// Per CPU, how many programs hold a slot of `EVENT_FLOW_SCRATCH`: the
/// slot the next one takes.
#[btf_map]
pub static EVENT_FLOW_DEPTH: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Per CPU, the cgroup level at which the veth backstop last found a
/// socket's attached ancestor: tried first, since one managed parent
/// usually holds every container. Only a hint (a hit is proven by
/// `ATTACHED_CGROUPS` itself); it spares the walk from the root.
#[btf_map]
pub static GOVERNED_LEVEL_HINT: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Per CPU, the peer the veth's inbound program last found fresh in
/// `VETH_PEERS` or noted there: a stream's next packets from it skip the
/// lookup. Skipping only ever skips a write, so an entry evicted meanwhile
/// is missing (the kernel's answers to that peer judged) until the memo
/// ages out, never more.
#[btf_map]
pub static LAST_NOTED_PEER: PerCpuArray<crate::veth::NotedPeer, 1> = PerCpuArray::new();

/// The container behind each host-side veth, by ifindex (policyd's).
#[btf_map(name = "CONTAIN_VETHS")]
pub static VETHS: LoaderHashMap<u32, VethOwner, { capacity::VETHS as usize }> =
    LoaderHashMap::new();

/// Until when (`bpf_ktime_get_ns`) each veth that appeared while the loader
/// ran holds frames of no socket to the unknown-container verdict while no
/// container owns it (the loader's; see `DEFAULT_NEW_VETH_HOLD_SECS`). A
/// plain hash: an LRU could evict a live hold by itself. The loader
/// removes a veth's entry when it goes, and expired ones when full.
#[btf_map(name = "CONTAIN_NEW_VETHS")]
pub static NEW_VETHS: LoaderHashMap<u32, u64, { capacity::VETHS as usize }> = LoaderHashMap::new();

/// The cgroups contain's cgroup programs are attached to (the loader's):
/// a socket under one of them was judged by those programs.
#[btf_map(name = "CONTAIN_ATTACHED_CGROUPS")]
pub static ATTACHED_CGROUPS: LoaderHashMap<u64, u32, { capacity::ATTACHED_CGROUPS as usize }> =
    LoaderHashMap::new();

/// Who sent packets into each container through its veth, and when last
/// (`bpf_ktime_get_coarse_ns`): the kernel may answer them.
#[btf_map(name = "CONTAIN_VETH_PEERS")]
pub static VETH_PEERS: LruHashMap<VethAddrKey, u64, { capacity::VETH_PEERS as usize }> =
    LruHashMap::new();

/// The addresses of the container's interface behind each host-side veth
/// (policyd's, from the resolver): a governed container's frames must carry
/// one of them as their source.
#[btf_map(name = "CONTAIN_VETH_SOURCES")]
pub static VETH_SOURCES: LoaderHashMap<VethAddrKey, u8, { capacity::VETH_SOURCES as usize }> =
    LoaderHashMap::new();
