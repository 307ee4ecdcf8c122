//! `policyd daemon`: serves the CLI, watches the policy file, SIGHUP and
//! the resolver, and keeps the loader converged.
//!
//! One task ([`engine`]) owns the state and makes every change, planned by
//! the pure [`plan`]; the feeds only decide *when*, and the readers
//! ([`view`]) answer from what it last published.

pub mod engine;
pub mod feeds;
pub mod links;
pub mod observe;
pub mod plan;
pub mod server;
pub mod view;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::StreamExt;
use proto::{policyd::Policyd, transport};
use tarpc::server::Channel;

use crate::metrics;

/// Where the daemon's inventory comes from.
#[derive(Clone, Debug)]
pub enum InventorySource {
    /// The resolver service (the normal case).
    Resolver(PathBuf),
    /// A JSON file holding an [`crate::inventory::Inventory`], re-read when
    /// it changes: for tests and hosts without the resolver.
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub policy: PathBuf,
    pub socket: PathBuf,
    pub loader_socket: PathBuf,
    pub inventory: InventorySource,
    /// Group admitted to the socket besides root.
    pub group: String,
    /// How often the inventory file is checked for changes.
    pub file_poll: Duration,
    /// How often the policy file is checked for changes, which are then
    /// applied as `reload` would; `None`: only `reload` and SIGHUP apply
    /// an edited file.
    pub policy_watch: Option<Duration>,
    /// How often the loader's state is re-read to repair drift (a loader
    /// restart, someone else's writes).
    pub resync_every: Duration,
    /// Where `/metrics` is served (plain HTTP); `None`: not at all.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the deny and audit events are written, one JSON line each.
    pub event_log: observe::EventLogTarget,
}

/// Runs the daemon until the socket fails or a fatal error occurs.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let recorder = Arc::new(metrics::Recorder::default());
    let (engine, engine_task) = engine::spawn(&config, recorder.clone());

    let (gid, peer_policy, mode) = match nix::unistd::Group::from_name(&config.group) {
        Ok(Some(group)) => {
            let gid = group.gid.as_raw();
            (Some(gid), transport::PeerPolicy::RootOrGroup(gid), 0o660)
        }
        _ => {
            tracing::warn!(group = %config.group, "group not found; the socket is for root only");
            (None, transport::PeerPolicy::RootOnly, 0o600)
        }
    };
    let listener = transport::bind(&config.socket, mode, gid)
        .with_context(|| format!("cannot listen on {}", config.socket.display()))?;
    tracing::info!(socket = %config.socket.display(), policy = %config.policy.display(), "policyd listening");

    // First load, before serving: an invalid file is reported and the
    // loader left as is.
    match engine.reload(false, None).await {
        Ok(report) => tracing::info!(
            ops = report.ops.len(),
            applied = report.applied,
            "initial policy loaded"
        ),
        Err(err) => tracing::error!(error = %err, "initial policy not applied"),
    }

    if let Some(addr) = config.metrics_listen {
        // A busy port must not keep the policy from being enforced: say
        // so and go on without metrics (a scraper then sees it down).
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(address = %addr, "serving metrics at /metrics");
                tokio::spawn(observe::serve_metrics(
                    listener,
                    engine.clone(),
                    recorder.clone(),
                ));
            }
            Err(e) => tracing::error!(
                address = %addr,
                error = %e,
                "cannot serve metrics there; choose another address with --metrics-listen, or turn them off with --metrics-listen off"
            ),
        }
    }
    tokio::spawn(observe::follow_events(
        engine.clone(),
        recorder,
        config.event_log.clone(),
    ));
    if let Some(every) = config.policy_watch {
        tokio::spawn(feeds::watch_policy_file(
            engine.clone(),
            config.policy.clone(),
            every,
        ));
    }
    tokio::spawn(feeds::on_sighup(engine.clone()));
    tokio::spawn(feeds::resync(engine.clone(), config.resync_every));
    match &config.inventory {
        InventorySource::Resolver(path) => {
            tokio::spawn(feeds::follow_resolver(engine.clone(), path.clone()));
            tokio::spawn(feeds::inventory_grace(
                engine.clone(),
                engine::INVENTORY_GRACE,
            ));
        }
        InventorySource::File(path) => {
            tokio::spawn(feeds::watch_inventory_file(
                engine.clone(),
                path.clone(),
                config.file_poll,
            ));
        }
    }

    // Reloads queue at the engine; status and explain run beside it, so a
    // uid's requests in flight are capped across all its connections.
    let mut requests = transport::RequestsPerUid::default();
    let serve = transport::serve(
        listener,
        peer_policy,
        transport::Service::Policyd,
        move |channel, peer| {
            tracing::debug!(uid = peer.uid, pid = ?peer.pid, "client connected");
            let server = server::PolicydServer {
                engine: engine.clone(),
            };
            let permits = requests.permits(peer.uid);
            channel
                .execute(server.serve())
                .for_each(move |request| transport::spawn_request_within(permits.clone(), request))
        },
    );
    // Without its engine policyd would answer from a state that no longer
    // changes: end, and let the service manager start it afresh.
    tokio::select! {
        served = serve => served.context("accepting connections failed"),
        ended = engine_task => Err(anyhow::anyhow!(
            "the policy engine stopped ({}); policyd exits so that it is restarted",
            ended.err().map_or_else(|| "its commands ended".to_string(), |e| e.to_string())
        )),
    }
}
