//! The decision every hook shares: which policy governs a cgroup, which
//! process class a socket's creator is in, and whether a (destination,
//! protocol, port) is allowed. Constant cost: one hash lookup for the
//! cgroup, at most two for the process, two LPM lookups for the rule,
//! whatever the number of rules.

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::bpf_ktime_get_ns};
use contain_common::{
    comm_hash, proto, stat, CgroupPolicy, DestKey, Event, Hook, PortKey, ProcessKey, SockInfo,
    Verdict, CGROUP_AUDIT, CGROUP_UNRESTRICTED, COMM_LEN, DEST_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS,
    PROCESS_BY_COMM, PROCESS_BY_EXE, UNKNOWN_POLICY_ID,
};

use crate::maps::{
    CGROUPS, CONFIG, COUNTERS, DESTS, EVENTS, EXACT_PORTS, HOSTS, PORTS, PROCESSES, STATS,
};

/// Who is sending: from socket storage, or empty when the socket predates
/// contain (then only container-wide rules can match).
#[derive(Clone, Copy)]
pub struct Identity {
    pub tgid: u32,
    pub uid: u32,
    pub exe_hash: u64,
    pub comm: [u8; COMM_LEN],
}

impl Identity {
    pub const UNKNOWN: Identity = Identity {
        tgid: 0,
        uid: 0,
        exe_hash: 0,
        comm: [0; COMM_LEN],
    };

    pub fn of(info: &SockInfo) -> Identity {
        Identity {
            tgid: info.tgid,
            uid: info.uid,
            exe_hash: info.exe_hash,
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

#[inline(always)]
pub fn generation() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.generation)
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

/// The outcome of judging one flow.
#[derive(Clone, Copy)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule_id: u32,
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
    if who.exe_hash != 0 {
        let key = ProcessKey {
            policy_id,
            kind: PROCESS_BY_EXE,
            ident: who.exe_hash,
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

/// Judges a flow against the policy that governs it.
#[inline(always)]
pub fn decide(gov: &Governance, who: &Identity, target: &Target) -> Decision {
    if gov.unrestricted {
        return Decision {
            verdict: Verdict::Allow,
            rule_id: 0,
        };
    }
    let miss = Decision {
        verdict: gov.on_miss,
        rule_id: 0,
    };
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
        proto: proto::ANY,
        port: [0, 0],
        _pad: 0,
    };
    match PORTS.get(&Key::new(PORT_KEY_FIXED_BITS, any_proto)) {
        Some(hit) => allowed(hit.rule_id),
        None => miss,
    }
}

#[inline(always)]
fn allowed(rule_id: u32) -> Decision {
    Decision {
        verdict: Verdict::Allow,
        rule_id,
    }
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
fn bump_stat(index: u32) {
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
pub struct EventFlow {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
}

/// Queues a deny/audit event; when the ring buffer is full the event is
/// dropped and counted, never waited for.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn report(
    cgroup_id: u64,
    gov: &Governance,
    who: &Identity,
    decision: &Decision,
    flow: &EventFlow,
    hook: Hook,
) {
    let Some(mut slot) = EVENTS.reserve(0) else {
        bump_stat(stat::EVENTS_DROPPED);
        return;
    };
    let is_icmp = flow.proto == proto::ICMP || flow.proto == proto::ICMPV6;
    let event = Event {
        // SAFETY: helper without preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
        exe_hash: who.exe_hash,
        tgid: who.tgid,
        uid: who.uid,
        policy_id: gov.policy_id,
        rule_id: decision.rule_id,
        comm: who.comm,
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: if is_icmp { 0 } else { flow.dport },
        family: flow.family,
        proto: flow.proto,
        icmp_type: if is_icmp { (flow.dport >> 8) as u8 } else { 0 },
        icmp_code: if is_icmp { flow.dport as u8 } else { 0 },
        hook: hook as u8,
        verdict: decision.verdict as u8,
        _pad: [0; 6],
    };
    slot.write(event);
    slot.submit(0);
}
