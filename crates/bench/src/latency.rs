//! Added latency: ICMP echo (what ping does, over a ping socket, timed
//! with a nanosecond clock instead of ping's microsecond printout) and a
//! TCP request/response loop (64 bytes each way, one connection per batch,
//! TCP_NODELAY), back to back, from each configuration's namespace and
//! cgroup to the peer. The measuring threads (and the server's) are pinned
//! to one CPU, so every round trip is a same-CPU one. Configurations go round-robin, several rounds, so a
//! noisy machine slows them all alike.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    lab::{Kind, Lab, RR_PORT},
    sys,
};

const PAYLOAD: usize = 64;
const WARMUP: usize = 10;

/// Serves the request/response loop until `stop`.
pub fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                std::thread::spawn(move || echo(conn));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn echo(mut conn: TcpStream) {
    sys::pin_thread(sys::measuring_cpu());
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; PAYLOAD];
    while conn.read_exact(&mut buf).is_ok() {
        if conn.write_all(&buf).is_err() {
            return;
        }
    }
}

/// A connection to the request/response server at `dst`, as the loops
/// use it: no Nagle delay, and a stuck peer fails the batch.
pub fn rr_connection(dst: Ipv4Addr) -> Result<TcpStream> {
    let addr = SocketAddr::from((dst, RR_PORT));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Round trips of `count` TCP request/responses, µs.
pub fn rr_batch(dst: Ipv4Addr, count: usize, budget: Duration) -> Result<Vec<f64>> {
    sys::pin_thread(sys::measuring_cpu());
    let mut s = rr_connection(dst)?;
    let req = [0x5au8; PAYLOAD];
    let mut resp = [0u8; PAYLOAD];
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count + WARMUP {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        let rtt = t.elapsed();
        if i >= WARMUP {
            samples.push(rtt.as_nanos() as f64 / 1000.0);
        }
        if started.elapsed() > budget && samples.len() >= 10 {
            break;
        }
    }
    Ok(samples)
}

/// Round trips of `count` ICMP echo requests, µs (ping socket: the kernel
/// fills in the identifier and the checksum).
pub fn ping_batch(dst: Ipv4Addr, count: usize, budget: Duration) -> Result<Vec<f64>> {
    sys::pin_thread(sys::measuring_cpu());
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
    if fd < 0 {
        bail!("ping socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid fd and option buffer.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let mut samples = Vec::with_capacity(count);
    let mut lost = 0;
    let started = Instant::now();
    let mut packet = [0u8; 8 + 56];
    let mut reply = [0u8; 8 + 56 + 64];
    for seq in 0..(count + WARMUP) as u16 {
        packet[0] = 8; // echo request
        packet[6..8].copy_from_slice(&seq.to_be_bytes());
        let t = Instant::now();
        // SAFETY: valid fd, buffer and address.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if sent < 0 {
            bail!("ping {dst}: {}", std::io::Error::last_os_error());
        }
        loop {
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
            if n < 0 {
                lost += 1;
                break;
            }
            if n >= 8 && reply[0] == 0 && reply[6..8] == seq.to_be_bytes() {
                if seq as usize >= WARMUP {
                    samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
                }
                break;
            }
        }
        if lost > 3 {
            bail!("ping {dst}: no replies");
        }
        if started.elapsed() > budget && samples.len() >= 10 {
            break;
        }
    }
    Ok(samples)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub n: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub p1_us: f64,
    pub p90_us: f64,
    pub max_us: f64,
    /// Median of each round, in measuring order.
    pub round_medians_us: Vec<f64>,
}

impl Stats {
    fn of(samples: &[f64], round_medians: Vec<f64>) -> Stats {
        Stats {
            n: samples.len(),
            median_us: sys::median(samples),
            p99_us: sys::quantile(samples, 0.99),
            mean_us: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
            p1_us: sys::quantile(samples, 0.01),
            p90_us: sys::quantile(samples, 0.90),
            max_us: sys::quantile(samples, 1.0),
            round_medians_us: round_medians,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub kind: Kind,
    pub rules: usize,
    pub ping: Stats,
    pub tcp_rr: Stats,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub rounds: usize,
    pub per_round: usize,
    pub payload_bytes: usize,
    pub rows: Vec<Row>,
    pub nft_load_s: BTreeMap<String, f64>,
    pub seconds: f64,
}

pub struct Params {
    pub rounds: usize,
    pub per_round: usize,
    pub budget: Duration,
}

pub fn measure(lab: &Lab, p: &Params) -> Result<Latency> {
    let started = Instant::now();
    let n = lab.targets.len();
    let mut ping: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut rr: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut ping_rounds: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut rr_rounds: Vec<Vec<f64>> = vec![Vec::new(); n];
    // Warm-up: every path once (first-packet decisions, page faults).
    for t in &lab.targets {
        lab.enter(Some(t))?;
        let peer = t.peer;
        test_kit::lab::in_netns(&t.ns, move || ping_batch(peer, 5, Duration::from_secs(5)))
            .with_context(|| format!("ping from {}", t.name()))?;
        test_kit::lab::in_netns(&t.ns, move || rr_batch(peer, 5, Duration::from_secs(5)))
            .with_context(|| format!("TCP from {}", t.name()))?;
    }
    for round in 0..p.rounds {
        for i in 0..n {
            let idx = (i + round * 7) % n;
            let t = &lab.targets[idx];
            lab.enter(Some(t))?;
            let (peer, count, budget) = (t.peer, p.per_round, p.budget);
            let s = test_kit::lab::in_netns(&t.ns, move || ping_batch(peer, count, budget))
                .with_context(|| format!("ping from {}", t.name()))?;
            ping_rounds[idx].push(sys::median(&s));
            ping[idx].extend(s);
            let s = test_kit::lab::in_netns(&t.ns, move || rr_batch(peer, count, budget))
                .with_context(|| format!("TCP from {}", t.name()))?;
            rr_rounds[idx].push(sys::median(&s));
            rr[idx].extend(s);
        }
        lab.enter(None)?;
        eprint!(".");
    }
    eprintln!();
    lab.enter(None)?;
    let rows = lab
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| Row {
            name: t.name(),
            kind: t.kind,
            rules: t.rules,
            ping: Stats::of(&ping[i], std::mem::take(&mut ping_rounds[i])),
            tcp_rr: Stats::of(&rr[i], std::mem::take(&mut rr_rounds[i])),
        })
        .collect();
    Ok(Latency {
        rounds: p.rounds,
        per_round: p.per_round,
        payload_bytes: PAYLOAD,
        rows,
        nft_load_s: lab.nft_load_s.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
