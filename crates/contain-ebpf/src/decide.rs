//! The decision every hook shares: which policy governs a cgroup, which
//! process class a socket's creator is in, and whether a (destination,
//! protocol, port) is allowed. Constant cost: one hash lookup for the
//! cgroup, at most two for the process, two LPM lookups for the rule,
//! whatever the number of rules.

use aya_ebpf::{
    btf_maps::lpm_trie::Key,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use contain_common::{
    comm_hash, ip_proto, stat, CgroupPolicy, DestKey, EventBudget, PortKey, ProcessKey, SockInfo,
    Verdict, CGROUP_AUDIT, CGROUP_UNRESTRICTED, COMM_LEN, DEFAULT_EVENTS_PER_SECOND,
    DEFAULT_UDP_REPLY_TIMEOUT_NS, DEST_KEY_FIXED_BITS, EVENT_REVOKED_FLOW, EVENT_UNATTRIBUTED,
    PORT_KEY_FIXED_BITS, PROCESS_BY_COMM, PROCESS_BY_FILE, UNKNOWN_POLICY_ID,
};

use crate::maps::{
    CGROUPS, CONFIG, COUNTERS, DESTS, EVENTS, EVENT_FLOW_DEPTH, EVENT_FLOW_SCRATCH, EVENT_RATES,
    EXACT_PORTS, HOSTS, PORTS, PROCESSES, REVOKED_FLOWS, STATS,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// Who is sending: from socket storage, or empty when the socket predates
/// contain (then only container-wide rules can match).
#[derive(Clone, Copy)]
pub struct Identity {
    pub tgid: u32,
    pub uid: u32,
    pub exe_id: u64,
    pub comm: [u8; COMM_LEN],
}

impl Identity {
    pub const UNKNOWN: Identity = Identity {
        tgid: 0,
        uid: 0,
        exe_id: 0,
        comm: [0; COMM_LEN],
    };

    pub fn of(info: &SockInfo) -> Identity {
        Identity {
            tgid: info.tgid,
            uid: info.uid,
            exe_id: info.exe_id,
            comm: info.comm,
        }
    }
}

/// How a cgroup is governed.
#[derive(Clone, Copy)]
pub struct Governance {
    pub policy_id: u32,
    /// What happens when no rule allows.
    pub on_miss: Verdict,
    /// Not filtered at all.
    pub unrestricted: bool,
}

/// The rules and cgroup epochs (`Config`). Every hook reads them once,
/// before any policy lookup, so a verdict is never cached under an epoch
/// newer than the maps it was decided on.
#[derive(Clone, Copy)]
pub struct Epochs {
    pub rules: u64,
    /// 0 when the config cannot be read, or before the loader's first
    /// change: no cached allow is taken without its cgroup's lookup then.
    pub cgroup: u64,
}

#[inline(always)]
pub fn epochs() -> Epochs {
    CONFIG.get(0).map_or(
        Epochs {
            rules: 0,
            cgroup: 0,
        },
        |c| Epochs {
            rules: c.rules_epoch,
            cgroup: c.cgroup_epoch,
        },
    )
}

#[inline(always)]
pub fn udp_reply_timeout_ns() -> u64 {
    match CONFIG.get(0).map_or(0, |c| c.udp_reply_timeout_ns) {
        0 => DEFAULT_UDP_REPLY_TIMEOUT_NS,
        t => t,
    }
}

#[inline(always)]
fn events_per_second() -> u32 {
    match CONFIG.get(0).map_or(0, |c| c.events_per_second) {
        0 => DEFAULT_EVENTS_PER_SECOND,
        n => n,
    }
}

#[inline(always)]
pub fn governance(cgroup_id: u64) -> Governance {
    // SAFETY: the value is copied out at once.
    match unsafe { CGROUPS.get(cgroup_id) } {
        Some(&CgroupPolicy { policy_id, flags }) => Governance {
            policy_id,
            on_miss: if flags & CGROUP_AUDIT != 0 {
                Verdict::Audit
            } else {
                Verdict::Deny
            },
            unrestricted: flags & CGROUP_UNRESTRICTED != 0,
        },
        None => {
            let unknown = CONFIG.get(0).map_or(0, |c| c.unknown_verdict);
            let on_miss = Verdict::from_u8(unknown).unwrap_or(Verdict::Deny);
            Governance {
                policy_id: UNKNOWN_POLICY_ID,
                on_miss,
                unrestricted: false,
            }
        }
    }
}

/// The outcome of judging one flow: the verdict and the rule that allowed
/// it, packed in one register. BPF-to-BPF calls return an aggregate through
/// a pointer to the caller's stack, which kernel 6.1's verifier refuses.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Decision(u64);

impl Decision {
    #[inline(always)]
    pub fn new(verdict: Verdict, rule_id: u32) -> Decision {
        Decision((rule_id as u64) << 8 | verdict as u64)
    }

    #[inline(always)]
    pub fn verdict(self) -> Verdict {
        Verdict::from_u8(self.0 as u8).unwrap_or(Verdict::Deny)
    }

    #[inline(always)]
    pub fn rule_id(self) -> u32 {
        (self.0 >> 8) as u32
    }
}

/// The flow being judged, addresses as 16 key bytes.
pub struct Target {
    pub daddr: [u8; 16],
    pub proto: u8,
    /// Destination port, or `type << 8 | code` for ICMP.
    pub port: u16,
    /// A non-first fragment: only rules that allow any port can match.
    pub portless: bool,
}

#[inline(always)]
fn process_class(policy_id: u32, who: &Identity) -> u32 {
    // No policy on the host has a process class: everyone is class 0. (The
    // flag unreadable: look them up.)
    if CONFIG.get(0).is_some_and(|c| c.process_classes == 0) {
        return 0;
    }
    if who.exe_id != 0 {
        let key = ProcessKey {
            policy_id,
            kind: PROCESS_BY_FILE,
            ident: who.exe_id,
        };
        // SAFETY: copied out at once.
        if let Some(class) = unsafe { PROCESSES.get(key) } {
            return class.class;
        }
    }
    if who.comm[0] != 0 {
        let key = ProcessKey {
            policy_id,
            kind: PROCESS_BY_COMM,
            ident: comm_hash(&who.comm),
        };
        // SAFETY: copied out at once.
        if let Some(class) = unsafe { PROCESSES.get(key) } {
            return class.class;
        }
    }
    0
}

/// Judges a flow against the policy that governs it. Inlined into the
/// common path; [`decide_call`] is the same as a BPF-to-BPF call.
#[inline(always)]
pub fn decide(gov: &Governance, who: &Identity, target: &Target) -> Decision {
    if gov.unrestricted {
        return Decision::new(Verdict::Allow, 0);
    }
    let miss = Decision::new(gov.on_miss, 0);
    if gov.policy_id == UNKNOWN_POLICY_ID {
        return miss;
    }
    let class = process_class(gov.policy_id, who);
    let dest = DestKey {
        policy_id: gov.policy_id,
        class,
        addr: target.daddr,
    };
    // SAFETY: copied out at once.
    let ruleset = match unsafe { HOSTS.get(dest) } {
        Some(host) => host.ruleset,
        None => match DESTS.get(&Key::new(DEST_KEY_FIXED_BITS + 128, dest)) {
            Some(prefix) => prefix.ruleset,
            None => return miss,
        },
    };
    let port = PortKey {
        ruleset,
        proto: target.proto,
        port: if target.portless {
            [0, 0]
        } else {
            target.port.to_be_bytes()
        },
        _pad: 0,
    };
    if !target.portless {
        // SAFETY: copied out at once.
        if let Some(hit) = unsafe { EXACT_PORTS.get(port) } {
            return allowed(hit.rule_id);
        }
    }
    let port_bits = if target.portless { 0 } else { 16 };
    if let Some(hit) = PORTS.get(&Key::new(PORT_KEY_FIXED_BITS + port_bits, port)) {
        return allowed(hit.rule_id);
    }
    let any_proto = PortKey {
        ruleset,
        proto: ip_proto::ANY,
        port: [0, 0],
        _pad: 0,
    };
    match PORTS.get(&Key::new(PORT_KEY_FIXED_BITS, any_proto)) {
        Some(hit) => allowed(hit.rule_id),
        None => miss,
    }
}

/// [`decide`] as a BPF-to-BPF call, for the rare paths that judge several
/// addresses (source routes): inlining each copy would exceed the 512-byte
/// stack.
#[inline(never)]
pub fn decide_call(gov: &Governance, who: &Identity, target: &Target) -> Decision {
    decide(gov, who, target)
}

#[inline(always)]
fn allowed(rule_id: u32) -> Decision {
    Decision::new(Verdict::Allow, rule_id)
}

/// Counts a decision for its policy.
#[inline(always)]
pub fn count(policy_id: u32, verdict: Verdict) {
    if let Some(c) = COUNTERS.get_ptr_mut(policy_id) {
        // SAFETY: per-CPU slot, this program is the only writer on this CPU.
        unsafe {
            match verdict {
                Verdict::Allow => (*c).allowed += 1,
                Verdict::Deny => (*c).denied += 1,
                Verdict::Audit => (*c).audited += 1,
            }
        }
    }
}

#[inline(always)]
pub fn bump_stat(index: u32) {
    if let Some(s) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *s += 1 };
    }
}

#[inline(always)]
pub fn count_unparsed() {
    bump_stat(stat::UNPARSED);
}

/// What an event reports beyond the decision.
#[repr(C)]
pub struct EventFlow {
    /// [`Hook`], as its byte (this lives in map memory too).
    pub hook: u8,
    pub socket_cookie: u64,
    /// `EVENT_*` flags.
    pub flags: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
}

/// Lends `fill_and_report` this CPU's event scratch slot no program on this
/// CPU holds. A program that interrupts another on its CPU (a softirq's,
/// during a program in process context) takes the other slot, and gives it
/// back before the interrupted one goes on: one shared slot would have the
/// interrupted program report the other's flow, or lose its own revocation.
#[inline(always)]
pub fn with_event_scratch<R>(fill_and_report: impl FnOnce(&mut EventFlow) -> R) -> Option<R> {
    let depth = EVENT_FLOW_DEPTH.get_ptr_mut(0)?;
    // SAFETY: this CPU's value; whatever interrupts this program restores
    // it before this program goes on.
    let level = unsafe { *depth };
    let slot = EVENT_FLOW_SCRATCH.get_ptr_mut(level & 1)?;
    // SAFETY: as above; the slot is this program's until it restores the
    // depth.
    unsafe {
        *depth = level.wrapping_add(1);
        let out = fill_and_report(&mut *slot);
        *depth = level;
        Some(out)
    }
}

/// The bit that keys a cgroup's budget for unattributed veth frames apart
/// from its own (cgroup ids are far below it).
const UNATTRIBUTED_BUDGET: u64 = 1 << 63;

/// How many of a cgroup's events were held back since its last reported
/// one, or `None` when this one must be held back too: one cgroup flooding
/// denied sends must not fill the ring and hide every other container's
/// events. Per CPU, so the limit applies per CPU. Each cgroup has an entry
/// of its own: containers taking turns cannot restart each other's
/// windows.
#[inline(always)]
fn event_budget(cgroup_id: u64, now: u64) -> Option<u32> {
    let fresh = EventBudget {
        window_start_ns: now,
        reported: 1,
        suppressed: 0,
    };
    let Some(b) = EVENT_RATES.get_ptr_mut(cgroup_id) else {
        // The cgroup's first event on this CPU (or since its entry made
        // room for others'): a window starts. Should the entry not fit,
        // the event is still reported, as it would be in a fresh window.
        let _ = EVENT_RATES.insert(cgroup_id, fresh, 0);
        return Some(0);
    };
    // SAFETY: this CPU's value of the entry, this program's alone while it
    // runs (no insert or remove on this map comes between).
    let b = unsafe { &mut *b };
    if now.wrapping_sub(b.window_start_ns) >= NS_PER_SEC {
        let suppressed = b.suppressed;
        *b = fresh;
        return Some(suppressed);
    }
    if b.reported < events_per_second() {
        b.reported += 1;
        let suppressed = b.suppressed;
        b.suppressed = 0;
        return Some(suppressed);
    }
    b.suppressed = b.suppressed.saturating_add(1);
    None
}

/// Queues a deny/audit event, within the cgroup's rate; when the ring
/// buffer is full the event is dropped and counted, never waited for.
/// Revoked flows always report, on a ring of their own that denials
/// cannot fill: the loader aborts their sockets.
/// A BPF-to-BPF call (rarely taken) that fills the ring slot in place: the
/// event does not fit the stack beside the decision. Returns whether the
/// event was queued (and returns a value at all: kernel 6.1's verifier
/// refuses a call that leaves a stack pointer in R0).
#[inline(never)]
pub fn report(
    cgroup_id: u64,
    gov: &Governance,
    who: &Identity,
    decision: &Decision,
    flow: &EventFlow,
) -> bool {
    // The rate windows are a second long: the tick's clock, which costs a
    // fraction of the precise one, is exact enough for them; an event that
    // is queued reads the precise time below.
    // SAFETY: helper without preconditions.
    let window_now = unsafe { bpf_ktime_get_coarse_ns() };
    let revoked = flow.flags & EVENT_REVOKED_FLOW != 0;
    // Frames on a container's veth that none of its sockets sent (what its
    // namespace forwards, the kernel's answers) are judged under it, but a
    // neighbour can send them: they get a budget of their own, so a flood
    // of them never holds back the container's own denials.
    let budget = if flow.flags & EVENT_UNATTRIBUTED != 0 {
        cgroup_id ^ UNATTRIBUTED_BUDGET
    } else {
        cgroup_id
    };
    // A revoked flow's event neither uses nor moves its cgroup's budget:
    // the held-back count stays for the cgroup's next rate-limited event.
    let suppressed = if revoked {
        0
    } else {
        match event_budget(budget, window_now) {
            Some(n) => n,
            None => {
                bump_stat(stat::EVENTS_RATE_LIMITED);
                return false;
            }
        }
    };
    let slot = if revoked {
        REVOKED_FLOWS.reserve(0)
    } else {
        EVENTS.reserve(0)
    };
    let Some(mut slot) = slot else {
        bump_stat(stat::EVENTS_DROPPED);
        // This event, and the held-back count it was to carry, go to its
        // cgroup's next event that finds room: dropped with it, the counts
        // a container's events carry would no longer add up to its
        // denials. (A revoked flow's event is the loader's to act on; its
        // loss is counted above.)
        if !revoked {
            if let Some(b) = EVENT_RATES.get_ptr_mut(budget) {
                // SAFETY: this CPU's value of the entry, this program's alone
                // while it runs.
                unsafe {
                    (*b).suppressed = (*b).suppressed.saturating_add(suppressed).saturating_add(1)
                };
            }
        }
        return false;
    };
    let is_icmp = flow.proto == ip_proto::ICMP || flow.proto == ip_proto::ICMPV6;
    let e = slot.as_mut_ptr();
    // SAFETY: a reserved ring-buffer slot of exactly one Event; every field
    // is written before it is submitted.
    unsafe {
        (*e).ktime_ns = bpf_ktime_get_ns();
        (*e).cgroup_id = cgroup_id;
        (*e).exe_id = who.exe_id;
        (*e).tgid = who.tgid;
        (*e).uid = who.uid;
        (*e).policy_id = gov.policy_id;
        (*e).rule_id = decision.rule_id();
        (*e).comm = who.comm;
        (*e).saddr = flow.saddr;
        (*e).daddr = flow.daddr;
        (*e).sport = flow.sport;
        (*e).dport = if is_icmp { 0 } else { flow.dport };
        (*e).family = flow.family;
        (*e).proto = flow.proto;
        (*e).icmp_type = if is_icmp { (flow.dport >> 8) as u8 } else { 0 };
        (*e).icmp_code = if is_icmp { flow.dport as u8 } else { 0 };
        (*e).hook = flow.hook;
        (*e).verdict = decision.verdict() as u8;
        (*e).flags = flow.flags;
        (*e)._pad = 0;
        (*e).suppressed = suppressed;
        (*e).socket_cookie = flow.socket_cookie;
    }
    slot.submit(0);
    true
}
