//! Loads of a packet's bytes at any alignment, one instruction each.
//!
//! This target's LLVM assumes strict alignment: `read_unaligned` of a word
//! becomes a load per byte and the shifts to join them (a dozen
//! instructions for an IPv4 address, some fifty for an IPv6 one). The
//! verifier allows misaligned loads from a packet where the architecture
//! has efficient unaligned access (x86_64, the only target this object is
//! built for; `.cargo/config.toml`), so one load does. It is spelled in
//! assembly because LLVM's target feature for it applies to a whole
//! function, stack included, where the verifier requires alignment.
//!
//! For packet pointers, or a copy on the stack where each field read is
//! aligned to its size: a misaligned load from the stack or a map value is
//! refused by the verifier (loudly, at load time). The offset is the
//! instruction's own, `AT` bytes past the pointer.

use core::arch::asm;

/// The 8 bytes `AT` bytes past `p` as a little-endian word.
///
/// # Safety
/// 8 bytes from `p + AT` must be within the packet's linear part, as
/// checked against `data_end`, or readable and 8-aligned on the stack.
#[inline(always)]
pub unsafe fn u64_at<const AT: usize>(p: *const u8) -> u64 {
    let v: u64;
    // SAFETY: per the caller's contract; the load writes nothing.
    unsafe {
        asm!(
            "{v} = *(u64 *)({p} + {at})",
            v = lateout(reg) v,
            p = in(reg) p,
            at = const AT,
            options(readonly, nostack, preserves_flags),
        )
    };
    v
}

/// The 4 bytes `AT` bytes past `p` as a little-endian word.
///
/// # Safety
/// As [`u64_at`], for 4 bytes.
#[inline(always)]
pub unsafe fn u32_at<const AT: usize>(p: *const u8) -> u32 {
    let v: u64;
    // SAFETY: as above.
    unsafe {
        asm!(
            "{v} = *(u32 *)({p} + {at})",
            v = lateout(reg) v,
            p = in(reg) p,
            at = const AT,
            options(readonly, nostack, preserves_flags),
        )
    };
    v as u32
}

/// The 2 bytes `AT` bytes past `p` in network order (big-endian).
///
/// # Safety
/// As [`u64_at`], for 2 bytes.
#[inline(always)]
pub unsafe fn be16_at<const AT: usize>(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: as above.
    unsafe {
        asm!(
            "{v} = *(u16 *)({p} + {at})",
            v = lateout(reg) v,
            p = in(reg) p,
            at = const AT,
            options(readonly, nostack, preserves_flags),
        )
    };
    u16::from_be(v as u16)
}
