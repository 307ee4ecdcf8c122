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
    /// else 0600; root and that group only).
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
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
    shutdown_signal().await;
    tracing::info!("shutting down");
    daemon.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
