//! The daemon's event log and metrics end to end, unprivileged: an
//! in-memory loader reports a denial as the kernel would, policyd writes
//! its JSON line and counts it, a real Prometheus (Debian's `prometheus`
//! package, which `scripts/setup.sh` installs) scrapes `/metrics`, and
//! `promtool check metrics` lints the page.
//!
//! The real kernel's denial moving the same counters is the VM tier's
//! (`tests/vm/scenarios/observe.sh`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kernel_model::state::Verdict;
use policyd::{
    daemon::{self, observe::EventLogTarget, Config, InventorySource},
    inventory::{Container, Inventory},
};
use proto::{
    loader::{Counters, Event, Hook, PolicyCounters},
    policyd::PolicydClient,
    transport,
};
use test_kit::memory_loader::MemoryLoader;

const POLICY: &str = r#"
mode = "enforce"

[[policy]]
name = "lockdown"
select = { name = "curler" }
allow = [{ to = "198.18.0.1", proto = "tcp", ports = [8080] }]

[[policy]]
name = "web"
select = { name = "web" }
allow = [{ to = "198.18.0.1", proto = "tcp", ports = [443] }]
"#;

const CURLER_CGROUP: u64 = 4242;
const WEB_CGROUP: u64 = 4343;

/// How long anything here may take before the test gives up (a liveness
/// bound, not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

struct Lab {
    dir: PathBuf,
    loader: MemoryLoader,
    prometheus: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut p) = self.prometheus.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A port nothing listens on now (the small race with other processes is
/// acceptable on a test machine).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of the one sample `series` (name and labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: this test needs Debian's prometheus package (scripts/setup.sh installs it)",
        path.display()
    );
    path
}

fn denial(cgroup_id: u64, policy_id: u32, port: u16) -> Event {
    Event {
        seq: 0,
        time_ns: 1_764_489_600_000_000_000,
        verdict: Verdict::Deny,
        hook: Hook::Connect4,
        cgroup_id,
        policy_id,
        rule_id: 0,
        tgid: 321,
        uid: 0,
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        proto: contain_common::ip_proto::TCP,
        src: "172.17.0.2".parse().unwrap(),
        dst: "198.18.0.1".parse().unwrap(),
        src_port: 40000,
        dst_port: port,
        icmp_type: None,
        icmp_code: None,
        suppressed: 0,
        revoked_flow: false,
        socket_cookie: 0,
        link_layer: false,
        unattributed: false,
        forged_source: false,
        ethertype: None,
    }
}

fn event_lines(lab: &Lab) -> Vec<serde_json::Value> {
    std::fs::read_to_string(lab.path("events.json"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every event log line is one JSON object"))
        .collect()
}

async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_logged_with_its_container_and_moves_its_counter_in_prometheus() {
    let promtool = tool("promtool");
    let prometheus_bin = tool("prometheus");
    let dir = std::env::temp_dir().join(format!("policyd-observe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        dir,
        loader: MemoryLoader::default(),
        prometheus: None,
    };
    lab.loader.attach_cgroup("/contain.slice");
    lab.loader.serve(&lab.path("loader.sock")).unwrap();
    std::fs::write(lab.path("policy.toml"), POLICY).unwrap();
    let inventory = Inventory {
        containers: [("curler", CURLER_CGROUP), ("web", WEB_CGROUP)]
            .iter()
            .map(|&(name, cgroup)| Container {
                id: format!("{name}0123456789abcdef"),
                name: name.into(),
                image: "registry.example/tools/curl:8.5".into(),
                namespace: "moby".into(),
                runtime: "docker".into(),
                cgroup_id: Some(cgroup),
                cgroup_path: Some(format!("/contain.slice/docker-{name}.scope")),
                ..Container::default()
            })
            .collect(),
    };
    std::fs::write(
        lab.path("inventory.json"),
        serde_json::to_string(&inventory).unwrap(),
    )
    .unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = Config {
        policy: lab.path("policy.toml"),
        socket: lab.path("policyd.sock"),
        loader_socket: lab.path("loader.sock"),
        inventory: InventorySource::File(lab.path("inventory.json")),
        group: "root".into(),
        file_poll: Duration::from_millis(50),
        policy_watch: Some(Duration::from_millis(50)),
        resync_every: Duration::from_secs(3600),
        metrics_listen: Some(metrics_addr),
        event_log: EventLogTarget::File(lab.path("events.json")),
    };
    tokio::spawn(async move {
        if let Err(e) = daemon::run(config).await {
            eprintln!("daemon stopped: {e:#}");
        }
    });

    // The policy's kernel id, once the daemon has applied it.
    let socket = lab.path("policyd.sock");
    let stream = until("policyd's socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })
    .await;
    drop(stream);
    let client = PolicydClient::new(
        tarpc::client::Config::default(),
        transport::client(
            transport::connect(
                &socket,
                &proto::transport::ServerIs::root_or([nix::unistd::geteuid().as_raw()]),
            )
            .await
            .unwrap(),
            transport::Service::Policyd,
        ),
    )
    .spawn();
    let deadline = Instant::now() + PATIENCE;
    let lockdown = loop {
        let status = client
            .status(transport::context_with_deadline(30))
            .await
            .unwrap()
            .unwrap();
        let mapped = status
            .containers
            .iter()
            .any(|c| c.name == "curler" && c.mode == "enforce");
        if let (true, Some(p)) = (
            mapped,
            status.policies.iter().find(|p| p.name == "lockdown"),
        ) {
            break p.policy_id;
        }
        assert!(Instant::now() < deadline, "the policy was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // policyd follows the loader from the events after its start: report
    // web's denials until one is logged, so the follower surely reads on.
    let web_policy = client
        .status(transport::context_with_deadline(30))
        .await
        .unwrap()
        .unwrap()
        .policies
        .iter()
        .find(|p| p.name == "web")
        .unwrap()
        .policy_id;
    let deadline = Instant::now() + PATIENCE;
    while !event_lines(&lab)
        .iter()
        .any(|l| l["container.name"] == "web")
    {
        assert!(Instant::now() < deadline, "policyd never logged an event");
        lab.loader.push_event(denial(WEB_CGROUP, web_policy, 25));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle connections in every scrape slot: the daemon closes each when
    // its request does not come (within seconds, where it had held them
    // for its 30 s connection deadline), and a scrape gets in.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(metrics_addr).unwrap())
        .collect();
    for mut stream in idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).map_err(|e| e.kind()),
            Ok(0),
            "an idle connection to the metrics page was not closed"
        );
    }
    let before = http_get(metrics_addr, "/metrics");
    let curler_denials =
        r#"contain_container_verdicts_total{action="deny",policy="lockdown",container="curler"}"#;
    assert_eq!(sample(&before, curler_denials), None, "{before}");

    // The kernel denies curler's curl to 198.18.0.1:9090 (and its counters
    // say so); four more were held back by the rate limit.
    lab.loader.set_counters(Counters {
        policies: vec![PolicyCounters {
            policy_id: lockdown,
            allowed: 17,
            denied: 5,
            audited: 0,
        }],
        events_dropped_kernel: 2,
        events_dropped_loader: 0,
        events_rate_limited: 4,
        unstamped_sockets: 0,
        unparsed_packets: 3,
        veth_unowned_frames: 6,
        forged_source_frames: 7,
        refused_socket_options: 8,
    });
    let mut e = denial(CURLER_CGROUP, lockdown, 9090);
    e.suppressed = 4;
    lab.loader.push_event(e);

    let line = until("curler's event line", || {
        event_lines(&lab)
            .into_iter()
            .find(|l| l["container.name"] == "curler")
    })
    .await;
    assert_eq!(line["contain.verdict"], "deny");
    assert_eq!(line["contain.reason"], "not_allowed");
    assert_eq!(line["contain.policy"], "lockdown");
    assert_eq!(line["container.id"], "curler0123456789abcdef");
    assert_eq!(line["container.image.name"], "registry.example/tools/curl");
    assert_eq!(line["process.pid"], 321);
    assert_eq!(line["process.executable.path"], "/usr/bin/curl");
    assert_eq!(line["destination.address"], "198.18.0.1");
    assert_eq!(line["destination.port"], 9090);
    assert_eq!(line["network.transport"], "tcp");

    let after = http_get(metrics_addr, "/metrics");
    // The event and the four held back before it.
    assert_eq!(sample(&after, curler_denials), Some(5.0), "{after}");
    assert_eq!(
        sample(
            &after,
            r#"contain_container_verdicts_total{action="deny",policy="web",container="web"}"#
        )
        .map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(
        sample(
            &after,
            r#"contain_policy_verdicts_total{action="deny",policy="lockdown"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"contain_events_dropped_total{reason="ring_buffer_full"}"#
        ),
        Some(2.0)
    );
    assert_eq!(sample(&after, "contain_packets_unparsed_total"), Some(3.0));
    assert_eq!(
        sample(&after, "contain_veth_unowned_frames_total"),
        Some(6.0)
    );
    assert_eq!(
        sample(&after, "contain_forged_source_frames_total"),
        Some(7.0)
    );
    assert_eq!(
        sample(&after, "contain_refused_socket_options_total"),
        Some(8.0)
    );
    assert_eq!(
        sample(&after, r#"contain_containers{state="enforced"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&after, r#"contain_connected{peer="loader"}"#),
        Some(1.0)
    );

    // promtool's lint: names, HELP, types, units.
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(after.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    println!("promtool check metrics: exit {}, {said:?}", lint.status);
    assert!(
        lint.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );

    // The alert rules and the dashboard in deploy/ are valid, and name
    // only metrics the page has.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability");
    let rules = deploy.join("contain-rules.yml");
    let checked = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let dashboard = std::fs::read_to_string(deploy.join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut referenced = std::fs::read_to_string(&rules).unwrap();
    let prometheus_panels = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["datasource"]["type"] == "prometheus");
    for panel in prometheus_panels {
        for target in panel["targets"].as_array().unwrap() {
            referenced.push_str(target["expr"].as_str().unwrap());
            referenced.push('\n');
        }
    }
    let families: Vec<&str> = after
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let mut names: Vec<&str> = referenced
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("contain_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        assert!(
            families.contains(&name),
            "deploy/observability names {name}, which /metrics does not have"
        );
    }

    // A real Prometheus scrapes the endpoint and has the series.
    let prometheus_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        lab.path("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: contain\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    lab.prometheus = Some(
        Command::new(&prometheus_bin)
            .arg(format!(
                "--config.file={}",
                lab.path("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                lab.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Option<f64> {
        let mut stream = TcpStream::connect(prometheus_addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        write!(
            stream,
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: {prometheus_addr}\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body: serde_json::Value =
            serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let up = until("Prometheus to scrape policyd", || {
        query(r#"up{job="contain"}"#)
    })
    .await;
    assert_eq!(up, 1.0);
    let scraped = until("the denial in Prometheus", || {
        query(r#"contain_container_verdicts_total{container="curler",action="deny"}"#)
    })
    .await;
    assert_eq!(scraped, 5.0);
}
