//! `resolver`: contain's container inventory daemon.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use resolver::{Config, Daemon};

/// Maps host veths, network namespaces, processes and cgroup v2 ids to
/// Docker and containerd containers, and serves the inventory over tarpc.
#[derive(Debug, Parser)]
#[command(name = "resolver", version)]
struct Args {
    /// Unix socket to serve on (mode 0660 with group `contain` if it exists,
    /// else 0600); root and policyd's user `contain` only.
    #[arg(long, default_value = proto::paths::RESOLVER_SOCKET)]
    socket: PathBuf,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// Run without containerd (only useful for debugging the link side).
    #[arg(long)]
    no_containerd: bool,
    /// containerd namespace to follow, besides moby (Docker), default and
    /// k8s.io. Repeatable.
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// The cgroup2 mount point (default: found in /proc/self/mountinfo,
    /// e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Docker's API socket, for Docker's container names and labels.
    #[arg(long, default_value = "/var/run/docker.sock")]
    docker_socket: PathBuf,
    /// Docker's data root (config.v2.json, used when the API does not answer).
    #[arg(long, default_value = "/var/lib/docker")]
    docker_root: PathBuf,
    /// Seconds between full rescans (and containerd re-listings), on top of
    /// the event-driven updates.
    #[arg(long, default_value_t = 30)]
    rescan_secs: u64,
    /// Log format: text or json (one object per line, for journald/Loki).
    #[arg(long, default_value = "text")]
    log_format: proto::runtime::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    proto::runtime::init_tracing(args.log_format);
    let mut config = Config::new(&args.socket);
    config.containerd_socket = (!args.no_containerd).then(|| args.containerd_socket.clone());
    config.namespaces.extend(args.namespaces.iter().cloned());
    config.cgroup_root = args.cgroup_root.clone();
    config.docker_socket = args.docker_socket.clone();
    config.docker_root = args.docker_root.clone();
    config.rescan = Duration::from_secs(args.rescan_secs.max(1));

    let daemon = Daemon::start(config)
        .await
        .context("starting the resolver")?;
    proto::runtime::shutdown_signal().await;
    tracing::info!("shutting down");
    daemon.shutdown().await;
    Ok(())
}
