//! contain's kernel side: per-container, per-process egress enforcement on
//! cgroup v2 hooks.
//!
//! - `cgroup/sock_create` stamps the creator's identity into socket storage;
//! - `cgroup/connect4|6` and `cgroup/sendmsg4|6` judge each flow and fail a
//!   denied `connect()`/`sendto()` with EPERM at once;
//! - `cgroup_skb/egress` parses every outgoing IP packet and is the backstop
//!   for raw sockets, ping sockets and anything the socket hooks miss;
//! - `cgroup_skb/ingress` remembers UDP peers that spoke first, so a UDP
//!   server in a filtered container can answer them;
//! - `sched_process_exec|fork|exit` keep the executable each process runs.
//!
//! No kprobes, fentry or LSM: they do not exist on the kernels contain runs on.
#![no_std]
#![no_main]

mod decide;
mod maps;
mod packet;

use aya_ebpf::{
    bindings::{bpf_sock, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel_str_bytes, bpf_sk_fullsock, bpf_skb_cgroup_id,
        generated::bpf_sk_storage_get,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, tracepoint},
    programs::{SkBuffContext, SockAddrContext, SockContext, TracePointContext},
    EbpfContext as _,
};
use contain_common::{
    exe_hash, proto, v4_mapped, ExecInfo, Hook, InboundKey, SockInfo, Verdict, CACHE_ALLOW,
    CACHE_AUDIT, CACHE_DENY, CACHE_EMPTY, COMM_LEN, EXE_PATH_LEN, SOCK_OUTBOUND,
};

use crate::{
    decide::{
        count, count_unparsed, decide, generation, governance, report, EventFlow, Identity, Target,
    },
    maps::{EXECS, EXE_PATHS, INBOUND_PEERS, PATH_SCRATCH, SOCKETS},
    packet::{Flow, TCP_ACK, TCP_SYN},
};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const LOOPBACK_IFINDEX: u32 = 1;

/// Tracepoint field offsets, read by the loader from tracefs `format` files
/// (they differ between kernel versions) and patched in at load time.
#[no_mangle]
static EXEC_FILENAME_LOC_OFFSET: u32 = 8;
#[no_mangle]
static FORK_CHILD_PID_OFFSET: u32 = 44;

/// The socket storage map as the helpers take it: the static's address is
/// what the loader relocates to the map.
#[inline(always)]
fn sockets_map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCKETS).cast_mut().cast()
}

#[inline(always)]
fn read_config(v: &'static u32) -> u32 {
    // SAFETY: a valid static; volatile so the loader's patched value is read.
    unsafe { core::ptr::read_volatile(v) }
}

// ---------------------------------------------------------------- identity

#[inline(always)]
fn current_identity() -> SockInfo {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: map value copied out at once.
    let exe_hash = unsafe { EXECS.get(tgid) }.map_or(0, |e| e.exe_hash);
    SockInfo {
        cgroup_id: current_cgroup(),
        exe_hash,
        tgid,
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        flags: 0,
        cache_generation: 0,
        cache_addr: [0; 16],
        cache_port: 0,
        cache_proto: 0,
        cache_state: CACHE_EMPTY,
        _pad: 0,
    }
}

/// The socket's storage, created from the current task if missing (the
/// socket hooks run in the context of the process that called them).
///
/// # Safety
/// `sk` must be a socket pointer the verifier accepts for sk_storage_get.
#[inline(always)]
unsafe fn stamped_storage(sk: *mut core::ffi::c_void) -> *mut SockInfo {
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

#[cgroup_sock(sock_create)]
pub fn contain_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: ctx.sock is the socket being created.
    unsafe { stamped_storage(ctx.sock.cast()) };
    ALLOW
}

// --------------------------------------------------------- per-flow hooks

#[inline(always)]
/// `V6` selects the hook family: the verifier refuses reads of `user_ip6`
/// in IPv4 hooks and of `user_ip4` in IPv6 hooks.
fn sock_addr_target<const V6: bool>(ctx: &SockAddrContext) -> Option<(Target, EventFlow)> {
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
        (SOCK_STREAM, _) => proto::TCP,
        (SOCK_DGRAM, p) if p == proto::UDP || p == 0 => proto::UDP,
        (_, p) => p,
    };
    let port = u16::from_be(user_port as u16);
    let (daddr, family) = if !V6 && user_family == 2 {
        // SAFETY: as above.
        let user_ip4 = unsafe { core::ptr::read_volatile(&(*sa).user_ip4) };
        (v4_mapped(user_ip4.to_ne_bytes()), 4)
    } else if V6 && user_family == 10 {
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
    let target = Target {
        daddr,
        proto,
        port,
        portless: false,
    };
    let flow = EventFlow {
        saddr: [0; 16],
        daddr,
        sport: 0,
        dport: port,
        family,
        proto,
    };
    Some((target, flow))
}

#[inline(always)]
fn judge_sock_addr<const V6: bool>(ctx: &SockAddrContext, hook: Hook, is_connect: bool) -> i32 {
    let Some((target, flow)) = sock_addr_target::<V6>(ctx) else {
        return ALLOW;
    };
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
    if !is_connect && target.proto == proto::UDP && !sk.is_null() {
        // SAFETY: sk is a full socket from the sock_addr context.
        let local_port = unsafe { core::ptr::read_volatile(&(*sk).src_port) } as u16;
        if is_reply(cgroup_id, &target.daddr, target.port, local_port) {
            count(gov.policy_id, Verdict::Allow);
            return ALLOW;
        }
    }
    let decision = decide(&gov, &who, &target);
    count(gov.policy_id, decision.verdict);
    if decision.verdict != Verdict::Allow {
        report(cgroup_id, &gov, &who, &decision, &flow, hook);
    }
    if !info.is_null() {
        // SAFETY: non-null storage pointer, owned by this socket.
        let i = unsafe { &mut *info };
        remember(i, &target, decision.verdict);
        if is_connect && decision.verdict != Verdict::Deny {
            i.flags |= SOCK_OUTBOUND;
        }
    }
    if decision.verdict == Verdict::Deny {
        REJECT
    } else {
        ALLOW
    }
}

#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn remember(info: &mut SockInfo, target: &Target, verdict: Verdict) {
    info.cache_generation = generation();
    info.cache_addr = target.daddr;
    info.cache_port = target.port;
    info.cache_proto = target.proto;
    info.cache_state = match verdict {
        Verdict::Allow => CACHE_ALLOW,
        Verdict::Deny => CACHE_DENY,
        Verdict::Audit => CACHE_AUDIT,
    };
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
    // SAFETY: the context is valid for the program's duration.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        // Sent by the kernel itself (e.g. a RST or an ICMP error), not by a
        // process of the container.
        return ALLOW;
    }
    // SAFETY: sk from the skb context.
    let full: *mut bpf_sock = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        // Request and time-wait sockets: handshakes of inbound connections
        // and the tail of closed ones.
        return ALLOW;
    }
    // SAFETY: skb context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let gov = governance(cgroup_id);
    if gov.unrestricted {
        return ALLOW;
    }
    let Some(flow) = packet::parse(ctx) else {
        count_unparsed();
        return judged(gov.on_miss);
    };
    if is_link_infrastructure(&flow) {
        return ALLOW;
    }
    // SAFETY: full socket pointer checked non-null above.
    let (sock_type, sock_proto) = unsafe { ((*full).type_, (*full).protocol) };
    // SAFETY: full socket pointer, no create.
    let info = unsafe { bpf_sk_storage_get(sockets_map(), full.cast(), core::ptr::null_mut(), 0) }
        .cast::<SockInfo>();

    if sock_type == SOCK_STREAM && sock_proto == proto::TCP as u32 && flow.proto == proto::TCP {
        let opening = flow.tcp_flags & TCP_SYN != 0 && flow.tcp_flags & TCP_ACK == 0;
        if !opening {
            // An established stream: ours to judge again only if we let it
            // out and the policy changed since.
            if info.is_null() {
                return ALLOW;
            }
            // SAFETY: non-null storage.
            let i = unsafe { &*info };
            if i.flags & SOCK_OUTBOUND == 0 || i.cache_generation == generation() {
                return ALLOW;
            }
        }
    } else if sock_type == SOCK_DGRAM
        && flow.proto == proto::UDP
        && is_reply(cgroup_id, &flow.daddr, flow.dport, flow.sport)
    {
        return ALLOW;
    }

    let target = Target {
        daddr: flow.daddr,
        proto: flow.proto,
        port: flow.dport,
        portless: flow.later_fragment,
    };
    let gen = generation();
    if !info.is_null() {
        // SAFETY: non-null storage.
        let i = unsafe { &*info };
        if let Some(v) = cached(i, &target, gen) {
            count(gov.policy_id, v);
            return judged(v);
        }
    }
    let who = if info.is_null() {
        Identity::UNKNOWN
    } else {
        // SAFETY: non-null storage.
        Identity::of(unsafe { &*info })
    };
    let decision = decide(&gov, &who, &target);
    count(gov.policy_id, decision.verdict);
    if decision.verdict != Verdict::Allow {
        report(
            cgroup_id,
            &gov,
            &who,
            &decision,
            &event_flow(&flow),
            Hook::Egress,
        );
    }
    if !info.is_null() {
        // SAFETY: non-null storage, owned by this socket.
        remember(unsafe { &mut *info }, &target, decision.verdict);
    }
    judged(decision.verdict)
}

#[inline(always)]
/// IPv6 neighbour discovery and MLD. The kernel sends them from per-netns
/// control sockets, which in a container runtime belong to the container's
/// cgroup; without them no IPv6 packet reaches a neighbour. They cannot
/// leave the link (routers do not forward them, receivers require hop
/// limit 255), so they are not egress to judge.
fn is_link_infrastructure(flow: &Flow) -> bool {
    if flow.proto != proto::ICMPV6 || flow.later_fragment {
        return false;
    }
    matches!(flow.dport >> 8, 130..=137 | 143)
}

fn judged(v: Verdict) -> i32 {
    if v == Verdict::Deny {
        REJECT
    } else {
        ALLOW
    }
}

#[inline(always)]
fn cached(i: &SockInfo, target: &Target, gen: u32) -> Option<Verdict> {
    if i.cache_state == CACHE_EMPTY
        || i.cache_generation != gen
        || i.cache_proto != target.proto
        || i.cache_port != target.port
        || i.cache_addr != target.daddr
    {
        return None;
    }
    Some(match i.cache_state {
        CACHE_ALLOW => Verdict::Allow,
        CACHE_AUDIT => Verdict::Audit,
        _ => Verdict::Deny,
    })
}

#[inline(always)]
fn event_flow(flow: &Flow) -> EventFlow {
    EventFlow {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        family: flow.family,
        proto: flow.proto,
    }
}

#[inline(always)]
/// Whether `peer` sent a UDP datagram to this cgroup's `local_port` first.
fn is_reply(cgroup_id: u64, peer_addr: &[u8; 16], peer_port: u16, local_port: u16) -> bool {
    let key = InboundKey {
        cgroup_id,
        peer_addr: *peer_addr,
        peer_port,
        local_port,
        proto: proto::UDP,
        _pad: [0; 3],
    };
    // SAFETY: presence check only.
    unsafe { INBOUND_PEERS.get(key) }.is_some()
}

#[cgroup_skb]
pub fn contain_ingress(ctx: SkBuffContext) -> i32 {
    remember_inbound_peer(&ctx);
    ALLOW
}

/// A UDP datagram that came in from another host (not over loopback, where
/// the container could forge the source) makes its sender a peer the
/// container may answer.
#[inline(always)]
fn remember_inbound_peer(ctx: &SkBuffContext) {
    // SAFETY: the context is valid.
    if unsafe { (*ctx.skb.skb).ifindex } == LOOPBACK_IFINDEX {
        return;
    }
    let Some(flow) = packet::parse(ctx) else {
        return;
    };
    if flow.proto != proto::UDP || flow.later_fragment {
        return;
    }
    // SAFETY: skb context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if governance(cgroup_id).unrestricted {
        return;
    }
    let key = InboundKey {
        cgroup_id,
        peer_addr: flow.saddr,
        peer_port: flow.sport,
        local_port: flow.dport,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let _ = INBOUND_PEERS.insert(key, 1u8, 0);
}

// ------------------------------------------------------ process tracking

/// Records the path the process exec'd, hashed as userspace hashes policy
/// paths, so a renamed copy of an allowed binary is another executable.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn contain_exec(ctx: TracePointContext) -> u32 {
    let _ = record_exec(&ctx);
    0
}

#[inline(always)]
fn record_exec(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offset from the tracepoint's format file.
    let loc: u32 = unsafe { ctx.read_at(read_config(&EXEC_FILENAME_LOC_OFFSET) as usize)? };
    let offset = (loc & 0xffff) as usize;
    let scratch = PATH_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: per-CPU scratch buffer; the source is inside the trace record.
    let path = unsafe { &mut (*scratch).path };
    *path = [0; EXE_PATH_LEN];
    // SAFETY: reading the record's string with a bounded copy.
    unsafe {
        bpf_probe_read_kernel_str_bytes(ctx.as_ptr().cast::<u8>().add(offset), path).map(drop)?
    };
    let hash = exe_hash(path);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    EXECS.insert(tgid, ExecInfo { exe_hash: hash }, 0)?;
    // SAFETY: scratch pointer valid for the program's duration.
    let _ = EXE_PATHS.insert(hash, unsafe { *scratch }, 0);
    Ok(())
}

/// A forked child runs its parent's executable until it execs.
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn contain_fork(ctx: TracePointContext) -> u32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(exec) = (unsafe { EXECS.get(parent) }).copied() else {
        return 0;
    };
    // SAFETY: offset from the tracepoint's format file.
    if let Ok(child) = unsafe { ctx.read_at::<u32>(read_config(&FORK_CHILD_PID_OFFSET) as usize) } {
        let _ = EXECS.insert(child, exec, 0);
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
