//! A ring-buffer record as bpf-loader drains it: any bytes. The kernel
//! writes these, but a record of another layout (an older or newer eBPF
//! object than the loader) must be skipped, never trusted. What decodes is
//! rendered as policyd's event log line, which must stay one line.
#![no_main]

use std::sync::LazyLock;

use bpf_loader::events::{decode, monotonic_to_wall_offset_ns};
use libfuzzer_sys::fuzz_target;

static WALL_OFFSET_NS: LazyLock<i128> = LazyLock::new(monotonic_to_wall_offset_ns);

fuzz_target!(|data: &[u8]| {
    // Some hashes name a known executable and some do not: both paths run.
    let exe = |hash: u64| hash.is_multiple_of(2).then(|| "/usr/bin/curl".to_string());
    if let Some(event) = decode(data, *WALL_OFFSET_NS, exe) {
        serde_json::to_string(&event).expect("an event always serialises");
        let line = policyd::eventlog::EventRecord::new(&event, None, None).to_line();
        assert!(
            !line.contains('\n'),
            "an event log record is one line: {line}"
        );
    }
});
