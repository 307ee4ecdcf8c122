//! `bpf-loader`: the root-only daemon that owns contain's kernel objects.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::maps::{MapData, RingBuf};
use bpf_loader::{
    events::{self, EventLog},
    kernel::{Kernel, Limits},
    revoke::{self, RevokedFlow},
    service::LoaderServer,
};
use clap::Parser;
use futures::StreamExt as _;
use proto::{
    loader::Loader as _,
    transport::{bind, serve, spawn_request, PeerPolicy, Service},
};
use tarpc::server::Channel as _;
use tokio::io::unix::AsyncFd;

#[derive(Parser, Debug)]
#[command(
    name = "bpf-loader",
    version,
    about = "contain's BPF loader: programs, links, maps, events (root only)"
)]
struct Args {
    /// Unix socket to serve on (mode 0600, root peers only).
    #[arg(long, default_value = proto::paths::LOADER_SOCKET)]
    socket: PathBuf,
    /// bpffs directory for contain's pins; its parent must be (or become) a bpffs mount.
    #[arg(long, default_value = "/sys/fs/bpf/contain")]
    pin_dir: PathBuf,
    /// Cgroup to attach to with BPF_F_ALLOW_MULTI (absolute, or relative to
    /// the cgroup2 mount); created if missing. Repeatable.
    #[arg(long = "attach-parent")]
    attach_parents: Vec<String>,
    /// Also admit this (non-root) user on the socket: policyd's service
    /// user. The socket becomes 0660 with that user's primary group, and the
    /// peer-credential check admits exactly root and that uid.
    #[arg(long)]
    client_user: Option<String>,
    /// Log format: json (one object per line, for journald/Loki) or text.
    #[arg(long, default_value = "json")]
    log_format: proto::runtime::LogFormat,
    /// Seconds a UDP socket of a filtered container may answer a peer that
    /// sent to it first, after the peer's last datagram (conntrack's UDP
    /// timeout is 30).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    udp_reply_timeout_secs: u64,
    /// Deny/audit events one cgroup may report per second; the rest are
    /// counted and the count reported with its next event.
    #[arg(long, default_value_t = contain_common::DEFAULT_EVENTS_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..))]
    events_per_second: u32,
    /// Seconds a veth that appears holds the frames no socket sent (what a
    /// new container's namespace forwards) to the unknown-container verdict
    /// while no container owns it; 0: not at all (another tool's veths
    /// then forward from their first frame, and so may a new container's
    /// namespace until policyd names it).
    #[arg(long, default_value_t = contain_common::DEFAULT_NEW_VETH_HOLD_SECS)]
    new_veth_hold_secs: u64,
    /// Only check that contain's cgroup programs are attached to this
    /// cgroup (a path) and exit: 0 if every one is, 1 naming those that
    /// are not. A container runtime's unit runs it before starting, so
    /// that containers never start unfiltered.
    #[arg(long, value_name = "CGROUP")]
    check_attached: Option<PathBuf>,
}

// One thread: map updates are serialised anyway, and a single malloc arena
// keeps the resident set small (see `release_memory`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    proto::runtime::init_tracing(args.log_format);
    if !nix::unistd::geteuid().is_root() {
        bail!("bpf-loader must run as root (it loads BPF programs and attaches them to cgroups)");
    }
    if let Some(cgroup) = &args.check_attached {
        return check_attached(cgroup);
    }

    let (mut kernel, rings) =
        Kernel::load(&args.pin_dir).context("loading contain's eBPF object")?;
    kernel
        .set_limits(&Limits {
            udp_reply_timeout: Duration::from_secs(args.udp_reply_timeout_secs),
            events_per_second: args.events_per_second,
            new_veth_hold: Duration::from_secs(args.new_veth_hold_secs),
        })
        .context("setting the kernel's limits")?;
    kernel
        .attach_tracepoints()
        .context("attaching the exec/newtask/exit tracepoints")?;
    for adopted in kernel
        .adopt()
        .context("adopting the links of a previous loader")?
    {
        tracing::info!(cgroup = %adopted.cgroup, cgroup_id = adopted.cgroup_id, "re-attached to cgroup");
    }
    for parent in &args.attach_parents {
        let cgroup_root = bpf_loader::fs::cgroup2_mount()?;
        let path = bpf_loader::fs::resolve_cgroup(&cgroup_root, parent)?;
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        let attachment = kernel
            .attach(parent)
            .with_context(|| format!("attaching to cgroup {parent}"))?;
        tracing::info!(cgroup = %attachment.cgroup, cgroup_id = attachment.cgroup_id, "attached to cgroup");
    }
    kernel
        .prune_attached_cgroups()
        .context("recording the cgroups the programs are attached to")?;
    let kernel = Arc::new(Mutex::new(kernel));
    // Every veth gets the backstop before the socket is served: a client
    // that sees the loader ready sees every existing veth covered.
    bpf_loader::veths::attach_all(&kernel, bpf_loader::veths::Found::AtStart).await;
    tokio::spawn(bpf_loader::veths::follow(kernel.clone()));
    tokio::spawn(bpf_loader::veths::keep_first(kernel.clone()));
    let event_log = EventLog::new();
    for ring in [rings.events, rings.revoked_flows] {
        tokio::spawn(drain_events(ring, kernel.clone(), event_log.clone()));
    }

    let (mode, group, peers) = match &args.client_user {
        None => (0o600, None, PeerPolicy::RootOnly),
        Some(name) => {
            let user = nix::unistd::User::from_name(name)
                .with_context(|| format!("looking up --client-user {name}"))?
                .with_context(|| format!("--client-user {name}: no such user"))?;
            (
                0o660,
                Some(user.gid.as_raw()),
                PeerPolicy::RootOrUser(user.uid.as_raw()),
            )
        }
    };
    let listener = bind(&args.socket, mode, group)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    // Ready for systemd (Type=notify): the programs are attached to the
    // managed parent and the socket takes requests, so Docker and
    // containerd, ordered after this unit, start with enforcement in place.
    // A socket file alone would say so too early: one left by a predecessor,
    // or made by anyone who may write the runtime directory.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the loader is ready");
    }
    {
        let kernel_guard = Kernel::lock(&kernel);
        tracing::info!(
            generation = kernel_guard.generation(),
            entries = kernel_guard.state().entry_count(),
            pin_dir = %kernel_guard.pin_dir().display(),
            veths = kernel_guard.attached_veths().len(),
            tcx = bpf_loader::veths::uses_tcx(),
            "bpf-loader ready"
        );
    }
    let server = LoaderServer {
        kernel,
        events: event_log,
    };
    let serve = serve(listener, peers, Service::Loader, move |channel, _peer| {
        channel
            .execute(server.clone().serve())
            .for_each(spawn_request)
    });
    tokio::select! {
        result = serve => result.context("serving the loader socket")?,
        _ = proto::runtime::shutdown_signal() => tracing::info!("shutting down; programs and maps stay pinned and enforcing"),
    }
    Ok(())
}

/// Moves events from a kernel ring buffer to the log and the buffer,
/// aborting the sockets of revoked flows on the way.
async fn drain_events(ring: RingBuf<MapData>, kernel: Arc<Mutex<Kernel>>, log: Arc<EventLog>) {
    // SAFETY: the ring buffer owns its map fd, which stays open and valid
    // for as long as the AsyncFd (which owns the ring buffer) lives.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the event ring buffer; events will not be reported");
            return;
        }
    };
    let offset = events::monotonic_to_wall_offset_ns();
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(error = %e, "event ring buffer failed; events will not be reported");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut drained = 0;
        let mut emptied = true;
        while let Some(item) = ring.next() {
            let decoded = {
                let kernel = Kernel::lock(&kernel);
                events::decode(&item, offset, |hash| kernel.exe_path(hash))
            };
            match decoded {
                Some(event) => {
                    if event.revoked_flow {
                        abort_revoked(&event, kernel.clone());
                    }
                    // policyd writes the log line: it knows the container's
                    // name and image, and the policy's name.
                    log.push(event);
                }
                None => tracing::warn!(len = item.len(), "skipping an undecodable event record"),
            }
            drained += 1;
            if drained == DRAIN_BATCH {
                emptied = false;
                break;
            }
        }
        if emptied {
            guard.clear_ready();
        } else {
            // The other ring and the socket get their turn on this one
            // thread, however fast this ring fills.
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}

/// Records drained from one ring before the runtime's other tasks run.
const DRAIN_BATCH: usize = 256;

/// Aborts the socket of a revoked TCP flow, off the runtime thread; if that
/// fails the flow stays dropped, only the sender is not told at once. The
/// socket's cgroup is below one of those `kernel`'s programs are attached
/// to, looked up only when its creator's namespace does not have it.
fn abort_revoked(event: &proto::loader::Event, kernel: Arc<Mutex<Kernel>>) {
    let flow = RevokedFlow {
        tgid: event.tgid,
        cgroup_id: event.cgroup_id,
        src: event.src,
        dst: event.dst,
        src_port: event.src_port,
        dst_port: event.dst_port,
        socket_cookie: event.socket_cookie,
    };
    let cgroup_roots = move || {
        Kernel::lock(&kernel)
            .attachments()
            .into_iter()
            .map(|a| PathBuf::from(a.cgroup))
            .collect()
    };
    tokio::task::spawn_blocking(move || match revoke::abort(&flow, cgroup_roots) {
        Ok(pid) => tracing::info!(
            ?flow,
            from_namespace_of = pid,
            "aborted the socket of a revoked flow"
        ),
        Err(e) => {
            tracing::warn!(?flow, error = %e, "could not abort the socket of a revoked flow; its packets stay dropped")
        }
    });
}

/// `--check-attached`: exits 1 (with the reason on stderr) unless every
/// cgroup program of contain is attached to `cgroup`.
fn check_attached(cgroup: &std::path::Path) -> anyhow::Result<()> {
    let missing = bpf_loader::attached::missing_cgroup_programs(cgroup).with_context(|| {
        format!(
            "checking contain's programs on {}: containers started now could run unfiltered; \
             start contain-bpf-loader (journalctl -u contain-bpf-loader says why it is not)",
            cgroup.display()
        )
    })?;
    if missing.is_empty() {
        println!("contain's programs are attached to {}", cgroup.display());
        return Ok(());
    }
    eprintln!(
        "contain's programs are not attached to {} (missing: {}): containers started now \
         would run unfiltered. Start contain-bpf-loader (journalctl -u contain-bpf-loader says \
         why it is not running), then this unit again; to run containers without contain, \
         remove contain's drop-in from this unit (systemctl cat shows it).",
        cgroup.display(),
        missing.join(", ")
    );
    std::process::exit(1);
}
