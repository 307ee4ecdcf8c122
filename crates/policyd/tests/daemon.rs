//! The daemon end to end over real Unix sockets: an in-memory loader that keeps
//! the maps in memory with the real generation semantics, an inventory
//! file, and the policyd client. No BPF; one test runs the CLI as another
//! user (root only), to check the socket's peer credentials.

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use kernel_model::state::{FileId, KernelState, Verdict};
use policyd::{
    daemon::{self, Config, InventorySource},
    inventory::{Container, Inventory},
};
use proto::{
    policyd::{ExplainQuery, PolicydClient, PolicydError},
    resolver::ExeFile,
    transport,
};
use tarpc::context::Context;
use test_kit::memory_loader::MemoryLoader;

/// The file /usr/bin/curl names in the curler containers.
const CURL: FileId = FileId {
    dev: 52,
    ino: 1311,
    ctime_sec: 1_729_000_000,
    ctime_nsec: 0,
};

/// The cgroup the loader's programs are attached to in these tests.
const MANAGED_PARENT: &str = "/contain.slice";

struct Env {
    dir: PathBuf,
    loader: MemoryLoader,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("policyd-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            dir,
            loader: MemoryLoader::default(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// Serves the in-memory loader, attached (as the deployment is) to
    /// the managed parent `/contain.slice`.
    fn serve_loader(&self) {
        self.loader.attach_cgroup(MANAGED_PARENT);
        self.loader.serve(&self.path("loader.sock")).unwrap();
    }
    fn write(&self, name: &str, text: &str) {
        // Replace atomically, as editors and ConfigMaps do.
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }
    /// Containers under the managed parent, by name and cgroup id.
    fn write_inventory(&self, names: &[(&str, u64)]) {
        let placed: Vec<(&str, u64, String)> = names
            .iter()
            .map(|&(name, cgroup)| {
                (
                    name,
                    cgroup,
                    format!("{MANAGED_PARENT}/docker-{name}-0123456789.scope"),
                )
            })
            .collect();
        self.write_inventory_placed(&placed);
    }
    /// Containers by name, cgroup id and cgroup path. An inventory file
    /// says what `exe` paths name in the containers (the resolver does,
    /// when there is one): curler's /usr/bin/curl is [`CURL`].
    fn write_inventory_placed(&self, containers: &[(&str, u64, String)]) {
        let inventory = Inventory {
            containers: containers
                .iter()
                .map(|(name, cgroup, path)| Container {
                    id: format!("{name}-0123456789"),
                    name: name.to_string(),
                    image: "alpine:3.20".into(),
                    namespace: "moby".into(),
                    runtime: "docker".into(),
                    cgroup_id: Some(*cgroup),
                    cgroup_path: Some(path.clone()),
                    exes: if *name == "curler" {
                        [(
                            "/usr/bin/curl".to_string(),
                            Ok(ExeFile {
                                file: CURL,
                                ..ExeFile::default()
                            }),
                        )]
                        .into()
                    } else {
                        Default::default()
                    },
                    ..Container::default()
                })
                .collect(),
        };
        self.write(
            "inventory.json",
            &serde_json::to_string(&inventory).unwrap(),
        );
    }
    /// A daemon on `policy`, the inventory file and the loader here,
    /// checking the files every 50 ms.
    fn config(&self, policy: &str) -> Config {
        Config {
            policy: self.path(policy),
            socket: self.path("policyd.sock"),
            loader_socket: self.path("loader.sock"),
            inventory: InventorySource::File(self.path("inventory.json")),
            group: "root".into(),
            file_poll: Duration::from_millis(50),
            policy_watch: Some(Duration::from_millis(50)),
            resync_every: Duration::from_secs(3600),
            metrics_listen: None,
            event_log: policyd::daemon::observe::EventLogTarget::Off,
        }
    }
    fn start_daemon(&self, policy: &str) -> tokio::runtime::Runtime {
        self.start(self.config(policy))
    }
    /// Runs a daemon on its own runtime, so dropping it stops every task
    /// it started (as a process exit would).
    fn start(&self, config: Config) -> tokio::runtime::Runtime {
        let _ = std::fs::remove_file(self.path("policyd.sock"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            if let Err(e) = daemon::run(config).await {
                eprintln!("daemon stopped: {e:#}");
            }
        });
        rt
    }
    async fn client(&self) -> PolicydClient {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(stream) = transport::connect(
                &self.path("policyd.sock"),
                &proto::transport::ServerIs::root_or([nix::unistd::geteuid().as_raw()]),
            )
            .await
            {
                return PolicydClient::new(
                    tarpc::client::Config::default(),
                    transport::client(stream, transport::Service::Policyd),
                )
                .spawn();
            }
            assert!(Instant::now() < deadline, "daemon did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fn kernel(&self) -> (u64, KernelState, usize) {
        self.loader.snapshot()
    }
    async fn wait_for(&self, what: &str, mut done: impl FnMut(&KernelState) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.kernel().1) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    /// Waits until the daemon's status says `done`.
    async fn wait_status(
        &self,
        what: &str,
        client: &PolicydClient,
        mut done: impl FnMut(&proto::policyd::Status) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = client.status(ctx()).await.unwrap().unwrap();
            if done(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ctx() -> Context {
    transport::context_with_deadline(30)
}

fn query(container: &str, dest: &str, port: &str, process: Option<&str>) -> ExplainQuery {
    ExplainQuery {
        container: container.into(),
        dest: dest.parse().unwrap(),
        proto: Some("tcp".into()),
        port: Some(port.into()),
        process: process.map(Into::into),
    }
}

const V1: &str = r#"
mode = "enforce"
unknown_container = "deny"

[[policy]]
name = "web"
select = { name = "web" }
allow = [{ to = "10.0.0.0/8", proto = "tcp", ports = [443] }]

[[policy]]
name = "curler"
select = { name = "curler" }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = "1.1.1.0/24", proto = "tcp", ports = [80, 443] }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_grants_and_revokes_live_and_refuses_invalid_files() {
    let env = Env::new("reload");
    env.serve_loader();
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 101), ("curler", 102), ("other", 103)]);
    let daemon = env.start_daemon("policy.toml");
    let client = env.client().await;
    env.wait_for("cgroups of all containers", |s| s.cgroups.len() == 3)
        .await;

    let (_, state, _) = env.kernel();
    assert!(
        state.cgroups[&103].unrestricted,
        "a container no policy selects is left alone"
    );
    assert_eq!(state.unknown_verdict, Verdict::Deny);

    let status = client.status(ctx()).await.unwrap().unwrap();
    let curler = status
        .containers
        .iter()
        .find(|c| c.name == "curler")
        .unwrap();
    assert_eq!(
        (curler.policy.as_deref(), curler.mode.as_str()),
        (Some("curler"), "enforce")
    );
    assert!(status.loader.connected);

    let e = client
        .explain(
            ctx(),
            query("curler", "1.1.1.7", "443", Some("/usr/bin/curl")),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.verdict, Some(Verdict::Allow), "{e:?}");
    let e = client
        .explain(ctx(), query("web", "10.1.1.1", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.verdict, Some(Verdict::Deny), "{e:?}");

    // Grant ssh to web: a reload applies a small diff.
    env.write(
        "policy.toml",
        &V1.replace(
            "ports = [443] }]",
            "ports = [443] }, { to = \"10.0.0.5\", proto = \"tcp\", ports = [22] }]",
        ),
    );
    let report = client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    // The file watcher (polling every 50 ms) may have applied the edit
    // first; then this reload finds nothing left to do.
    assert!(
        (report.applied || report.ops.is_empty()) && report.ops.len() <= 4,
        "{report:#?}"
    );
    let e = client
        .explain(ctx(), query("web", "10.0.0.5", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.verdict, Some(Verdict::Allow));

    // Revoke it again: back to the first state's rules.
    env.write("policy.toml", V1);
    let report = client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert!(report.applied || report.ops.is_empty(), "{report:#?}");
    let e = client
        .explain(ctx(), query("web", "10.0.0.5", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.verdict, Some(Verdict::Deny));

    // An invalid file is refused with a location; the kernel keeps the old.
    let (generation, before, _) = env.kernel();
    env.write(
        "policy.toml",
        &V1.replace("ports = [443]", "ports = [70000]"),
    );
    let err = client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        PolicydError::InvalidPolicy { diagnostics } => {
            assert_eq!(diagnostics[0].line, Some(8), "{err}");
            assert!(diagnostics[0].message.contains("70000"), "{err}");
        }
        other => panic!("expected InvalidPolicy, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the file watcher sees it too
    let (generation_after, after, _) = env.kernel();
    assert_eq!((generation_after, &after), (generation, &before));
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert!(status.last_error.unwrap_or_default().contains("70000"));
    let e = client
        .explain(ctx(), query("web", "10.1.1.1", "443", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e.verdict,
        Some(Verdict::Allow),
        "the running policy stays in force"
    );

    drop(client);
    daemon.shutdown_background();
}

/// Review finding: a reload that gives a policy a new rule and moves one of
/// its containers to another policy. Rewritten in place, the policy's new
/// entry went in while the leaving container still pointed at it, so it
/// could reach a host neither of its policies allows for the length of the
/// diff. The changed policy now moves to a fresh id: at every step of the
/// applied diff `db` is judged as the old or the new file judges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_leaving_a_changed_policy_never_sees_its_new_rules() {
    const TEAM: &str = r#"
[[policy]]
name = "team"
select = { image = "alpine:*" }
allow = [{ to = "10.0.0.0/8", proto = "tcp", ports = [443] }]
"#;
    let env = Env::new("moving");
    env.serve_loader();
    env.write("policy.toml", TEAM);
    env.write_inventory(&[("app", 301), ("db", 302)]);
    let daemon = env.start_daemon("policy.toml");
    let client = env.client().await;
    env.wait_for("both containers", |s| s.cgroups.len() == 2)
        .await;
    let (_, before, _) = env.kernel();
    let team_before = before.cgroups[&301].policy_id;
    assert_eq!(before.cgroups[&302].policy_id, team_before);

    let edited = format!(
        "[[policy]]\nname = \"db\"\nselect = {{ name = \"db\" }}\nallow = [{{ to = \"192.0.2.1\", proto = \"tcp\", ports = [5432] }}]\n{}",
        TEAM.replace(
            "ports = [443] }]",
            "ports = [443] }, { to = \"203.0.113.7\", proto = \"udp\", ports = [9999] }]"
        )
    );
    env.write("policy.toml", &edited);
    client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    let (_, after, _) = env.kernel();
    assert_ne!(after.cgroups[&301].policy_id, after.cgroups[&302].policy_id);
    assert_ne!(
        after.cgroups[&301].policy_id, team_before,
        "the changed policy keeps its id: the leaving container would see its new rule"
    );

    let target = |dest: &str, proto, port| kernel_model::decide::Target {
        dest: dest.parse().unwrap(),
        proto,
        port,
        later_fragment: false,
    };
    let targets = [
        target("203.0.113.7", 17, 9999),
        target("10.1.2.3", 6, 443),
        target("192.0.2.1", 6, 5432),
    ];
    let mut state = before.clone();
    for (i, op) in kernel_model::diff::diff_ops(&before, &after)
        .iter()
        .enumerate()
    {
        state.apply_ops(std::slice::from_ref(op));
        for cgroup in [301, 302] {
            for target in &targets {
                let verdict =
                    |s: &KernelState| kernel_model::decide::lookup(s, cgroup, None, target).verdict;
                let (old, now, new) = (verdict(&before), verdict(&state), verdict(&after));
                assert!(
                    now == old || now == new,
                    "after op {i} ({op:?}): cgroup {cgroup}, {target:?} judged {now:?}, old {old:?}, new {new:?}"
                );
            }
        }
    }
    daemon.shutdown_background();
}

/// With no file watcher to apply the edit first (it polls hourly here), a
/// dry run of an edited file is the whole diff, and nothing reaches the
/// loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_the_diff_and_changes_nothing() {
    let env = Env::new("dry-run");
    env.serve_loader();
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 801), ("curler", 802)]);
    let daemon = env.start(Config {
        file_poll: Duration::from_secs(3600),
        policy_watch: None,
        ..env.config("policy.toml")
    });
    let client = env.client().await;
    env.wait_for("first convergence", |s| s.cgroups.len() == 2)
        .await;
    let (generation, _, applies) = env.kernel();

    env.write("policy.toml", &V1.replace("1.1.1.0/24", "1.1.2.0/24"));
    let report = client.reload(ctx(), true, u32::MAX).await.unwrap().unwrap();
    assert!(
        report.dry_run && !report.applied && !report.ops.is_empty(),
        "{report:#?}"
    );
    assert_eq!(report.generation, generation);
    assert_eq!(report.counts.total(), report.ops.len());
    // A capped report lists fewer operations but counts them all.
    let capped = client.reload(ctx(), true, 0).await.unwrap().unwrap();
    assert!(capped.ops.is_empty());
    assert_eq!(capped.counts, report.counts);
    let (generation_after, _, applies_after) = env.kernel();
    assert_eq!((generation_after, applies_after), (generation, applies));

    drop(client);
    daemon.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_inventory_changes_and_other_writers_are_handled() {
    let env = Env::new("watch");
    env.serve_loader();
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 201)]);
    let daemon = env.start_daemon("policy.toml");
    let _client = env.client().await;
    env.wait_for("first convergence", |s| s.cgroups.len() == 1)
        .await;

    // A container starts: its cgroup entry and the file its policy's exe
    // names there, nothing else.
    let (generation, before, _) = env.kernel();
    env.write_inventory(&[("web", 201), ("curler", 202)]);
    env.wait_for("the new container's cgroup", |s| {
        s.cgroups.contains_key(&202)
    })
    .await;
    let (generation_after, after, _) = env.kernel();
    assert_eq!(generation_after, generation + 1);
    let ops: Vec<String> = kernel_model::diff::diff_ops(&before, &after)
        .iter()
        .map(policyd::cli::describe_op)
        .collect();
    // The class entry goes in first: the container's processes never see
    // its cgroup's policy without it.
    assert_eq!(ops.len(), 2, "{ops:#?}");
    assert!(
        ops[0].contains("file dev 0:52 ino 1311 ctime 1729000000.000000000 -> class"),
        "{ops:#?}"
    );
    assert!(ops[1].starts_with("+ cgroup 202 -> policy"), "{ops:#?}");

    // Someone else writes to the loader: policyd's next apply hits a
    // generation mismatch, refetches and still converges.
    {
        let mut m = env.loader.maps.lock().unwrap();
        m.generation += 5;
        m.state.cgroups.remove(&201);
    }
    // The file changes (no reload call): the watcher applies it.
    env.write(
        "policy.toml",
        &V1.replace("ports = [443]", "ports = [443, 8443]"),
    );
    env.wait_for("the edited rule and the repaired cgroup", |s| {
        s.cgroups.contains_key(&201) && s.ports.keys().any(|k| k.port == 8443)
    })
    .await;

    daemon.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_converges_without_touching_the_kernel() {
    let env = Env::new("restart");
    env.serve_loader();
    // History with edits, so ids are not what a fresh start would pick alone.
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 301), ("curler", 302)]);
    let first = env.start_daemon("policy.toml");
    let client = env.client().await;
    env.wait_for("first convergence", |s| s.cgroups.len() == 2)
        .await;
    let edited = V1.replace(
        "ports = [443] }]",
        "ports = [443] }, { to = \"192.0.2.0/24\", proto = \"udp\", ports = [53] }]",
    );
    env.write("policy.toml", &edited);
    client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    drop(client);
    first.shutdown_background();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (generation, state, applies) = env.kernel();
    let second = env.start_daemon("policy.toml");
    let client = env.client().await;
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert!(status.policy_digest.is_some());
    let (generation_after, state_after, applies_after) = env.kernel();
    assert_eq!(applies_after, applies, "no apply needed after a restart");
    assert_eq!((generation_after, state_after), (generation, state));
    drop(client);
    second.shutdown_background();
}

/// Serves `loader` on `socket` from a runtime of its own: dropping it ends
/// the server and its connections, as the loader process's exit would.
fn serve_on_own_runtime(
    loader: &MemoryLoader,
    socket: &std::path::Path,
) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    loader.serve(socket).unwrap();
    rt
}

/// A loader restarted on maps of a new layout (an upgrade) comes back
/// empty: policyd sees its event stream end and gives it the state again
/// at once, not at the next periodic resync (an hour here), so the veth
/// backstop does not count every veth as no container's meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_restarted_on_empty_maps_gets_the_state_again_at_once() {
    let env = Env::new("loader-restart");
    env.loader.attach_cgroup(MANAGED_PARENT);
    let first_loader = serve_on_own_runtime(&env.loader, &env.path("loader.sock"));
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 401)]);
    let daemon = env.start_daemon("policy.toml");
    let _client = env.client().await;
    env.wait_for("first convergence", |s| s.cgroups.len() == 1)
        .await;

    first_loader.shutdown_background();
    let fresh = MemoryLoader::default();
    fresh.attach_cgroup(MANAGED_PARENT);
    let second_loader = serve_on_own_runtime(&fresh, &env.path("loader.sock"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh.snapshot().1.cgroups.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the restarted loader was not given the state: {:?}",
            fresh.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fresh.snapshot().1, env.kernel().1, "the same state again");
    daemon.shutdown_background();
    second_loader.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thesis_json_file_works() {
    let env = Env::new("thesis");
    env.serve_loader();
    env.write(
        "allowlist.json",
        r#"[{"container_name": "curler", "policy": [
              {"process": "curl", "allow": [{"cidr4": "1.1.1.0/24", "ports": [80, 443]}]},
              {"process": "ping", "allow": [{"cidr4": "1.1.1.0/24", "ports": [0]}]}]}]"#,
    );
    env.write_inventory(&[("curler", 401)]);
    let daemon = env.start_daemon("allowlist.json");
    let client = env.client().await;
    env.wait_for("convergence", |s| s.cgroups.contains_key(&401))
        .await;
    let e = client
        .explain(ctx(), query("curler", "1.1.1.1", "443", Some("curl")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.verdict, Some(Verdict::Allow));
    let mut ping = query("curler", "1.1.1.1", "8", Some("ping"));
    ping.proto = Some("icmp".into());
    let e = client.explain(ctx(), ping.clone()).await.unwrap().unwrap();
    assert_eq!(e.verdict, Some(Verdict::Allow));
    ping.process = Some("sh".into());
    let e = client.explain(ctx(), ping).await.unwrap().unwrap();
    assert_eq!(e.verdict, Some(Verdict::Deny));
    drop(client);
    daemon.shutdown_background();
}

/// The daemon process outlives clients that leave before their answer: it
/// writes the answer to a closed socket, which must be an error it drops
/// (SIGPIPE ignored), not the end of the daemon. Requests are sent raw and
/// their connections closed at once, to the release binary's `daemon`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_outlives_clients_that_leave_before_the_answer() {
    use std::io::Write as _;
    let env = Env::new("sigpipe");
    env.serve_loader();
    env.write("policy.toml", V1);
    env.write_inventory(&[("curler", 602)]);
    let mut daemon = test_kit::process::Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_policyd"))
            .arg("--socket")
            .arg(env.path("policyd.sock"))
            .arg("daemon")
            .arg("--policy")
            .arg(env.path("policy.toml"))
            .arg("--loader-socket")
            .arg(env.path("loader.sock"))
            .arg("--inventory")
            .arg(env.path("inventory.json"))
            .args([
                "--group",
                "root",
                "--metrics-listen",
                "off",
                "--event-log",
                "off",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting policyd daemon"),
    );
    let client = env.client().await;
    client.status(ctx()).await.unwrap().unwrap();
    drop(client);

    let request = serde_json::to_vec(&tarpc::ClientMessage::Request(tarpc::Request {
        context: tarpc::context::current(),
        id: 1,
        message: proto::policyd::PolicydRequest::Status {},
    }))
    .expect("a status request as JSON");
    for _ in 0..20 {
        let mut raw =
            std::os::unix::net::UnixStream::connect(env.path("policyd.sock")).expect("connecting");
        raw.write_all(&(request.len() as u32).to_be_bytes())
            .and_then(|()| raw.write_all(&request))
            .expect("sending the request");
        drop(raw);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exited = daemon.0.try_wait().expect("the daemon's state");
    assert!(
        exited.is_none(),
        "policyd daemon ended when clients left before their answers: {exited:?}"
    );
    let client = env.client().await;
    client
        .status(ctx())
        .await
        .expect("the daemon still answers")
        .unwrap();
}

/// The socket serves root and the configured group, judged by the peer's
/// credentials rather than the file's mode: the CLI run as another user is
/// dropped before any request even with the socket opened to everyone, and
/// is served once that user holds the group among its supplementary groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_serves_root_and_the_group_only() {
    if !test_kit::privileged::root_or_skip(
        "the_socket_serves_root_and_the_group_only",
        "it runs the CLI as another user",
    ) {
        return;
    }
    const GROUP: &str = "daemon";
    let Some(group) = nix::unistd::Group::from_name(GROUP).expect("reading the group database")
    else {
        test_kit::privileged::record_skip(&format!(
            "the_socket_serves_root_and_the_group_only: this host has no group {GROUP}"
        ));
        return;
    };
    let gid = group.gid.as_raw();
    let env = Env::new("peers");
    env.serve_loader();
    env.write("policy.toml", V1);
    env.write_inventory(&[("curler", 602)]);
    let mut config = env.config("policy.toml");
    config.group = GROUP.into();
    let daemon = env.start(config);
    let root = env.client().await;
    let root_served = root.status(ctx()).await.map(|r| r.is_ok());

    // Where the other user can reach it: the CLI copied out of the build
    // tree, the socket's mode opened to everyone.
    let cli = env.path("policyd");
    std::fs::copy(env!("CARGO_BIN_EXE_policyd"), &cli).expect("copying the CLI");
    for (path, mode) in [
        (&env.dir, 0o755),
        (&cli, 0o755),
        (&env.path("policyd.sock"), 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let status_as_nobody = |groups: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", groups])
            .arg(&cli)
            .arg("--socket")
            .arg(env.path("policyd.sock"))
            .arg("status")
            .output()
            .expect("setpriv")
    };
    let refused = status_as_nobody("--clear-groups");
    let served = status_as_nobody(&format!("--groups={gid}"));
    drop(root);
    daemon.shutdown_background();
    assert!(
        matches!(root_served, Ok(true)),
        "root was not served: {root_served:?}"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("serves only root and the members of its group"),
        "the refused user is not told why: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a user outside the group was not refused as the CLI says a daemon it cannot reach ({:?}): {}{}",
        refused.status,
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        served.status.success(),
        "a member of the group was not served: {}",
        String::from_utf8_lossy(&served.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_outside_the_attached_parents_is_shown_unenforced() {
    let env = Env::new("unenforced");
    env.serve_loader();
    env.write("policy.toml", V1);
    // web was started before Docker's cgroup-parent pointed at contain.slice.
    env.write_inventory_placed(&[
        (
            "web",
            601,
            "/system.slice/docker-web-0123456789.scope".into(),
        ),
        (
            "curler",
            602,
            format!("{MANAGED_PARENT}/docker-curler-0123456789.scope"),
        ),
    ]);
    let daemon = env.start_daemon("policy.toml");
    let client = env.client().await;
    env.wait_for("both cgroups", |s| s.cgroups.len() == 2).await;

    let status = client.status(ctx()).await.unwrap().unwrap();
    let by_name = |name: &str| {
        status
            .containers
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .clone()
    };
    let web = by_name("web");
    assert_eq!(web.mode, "unenforced", "{web:?}");
    let reason = web.unenforced_reason.unwrap_or_default();
    assert!(
        reason.starts_with(
            "cgroup /system.slice/docker-web-0123456789.scope is not below an attached parent (/contain.slice)"
        ),
        "{reason}"
    );
    let curler = by_name("curler");
    assert_eq!(
        (curler.mode.as_str(), curler.unenforced_reason),
        ("enforce", None)
    );
    let rendered = policyd::cli::render_status(&status);
    assert!(
        rendered.contains("container web is unenforced: cgroup /system.slice/docker-web"),
        "{rendered}"
    );
    // The inventory file gives neither a veth.
    assert!(
        curler
            .packet_sockets_uncovered
            .as_deref()
            .is_some_and(|r| r.starts_with("no host-side veth")),
        "{:?}",
        curler.packet_sockets_uncovered
    );
    assert!(
        rendered.contains(
            "containers web, curler are not covered against packet sockets: no host-side veth"
        ),
        "{rendered}"
    );

    let e = client
        .explain(ctx(), query("web", "10.1.1.1", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.mode, "unenforced", "{e:?}");
    assert!(
        e.reason.starts_with(
            "unenforced (cgroup /system.slice/docker-web-0123456789.scope is not below"
        ),
        "{}",
        e.reason
    );

    // Attaching the other parent too makes the claim true.
    env.loader.attach_cgroup("/sys/fs/cgroup/system.slice");
    let status = client.status(ctx()).await.unwrap().unwrap();
    let web = status.containers.iter().find(|c| c.name == "web").unwrap();
    assert_eq!(web.mode, "enforce", "{web:?}");
    drop(client);
    daemon.shutdown_background();
}

mod fake_resolver {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use proto::resolver::{
        Change, ChangeKind, Container, ExeFile, ExeLookup, HostVeth, Resolver, ResolverStatus,
        Runtime, Snapshot, WatchReply,
    };
    use tarpc::context::Context;
    use tokio::sync::Notify;

    #[derive(Default)]
    struct Inner {
        generation: u64,
        containers: BTreeMap<String, Container>,
        changes: Vec<Change>,
        /// What paths name in containers, by (container id, path).
        files: BTreeMap<(String, String), ExeFile>,
        /// Every lookup asked for, in order.
        lookups: Vec<ExeLookup>,
        /// Runtimes whose containers the snapshots say they lack.
        unlisted: Vec<String>,
        /// How often it restarted: each restart is a new instance.
        restarts: u64,
    }

    impl Inner {
        fn instance(&self) -> u64 {
            1 + self.restarts
        }
    }

    /// The resolver's contract in memory: snapshots, and changes by
    /// generation with a long poll.
    #[derive(Clone, Default)]
    pub struct FakeResolver {
        inner: Arc<Mutex<Inner>>,
        changed: Arc<Notify>,
    }

    /// A container with one veth, whose host ifindex is its cgroup id.
    pub fn container(name: &str, cgroup_id: u64) -> Container {
        Container {
            id: format!("{name}-id"),
            name: name.into(),
            runtime: Runtime::Docker,
            namespace: "moby".into(),
            labels: BTreeMap::new(),
            image: "alpine:3.20".into(),
            pids: vec![1],
            cgroup_path: format!("/contain.slice/docker-{name}.scope"),
            cgroup_id,
            netns_inode: 0,
            host_veths: vec![HostVeth {
                ifindex: cgroup_id as u32,
                name: format!("veth{name}"),
                peer_ifindex: 2,
            }],
            host_network: false,
            addresses: Vec::new(),
            metadata_complete: true,
            readonly_rootfs: Some(false),
        }
    }

    impl FakeResolver {
        /// `path` names `file` in container `id` from now on.
        pub fn file(&self, id: &str, path: &str, file: ExeFile) {
            self.inner
                .lock()
                .unwrap()
                .files
                .insert((id.to_string(), path.to_string()), file);
        }
        pub fn lookups(&self) -> Vec<ExeLookup> {
            self.inner.lock().unwrap().lookups.clone()
        }
        /// From now on its snapshots lack `sources`' containers.
        pub fn unlisted(&self, sources: &[&str]) {
            self.inner.lock().unwrap().unlisted = sources.iter().map(|s| s.to_string()).collect();
        }
        /// A restart while `sources` do not answer: a new instance that
        /// has listed no container yet.
        pub fn restart_unlisted(&self, sources: &[&str]) {
            let mut i = self.inner.lock().unwrap();
            i.restarts += 1;
            i.containers.clear();
            i.changes.clear();
            i.unlisted = sources.iter().map(|s| s.to_string()).collect();
            self.changed.notify_waiters();
        }
        pub fn add(&self, c: Container) {
            let mut i = self.inner.lock().unwrap();
            i.generation += 1;
            let generation = i.generation;
            i.containers.insert(c.key(), c.clone());
            i.changes.push(Change {
                generation,
                kind: ChangeKind::Added { container: c },
            });
            self.changed.notify_waiters();
        }
        pub fn remove(&self, name: &str) {
            let mut i = self.inner.lock().unwrap();
            let Some(c) = i.containers.values().find(|c| c.name == name).cloned() else {
                return;
            };
            i.generation += 1;
            let generation = i.generation;
            i.containers.remove(&c.key());
            i.changes.push(Change {
                generation,
                kind: ChangeKind::Removed {
                    namespace: c.namespace,
                    id: c.id,
                    cgroup_id: c.cgroup_id,
                },
            });
            self.changed.notify_waiters();
        }
    }

    impl Resolver for FakeResolver {
        async fn status(self, _: Context) -> ResolverStatus {
            let i = self.inner.lock().unwrap();
            ResolverStatus {
                api_version: proto::API_VERSION,
                version: "fake".into(),
                instance: i.instance(),
                generation: i.generation,
                containers: i.containers.len() as u32,
                cgroup_root: "/sys/fs/cgroup".into(),
                sources: Vec::new(),
            }
        }
        async fn list(self, _: Context) -> Snapshot {
            let i = self.inner.lock().unwrap();
            Snapshot {
                instance: i.instance(),
                generation: i.generation,
                containers: i.containers.values().cloned().collect(),
                unlisted_sources: i.unlisted.clone(),
            }
        }
        async fn executables(
            self,
            _: Context,
            lookups: Vec<ExeLookup>,
        ) -> Vec<Result<ExeFile, String>> {
            let mut i = self.inner.lock().unwrap();
            i.lookups.extend(lookups.iter().cloned());
            lookups
                .iter()
                .map(|l| {
                    let mut file = i
                        .files
                        .get(&(l.container_id.clone(), l.path.clone()))
                        .cloned()
                        .ok_or_else(|| {
                            format!("{}: no such file in container {}", l.path, l.container_id)
                        })?;
                    if !l.sha256 {
                        file.sha256 = None;
                    }
                    Ok(file)
                })
                .collect()
        }
        async fn watch(self, _: Context, after: u64, wait_ms: u32) -> WatchReply {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(u64::from(wait_ms.min(2_000)));
            loop {
                let notified = self.changed.notified();
                {
                    let i = self.inner.lock().unwrap();
                    let changes: Vec<Change> = i
                        .changes
                        .iter()
                        .filter(|c| c.generation > after)
                        .cloned()
                        .collect();
                    if !changes.is_empty() || tokio::time::Instant::now() >= deadline {
                        return WatchReply::Changes {
                            instance: i.instance(),
                            generation: i.generation,
                            changes,
                        };
                    }
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_resolver_and_holds_until_the_first_inventory() {
    use std::collections::BTreeMap;

    use fake_resolver::{container, FakeResolver};
    use kernel_model::state::CgroupEntry;

    let env = Env::new("resolver");
    env.serve_loader();
    env.write("policy.toml", V1);
    // What a previous policyd left in the kernel: web's cgroup, under some
    // policy id, and its veth under an ifindex since reused. Without an
    // inventory neither must be dropped.
    {
        let mut m = env.loader.maps.lock().unwrap();
        m.state.cgroups.insert(
            501,
            CgroupEntry {
                policy_id: 7,
                audit: false,
                unrestricted: false,
                forwarded_dns: false,
            },
        );
        m.state.veths.insert(31, 501);
    }

    let daemon = env.start(Config {
        inventory: InventorySource::Resolver(env.path("resolver.sock")),
        ..env.config("policy.toml")
    });
    let client = env.client().await;

    // No resolver yet: the policy is valid but held back.
    let report = client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert!(
        report
            .pending
            .as_deref()
            .unwrap_or("")
            .contains("inventory"),
        "{report:#?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, state, applies) = env.kernel();
    assert_eq!(applies, 0, "nothing applied before the inventory is known");
    assert!(state.cgroups.contains_key(&501));
    assert_eq!(state.veths.get(&31), Some(&501));

    // The resolver comes up before its runtime answers: its snapshot lacks
    // web, and says so. It is not the inventory: nothing is removed.
    let resolver = FakeResolver::default();
    resolver.unlisted(&["containerd"]);
    serve_resolver(&env, &resolver);
    env.wait_status("the resolver's missing listing", &client, |s| {
        s.inventory
            .error
            .as_deref()
            .is_some_and(|e| e.contains("has not listed the containers of containerd"))
    })
    .await;
    let (_, state, applies) = env.kernel();
    assert_eq!(
        applies, 0,
        "a list without the runtime's containers applied"
    );
    assert!(state.cgroups.contains_key(&501));

    // The runtime answers, with web: policyd converges.
    resolver.add(container("web", 501));
    resolver.unlisted(&[]);
    // The rules go in under the policy id the kernel already had for web's
    // cgroup: learned from the loader's state, nothing renumbered.
    env.wait_for("web's policy rules", |s| {
        s.dests.keys().any(|k| k.policy_id == 7)
    })
    .await;
    let (_, state, _) = env.kernel();
    assert!(!state.cgroups[&501].unrestricted);
    assert_eq!(state.veths, BTreeMap::from([(501, 501)]));

    // A container starts and another stops: followed through watch.
    resolver.add(container("curler", 502));
    env.wait_for("curler's cgroup", |s| s.cgroups.contains_key(&502))
        .await;
    resolver.remove("web");
    env.wait_for("web's cgroup gone", |s| !s.cgroups.contains_key(&501))
        .await;
    assert_eq!(env.kernel().1.veths, BTreeMap::from([(502, 502)]));
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert!(status.inventory.connected, "{status:#?}");
    assert_eq!(status.containers.len(), 1);
    // Mapped, but the loader reports no backstop on curler's veth (an
    // attach that failed): status says its packet sockets are not covered
    // until the loader reports one.
    let uncovered = status.containers[0].packet_sockets_uncovered.clone();
    assert!(
        uncovered.as_deref().is_some_and(|r| r
            .starts_with("the kernel does not run the backstop first on its veth (ifindex 502)")),
        "{uncovered:?}"
    );
    env.loader.attach_veth(502, "vethcurler");
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert_eq!(status.containers[0].packet_sockets_uncovered, None);

    // The resolver restarts while its runtime does not answer: the new
    // instance lists no container, and says so. policyd keeps the last
    // inventory: curler's entry and its veth's owner stay.
    let applies_before = env.kernel().2;
    resolver.restart_unlisted(&["containerd"]);
    env.wait_status("the restarted resolver's missing listing", &client, |s| {
        s.inventory
            .error
            .as_deref()
            .is_some_and(|e| e.contains("has not listed the containers of containerd"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, state, applies) = env.kernel();
    assert_eq!(
        applies, applies_before,
        "a restarted resolver's list without its runtime's containers applied"
    );
    assert!(state.cgroups.contains_key(&502), "{:?}", state.cgroups);
    assert_eq!(state.veths, BTreeMap::from([(502, 502)]));
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert_eq!(status.containers.len(), 1, "{status:#?}");

    // The runtime answers again, with curler still running: in step.
    resolver.add(container("curler", 502));
    resolver.unlisted(&[]);
    env.wait_status("the restarted resolver's inventory", &client, |s| {
        s.inventory.connected && s.inventory.error.is_none()
    })
    .await;
    let (_, state, _) = env.kernel();
    assert!(state.cgroups.contains_key(&502));
    assert_eq!(state.veths, BTreeMap::from([(502, 502)]));

    drop(client);
    daemon.shutdown_background();
}

/// Serves `resolver` on `resolver.sock` in `env`'s directory.
fn serve_resolver(env: &Env, resolver: &fake_resolver::FakeResolver) {
    use proto::resolver::Resolver as _;

    test_kit::serve_root_only!(
        &env.path("resolver.sock"),
        transport::Service::Resolver,
        resolver.clone().serve(),
    )
    .unwrap();
}

const CURLERS: &str = r#"
[[policy]]
name = "curlers"
select = { image = "alpine:*" }
[[policy.process]]
exe = "/usr/bin/curl"
allow = [{ to = "1.1.1.0/24", proto = "tcp", ports = [443] }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exe_rules_take_the_file_each_container_has() {
    use fake_resolver::{container, FakeResolver};
    use kernel_model::state::ProcessMatch;

    let env = Env::new("exes");
    env.serve_loader();
    env.write("policy.toml", CURLERS);
    let file = |ino: u64| FileId {
        dev: 60,
        ino,
        ctime_sec: 1_729_000_000,
        ctime_nsec: 7,
    };
    let exe = |ino: u64| ExeFile {
        file: file(ino),
        sha256: Some(format!("{ino:064x}")),
        ..ExeFile::default()
    };
    let has_file = |s: &KernelState, ino: u64| {
        s.processes
            .keys()
            .any(|k| k.process == ProcessMatch::File(file(ino)))
    };
    let resolver = FakeResolver::default();
    resolver.add(container("c1", 701));
    // c1's image has curl; a symlink /bin/curl leads to it.
    resolver.file("c1-id", "/usr/bin/curl", exe(11));
    resolver.file("c1-id", "/bin/curl", exe(11));
    // c2 is another container: its own filesystem, its own curl, a
    // multi-call binary there (a symlink to BusyBox, hard-linked too).
    resolver.file(
        "c2-id",
        "/usr/bin/curl",
        ExeFile {
            final_path: Some("/bin/busybox".into()),
            links: 3,
            ..exe(22)
        },
    );
    serve_resolver(&env, &resolver);
    let daemon = env.start(Config {
        inventory: InventorySource::Resolver(env.path("resolver.sock")),
        ..env.config("policy.toml")
    });
    let client = env.client().await;

    env.wait_for("c1's curl", |s| {
        s.cgroups.contains_key(&701) && has_file(s, 11)
    })
    .await;
    assert_eq!(resolver.lookups().len(), 1, "{:?}", resolver.lookups());

    // Another container starts: only its own paths are resolved.
    resolver.add(container("c2", 702));
    env.wait_for("c2's curl", |s| {
        s.cgroups.contains_key(&702) && has_file(s, 22)
    })
    .await;
    let lookups = resolver.lookups();
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    assert_eq!(
        (
            lookups[1].container_id.as_str(),
            lookups[1].path.as_str(),
            lookups[1].sha256
        ),
        ("c2-id", "/usr/bin/curl", false)
    );

    // explain judges the file a path names: a symlink to curl is curl.
    let explain = |process: &str| {
        let client = client.clone();
        let q = query("c1", "1.1.1.1", "443", Some(process));
        async move { client.explain(ctx(), q).await.unwrap().unwrap() }
    };
    let e = explain("/usr/bin/curl").await;
    assert_eq!(e.verdict, Some(Verdict::Allow), "{e:?}");
    let e = explain("/bin/curl").await;
    assert_eq!(e.verdict, Some(Verdict::Allow), "{e:?}");
    let e = explain("/tmp/curl").await;
    assert_eq!(e.verdict, Some(Verdict::Deny), "{e:?}");
    assert!(
        e.process
            .contains("/tmp/curl: no such file in container c1-id"),
        "{}",
        e.process
    );

    // status: what each path names, and that the root is writable.
    let status = client.status(ctx()).await.unwrap().unwrap();
    let c1 = status.containers.iter().find(|c| c.name == "c1").unwrap();
    assert_eq!(c1.readonly_rootfs, Some(false));
    assert_eq!(c1.executables.len(), 1, "{c1:?}");
    assert_eq!(
        (c1.executables[0].path.as_str(), c1.executables[0].file),
        ("/usr/bin/curl", Some(file(11)))
    );
    let rendered = policyd::cli::render_status(&status);
    assert!(
        rendered.contains("containers c1, c2 have process rules on a writable root filesystem"),
        "{rendered}"
    );
    // What the resolver said of c2's file reaches status, and the note.
    let c2 = status.containers.iter().find(|c| c.name == "c2").unwrap();
    assert_eq!(
        (
            c2.executables[0].final_path.as_deref(),
            c2.executables[0].links
        ),
        (Some("/bin/busybox"), 3)
    );
    assert!(
        rendered.contains("1 process rule(s) name a file that other commands may be too"),
        "{rendered}"
    );
    assert!(
        rendered.lines().any(|l| l.starts_with("c2 ")
            && l.split_whitespace().collect::<Vec<_>>()[..3]
                == ["c2", "/usr/bin/curl", "/bin/busybox"]),
        "{rendered}"
    );

    // The file is replaced in c1; a reload resolves every path again.
    resolver.file("c1-id", "/usr/bin/curl", exe(12));
    let report = client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert!(report.applied, "{report:#?}");
    let (_, state, _) = env.kernel();
    assert!(has_file(&state, 12) && !has_file(&state, 11) && has_file(&state, 22));

    // A content pin: c2's curl has it, c1's does not (no class, a warning).
    env.write(
        "policy.toml",
        &CURLERS.replace(
            "exe = \"/usr/bin/curl\"",
            &format!("exe = \"/usr/bin/curl\"\nsha256 = \"{:064X}\"", 22),
        ),
    );
    let report = client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    // The file watcher may have applied the change first (it polls every
    // 50 ms here): then this reload finds nothing left to do. Either way
    // the pin is in force once it returns.
    assert!(report.applied || report.ops.is_empty(), "{report:#?}");
    // The reload itself says what it found, not only `status` later.
    assert!(
        report.warnings.iter().any(|w| w
            .message
            .contains("container \"c1\": exe /usr/bin/curl gives no process class")),
        "{:#?}",
        report.warnings
    );
    let (_, state, _) = env.kernel();
    assert!(has_file(&state, 22) && !has_file(&state, 12), "{state:?}");
    assert!(resolver.lookups().iter().rev().take(2).all(|l| l.sha256));
    let status = client.status(ctx()).await.unwrap().unwrap();
    let c1 = status.containers.iter().find(|c| c.name == "c1").unwrap();
    let problem = c1.executables[0].problem.clone().unwrap_or_default();
    assert!(
        problem.contains("is not what the sha256 pin says"),
        "{problem}"
    );
    assert!(
        status.warnings.iter().any(|w| w
            .message
            .contains("container \"c1\": exe /usr/bin/curl gives no process class")),
        "{:#?}",
        status.warnings
    );
    drop(client);
    daemon.shutdown_background();
}

/// A loader older than `veth_attachments` would close the connection on
/// the request (and every call on it): status does not ask it, and says it
/// cannot tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_does_not_ask_an_older_loader_for_its_veths() {
    use fake_resolver::{container, FakeResolver};

    let env = Env::new("old-loader");
    env.loader.attach_cgroup(MANAGED_PARENT);
    env.loader.attach_veth(502, "vethcurler");
    let loader = gated_loader::GatedLoader::new(env.loader.clone()).reporting_api_version(3);
    loader.serve(&env.path("loader.sock"));
    env.write("policy.toml", V1);
    let resolver = FakeResolver::default();
    resolver.add(container("curler", 502));
    serve_resolver(&env, &resolver);
    let daemon = env.start(Config {
        inventory: InventorySource::Resolver(env.path("resolver.sock")),
        ..env.config("policy.toml")
    });
    let client = env.client().await;
    env.wait_for("curler's veth", |s| s.veths.contains_key(&502))
        .await;
    let status = client.status(ctx()).await.unwrap().unwrap();
    let uncovered = status.containers[0].packet_sockets_uncovered.clone();
    assert!(
        uncovered.as_deref().is_some_and(|r| r.starts_with(
            "cannot tell whether the backstop is on its veth: the loader (memory, API version 3) does not report its veth attachments"
        )),
        "{uncovered:?}"
    );
    assert_eq!(loader.veth_requests(), 0);
    assert!(status.loader.connected, "{:?}", status.loader);

    drop(client);
    daemon.shutdown_background();
}

/// A loader whose next apply, once armed, waits until the test lets it
/// through: a reload that takes as long as the test wants.
mod gated_loader {
    use std::sync::{Arc, Mutex};

    use kernel_model::diff::MapDiff;
    use proto::{
        loader::{
            Attachment, Counters, EventBatch, Loader, LoaderError, LoaderInfo, StateSnapshot,
            VethAttachment,
        },
        transport,
    };
    use tarpc::context::Context;
    use test_kit::memory_loader::MemoryLoader;
    use tokio::sync::oneshot;

    type Gate = (oneshot::Sender<()>, oneshot::Receiver<()>);

    #[derive(Clone)]
    pub struct GatedLoader {
        pub inner: MemoryLoader,
        gate: Arc<Mutex<Option<Gate>>>,
        /// The API version `version` reports instead of the inner loader's.
        api_version: Option<u32>,
        /// `veth_attachments` requests heard.
        veth_requests: Arc<Mutex<u32>>,
        /// Whether every apply is answered as if another writer moved the
        /// maps on first.
        moved_on: Arc<Mutex<bool>>,
    }

    impl GatedLoader {
        pub fn new(inner: MemoryLoader) -> Self {
            GatedLoader {
                inner,
                gate: Arc::default(),
                api_version: None,
                veth_requests: Arc::default(),
                moved_on: Arc::default(),
            }
        }

        /// From now on (`true`) or no longer, no apply is taken: each is
        /// answered as if another writer had moved the maps on.
        pub fn take_no_apply(&self, refuse: bool) {
            *self.moved_on.lock().unwrap() = refuse;
        }

        /// A loader that says it is of API version `v`.
        pub fn reporting_api_version(self, v: u32) -> Self {
            GatedLoader {
                api_version: Some(v),
                ..self
            }
        }

        pub fn veth_requests(&self) -> u32 {
            *self.veth_requests.lock().unwrap()
        }

        /// Holds the next apply: the first receiver hears when it arrived,
        /// the sender lets it through.
        pub fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
            let (arrived, heard) = oneshot::channel();
            let (release, released) = oneshot::channel();
            *self.gate.lock().unwrap() = Some((arrived, released));
            (heard, release)
        }

        pub fn serve(&self, socket: &std::path::Path) {
            test_kit::serve_root_only!(socket, transport::Service::Loader, self.clone().serve())
                .unwrap();
        }
    }

    impl Loader for GatedLoader {
        async fn version(self, ctx: Context) -> LoaderInfo {
            let info = self.inner.version(ctx).await;
            LoaderInfo {
                api_version: self.api_version.unwrap_or(info.api_version),
                ..info
            }
        }
        async fn attachments(self, ctx: Context) -> Vec<Attachment> {
            self.inner.attachments(ctx).await
        }
        async fn veth_attachments(self, ctx: Context) -> Vec<VethAttachment> {
            *self.veth_requests.lock().unwrap() += 1;
            self.inner.veth_attachments(ctx).await
        }
        async fn apply(self, ctx: Context, diff: MapDiff) -> Result<u64, LoaderError> {
            let gate = self.gate.lock().unwrap().take();
            if let Some((arrived, released)) = gate {
                let _ = arrived.send(());
                let _ = released.await;
            }
            if *self.moved_on.lock().unwrap() {
                return Err(LoaderError::GenerationMismatch {
                    expected: diff.from_generation,
                    actual: diff.from_generation + 1,
                });
            }
            self.inner.apply(ctx, diff).await
        }
        async fn state(self, ctx: Context) -> Result<StateSnapshot, LoaderError> {
            self.inner.state(ctx).await
        }
        async fn generation(self, ctx: Context) -> u64 {
            self.inner.generation(ctx).await
        }
        async fn counters(self, ctx: Context) -> Result<Counters, LoaderError> {
            self.inner.counters(ctx).await
        }
        async fn events(self, ctx: Context, after: u64, max: u32, wait_ms: u32) -> EventBatch {
            self.inner.events(ctx, after, max, wait_ms).await
        }
    }
}

/// Status and explain answer from what was last applied while a reload
/// waits on the loader: the loader's apply is held until both answered,
/// so a status that waited for the reload would never return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_explain_answer_while_a_reload_waits_on_the_loader() {
    let env = Env::new("busy");
    let loader = gated_loader::GatedLoader::new(env.loader.clone());
    env.loader.attach_cgroup(MANAGED_PARENT);
    loader.serve(&env.path("loader.sock"));
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 701), ("curler", 702)]);
    let daemon = env.start_daemon("policy.toml");
    let client = env.client().await;
    env.wait_for("first convergence", |s| s.cgroups.len() == 2)
        .await;
    let before = client.status(ctx()).await.unwrap().unwrap();

    // Grant ssh to web; the file watcher reloads, and its apply is held.
    let (arrived, release) = loader.arm();
    env.write(
        "policy.toml",
        &V1.replace(
            "ports = [443] }]",
            "ports = [443] }, { to = \"10.0.0.5\", proto = \"tcp\", ports = [22] }]",
        ),
    );
    // A guard against hanging forever if the watcher never reloads, not a
    // measure of anything.
    tokio::time::timeout(Duration::from_secs(30), arrived)
        .await
        .expect("the policy file change reached the loader")
        .unwrap();

    let during = client.status(ctx()).await.unwrap().unwrap();
    assert_eq!(
        (&during.policy_digest, during.generation, during.reloads),
        (&before.policy_digest, before.generation, before.reloads),
        "status shows the state before the reload"
    );
    let e = client
        .explain(ctx(), query("web", "10.0.0.5", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.verdict, Some(Verdict::Deny), "the policy in force: {e:?}");

    release.send(()).unwrap();
    env.wait_for("the granted rule", |s| s.ports.keys().any(|k| k.port == 22))
        .await;
    // A reload asked for now queues behind nothing and sees the new file.
    let report = client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert!(report.ops.is_empty(), "{report:#?}");
    let e = client
        .explain(ctx(), query("web", "10.0.0.5", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.verdict, Some(Verdict::Allow), "{e:?}");
    drop(client);
    daemon.shutdown_background();
}

/// A reload the file refuses must not swallow the news that waited with
/// it: a container that starts while an invalid edit is reloaded still
/// gets its entries. The loader's apply is held so that both queue up
/// and reach the engine in one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_does_not_drop_a_container_start_queued_with_it() {
    let env = Env::new("refused-batch");
    let loader = gated_loader::GatedLoader::new(env.loader.clone());
    env.loader.attach_cgroup(MANAGED_PARENT);
    loader.serve(&env.path("loader.sock"));
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 711)]);
    let daemon = env.start_daemon("policy.toml");
    env.wait_for("first convergence", |s| s.cgroups.len() == 1)
        .await;

    // curler starts; its apply is held at the loader.
    let (arrived, release) = loader.arm();
    env.write_inventory(&[("web", 711), ("curler", 712)]);
    // A guard against hanging forever, not a measure of anything.
    tokio::time::timeout(Duration::from_secs(30), arrived)
        .await
        .expect("curler's entry reached the loader")
        .unwrap();
    // Meanwhile an invalid edit (the file watcher asks for a reload) and
    // another container start queue up behind the held apply.
    env.write("policy.toml", "this is not a policy");
    env.write_inventory(&[("web", 711), ("curler", 712), ("db", 713)]);
    // Let both watchers (every 50 ms) see their files before the release.
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.send(()).unwrap();

    env.wait_for("db's entry, despite the refused reload", |s| {
        s.cgroups.contains_key(&713)
    })
    .await;
    let (_, state, _) = env.kernel();
    assert!(state.cgroups.contains_key(&712), "{state:?}");
    daemon.shutdown_background();
}

/// A reload the loader never takes leaves the kernel on the rules before
/// it: status and explain do not describe the file's new rules as
/// enforced, and say so until an apply succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_the_loader_did_not_take_is_not_reported_enforced() {
    let env = Env::new("not-taken");
    let loader = gated_loader::GatedLoader::new(env.loader.clone());
    env.loader.attach_cgroup(MANAGED_PARENT);
    loader.serve(&env.path("loader.sock"));
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 721)]);
    let daemon = env.start_daemon("policy.toml");
    let client = env.client().await;
    env.wait_status("web enforced", &client, |s| {
        s.containers.iter().any(|c| c.mode == "enforce")
    })
    .await;
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert_eq!(status.unknown_container, Some(Verdict::Deny));
    assert!(status.generation.is_some());

    // Grant ssh to web and let unknown containers through; the loader
    // takes no apply.
    loader.take_no_apply(true);
    let ssh = V1
        .replace(
            "ports = [443] }]",
            "ports = [443] }, { to = \"10.0.0.5\", proto = \"tcp\", ports = [22] }]",
        )
        .replace(
            "unknown_container = \"deny\"",
            "unknown_container = \"allow\"",
        );
    env.write("policy.toml", &ssh);
    env.wait_status("the reload failed", &client, |s| s.reload_failures > 0)
        .await;
    let (_, state, _) = env.kernel();
    assert!(!state.ports.keys().any(|k| k.port == 22), "{state:?}");
    let status = client.status(ctx()).await.unwrap().unwrap();
    let web = &status.containers[0];
    assert_eq!(web.mode, "unverified", "{web:#?}");
    assert_eq!(
        (status.unknown_container, status.generation),
        (None, None),
        "the file's verdict is not the maps': status says what it does not know"
    );
    let rendered = policyd::cli::render_status(&status);
    for line in [
        "unknown containers: unverified",
        "generation ?",
        "kernel maps:  unverified",
    ] {
        assert!(rendered.contains(line), "{line:?} not in:\n{rendered}");
    }
    let e = client
        .explain(ctx(), query("web", "10.0.0.5", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.mode, "unverified", "{e:#?}");
    assert!(
        e.reason
            .starts_with("unverified (policyd does not know what the loader's maps hold"),
        "{}",
        e.reason
    );

    // Once an apply is taken, both say it is enforced again.
    loader.take_no_apply(false);
    client
        .reload(ctx(), false, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    let e = client
        .explain(ctx(), query("web", "10.0.0.5", "22", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.mode.as_str(), e.verdict),
        ("enforce", Some(Verdict::Allow)),
        "{e:#?}"
    );
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert_eq!(status.containers[0].mode, "enforce");
    assert_eq!(status.unknown_container, Some(Verdict::Allow));
    let rendered = policyd::cli::render_status(&status);
    assert!(
        rendered.contains("unknown containers: allow (in the maps)"),
        "{rendered}"
    );
    drop(client);
    daemon.shutdown_background();
}

/// A loader restarted on fresh maps holds nothing of what policyd last
/// applied: until policyd has given it the state again, status and
/// explain do not call the container enforced. The restarted loader's
/// first apply is held so that the window stays open while they answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_restarted_on_fresh_maps_is_not_reported_enforcing() {
    let env = Env::new("fresh-maps");
    env.loader.attach_cgroup(MANAGED_PARENT);
    let first_loader = serve_on_own_runtime(&env.loader, &env.path("loader.sock"));
    env.write("policy.toml", V1);
    env.write_inventory(&[("web", 731)]);
    let daemon = env.start_daemon("policy.toml");
    let client = env.client().await;
    env.wait_status("web enforced", &client, |s| {
        s.containers.iter().any(|c| c.mode == "enforce")
    })
    .await;

    first_loader.shutdown_background();
    let fresh = MemoryLoader::default();
    fresh.attach_cgroup(MANAGED_PARENT);
    let second_loader = gated_loader::GatedLoader::new(fresh.clone());
    let (arrived, release) = second_loader.arm();
    second_loader.serve(&env.path("loader.sock"));
    // A guard against hanging forever, not a measure of anything.
    tokio::time::timeout(Duration::from_secs(30), arrived)
        .await
        .expect("policyd gave the restarted loader the state")
        .unwrap();
    assert!(fresh.snapshot().1.cgroups.is_empty());
    let status = client.status(ctx()).await.unwrap().unwrap();
    assert_eq!(status.containers[0].mode, "unverified", "{status:#?}");
    let e = client
        .explain(ctx(), query("web", "10.0.0.1", "443", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.mode, "unverified", "{e:#?}");

    release.send(()).unwrap();
    env.wait_status("web enforced again", &client, |s| {
        s.containers.iter().any(|c| c.mode == "enforce")
    })
    .await;
    assert_eq!(fresh.snapshot().1.cgroups.len(), 1);
    drop(client);
    daemon.shutdown_background();
}
