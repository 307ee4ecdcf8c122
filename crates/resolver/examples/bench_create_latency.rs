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
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use containerd_client::services::v1::{events_client::EventsClient, SubscribeRequest};
use proto::resolver::{ChangeKind, ResolverClient, WatchReply};
use resolver::{Config, Daemon};

const IMAGE: &str = "docker.io/contain-test/busybox:latest";

struct Bench {
    base: PathBuf,
    socket: PathBuf,
    cgroup_parent: String,
    containerd: Option<Child>,
    had_run_containerd: bool,
}

fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Bench {
    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec![
            "--address",
            self.socket.to_str().unwrap_or_default(),
            "-n",
            "default",
        ];
        all.extend_from_slice(args);
        sh("ctr", &all)
    }

    fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
        let _ = self.ctr(&["task", "rm", "-f", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Ok(out) = self.ctr(&["container", "ls", "-q"]) {
            for id in out.lines() {
                self.remove(id.trim());
            }
        }
        if let Some(mut c) = self.containerd.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let Some(sep) = f.iter().position(|x| *x == "-") {
                if matches!(f.get(sep + 1), Some(&"cgroup") | Some(&"cgroup2")) {
                    let _ = std::fs::remove_dir(Path::new(f[4]).join(&self.cgroup_parent));
                }
                if f[4].starts_with(&self.base.display().to_string()) {
                    let _ = Command::new("umount").args(["-l", f[4]]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
        if !self.had_run_containerd {
            remove_empty_dirs(Path::new("/run/containerd"));
        }
    }
}

/// Removes the empty directories of a tree, deepest first; nothing else.
fn remove_empty_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let prepare = repo.join("tests/containerd/prepare.sh");
    sh(prepare.to_str().unwrap_or_default(), &["packages"])?;

    let base = PathBuf::from(format!("/var/lib/contain-bench-{pid}"));
    std::fs::create_dir_all(base.join("state"))?;
    let socket = base.join("state/containerd.sock");
    let mut bench = Bench {
        base: base.clone(),
        socket: socket.clone(),
        cgroup_parent: format!("contain-bench-{pid}"),
        containerd: None,
        had_run_containerd: Path::new("/run/containerd").exists(),
    };
    std::fs::write(
        base.join("config.toml"),
        format!(
            "version = 2\nroot = \"{b}/root\"\nstate = \"{b}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n[debug]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{b}/opt\"\n",
            b = base.display(),
            s = socket.display()
        ),
    )?;
    bench.containerd = Some(
        Command::new("containerd")
            .args([
                "--config",
                base.join("config.toml").to_str().unwrap_or_default(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sh(
        "ctr",
        &["--address", socket.to_str().unwrap_or_default(), "version"],
    )
    .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let tarball = base.join("busybox.tar");
    sh(
        prepare.to_str().unwrap_or_default(),
        &["image", tarball.to_str().unwrap_or_default()],
    )?;
    bench.ctr(&["images", "import", tarball.to_str().unwrap_or_default()])?;

    // The resolver, in-process, serving on a private socket.
    let resolver_socket = base.join("resolver.sock");
    let mut config = Config::new(&resolver_socket);
    config.containerd_socket = Some(socket.clone());
    config.docker_socket = base.join("no-docker.sock");
    config.docker_root = base.join("no-docker");
    let daemon = Daemon::start(config).await?;
    let stream = proto::transport::connect(&resolver_socket).await?;
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
        let cgroup = format!("/{}/{id}", bench.cgroup_parent);
        let ctr_socket = socket.clone();
        let id2 = id.clone();
        let run = tokio::task::spawn_blocking(move || {
            sh(
                "ctr",
                &[
                    "--address",
                    ctr_socket.to_str().unwrap_or_default(),
                    "-n",
                    "default",
                    "run",
                    "-d",
                    "--cgroup",
                    &cgroup,
                    IMAGE,
                    &id2,
                    "sleep",
                    "600",
                ],
            )
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
        bench.remove(&id);
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
    drop(bench);
    Ok(())
}
