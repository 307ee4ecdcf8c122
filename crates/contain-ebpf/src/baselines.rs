//! Programs for benchmarks, not for enforcement.
//!
//! - `baseline_pass`: the floor a cgroup_skb program cannot go below
//!   (returns "pass" and nothing else).
//! - `baseline_storage`: what a verdict kept with the socket cannot do
//!   without: the packet's socket's storage looked up (made on the flow's
//!   first packet), a word of it read, "pass".
//! - `established_via`: gives the test run's dummy socket storage in
//!   contain's own socket map (`CONTAIN_SOCKETS`, the loader's pinned map:
//!   an empty cache, marked outbound as a `connect()` marks it), then
//!   tail-calls the program in `ESTABLISHED_NEXT`. One test run repeats its
//!   packet on one socket: contain's egress program judges the first in
//!   full and caches the verdict, every later one is a packet of an
//!   established flow. With `baseline_pass` there, the floor of that path.
//! - `thesis_scan`: the thesis' design, rebuilt for the comparison: one
//!   allow-list per container held as an array of `{addr, mask, port,
//!   proto}` entries and scanned linearly for every packet until an entry
//!   matches (IPv4 only, as the thesis' `cidr4` rules). The thesis scanned
//!   at most 500 entries per packet; here the scan is a `bpf_loop` so that
//!   the same program runs at 10 to 100 000 entries.
//!   The bench crate fills `THESIS_RULES` and `THESIS_LEN`; an instance of
//!   this object is loaded per rule count.
//! - `thesis_scan_bounded`: the same scan as a plain bounded loop over at
//!   most `THESIS_BOUNDED_MAX` entries, the shape a scan capped at 500
//!   entries takes (the verifier walks every iteration, hence the cap).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::{Array, ProgramArray, SkStorage},
    helpers::generated::{bpf_loop, bpf_sk_storage_get},
    macros::btf_map,
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use contain_common::{SockInfo, CACHE_EMPTY, COMM_LEN, SOCK_OUTBOUND};

#[cgroup_skb]
pub fn baseline_pass(_ctx: SkBuffContext) -> i32 {
    1
}

#[btf_map(name = "BASELINE_SOCKETS")]
static BASELINE_SOCKETS: SkStorage<u64> = SkStorage::new();

#[cgroup_skb]
pub fn baseline_storage(ctx: SkBuffContext) -> i32 {
    // SAFETY: the context is valid for the program's duration.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    let map = core::ptr::from_ref(&BASELINE_SOCKETS).cast_mut().cast();
    // SAFETY: a map pointer from a static map, the socket from the context.
    let word = unsafe {
        bpf_sk_storage_get(
            map,
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast::<u64>();
    // SAFETY: the helper's storage pointer, null or valid.
    match unsafe { word.as_ref() } {
        // Read, so the lookup's result is used as a verdict's would be.
        Some(&w) if w == u64::MAX => 0,
        _ => 1,
    }
}

/// Contain's socket map: the bench loads this object with the loader's pin
/// of it, so this is that map, not one of its own.
#[btf_map(name = "CONTAIN_SOCKETS")]
static CONTAIN_SOCKETS: SkStorage<SockInfo> = SkStorage::new();

/// Index 0: the program `established_via` hands the packet to.
#[btf_map(name = "ESTABLISHED_NEXT")]
static ESTABLISHED_NEXT: ProgramArray<1> = ProgramArray::new();

#[cgroup_skb]
pub fn established_via(ctx: SkBuffContext) -> i32 {
    // SAFETY: the context is valid for the program's duration.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return NOT_HANDED_ON;
    }
    let mut outbound = SockInfo {
        cache_epoch: 0,
        cache_cgroup_epoch: 0,
        cache_addr: [0; 16],
        cache_policy_id: 0,
        cache_port: 0,
        cache_proto: 0,
        cache_state: CACHE_EMPTY,
        cgroup_id: 0,
        exe_id: 0,
        tgid: 0,
        uid: 0,
        comm: [0; COMM_LEN],
        flags: SOCK_OUTBOUND,
        cache_seq: 0,
    };
    let map = core::ptr::from_ref(&CONTAIN_SOCKETS).cast_mut().cast();
    // SAFETY: a map pointer from a static map, the socket from the context,
    // the initial value a whole `SockInfo` on the stack.
    let info = unsafe {
        bpf_sk_storage_get(
            map,
            sk.cast(),
            (&mut outbound as *mut SockInfo).cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    };
    if info.is_null() {
        return NOT_HANDED_ON;
    }
    // SAFETY: the context is this program's; on success this does not return.
    unsafe { ESTABLISHED_NEXT.tail_call(&ctx, 0) };
    NOT_HANDED_ON
}

/// `established_via`'s verdict when it could not hand the packet on: a
/// drop, where both programs it hands on to pass the bench's packets.
const NOT_HANDED_ON: i32 = 0;

/// One allow-list entry (layout shared with `crates/bench`). Addresses and
/// masks are in network byte order; `port` 0 means any port (and, for
/// ICMP, every type), `proto` 0 any protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThesisRule {
    pub addr: u32,
    pub mask: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Room for 100 000 rules and a little more.
const THESIS_MAX: usize = 131_072;

#[btf_map(name = "THESIS_RULES")]
static THESIS_RULES: Array<ThesisRule, THESIS_MAX> = Array::new();

/// Index 0: the number of entries in use.
#[btf_map(name = "THESIS_LEN")]
static THESIS_LEN: Array<u32, 1> = Array::new();

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// What the scan compares and what it found.
#[repr(C)]
struct Scan {
    daddr: u32,
    port: u16,
    proto: u8,
    matched: u8,
}

extern "C" fn scan_one(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it: a Scan on the
    // caller's stack.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    let Some(rule) = THESIS_RULES.get(index as u32) else {
        return 1;
    };
    if matches(rule, scan) {
        scan.matched = 1;
        return 1;
    }
    0
}

/// The bounded loop's cap (the thesis scanned at most 500 entries).
const THESIS_BOUNDED_MAX: u32 = 512;

#[inline(always)]
fn matches(rule: &ThesisRule, scan: &Scan) -> bool {
    scan.daddr & rule.mask == rule.addr
        && (rule.proto == 0 || rule.proto == scan.proto)
        && (rule.port == 0 || rule.port == scan.port)
}

/// The packet's destination, protocol and port; `Err(verdict)` when the
/// packet is not looked up (not IPv4: passed; unreadable: dropped).
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Result<Scan, i32> {
    if u16::from_be(ctx.skb.protocol() as u16) != ETH_P_IP {
        return Err(1);
    }
    let Ok(hdr) = ctx.load::<[u8; 20]>(0) else {
        return Err(0);
    };
    let proto = hdr[9];
    let header_len = ((hdr[0] & 0x0f) as usize) * 4;
    let port = if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        match ctx.load::<[u8; 4]>(header_len) {
            Ok(l4) => u16::from_be_bytes([l4[2], l4[3]]),
            Err(_) => return Err(0),
        }
    } else {
        0
    };
    Ok(Scan {
        daddr: u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]),
        port,
        proto,
        matched: 0,
    })
}

#[cgroup_skb]
pub fn thesis_scan(ctx: SkBuffContext) -> i32 {
    let mut scan = match parse(&ctx) {
        Ok(scan) => scan,
        Err(verdict) => return verdict,
    };
    let len = THESIS_LEN.get(0).copied().unwrap_or(0);
    // SAFETY: the callback is a static function of the right signature; the
    // context is a stack object that outlives the call.
    unsafe {
        bpf_loop(
            len,
            scan_one as *mut core::ffi::c_void,
            (&mut scan as *mut Scan).cast(),
            0,
        )
    };
    i32::from(scan.matched & 1)
}

#[cgroup_skb]
pub fn thesis_scan_bounded(ctx: SkBuffContext) -> i32 {
    let scan = match parse(&ctx) {
        Ok(scan) => scan,
        Err(verdict) => return verdict,
    };
    let len = THESIS_LEN.get(0).copied().unwrap_or(0);
    for i in 0..THESIS_BOUNDED_MAX {
        if i >= len {
            break;
        }
        let Some(rule) = THESIS_RULES.get(i) else {
            break;
        };
        if matches(rule, &scan) {
            return 1;
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
