//! The cost per call of `connect()` and `sendto()` with contain's socket
//! hooks (`cgroup/connect4`, `cgroup/sendmsg4`) against no hooks at all,
//! for an allowed and a denied destination. BPF_PROG_TEST_RUN cannot run
//! sock_addr programs, so this times the system calls themselves, from a
//! thread pinned to one CPU inside each configuration's namespace and
//! cgroup, as the latency phase does.
//!
//! Four loops, each on one UDP socket to the peer:
//!
//! - `connect()` to the allowed UDP port: a datagram connect sends
//!   nothing, so this is the connect4 hook plus the system call (route
//!   lookup, binding an ephemeral port the first time);
//! - `connect()` to a denied UDP port: contain's hook still allows a
//!   datagram connect (the verdict is enforced on what is sent), so the
//!   call succeeds; it costs the same decision;
//! - unconnected `sendto()` of a small datagram to the allowed port: the
//!   sendmsg4 hook, the send, and the egress program on the packet;
//! - unconnected `sendto()` to the denied port: EPERM from the sendmsg4
//!   hook, nothing sent (without contain the datagram goes out).
//!
//! Both ports have a bound socket in the peer namespace that nobody reads:
//! once its buffer is full the datagrams are dropped silently, no ICMP.
//! Configurations go round-robin, several rounds, so noise is shared.

use std::{
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd as _,
    time::Instant,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    lab::{Kind, Lab, UDP_DENIED_PORT, UDP_SINK_PORT},
    sys,
};

/// Bytes of each datagram `sendto()` sends.
pub const DATAGRAM: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Call {
    ConnectAllowed,
    ConnectDenied,
    SendtoAllowed,
    SendtoDenied,
}

pub const CALLS: [Call; 4] = [
    Call::ConnectAllowed,
    Call::ConnectDenied,
    Call::SendtoAllowed,
    Call::SendtoDenied,
];

impl Call {
    pub fn label(self) -> &'static str {
        match self {
            Call::ConnectAllowed => "UDP connect(), allowed",
            Call::ConnectDenied => "UDP connect(), denied",
            Call::SendtoAllowed => "sendto(), allowed",
            Call::SendtoDenied => "sendto(), denied",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub kind: Kind,
    pub rules: usize,
    pub call: Call,
    /// Median over every batch of the mean ns per call in the batch.
    pub median_ns: f64,
    /// Median of each round, in measuring order.
    pub round_medians_ns: Vec<f64>,
    /// What the calls returned: "ok", "EPERM", ... (the first error seen,
    /// with how many of the calls failed).
    pub outcome: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SockCost {
    pub rounds: usize,
    pub batches_per_round: usize,
    pub calls_per_batch: usize,
    pub datagram_bytes: usize,
    pub sink_port: u16,
    pub denied_port: u16,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

pub struct Params {
    pub rounds: usize,
    pub batches: usize,
    pub calls: usize,
}

fn sockaddr(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// One batch result: mean ns per call, calls that failed, the last errno.
struct Batch {
    ns_per_call: f64,
    failed: usize,
    errno: i32,
}

/// `batches` batches of `calls` calls of `call` to `peer`, from the calling
/// thread (pinned first).
fn run_batches(call: Call, peer: Ipv4Addr, batches: usize, calls: usize) -> Result<Vec<Batch>> {
    sys::pin_thread(sys::measuring_cpu());
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("UDP socket")?;
    let fd = sock.as_raw_fd();
    let port = match call {
        Call::ConnectAllowed | Call::SendtoAllowed => UDP_SINK_PORT,
        Call::ConnectDenied | Call::SendtoDenied => UDP_DENIED_PORT,
    };
    let sa = sockaddr(peer, port);
    let sa_ptr = (&sa as *const libc::sockaddr_in).cast::<libc::sockaddr>();
    let sa_len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let payload = [0x5au8; DATAGRAM];
    let one = || -> isize {
        match call {
            // SAFETY: valid fd and address.
            Call::ConnectAllowed | Call::ConnectDenied => unsafe {
                libc::connect(fd, sa_ptr, sa_len) as isize
            },
            // SAFETY: valid fd, buffer and address.
            Call::SendtoAllowed | Call::SendtoDenied => unsafe {
                libc::sendto(
                    fd,
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    sa_ptr,
                    sa_len,
                )
            },
        }
    };
    // Warm-up: the first call binds the port, faults pages in, and
    // contain's first decision for the socket.
    for _ in 0..calls.min(200) {
        one();
    }
    let mut out = Vec::with_capacity(batches);
    for _ in 0..batches {
        let mut failed = 0;
        let mut errno = 0;
        let t = Instant::now();
        for _ in 0..calls {
            if one() < 0 {
                failed += 1;
                errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            }
        }
        let elapsed = t.elapsed();
        out.push(Batch {
            ns_per_call: elapsed.as_nanos() as f64 / calls.max(1) as f64,
            failed,
            errno,
        });
    }
    Ok(out)
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        libc::EAGAIN => "EAGAIN".into(),
        e => format!("errno {e}"),
    }
}

/// Measures on the lab's no-filter and contain configurations.
pub fn measure(lab: &Lab, p: &Params) -> Result<SockCost> {
    let started = Instant::now();
    // The sinks, in the peer namespace: bound, never read.
    let sinks = test_kit::lab::in_netns(&lab.peer_ns, move || {
        Ok::<_, anyhow::Error>((
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_SINK_PORT))?,
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_DENIED_PORT))?,
        ))
    })
    .context("binding the UDP sinks in the peer namespace")?;
    let targets: Vec<usize> = lab
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.kind, Kind::None | Kind::Contain))
        .map(|(i, _)| i)
        .collect();
    let n = targets.len();
    // Per (target slot, call): every batch, each round's median, failures.
    let mut samples = vec![vec![Vec::<f64>::new(); CALLS.len()]; n];
    let mut rounds = vec![vec![Vec::<f64>::new(); CALLS.len()]; n];
    let mut failed = vec![vec![(0usize, 0i32); CALLS.len()]; n];
    let mut total = vec![vec![0usize; CALLS.len()]; n];
    for round in 0..p.rounds {
        for i in 0..n {
            let slot = (i + round * 3) % n;
            let t = &lab.targets[targets[slot]];
            lab.enter(Some(t))?;
            for c in 0..CALLS.len() {
                // The calls rotate too, within a configuration.
                let c = (c + round) % CALLS.len();
                let (call, peer, batches, calls) = (CALLS[c], t.peer, p.batches, p.calls);
                let b =
                    test_kit::lab::in_netns(&t.ns, move || run_batches(call, peer, batches, calls))
                        .with_context(|| format!("{} from {}", call.label(), t.name()))?;
                let v: Vec<f64> = b.iter().map(|b| b.ns_per_call).collect();
                rounds[slot][c].push(sys::median(&v));
                samples[slot][c].extend(v);
                for b in &b {
                    failed[slot][c].0 += b.failed;
                    if b.errno != 0 {
                        failed[slot][c].1 = b.errno;
                    }
                }
                total[slot][c] += b.len() * p.calls;
            }
        }
        lab.enter(None)?;
        eprint!(".");
    }
    eprintln!();
    lab.enter(None)?;
    drop(sinks);
    let mut rows = Vec::new();
    for (slot, &ti) in targets.iter().enumerate() {
        let t = &lab.targets[ti];
        for (c, &call) in CALLS.iter().enumerate() {
            let (nfailed, errno) = failed[slot][c];
            let outcome = if nfailed == 0 {
                "ok".to_string()
            } else if nfailed == total[slot][c] {
                errno_name(errno)
            } else {
                format!("{} of {} {}", nfailed, total[slot][c], errno_name(errno))
            };
            rows.push(Row {
                name: t.name(),
                kind: t.kind,
                rules: t.rules,
                call,
                median_ns: sys::median(&samples[slot][c]),
                round_medians_ns: std::mem::take(&mut rounds[slot][c]),
                outcome,
            });
        }
    }
    Ok(SockCost {
        rounds: p.rounds,
        batches_per_round: p.batches,
        calls_per_batch: p.calls,
        datagram_bytes: DATAGRAM,
        sink_port: UDP_SINK_PORT,
        denied_port: UDP_DENIED_PORT,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn signed_ns(v: f64) -> String {
    let sign = if v < 0.0 { "−" } else { "+" };
    format!("{sign}{:.0}", v.abs())
}

/// The report's section: a table of ns per call, each with its difference
/// to no filter (difference of the medians).
pub fn render(md: &mut String, s: &SockCost) {
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Socket calls: `connect()` and `sendto()` per call\n");
    let _ = writeln!(
        md,
        "BPF_PROG_TEST_RUN cannot run `cgroup/connect4` and `cgroup/sendmsg4` programs, so \
         this times the system calls themselves: loops on one UDP socket, from a thread pinned \
         to one CPU in each configuration's namespace and cgroup, {} rounds (configurations \
         and calls in rotating order, so noise is shared) of {} batches of {} calls each. Each \
         cell is the median over the batches of the mean ns per call, and in brackets the \
         difference to no filter. The destinations are the peer's UDP port {} (allowed: \
         every contain list carries this rule, in place of a synthetic one, so a list of N \
         rules is still N rules) and UDP port {} (no rule: denied); both have a bound socket \
         in the peer namespace that is never read, so datagrams are dropped there quietly \
         (no ICMP).\n",
        s.rounds, s.batches_per_round, s.calls_per_batch, s.sink_port, s.denied_port
    );
    let _ = writeln!(
        md,
        "- `connect()` of a UDP socket sends nothing: the hook's decision plus the call. \
         contain allows a datagram `connect()` even to a denied destination (its verdict is \
         enforced on what is sent, with EPERM at the send), so the denied column shows the \
         same decision's cost, not a refusal.\n\
         - `sendto()` to the allowed port includes the send itself and, with contain, the \
         egress program on the datagram; to the denied port contain answers EPERM at the \
         sendmsg4 hook and nothing is sent, while without a filter the datagram goes out, so \
         its difference can be negative.\n"
    );
    let _ = write!(md, "| configuration |");
    for c in CALLS {
        let _ = write!(md, " {} |", c.label());
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---:|".repeat(CALLS.len()));
    let none = |call: Call| {
        s.rows
            .iter()
            .find(|r| r.kind == Kind::None && r.call == call)
            .map(|r| r.median_ns)
    };
    let mut names: Vec<(Kind, usize, String)> = Vec::new();
    for r in &s.rows {
        if !names.iter().any(|n| n.2 == r.name) {
            names.push((r.kind, r.rules, r.name.clone()));
        }
    }
    names.sort();
    for (kind, rules, name) in &names {
        let label = match kind {
            Kind::None => kind.label().to_string(),
            k => format!("{}, {} rules", k.label(), rules),
        };
        let _ = write!(md, "| {label} |");
        for c in CALLS {
            let Some(r) = s.rows.iter().find(|r| &r.name == name && r.call == c) else {
                let _ = write!(md, " — |");
                continue;
            };
            let outcome = if r.outcome == "ok" {
                String::new()
            } else {
                format!(", {}", r.outcome)
            };
            match none(c) {
                Some(base) if *kind != Kind::None => {
                    let _ = write!(
                        md,
                        " {:.0} ns ({}{}) |",
                        r.median_ns,
                        signed_ns(r.median_ns - base),
                        outcome
                    );
                }
                _ if r.outcome == "ok" => {
                    let _ = write!(md, " {:.0} ns |", r.median_ns);
                }
                _ => {
                    let _ = write!(md, " {:.0} ns ({}) |", r.median_ns, r.outcome);
                }
            }
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);
}
