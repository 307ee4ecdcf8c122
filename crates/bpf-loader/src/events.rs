//! Deny and audit events: drained from the kernel's ring buffer, attributed
//! (exe path), and kept in a bounded buffer that clients long-poll. policyd
//! follows it and writes the log lines, with the names only it knows. A
//! slow or absent client never slows the kernel side: the oldest events
//! are dropped and counted.

use std::{
    collections::VecDeque,
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use contain_common as kern;
use kernel_model::state::Verdict;
use nix::time::ClockId;
use proto::loader::{Event, EventBatch, Hook};
use tokio::sync::Notify;

/// Events kept for clients that poll.
const BUFFER_LEN: usize = 65_536;

#[derive(Default)]
struct Inner {
    events: VecDeque<Event>,
    last_seq: u64,
    dropped: u64,
}

/// The loader's event buffer.
#[derive(Default)]
pub struct EventLog {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl EventLog {
    pub fn new() -> Arc<EventLog> {
        Arc::new(EventLog::default())
    }

    /// Assigns the next sequence number and stores the event.
    pub fn push(&self, mut event: Event) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.last_seq += 1;
            event.seq = inner.last_seq;
            if inner.events.len() == BUFFER_LEN {
                inner.events.pop_front();
                inner.dropped += 1;
            }
            inner.events.push_back(event);
        }
        self.notify.notify_waiters();
    }

    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }

    fn collect(&self, after: u64, max: usize) -> EventBatch {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first = inner.events.front().map_or(inner.last_seq + 1, |e| e.seq);
        // `after` comes from a client: u64::MAX must not overflow.
        let missed = first.saturating_sub(after.saturating_add(1));
        let events = inner
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(max)
            .cloned()
            .collect();
        EventBatch {
            events,
            missed,
            last_seq: inner.last_seq,
        }
    }

    /// Events after `after`, waiting up to `wait` for one to arrive.
    pub async fn poll(&self, after: u64, max: usize, wait: Duration) -> EventBatch {
        let notified = self.notify.notified();
        let batch = self.collect(after, max);
        if !batch.events.is_empty() || wait.is_zero() {
            return batch;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        self.collect(after, max)
    }
}

/// Offset from CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall-clock time.
pub fn monotonic_to_wall_offset_ns() -> i128 {
    let mono = clock_ns(ClockId::CLOCK_MONOTONIC).unwrap_or(0);
    let real = clock_ns(ClockId::CLOCK_REALTIME).unwrap_or(0);
    real - mono
}

/// `clock` in nanoseconds, if it can be read.
pub(crate) fn clock_ns(clock: ClockId) -> Option<i128> {
    let ts = nix::time::clock_gettime(clock).ok()?;
    Some(ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128)
}

fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// A C string of a kernel record: up to its NUL, or all of `bytes`.
pub(crate) fn until_nul(bytes: &[u8]) -> String {
    let text = CStr::from_bytes_until_nul(bytes).map_or(bytes, CStr::to_bytes);
    String::from_utf8_lossy(text).into_owned()
}

/// Decodes a raw ring-buffer record; `None` if it is not a whole event.
pub fn decode(
    raw: &[u8],
    wall_offset_ns: i128,
    exe: impl Fn(u64) -> Option<String>,
) -> Option<Event> {
    if raw.len() < std::mem::size_of::<kern::Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain data valid for any bytes.
    let e: kern::Event = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let hook = match kern::Hook::from_u8(e.hook)? {
        kern::Hook::Connect4 => Hook::Connect4,
        kern::Hook::Connect6 => Hook::Connect6,
        kern::Hook::Sendmsg4 => Hook::Sendmsg4,
        kern::Hook::Sendmsg6 => Hook::Sendmsg6,
        kern::Hook::Egress => Hook::Egress,
        kern::Hook::Veth => Hook::Veth,
    };
    let verdict = match kern::Verdict::from_u8(e.verdict)? {
        kern::Verdict::Deny => Verdict::Deny,
        kern::Verdict::Allow => Verdict::Allow,
        kern::Verdict::Audit => Verdict::Audit,
    };
    let is_icmp = e.proto == kern::ip_proto::ICMP || e.proto == kern::ip_proto::ICMPV6;
    Some(Event {
        seq: 0,
        time_ns: (e.ktime_ns as i128 + wall_offset_ns).max(0) as u64,
        verdict,
        hook,
        cgroup_id: e.cgroup_id,
        policy_id: e.policy_id,
        rule_id: e.rule_id,
        tgid: e.tgid,
        uid: e.uid,
        comm: until_nul(&e.comm),
        exe: if e.exe_id == 0 { None } else { exe(e.exe_id) },
        proto: e.proto,
        src: addr(e.family, e.saddr),
        dst: addr(e.family, e.daddr),
        src_port: e.sport,
        dst_port: e.dport,
        icmp_type: is_icmp.then_some(e.icmp_type),
        icmp_code: is_icmp.then_some(e.icmp_code),
        suppressed: e.suppressed,
        revoked_flow: e.flags & kern::EVENT_REVOKED_FLOW != 0,
        socket_cookie: e.socket_cookie,
        link_layer: e.flags & kern::EVENT_LINK_LAYER != 0,
        unattributed: e.flags & kern::EVENT_UNATTRIBUTED != 0,
        forged_source: e.flags & kern::EVENT_FORGED_SOURCE != 0,
        // A veth event of a frame that is not IP carries its ethertype as
        // the port.
        ethertype: (e.family == 0 && hook == Hook::Veth).then_some(e.dport),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn raw_event() -> kern::Event {
        kern::Event {
            ktime_ns: 1_000,
            cgroup_id: 77,
            exe_id: 5,
            tgid: 42,
            uid: 1000,
            policy_id: 3,
            rule_id: 0,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            saddr: kern::v4_mapped([10, 0, 0, 2]),
            daddr: kern::v4_mapped([10, 0, 0, 1]),
            sport: 40000,
            dport: 443,
            family: 4,
            proto: kern::ip_proto::TCP,
            icmp_type: 0,
            icmp_code: 0,
            hook: kern::Hook::Connect4 as u8,
            verdict: kern::Verdict::Deny as u8,
            flags: kern::EVENT_REVOKED_FLOW,
            _pad: 0,
            suppressed: 12,
            socket_cookie: 99,
        }
    }

    fn bytes(e: &kern::Event) -> Vec<u8> {
        // SAFETY: plain data.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const kern::Event).cast::<u8>(),
                std::mem::size_of::<kern::Event>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_attribution() {
        let e = decode(&bytes(&raw_event()), 10, |h| {
            (h == 5).then(|| "/usr/bin/curl".to_string())
        })
        .unwrap();
        assert_eq!(e.comm, "curl");
        assert_eq!(e.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(e.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(e.time_ns, 1_010);
        assert_eq!(e.icmp_type, None);
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.suppressed, 12);
        assert!(e.revoked_flow);
        assert_eq!(e.socket_cookie, 99);
    }

    #[test]
    fn short_or_garbage_records_are_skipped() {
        assert!(decode(&[0u8; 8], 0, |_| None).is_none());
        let mut bad = raw_event();
        bad.hook = 99;
        assert!(decode(&bytes(&bad), 0, |_| None).is_none());
    }

    #[tokio::test]
    async fn buffer_numbers_and_bounds() {
        let log = EventLog::new();
        let e = decode(&bytes(&raw_event()), 0, |_| None).unwrap();
        for _ in 0..3 {
            log.push(e.clone());
        }
        let batch = log.poll(1, 10, Duration::ZERO).await;
        assert_eq!(
            batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(batch.last_seq, 3);
        assert_eq!(batch.missed, 0);
        let empty = log.poll(3, 10, Duration::from_millis(10)).await;
        assert!(empty.events.is_empty());
    }

    #[test]
    fn a_client_may_ask_for_events_after_any_sequence_number() {
        let log = EventLog::new();
        log.push(decode(&bytes(&raw_event()), 0, |_| None).unwrap());
        let batch = log.collect(u64::MAX, 10);
        assert!(batch.events.is_empty());
        assert_eq!(batch.missed, 0);
    }

    proptest! {
        #[test]
        fn any_record_is_decoded_or_skipped(raw in prop::collection::vec(any::<u8>(), 0..160)) {
            let whole = raw.len() >= std::mem::size_of::<kern::Event>();
            match decode(&raw, monotonic_to_wall_offset_ns(), |_| Some("/bin/x".into())) {
                Some(event) => {
                    prop_assert!(whole);
                    serde_json::to_string(&event).unwrap();
                }
                None => {
                    let hook = raw.get(std::mem::offset_of!(kern::Event, hook));
                    let verdict = raw.get(std::mem::offset_of!(kern::Event, verdict));
                    prop_assert!(
                        !whole
                            || kern::Hook::from_u8(*hook.unwrap()).is_none()
                            || kern::Verdict::from_u8(*verdict.unwrap()).is_none()
                    );
                }
            }
        }
    }
}
