//! A socket's cached verdict (the first five words of its `SockInfo`),
//! read and written under a sequence lock.
//!
//! Programs on several CPUs judge packets of one socket at once when
//! threads share it (a raw or ping socket sending to allowed and denied
//! destinations): a verdict read half before and half after another
//! program's write could allow what neither verdict allowed. A writer takes
//! the lock with a compare-and-swap that makes `cache_seq` odd, writes, and
//! makes it even again; a writer that finds it odd leaves the cache as it
//! is (the cache only saves work). A reader takes a copy only when the
//! sequence was even and unchanged across its loads.
//!
//! Between the sequence and the fields this relies on x86's ordering of
//! plain loads and of plain stores (each among themselves); the object is
//! built for x86_64 only (`.cargo/config.toml`), and the compare-and-swap
//! is a full barrier.

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use contain_common::{SockInfo, CACHE_ALLOW, CACHE_AUDIT, CACHE_DENY};

use crate::decide::{Governance, Target};
use contain_common::Verdict;

/// The cache's last word as [`SockInfo`] lays it out: `cache_policy_id`,
/// `cache_port`, `cache_proto`, `cache_state`.
const TAIL: usize = core::mem::offset_of!(SockInfo, cache_policy_id);
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(SockInfo, cache_epoch) == 0);
    assert!(offset_of!(SockInfo, cache_cgroup_epoch) == 8);
    assert!(offset_of!(SockInfo, cache_addr) == 16);
    assert!(TAIL == 32);
    assert!(offset_of!(SockInfo, cache_port) == TAIL + 4);
    assert!(offset_of!(SockInfo, cache_proto) == TAIL + 6);
    assert!(offset_of!(SockInfo, cache_state) == TAIL + 7);
    assert!(core::mem::align_of::<SockInfo>() == 8);
    assert!(LOCK_WORD.is_multiple_of(8) && offset_of!(SockInfo, cache_seq) == LOCK_WORD + 4);
    // The words are compared as little-endian loads of key bytes.
    assert!(cfg!(target_endian = "little"));
};

/// The aligned word whose high half is `cache_seq` (its low half `flags`).
const LOCK_WORD: usize = core::mem::offset_of!(SockInfo, flags);

/// A consistent copy of the cache.
#[derive(Clone, Copy)]
pub struct Cached {
    pub epoch: u64,
    pub cgroup_epoch: u64,
    /// The destination's 16 key bytes as two little-endian words.
    pub addr: [u64; 2],
    /// Policy id (low 32 bits), port, protocol, state (top byte).
    pub tail: u64,
}

impl Cached {
    #[inline(always)]
    pub fn state(&self) -> u8 {
        (self.tail >> 56) as u8
    }

    #[inline(always)]
    pub fn policy_id(&self) -> u32 {
        self.tail as u32
    }

    /// Whether it is the verdict for `target` under `gov`'s policy, mode and
    /// rules epoch `epoch`, and which. A miss's verdict (audit or deny) holds
    /// only while the cgroup's mode still gives it: a cgroup entry that goes
    /// and comes back in the other mode moves no rules epoch.
    #[inline(always)]
    pub fn verdict_for(&self, target: &Target, gov: &Governance, epoch: u64) -> Option<Verdict> {
        let state = self.state();
        if state == contain_common::CACHE_EMPTY
            || self.epoch != epoch
            || self.policy_id() != gov.policy_id
            || !self.is_for(target, state)
        {
            return None;
        }
        let verdict = match state {
            CACHE_ALLOW => Verdict::Allow,
            CACHE_AUDIT => Verdict::Audit,
            _ => Verdict::Deny,
        };
        if verdict != Verdict::Allow && verdict != gov.on_miss {
            return None;
        }
        // Policy 0 is no policy's rules: an allow under it came from the
        // unknown-container verdict, which a ruleless entry (policy 0 too,
        // written without moving an epoch) no longer gives.
        if verdict == Verdict::Allow && gov.policy_id == contain_common::UNKNOWN_POLICY_ID {
            return None;
        }
        Some(verdict)
    }

    /// Whether it allowed `target` itself, under whatever policy and epoch:
    /// a deny now revokes that flow.
    #[inline(always)]
    pub fn allowed(&self, target: &Target) -> bool {
        self.is_for(target, CACHE_ALLOW)
    }

    #[inline(always)]
    fn is_for(&self, target: &Target, state: u8) -> bool {
        self.is_state_of(words(&target.daddr), target.port, target.proto, state)
    }

    /// Whether it is verdict `state` for `proto` to `port` at the address
    /// [`words`] gives as `addr`, under whatever policy and epoch.
    #[inline(always)]
    pub fn is_state_of(&self, addr: [u64; 2], port: u16, proto: u8, state: u8) -> bool {
        self.tail >> 32 == tail(port, proto, state) >> 32 && self.addr == addr
    }
}

/// The tail word of a verdict `state` for `proto` to `port`, policy id 0.
#[inline(always)]
fn tail(port: u16, proto: u8, state: u8) -> u64 {
    (port as u64) << 32 | (proto as u64) << 48 | (state as u64) << 56
}

/// 16 key bytes as the two little-endian words the cache compares.
#[inline(always)]
pub fn words(addr: &[u8; 16]) -> [u64; 2] {
    let (low, high) = addr.split_at(8);
    let word = |half: &[u8]| u64::from_le_bytes(half.try_into().unwrap_or([0; 8]));
    [word(low), word(high)]
}

/// A consistent copy of `info`'s cache, or `None` while a program writes it.
///
/// # Safety
/// `info` must be a valid, non-null socket storage pointer.
#[inline(always)]
pub unsafe fn read(info: *const SockInfo) -> Option<Cached> {
    // SAFETY: per the caller's contract, every load below is of an aligned
    // word of the storage (layout asserted above).
    unsafe {
        let seq = core::ptr::addr_of!((*info).cache_seq);
        let before = seq.read_volatile();
        if before & 1 != 0 {
            return None;
        }
        let w = info.cast::<u64>();
        let copy = Cached {
            epoch: w.read_volatile(),
            cgroup_epoch: w.add(1).read_volatile(),
            addr: [w.add(2).read_volatile(), w.add(3).read_volatile()],
            tail: w.add(TAIL / 8).read_volatile(),
        };
        if seq.read_volatile() != before {
            return None;
        }
        Some(copy)
    }
}

/// Caches `verdict` for the socket: for `target` under `gov`'s policy and
/// rules epoch `epoch`; `cgroup_checked` is the cgroup epoch under which
/// `gov` was looked up for the socket's own cgroup (0 when it was not: the
/// socket hooks judge under the caller's identity). Left as it is while
/// another program writes it.
///
/// # Safety
/// `info` must be a valid, non-null socket storage pointer.
#[inline(always)]
pub unsafe fn write(
    info: *mut SockInfo,
    target: &Target,
    gov: &Governance,
    verdict: Verdict,
    epoch: u64,
    cgroup_checked: u64,
) {
    let state = match verdict {
        Verdict::Allow => CACHE_ALLOW,
        Verdict::Deny => CACHE_DENY,
        Verdict::Audit => CACHE_AUDIT,
    };
    let addr = words(&target.daddr);
    let tail = tail(target.port, target.proto, state) | gov.policy_id as u64;
    // SAFETY: per the caller's contract: an aligned u32 of the storage, and
    // aligned words of it below.
    unsafe {
        // The compare-and-swap is 64-bit (the only width this target
        // selects): on the word of `flags` and `cache_seq`. A change of the
        // flags meanwhile fails it too, and the cache is left as it is.
        let lock_word = info.cast::<u64>().add(LOCK_WORD / 8);
        let word = lock_word.read_volatile();
        let before = (word >> 32) as u32;
        if before & 1 != 0 {
            return;
        }
        let (_, taken) = atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            lock_word,
            word,
            word.wrapping_add(1 << 32),
        );
        if !taken {
            return;
        }
        let seq_ptr = core::ptr::addr_of_mut!((*info).cache_seq);
        let w = info.cast::<u64>();
        w.write_volatile(epoch);
        w.add(1).write_volatile(cgroup_checked);
        w.add(2).write_volatile(addr[0]);
        w.add(3).write_volatile(addr[1]);
        w.add(TAIL / 8).write_volatile(tail);
        seq_ptr.write_volatile(before.wrapping_add(2));
    }
}
