//! Baseline programs for benchmarks, not for enforcement: the floor a
//! cgroup_skb program cannot go below (returns "pass" and nothing else).
#![no_std]
#![no_main]

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

#[cgroup_skb]
pub fn baseline_pass(_ctx: SkBuffContext) -> i32 {
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
