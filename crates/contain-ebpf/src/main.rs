//! contain's kernel side: per-container, per-process egress enforcement on
//! cgroup v2 hooks.
//!
//! - `cgroup/sock_create` stamps the creator's identity into socket storage;
//! - `cgroup/connect4|6` and `cgroup/sendmsg4|6` judge each flow and fail a
//!   denied `connect()`/`sendto()` with EPERM at once;
//! - `cgroup_skb/egress` parses every outgoing IP packet and is the backstop
//!   for raw sockets, ping sockets and anything the socket hooks miss;
//! - `cgroup_skb/ingress` remembers UDP peers that spoke first to a socket,
//!   so a UDP server in a filtered container can answer them;
//! - `cgroup/setsockopt` refuses the options that would let a packet
//!   socket's frame change after the veth backstop judged it (`sockopt`);
//! - `sched_process_exec`, `task_newtask` and `sched_process_exit` keep the
//!   executable each process runs;
//! - `contain_veth` (tc ingress on the host side of each container's veth)
//!   is the backstop for frames of packet sockets, which no cgroup hook sees.
//!
//! No kprobes, fentry or LSM: they do not exist on the kernels contain runs on.
#![no_std]
#![no_main]
// The cache's sequence lock takes a compare-and-swap (BPF_CMPXCHG), which
// `core::sync::atomic` does not offer on this target.
#![feature(core_intrinsics)]
// Packet loads at any alignment (`unaligned`).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod cache;
mod decide;
mod established;
mod maps;
mod packet;
mod sockopt;
mod unaligned;
mod veth;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_sk_fullsock, bpf_skb_cgroup_id,
        generated::bpf_sk_storage_get,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, classifier, raw_tracepoint, tracepoint},
    programs::{
        RawTracePointContext, SkBuffContext, SockAddrContext, SockContext, TcContext,
        TracePointContext,
    },
};
use contain_common::{
    file_id, ip_proto, stat, v4_mapped, ExecInfo, FileStamp, Hook, InboundKey, InboundPeer,
    SockInfo, Verdict, CACHE_EMPTY, COMM_LEN, EVENT_REVOKED_FLOW, EXE_PATH_LEN, SOCK_OUTBOUND,
};

use crate::{
    decide::{
        bump_stat, count, count_unparsed, decide, decide_call, epochs, governance, report,
        udp_reply_timeout_ns, with_event_scratch, Decision, Epochs, EventFlow, Governance,
        Identity, Target,
    },
    maps::{CONFIG, EXECS, EXE_PATHS, INBOUND_PEERS, PATH_SCRATCH, SOCKETS},
    packet::{Flow, MAX_ROUTE_ADDRS, TCP_ACK, TCP_SYN},
};

static UNKNOWN_IDENTITY: Identity = Identity::UNKNOWN;

pub(crate) const ALLOW: i32 = 1;
pub(crate) const REJECT: i32 = 0;

pub(crate) const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const AF_UNSPEC: u32 = 0;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
pub(crate) const LOOPBACK_IFINDEX: u32 = 1;
const PACKET_LOOPBACK: u32 = 5;
const CLONE_THREAD: u64 = 0x0001_0000;

/// Tracepoint field offsets, read by the loader from tracefs `format` files
/// (they differ between kernel versions) and patched in at load time.
#[no_mangle]
static NEWTASK_PID_OFFSET: u32 = 8;
#[no_mangle]
static NEWTASK_CLONE_FLAGS_OFFSET: u32 = 32;

/// Kernel struct member offsets along `linux_binprm` → `file` → `inode` →
/// `super_block`, read by the loader from the kernel's BTF (they differ
/// between kernel versions and builds) and patched in at load time.
#[no_mangle]
static BPRM_FILE_OFFSET: u32 = 0;
#[no_mangle]
static BPRM_FILENAME_OFFSET: u32 = 0;
#[no_mangle]
static FILE_INODE_OFFSET: u32 = 0;
#[no_mangle]
static INODE_SB_OFFSET: u32 = 0;
#[no_mangle]
static INODE_INO_OFFSET: u32 = 0;
#[no_mangle]
static INODE_CTIME_SEC_OFFSET: u32 = 0;
#[no_mangle]
static INODE_CTIME_NSEC_OFFSET: u32 = 0;
#[no_mangle]
static SB_DEV_OFFSET: u32 = 0;
const CTIME_NSEC_MASK: u32 = 0x7fff_ffff;

/// The socket storage map as the helpers take it: the static's address is
/// what the loader relocates to the map.
#[inline(always)]
fn sockets_map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCKETS).cast_mut().cast()
}

#[inline(always)]
pub(crate) fn read_config(v: &'static u32) -> u32 {
    // SAFETY: a valid static; volatile so the loader's patched value is read.
    unsafe { core::ptr::read_volatile(v) }
}

// ---------------------------------------------------------------- identity

#[inline(always)]
fn current_identity() -> SockInfo {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: map value copied out at once.
    let exe_id = unsafe { EXECS.get(tgid) }.map_or(0, |e| e.exe_id);
    SockInfo {
        cgroup_id: current_cgroup(),
        exe_id,
        tgid,
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        flags: 0,
        cache_policy_id: 0,
        cache_epoch: 0,
        cache_cgroup_epoch: 0,
        cache_addr: [0; 16],
        cache_port: 0,
        cache_proto: 0,
        cache_state: CACHE_EMPTY,
        cache_seq: 0,
    }
}

/// The socket's storage, created from the current task if missing (the
/// socket hooks run in the context of the process that called them).
///
/// # Safety
/// `sk` must be a socket pointer the verifier accepts for sk_storage_get.
#[inline(always)]
unsafe fn stamped_storage(sk: *mut core::ffi::c_void) -> *mut SockInfo {
    // A socket's later calls find its storage: the identity (four helper
    // calls and a hash lookup) is read only for a socket without one.
    // SAFETY: map pointer from a static map, sk per caller's contract.
    let existing = unsafe { bpf_sk_storage_get(sockets_map(), sk, core::ptr::null_mut(), 0) }
        .cast::<SockInfo>();
    if !existing.is_null() {
        return existing;
    }
    let mut fresh = current_identity();
    // SAFETY: map pointer from a static map, sk per caller's contract.
    unsafe {
        bpf_sk_storage_get(
            sockets_map(),
            sk,
            (&mut fresh as *mut SockInfo).cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast::<SockInfo>()
}

/// Every socket a governed process creates carries its creator's identity:
/// the packet hooks tell user sockets from the kernel's own by it. A socket
/// that cannot be stamped (out of memory) is refused, not let through
/// anonymous.
#[cgroup_sock(sock_create)]
pub fn contain_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: ctx.sock is the socket being created.
    if !unsafe { stamped_storage(ctx.sock.cast()) }.is_null() {
        return ALLOW;
    }
    if governance(current_cgroup()).unrestricted {
        return ALLOW;
    }
    bump_stat(stat::UNSTAMPED_SOCKETS);
    REJECT
}

// --------------------------------------------------------- per-flow hooks

/// What a socket hook reads from its context.
struct SockAddrCall {
    target: Target,
    flow: EventFlow,
    sock_type: u32,
}

/// `None` when the address is of a family the hook cannot judge.
/// `V6` selects the hook family: the verifier refuses reads of `user_ip6`
/// in IPv4 hooks and of `user_ip4` in IPv6 hooks.
#[inline(always)]
fn sock_addr_call<const V6: bool>(ctx: &SockAddrContext) -> Option<SockAddrCall> {
    let sa = ctx.sock_addr;
    // Context fields are read once, up front, with volatile loads: the
    // verifier only accepts ctx loads at constant offsets from the ctx
    // pointer itself, which LLVM would otherwise hoist into a register.
    // SAFETY: the context is valid for the program's duration.
    let (user_family, user_port, sock_type, sock_proto) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_family),
            core::ptr::read_volatile(&(*sa).user_port),
            core::ptr::read_volatile(&(*sa).type_),
            core::ptr::read_volatile(&(*sa).protocol),
        )
    };
    let proto = match (sock_type, sock_proto as u8) {
        (SOCK_STREAM, _) => ip_proto::TCP,
        (SOCK_DGRAM, p) if p == ip_proto::UDP || p == 0 => ip_proto::UDP,
        (_, p) => p,
    };
    let port = u16::from_be(user_port as u16);
    // udp_sendmsg() sends to an AF_UNSPEC sockaddr as if it were AF_INET.
    let (daddr, family) = if !V6 && (user_family == AF_INET || user_family == AF_UNSPEC) {
        // SAFETY: as above.
        let user_ip4 = unsafe { core::ptr::read_volatile(&(*sa).user_ip4) };
        (v4_mapped(user_ip4.to_ne_bytes()), 4)
    } else if V6 && user_family == AF_INET6 {
        // SAFETY: as above.
        let w = unsafe {
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ]
        };
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&w[0].to_ne_bytes());
        a[4..8].copy_from_slice(&w[1].to_ne_bytes());
        a[8..12].copy_from_slice(&w[2].to_ne_bytes());
        a[12..16].copy_from_slice(&w[3].to_ne_bytes());
        (a, 6)
    } else {
        return None;
    };
    Some(SockAddrCall {
        target: Target {
            daddr,
            proto,
            port,
            portless: false,
        },
        flow: EventFlow {
            hook: Hook::Egress as u8,
            socket_cookie: 0,
            flags: 0,
            saddr: [0; 16],
            daddr,
            sport: 0,
            dport: port,
            family,
            proto,
        },
        sock_type,
    })
}

#[inline(always)]
fn judge_sock_addr<const V6: bool>(ctx: &SockAddrContext, hook: Hook, is_connect: bool) -> i32 {
    let epoch = epochs().rules;
    let Some(call) = sock_addr_call::<V6>(ctx) else {
        // connect() with another family is refused by the kernel itself;
        // a send to an address this hook cannot read is refused here.
        if is_connect || governance(current_cgroup()).unrestricted {
            return ALLOW;
        }
        return REJECT;
    };
    let SockAddrCall {
        target,
        mut flow,
        sock_type,
    } = call;
    flow.hook = hook as u8;
    // SAFETY: the context is valid; sk is a full socket in these hooks.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: sk comes from the sock_addr context.
    let info = unsafe { stamped_storage(sk.cast()) };
    let (cgroup_id, who) = if info.is_null() {
        (current_cgroup(), Identity::of(&current_identity()))
    } else {
        // SAFETY: non-null storage pointer.
        let i = unsafe { &*info };
        (
            if i.cgroup_id != 0 {
                i.cgroup_id
            } else {
                current_cgroup()
            },
            Identity::of(i),
        )
    };
    let gov = governance(cgroup_id);
    if gov.unrestricted {
        return ALLOW;
    }
    if is_connect && info.is_null() {
        // The storage could not be made (the socket's option memory used
        // up, say): the flow could not be marked outbound, and its later
        // segments would pass as an accepted connection's, past every
        // revocation. Refused, as `sock_create` refuses such a socket.
        bump_stat(stat::UNSTAMPED_SOCKETS);
        return REJECT;
    }
    // A send to where the socket's last send went, allowed under the same
    // policy and rules epoch (this hook or the egress program decided it,
    // under this socket's identity): no decision again.
    if !is_connect && !info.is_null() {
        // SAFETY: non-null storage pointer.
        let hit = unsafe { cache::read(info) }.and_then(|c| c.verdict_for(&target, &gov, epoch));
        if hit == Some(Verdict::Allow) {
            count(gov.policy_id, Verdict::Allow);
            return ALLOW;
        }
    }
    if !is_connect && target.proto == ip_proto::UDP {
        // SAFETY: the sock_addr context is what the helper takes.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        if is_reply(cookie, &target.daddr, target.port, epoch) {
            count(gov.policy_id, Verdict::Allow);
            return ALLOW;
        }
    }
    let decision = decide(&gov, &who, &target);
    if is_connect && sock_type != SOCK_STREAM {
        // A datagram or raw connect() sends nothing (iputils ping and
        // glibc's getaddrinfo connect a UDP socket only to learn their
        // source address): the verdict is enforced on what is sent, at the
        // egress hook, with EPERM and an event there. Only an allow is
        // remembered, so the first denied send reports.
        if decision.verdict() == Verdict::Allow && !info.is_null() {
            // SAFETY: non-null storage pointer.
            unsafe { cache::write(info, &target, &gov, decision.verdict(), epoch, 0) };
        }
        return ALLOW;
    }
    count(gov.policy_id, decision.verdict());
    if decision.verdict() != Verdict::Allow {
        let _queued = report(cgroup_id, &gov, &who, &decision, &flow);
    }
    if !info.is_null() {
        // SAFETY: non-null storage pointer.
        unsafe { cache::write(info, &target, &gov, decision.verdict(), epoch, 0) };
        if is_connect && decision.verdict() != Verdict::Deny {
            // SAFETY: non-null storage pointer, owned by this socket.
            unsafe { (*info).flags |= SOCK_OUTBOUND };
        }
    }
    judged(decision.verdict())
}

#[inline(always)]
pub(crate) fn current_cgroup() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
}

#[cgroup_sock_addr(connect4)]
pub fn contain_connect4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr::<false>(&ctx, Hook::Connect4, true)
}

#[cgroup_sock_addr(connect6)]
pub fn contain_connect6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr::<true>(&ctx, Hook::Connect6, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn contain_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr::<false>(&ctx, Hook::Sendmsg4, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn contain_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr::<true>(&ctx, Hook::Sendmsg6, false)
}

// ----------------------------------------------------------- packet hooks

#[cgroup_skb]
pub fn contain_egress(ctx: SkBuffContext) -> i32 {
    egress(&ctx)
}

#[inline(always)]
fn egress(ctx: &SkBuffContext) -> i32 {
    let epochs = epochs();
    // SAFETY: the context is valid for the program's duration.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        // The kernel runs this hook only for packets of a socket; there is
        // no process of the container behind one without.
        return ALLOW;
    }
    // The helper takes any socket and finds no storage on request and
    // time-wait sockets: an established flow's packet needs no
    // `bpf_sk_fullsock` call before its cached verdict.
    // SAFETY: sk from the skb context, no create.
    let info = unsafe { bpf_sk_storage_get(sockets_map(), sk.cast(), core::ptr::null_mut(), 0) }
        .cast::<SockInfo>();
    if established::allows_cached(ctx.skb.skb, info, &epochs) {
        return ALLOW;
    }
    // SAFETY: sk from the skb context.
    let full: *mut bpf_sock = unsafe { bpf_sk_fullsock(sk) };
    if !full.is_null() && established::allows_accepted(ctx.skb.skb, full, info) {
        return ALLOW;
    }
    // SAFETY: skb context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let gov = governance(cgroup_id);
    if gov.unrestricted {
        return ALLOW;
    }
    let mut slot = MaybeUninit::uninit();
    let flow = Flow::zeroed_in(&mut slot);
    if !packet::parse::<{ packet::L3_AT_START }>(ctx.skb.skb, flow) {
        // Judged by the cgroup's miss verdict, as a packet the rules cannot
        // read, and so counted for its policy and reported: malformed
        // headers must not be a way to probe unseen.
        count_unparsed();
        flow.unjudgeable = true;
    }
    let flow: &Flow = flow;
    // The kernel answers a local destination from sockets outside every
    // container's cgroup (ICMP echo replies and errors, RSTs), to the source
    // the packet claims: a forged source would have it carry the
    // container's data anywhere.
    // A process's neighbour discovery would redirect its neighbours'
    // traffic (an advertisement of another's address, a router
    // advertisement): no rule allows it.
    let unjudgeable = flow.unjudgeable
        || is_spoofed_local(ctx, flow)
        || is_misrouted_loopback(ctx, flow)
        || (!info.is_null() && packet::is_neighbour_discovery(flow));
    let source_routed = flow.route_len != 0 || unjudgeable;
    let mut udp_socket = false;
    let mut untracked_opening = false;
    if !source_routed {
        if is_kernel_link_control(flow, info.is_null()) {
            return ALLOW;
        }
        if full.is_null() {
            // Request and time-wait sockets: handshakes of inbound
            // connections and the tail of closed ones, to the peer that
            // opened them.
            return ALLOW;
        }
        // SAFETY: full socket pointer checked non-null above.
        let (sock_type, sock_proto) = unsafe { ((*full).type_, (*full).protocol) };
        let tcp = sock_type == SOCK_STREAM && sock_proto == ip_proto::TCP as u32;
        // A connection opened from a socket without storage (no connect()
        // hook stamped it: a Fast Open sendto() whose storage could not be
        // made) could not be marked outbound: its later segments would pass
        // as an accepted connection's. Judged as unjudgeable.
        untracked_opening =
            tcp && flow.proto == ip_proto::TCP && is_opening(flow) && info.is_null();
        if tcp && flow.proto == ip_proto::TCP && !is_opening(flow) {
            // An accepted connection (its socket, stamped or not, is never
            // marked outbound) or one that predates contain: its peer opened
            // it, or contain was not there to judge it.
            // Outbound flows go on to the cache, so a policy change
            // re-judges them.
            if info.is_null() {
                return ALLOW;
            }
            // SAFETY: non-null storage.
            if unsafe { (*info).flags } & SOCK_OUTBOUND == 0 {
                return ALLOW;
            }
        }
        udp_socket = sock_type == SOCK_DGRAM && flow.proto == ip_proto::UDP;
    }
    let scope = Scope {
        cgroup_id,
        gov,
        epochs,
        source_routed: source_routed || untracked_opening,
        unjudgeable: unjudgeable || untracked_opening,
        udp_socket,
    };
    judge_packet(ctx.skb.skb, &scope, info, flow)
}

#[derive(Clone, Copy)]
/// Where a packet is judged: its cgroup's governance, the rules epoch read
/// first, whether it is source-routed (never cached), and whether it can
/// be judged at all.
struct Scope {
    cgroup_id: u64,
    gov: Governance,
    epochs: Epochs,
    source_routed: bool,
    unjudgeable: bool,
    /// A UDP datagram of a UDP socket (not source-routed): a reply to a
    /// peer that spoke first passes whatever the rules say.
    udp_socket: bool,
}

/// The full decision for one packet, served from the socket's cache when
/// the flow was judged under this epoch and policy.
#[inline(always)]
fn judge_packet(skb: *mut __sk_buff, scope: &Scope, info: *mut SockInfo, flow: &Flow) -> i32 {
    let Scope {
        cgroup_id,
        gov,
        epochs,
        source_routed,
        unjudgeable,
        udp_socket,
    } = *scope;
    let target = Target {
        daddr: flow.daddr,
        proto: flow.proto,
        port: flow.dport,
        portless: flow.later_fragment,
    };
    // A source-routed packet is never a cache hit: its destination is not
    // the only address it goes to. Nor is a later fragment: it has no port,
    // and the cache is keyed by one (a verdict for port 0 is not one for
    // "no port").
    let uncached = source_routed || flow.later_fragment;
    // The cached verdict for this flow, and whether the cache allowed this
    // very flow before (a deny now revokes it: reported past the rate limit,
    // and the loader aborts the socket). Never from the state alone: a cache
    // that allowed another destination would let every denied packet claim
    // a revocation and flood the events.
    let (hit, allowed_before) = if uncached || info.is_null() {
        (None, false)
    } else {
        // SAFETY: non-null storage pointer.
        match unsafe { cache::read(info) } {
            Some(c) => (
                c.verdict_for(&target, &gov, epochs.rules),
                c.allowed(&target),
            ),
            None => (None, false),
        }
    };
    if hit == Some(Verdict::Allow) {
        // Checked against the socket's own cgroup just now: the flow's next
        // packets take the established path until a cgroup entry changes.
        // SAFETY: a hit means non-null storage.
        unsafe {
            cache::write(
                info,
                &target,
                &gov,
                Verdict::Allow,
                epochs.rules,
                cgroup_checked(&gov, &epochs),
            )
        };
        count(gov.policy_id, Verdict::Allow);
        return ALLOW;
    }
    // Only a flow the cache does not already allow pays for the reply
    // lookup (a helper call and a hash lookup).
    if udp_socket {
        // SAFETY: the skb context is what the helper takes.
        let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
        if is_reply(cookie, &flow.daddr, flow.dport, epochs.rules) {
            return ALLOW;
        }
    }
    if let Some(v) = hit {
        count(gov.policy_id, v);
        return judged(v);
    }
    // A copy of the stored identity, or the static unknown one (zeroing a
    // local would be a `memset` call, see `packet::write_v4_mapped`).
    let stored;
    let who: &Identity = match unsafe { info.as_ref() } {
        Some(i) => {
            stored = Identity::of(i);
            &stored
        }
        None => &UNKNOWN_IDENTITY,
    };
    let decision = if unjudgeable {
        Decision::new(gov.on_miss, 0)
    } else if source_routed {
        decide_source_routed(skb, &gov, who, flow)
    } else {
        decide(&gov, who, &target)
    };
    count(gov.policy_id, decision.verdict());
    // A revoked flow whose event found no room in its ring: its verdict is
    // not cached, so the flow's next segment (a retransmit at the latest) is
    // judged and reported again, and the loader's abort comes late, not never.
    let mut revocation_unreported = false;
    if decision.verdict() != Verdict::Allow {
        // The event's flow is assembled in a per-CPU map value: the stack
        // has no room for it beside the decision.
        revocation_unreported = with_event_scratch(|event| {
            fill_event_flow(event, flow);
            // Source-routed packets and later fragments are never cached, so
            // their socket's cache still says allow: they are not a
            // revocation (and must not escape the rate limit as one).
            if decision.verdict() == Verdict::Deny && flow.proto == ip_proto::TCP && allowed_before
            {
                // The loader aborts exactly this socket; other events go
                // without the cookie (a helper call on the deny path).
                event.flags |= EVENT_REVOKED_FLOW;
                // SAFETY: the skb context is what the helper takes.
                event.socket_cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
            }
            let queued = report(cgroup_id, &gov, who, &decision, event);
            !queued && event.flags & EVENT_REVOKED_FLOW != 0
        })
        .unwrap_or(false);
    }
    if uncached {
        // Not cached: the next packet of the flow is judged again. (An
        // early return rather than `&&` with the null check: LLVM folds that
        // into bit arithmetic that kernel 6.1's verifier cannot follow.)
        return judged(decision.verdict());
    }
    if revocation_unreported {
        return judged(decision.verdict());
    }
    if !info.is_null() {
        // SAFETY: non-null storage pointer.
        unsafe {
            cache::write(
                info,
                &target,
                &gov,
                decision.verdict(),
                epochs.rules,
                cgroup_checked(&gov, &epochs),
            )
        };
        // A SYN no connect() hook judged (TCP Fast Open's sendto): the
        // flow is outbound all the same, and re-judged as such.
        if flow.proto == ip_proto::TCP && is_opening(flow) && decision.verdict() != Verdict::Deny {
            // SAFETY: non-null storage pointer, owned by this socket.
            unsafe { (*info).flags |= SOCK_OUTBOUND };
        }
    }
    judged(decision.verdict())
}

#[inline(always)]
fn is_opening(flow: &Flow) -> bool {
    flow.tcp_flags & TCP_SYN != 0 && flow.tcp_flags & TCP_ACK == 0
}

/// A source-routed packet goes to its destination and to every address of
/// its route: each is judged; an address that cannot be read is denied. A call of its own, off the common
/// path's stack.
#[inline(never)]
pub(crate) fn decide_source_routed(
    skb: *mut __sk_buff,
    gov: &Governance,
    who: &Identity,
    flow: &Flow,
) -> Decision {
    let mut target = Target {
        daddr: flow.daddr,
        proto: flow.proto,
        port: flow.dport,
        portless: flow.later_fragment,
    };
    let deny = Decision::new(gov.on_miss, 0);
    let mut worst = decide_call(gov, who, &target);
    let mut i = 0;
    while i < flow.route_len as usize && i < MAX_ROUTE_ADDRS {
        if worst.verdict() == Verdict::Deny {
            break;
        }
        if !packet::load_route_address(skb, flow, i, &mut target.daddr) {
            return deny;
        }
        let d = decide_call(gov, who, &target);
        if d.verdict() != Verdict::Allow {
            worst = d;
        }
        i += 1;
    }
    worst
}

/// A packet to a local address (it leaves on the loopback device) whose
/// source is neither a loopback address nor the destination itself: only a
/// forged packet (a raw socket, `IP_TRANSPARENT`) looks like that.
#[inline(always)]
fn is_spoofed_local(ctx: &SkBuffContext, flow: &Flow) -> bool {
    // SAFETY: the context is valid.
    if unsafe { (*ctx.skb.skb).ifindex } != LOOPBACK_IFINDEX {
        return false;
    }
    let loopback_source = if flow.family == 4 {
        flow.saddr[12] == 127
    } else {
        flow.saddr == LOOPBACK6
    };
    !loopback_source && flow.saddr != flow.daddr
}

pub(crate) const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A packet to a loopback address leaving through another device. The
/// kernel routes loopback destinations over `lo` alone; a raw socket's own
/// header (`IP_HDRINCL`, routed by its `sendto` address) can name one and
/// go to any neighbour, and the rules' loopback allowance would let it.
#[inline(always)]
fn is_misrouted_loopback(ctx: &SkBuffContext, flow: &Flow) -> bool {
    // SAFETY: the context is valid.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ifindex != LOOPBACK_IFINDEX && packet::is_loopback(&flow.daddr)
}

/// IPv6 neighbour discovery and MLD that the kernel itself sends. It sends
/// them from per-netns control sockets (never stamped: no process created
/// them, and a process's socket always is), which in a container runtime
/// belong to the container's cgroup; without them no IPv6 packet reaches a
/// neighbour. Their content is the kernel's, and they carry the hop limit
/// receivers require (255 for neighbour discovery, so nothing forwarded is
/// accepted; 1 for MLD, to link-scope multicast only). Neighbour discovery
/// cannot be held to link-scope destinations: unreachability probes and
/// solicited advertisements go to a neighbour's global address (RFC 4861).
/// From a process's socket, neighbour discovery passes no rule (see
/// `egress`) and MLD is judged like anything else.
#[inline(always)]
fn is_kernel_link_control(flow: &Flow, unstamped: bool) -> bool {
    if !unstamped {
        return false;
    }
    if packet::is_neighbour_discovery(flow) {
        return flow.hop_limit == 255;
    }
    packet::is_mld(flow) && flow.hop_limit == 1 && flow.daddr[0] == 0xff && flow.daddr[1] == 0x02
}

fn judged(v: Verdict) -> i32 {
    if v == Verdict::Deny {
        REJECT
    } else {
        ALLOW
    }
}

/// The cgroup epoch to stamp on a verdict the egress program cached after
/// looking up the socket's own cgroup. Never one for a cgroup with no entry:
/// its entry may come later without moving the epoch.
#[inline(always)]
fn cgroup_checked(gov: &Governance, epochs: &Epochs) -> u64 {
    if gov.policy_id == contain_common::UNKNOWN_POLICY_ID {
        0
    } else {
        epochs.cgroup
    }
}

#[inline(always)]
fn fill_event_flow(event: &mut EventFlow, flow: &Flow) {
    event.hook = Hook::Egress as u8;
    event.socket_cookie = 0;
    event.flags = 0;
    event.saddr = flow.saddr;
    event.daddr = flow.daddr;
    event.sport = flow.sport;
    event.dport = flow.dport;
    event.family = flow.family;
    event.proto = flow.proto;
}

/// Whether `peer` sent a UDP datagram to this very socket first, under the
/// current rules epoch and recently enough.
#[inline(always)]
fn is_reply(socket_cookie: u64, peer_addr: &[u8; 16], peer_port: u16, epoch: u64) -> bool {
    let key = InboundKey {
        socket_cookie,
        peer_addr: *peer_addr,
        peer_port,
        _pad1: 0,
        _pad2: 0,
    };
    // SAFETY: copied out at once.
    let Some(seen) = (unsafe { INBOUND_PEERS.get(key) }).copied() else {
        return false;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    seen.rules_epoch == epoch && now.wrapping_sub(seen.last_seen_ns) <= udp_reply_timeout_ns()
}

#[cgroup_skb]
pub fn contain_ingress(ctx: SkBuffContext) -> i32 {
    if is_forged_over_loopback(&ctx) {
        return REJECT;
    }
    remember_inbound_peer(&ctx);
    ALLOW
}

/// A packet for a governed socket that came in over `lo` from a source
/// that is neither a loopback address nor the destination itself: only a
/// container's own raw or packet socket writes that. Delivered, it would
/// let a forged peer open a connection the container then "answers" (an
/// accepted connection is not egress to judge).
#[inline(always)]
fn is_forged_over_loopback(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context is valid.
    if unsafe { (*ctx.skb.skb).ifindex } != LOOPBACK_IFINDEX {
        return false;
    }
    let mut slot = MaybeUninit::uninit();
    let flow = Flow::zeroed_in(&mut slot);
    if !packet::parse::<{ packet::L3_AT_START }>(ctx.skb.skb, flow) {
        return false;
    }
    if !is_spoofed_local(ctx, flow) {
        return false;
    }
    // SAFETY: skb context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    !governance(cgroup_id).unrestricted
}

/// A UDP datagram that came in from another host (not looped back, where
/// the container could forge the source) lets the socket it reached answer
/// its sender for a while.
#[inline(always)]
fn remember_inbound_peer(ctx: &SkBuffContext) {
    let epoch = epochs().rules;
    // SAFETY: the context is valid.
    let (ifindex, pkt_type) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).pkt_type) };
    // Looped back (over lo, or a multicast/broadcast datagram the container
    // sent itself): the container could have forged the source.
    if ifindex == LOOPBACK_IFINDEX || pkt_type == PACKET_LOOPBACK {
        return;
    }
    // Most of what comes in is TCP: told in place, before the full parse.
    if packet::surely_not_udp::<{ packet::L3_AT_START }>(ctx.skb.skb) {
        return;
    }
    // Unwrapped by the kernel on a device of another kind, the datagram is
    // whatever the container wrapped: a PIM register device, which a raw
    // IGMP socket alone can make (`MRT_INIT`, `MRT_ADD_VIF`), delivers
    // the inner datagram of a register the container sent to itself over
    // lo, its source forged. Only an Ethernet device (its veth) brings a
    // datagram from another host.
    if !arrived_over_ethernet(ctx.skb.skb) {
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let flow = Flow::zeroed_in(&mut slot);
    if !packet::parse::<{ packet::L3_AT_START }>(ctx.skb.skb, flow) {
        return;
    }
    if flow.proto != ip_proto::UDP || flow.later_fragment {
        return;
    }
    // Put together from fragments, the datagram takes its device from its
    // last fragment and the rest of its record from its first: a fragment
    // the container had the kernel unwrap (above) joined by one it had
    // looped back over its own Ethernet device (forwarded there by the
    // multicast router it made) would pass as one that came in over it.
    if was_reassembled(ctx.skb.skb, flow.family) {
        return;
    }
    // SAFETY: skb context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if governance(cgroup_id).unrestricted {
        return;
    }
    // SAFETY: the skb context is what the helper takes; on ingress its
    // socket is the one the datagram was delivered to.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if socket_cookie == 0 {
        return;
    }
    let key = InboundKey {
        socket_cookie,
        peer_addr: flow.saddr,
        peer_port: flow.sport,
        _pad1: 0,
        _pad2: 0,
    };
    let seen = InboundPeer {
        // SAFETY: helper without preconditions.
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        rules_epoch: epoch,
    };
    let _ = INBOUND_PEERS.insert(key, seen, 0);
}

/// `net_device`'s `type` (`ARPHRD_*`), from the kernel's BTF, patched in
/// at load time; 0 (not known) counts as no Ethernet device.
#[no_mangle]
static NETDEV_TYPE_OFFSET: u32 = 0;
const ARPHRD_ETHER: u16 = 1;

/// Whether the packet came in on an Ethernet device (`skb->dev->type`); a
/// read that fails counts as another kind.
#[inline(always)]
fn arrived_over_ethernet(skb: *mut __sk_buff) -> bool {
    if read_config(&veth::SKB_DEV_OFFSET) == 0 || read_config(&NETDEV_TYPE_OFFSET) == 0 {
        return false;
    }
    // SAFETY: the context is an sk_buff and its `dev` a net_device; the
    // helper checks each access.
    unsafe {
        let Ok(dev) = kernel_field::<*const u8>(skb.cast(), &veth::SKB_DEV_OFFSET) else {
            return false;
        };
        !dev.is_null() && kernel_field::<u16>(dev, &NETDEV_TYPE_OFFSET) == Ok(ARPHRD_ETHER)
    }
}

/// Where the IP layer's record of a received packet keeps the size of the
/// largest fragment it was put together from (`frag_max_size` of
/// `inet_skb_parm` and `inet6_skb_parm`, at `sk_buff`'s `cb`), from the
/// kernel's BTF; 0 (not known) counts as reassembled.
#[no_mangle]
static SKB_CB_OFFSET: u32 = 0;
#[no_mangle]
static IPCB_FRAG_MAX_SIZE_OFFSET: u32 = 0;
#[no_mangle]
static IP6CB_FRAG_MAX_SIZE_OFFSET: u32 = 0;

/// Whether the IP layer put the packet together from fragments; a read
/// that fails counts as yes.
#[inline(always)]
fn was_reassembled(skb: *mut __sk_buff, family: u8) -> bool {
    let frag_max_size = if family == 4 {
        &IPCB_FRAG_MAX_SIZE_OFFSET
    } else {
        &IP6CB_FRAG_MAX_SIZE_OFFSET
    };
    let cb_at = read_config(&SKB_CB_OFFSET);
    if cb_at == 0 || read_config(frag_max_size) == 0 {
        return true;
    }
    // SAFETY: the IP layer's record is at the context's sk_buff's `cb`;
    // the helper checks the access.
    let size = unsafe { kernel_field::<u16>(skb.cast::<u8>().add(cb_at as usize), frag_max_size) };
    size != Ok(0)
}

/// Every frame a container sends, as it arrives on the host side of its
/// veth: see [`veth`].
#[classifier]
pub fn contain_veth(ctx: TcContext) -> i32 {
    veth::judge_frame(ctx.skb.skb)
}

/// Every frame the host sends into a container through its veth: see
/// [`veth::admit_inbound`].
#[classifier]
pub fn contain_veth_inbound(ctx: TcContext) -> i32 {
    veth::admit_inbound(ctx.skb.skb)
}

// ------------------------------------------------------ process tracking

/// Records the file the process now runs, by its identity (device, inode,
/// change time: see `contain_common::FileStamp`), not by the path it was
/// exec'd as: a copy, a replacement, a bind mount over the path or a
/// chroot with its own file at that path is another file. For a script
/// the file is its interpreter (the kernel has swapped it in by now). When
/// the file cannot be read the process gets no identity (the
/// container-wide rules), never the one it had before the exec. A raw
/// tracepoint: only it has the exec's `linux_binprm`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn contain_exec(ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if record_exec(&ctx, tgid).is_err() {
        let _ = EXECS.remove(tgid);
    }
    0
}

/// Reads a kernel value at `base + offset`.
///
/// # Safety
/// `base` must be a kernel pointer whose object has `T` at `offset`.
#[inline(always)]
unsafe fn kernel_field<T>(base: *const u8, offset: &'static u32) -> Result<T, i32> {
    // SAFETY: per the caller; the helper checks the access.
    unsafe { bpf_probe_read_kernel(base.add(read_config(offset) as usize).cast::<T>()) }
}

#[inline(always)]
fn record_exec(ctx: &RawTracePointContext, tgid: u32) -> Result<(), i32> {
    // sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let bprm: *const u8 = ctx.arg(2);
    // SAFETY: offsets the loader read from the kernel's BTF, along the
    // pointers bprm->file->f_inode->i_sb.
    let file = unsafe {
        let file: *const u8 = kernel_field(bprm, &BPRM_FILE_OFFSET)?;
        let inode: *const u8 = kernel_field(file, &FILE_INODE_OFFSET)?;
        let sb: *const u8 = kernel_field(inode, &INODE_SB_OFFSET)?;
        FileStamp {
            ino: kernel_field(inode, &INODE_INO_OFFSET)?,
            ctime_sec: kernel_field(inode, &INODE_CTIME_SEC_OFFSET)?,
            dev: kernel_field(sb, &SB_DEV_OFFSET)?,
            // Bit 31 is the kernel's "ctime was queried" flag (multigrain
            // timestamps, 6.13), not part of the time `stat` reports.
            ctime_nsec: kernel_field::<u32>(inode, &INODE_CTIME_NSEC_OFFSET)? & CTIME_NSEC_MASK,
        }
    };
    let key = CONFIG.get(0).map_or([0, 0], |c| c.exe_key);
    if key == [0, 0] {
        // No loader has drawn the key: no identity can be trusted.
        return Err(0);
    }
    let exe_id = file_id(key, &file);
    EXECS.insert(tgid, ExecInfo { exe_id }, 0)?;
    // The path, for events only.
    let scratch = PATH_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: per-CPU scratch buffer.
    let path = unsafe { &mut (*scratch).path };
    *path = [0; EXE_PATH_LEN];
    // SAFETY: bprm->filename is the kernel's copy of the exec'd path.
    let filename: *const u8 = unsafe { kernel_field(bprm, &BPRM_FILENAME_OFFSET)? };
    // SAFETY: bounded copy of a kernel string.
    if unsafe { bpf_probe_read_kernel_str_bytes(filename, path) }.is_ok() {
        // SAFETY: scratch pointer valid for the program's duration.
        let _ = EXE_PATHS.insert(exe_id, unsafe { *scratch }, 0);
    }
    Ok(())
}

/// A new process runs its parent's executable until it execs. Threads
/// share their process's entry (keyed by tgid) and get none of their own,
/// so the table holds one entry per live process. A child of a process
/// with no entry is made to have none, whatever a recycled pid left.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn contain_newtask(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let (child, clone_flags) = unsafe {
        (
            ctx.read_at::<u32>(read_config(&NEWTASK_PID_OFFSET) as usize),
            ctx.read_at::<u64>(read_config(&NEWTASK_CLONE_FLAGS_OFFSET) as usize),
        )
    };
    let (Ok(child), Ok(clone_flags)) = (child, clone_flags) else {
        return 0;
    };
    if clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    match unsafe { EXECS.get(parent) }.copied() {
        Some(exec) => {
            if EXECS.insert(child, exec, 0).is_err() {
                let _ = EXECS.remove(child);
            }
        }
        None => {
            let _ = EXECS.remove(child);
        }
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn contain_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        let _ = EXECS.remove((pid_tgid >> 32) as u32);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
