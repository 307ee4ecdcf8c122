//! Benchmark: time from containerd's task-create event to the resolver's
//! inventory update, as a client of the resolver sees it.
//!
//! ```text
//! sudo cargo run --release -p resolver --example bench_create_latency -- [N]
//! ```
//!
//! Starts a private containerd (socket and root under
//! `/var/lib/contain-bench-<pid>`, containers in cgroup
//! `/contain-bench-<pid>/...`), imports the busybox-static image built by
//! `tests/containerd/prepare.sh`, runs the resolver in-process, and then
//! N times (default 30): `ctr run -d` a container, and measures
//!
//! * event → client: containerd's timestamp on the `/tasks/create` envelope
//!   to the moment a resolver client's long-poll `watch` returns the
//!   container (same host clock), and
//! * seen → client: this program's own receipt of that event (a second
//!   subscriber, like the resolver) to the same moment — what is left when
//!   containerd's own event delivery is taken out.
//!
//! Each container is removed before the next starts. Needs root.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_client::services::v1::{events_client::EventsClient, SubscribeRequest};
use proto::resolver::{ChangeKind, ResolverClient, WatchReply};
use resolver::{Config, Daemon};
use test_kit::containerd::{now_ns, Containerd};

fn stats(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<16} n={:<3} min {:>7.2} ms  median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms",
        v.len(),
        v[0],
        p(0.5),
        p(0.9),
        v[v.len() - 1]
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root (runs a private containerd)"
    );
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(30);
    let pid = std::process::id();
    let base = PathBuf::from(format!("/var/lib/contain-bench-{pid}"));
    // Shared with the blocking task that runs each `ctr run`.
    let containerd = Arc::new(Containerd::start(
        &base,
        &format!("contain-bench-{pid}"),
        &["default"],
    )?);
    let socket = containerd.socket().to_path_buf();

    // The resolver, in-process, serving on a private socket.
    let resolver_socket = base.join("resolver.sock");
    let mut config = Config::new(&resolver_socket);
    config.containerd_socket = Some(socket.clone());
    config.docker_socket = base.join("no-docker.sock");
    config.docker_root = base.join("no-docker");
    let daemon = Daemon::start(config).await?;
    let stream = proto::transport::connect(
        &resolver_socket,
        &proto::transport::ServerIs::root_or([nix::unistd::geteuid().as_raw()]),
    )
    .await?;
    let client = ResolverClient::new(
        tarpc::client::Config::default(),
        proto::transport::client(stream, proto::transport::Service::Resolver),
    )
    .spawn();
    // Wait until the resolver follows containerd.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.status(tarpc::context::current()).await?;
        if status
            .sources
            .iter()
            .any(|s| s.name.starts_with("containerd:") && s.connected)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "resolver did not connect to containerd: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Our own subscription, for the task-create envelopes.
    let channel = containerd_client::connect(&socket).await?;
    // containerd sends the stream's headers with the first event only, so
    // the subscription runs in its own task.
    let (env_tx, mut env_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = EventsClient::new(channel);
        let request = SubscribeRequest {
            filters: vec![r#"topic=="/tasks/create""#.to_string()],
        };
        let Ok(resp) = events.subscribe(request).await else {
            return;
        };
        let mut s = resp.into_inner();
        while let Ok(Some(env)) = s.message().await {
            let _ = env_tx.send((env, now_ns()));
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut at = client.list(tarpc::context::current()).await?.generation;
    let mut from_event = Vec::new();
    let mut from_seen = Vec::new();
    let mut warmup = true;
    let mut i = 0;
    while from_event.len() < n {
        let id = format!("bench{pid}-{i}");
        i += 1;
        let run = tokio::task::spawn_blocking({
            let (containerd, id) = (Arc::clone(&containerd), id.clone());
            move || containerd.run_container("default", &id, &[], &[])
        });
        // The resolver's client: long-poll until the container is added.
        let mut seen_at = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen_at.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "container {id} never appeared in the inventory"
            );
            let reply = client
                .watch(proto::transport::context_with_deadline(40), at, 5_000)
                .await?;
            let t = now_ns();
            match &reply {
                WatchReply::Changes { changes, .. } => {
                    for ch in changes {
                        if let ChangeKind::Added { container } = &ch.kind {
                            if container.id == id {
                                seen_at = Some(t);
                            }
                        }
                    }
                }
                WatchReply::Resync { .. } => anyhow::bail!("unexpected resync"),
            }
            at = match reply {
                WatchReply::Changes { generation, .. } => generation,
                WatchReply::Resync { snapshot, .. } => snapshot.generation,
            };
        }
        run.await??;
        let client_ns = seen_at.unwrap_or_default();
        let (env, received_ns) = loop {
            let (env, t) = tokio::time::timeout(Duration::from_secs(10), env_rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("event subscription ended"))?;
            let payload = env.event.clone().unwrap_or_default();
            let create: containerd_client::events::TaskCreate =
                prost::Message::decode(payload.value.as_slice()).unwrap_or_default();
            if create.container_id == id {
                break (env, t);
            }
        };
        let ts = env.timestamp.unwrap_or_default();
        let event_ns = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
        containerd.remove_container("default", &id);
        if warmup {
            warmup = false;
            continue;
        }
        from_event.push((client_ns - event_ns) as f64 / 1e6);
        from_seen.push((client_ns - received_ns) as f64 / 1e6);
    }
    println!(
        "task-create event → resolver client sees the container ({} containers, after 1 warm-up):",
        from_event.len()
    );
    stats("event → client", from_event);
    stats("seen → client", from_seen);
    daemon.shutdown().await;
    drop(containerd);
    Ok(())
}
