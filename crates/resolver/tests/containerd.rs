//! The containerd path against a real containerd: Debian's `containerd` and
//! `runc` (installed by `tests/containerd/prepare.sh` if missing), started
//! here on a private socket and root, an image imported from a busybox-static
//! tarball built locally, containers run with `ctr`, and the real `resolver`
//! binary queried over its tarpc socket.
//!
//! Privileged: run as root (`cargo test -p resolver --test containerd`).
//! Everything is created under names carrying this run's pid and removed
//! afterwards; leftovers of an earlier, killed run are removed first.

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use proto::resolver::{ResolverClient, Runtime};
use test_kit::{
    cgroup::remove_tree as remove_cgroup_tree,
    cleanup::dead_owner,
    containerd::{self, Containerd},
    lab::{self, VethEnd},
};

/// The private containerd's directory: `<prefix><pid>`.
const BASE_PREFIX: &str = "contain-test-ctrd-";
const WAIT: Duration = Duration::from_secs(20);

/// Container ids of run `pid`: `rt<pid>-<name>` (containerd namespaces).
fn cid(pid: u32, name: &str) -> String {
    format!("rt{pid}-{name}")
}

/// Docker ids are 64 hex digits: `c0de<pid as 8 hex><n as 52 hex>`.
fn docker_id(pid: u32, n: u32) -> String {
    format!("c0de{pid:08x}{n:052x}")
}

/// The cgroup parent of run `pid`'s containers (`ctr run --cgroup`), in
/// every hierarchy, so cleanup is by name and touches nothing shared.
fn cgroup_parent(pid: u32) -> String {
    format!("contain-test-resolver-{pid}c")
}

/// The links a run makes in this namespace: `crt<pid>…`.
fn link_prefix(pid: u32) -> String {
    format!("crt{pid}")
}

/// Removes what earlier, killed runs left: their containerd and its
/// state, their containers' cgroups, their links.
fn sweep_leftovers() {
    for e in std::fs::read_dir("/var/lib")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = dead_owner(&name, BASE_PREFIX) {
            eprintln!("removing leftovers of run {pid}");
            containerd::remove_state(&e.path());
            for hierarchy in test_kit::cgroup::all_hierarchies().unwrap_or_default() {
                remove_cgroup_tree(&hierarchy.join(cgroup_parent(pid)));
            }
        }
    }
    test_kit::cleanup::sweep_dead_runs("crt");
}

/// A private containerd, the resolver under test and a stand-in Docker
/// API, in the run's directory.
struct Env {
    pid: u32,
    base: PathBuf,
    containerd: Containerd,
    resolver: Option<Child>,
    resolver_log: Vec<u8>,
    docker_api: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    fn new() -> Env {
        sweep_leftovers();
        let pid = std::process::id();
        let base = PathBuf::from("/var/lib").join(format!("{BASE_PREFIX}{pid}"));
        let containerd = Containerd::start(&base, &cgroup_parent(pid), &["default", "moby"])
            .unwrap_or_else(|e| panic!("prerequisite missing: {e}"));
        Env {
            pid,
            base,
            containerd,
            resolver: None,
            resolver_log: vec![],
            docker_api: None,
        }
    }

    fn start_containerd(&mut self) {
        if let Err(e) = self.containerd.start_daemon() {
            panic!("{e}");
        }
    }

    fn stop_containerd(&mut self) {
        self.containerd.stop_daemon();
    }

    fn tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.base.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn ctr(&self, ns: &str, args: &[&str]) -> String {
        self.containerd
            .ctr(ns, args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ctr run -d` of `sleep 600` (or `cmd`), with extra flags; the
    /// task's pid (0 when it has already exited).
    fn run_container(&self, ns: &str, id: &str, flags: &[&str], cmd: &[&str]) -> u32 {
        self.containerd
            .run_container(ns, id, flags, cmd)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or(0)
    }

    fn remove_container(&self, ns: &str, id: &str) {
        self.containerd.remove_container(ns, id);
    }

    fn start_resolver(&mut self, extra: &[&str]) -> PathBuf {
        let socket = self.base.join("resolver.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("resolver.log"))
            .unwrap();
        let mut args: Vec<String> = vec![
            "--socket".into(),
            socket.display().to_string(),
            "--containerd-socket".into(),
            self.containerd.socket().display().to_string(),
            "--docker-socket".into(),
            self.base.join("docker.sock").display().to_string(),
            "--docker-root".into(),
            self.base.join("docker").display().to_string(),
        ];
        // No periodic listing unless the caller asks for one: events alone
        // must keep the inventory current.
        if !extra.contains(&"--rescan-secs") {
            args.extend(["--rescan-secs".into(), "3600".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_resolver"))
            .args(&args)
            .env("RUST_LOG", "resolver=debug,info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the resolver binary");
        self.resolver = Some(child);
        socket
    }

    fn stop_resolver(&mut self) {
        if let Some(mut child) = self.resolver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A stand-in for dockerd's API socket: answers `/containers/json` with
    /// `body`, as dockerd would (HTTP/1.0, connection closed after).
    fn serve_docker_api(&mut self, body: String) {
        let path = self.base.join("docker.sock");
        let _ = std::fs::remove_file(&path);
        let listener =
            tokio::net::UnixListener::bind(&path).expect("binding the fake Docker socket");
        self.docker_api = Some(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let ok =
                        String::from_utf8_lossy(&req).starts_with("GET /containers/json?all=1");
                    let resp = if ok {
                        format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}")
                    } else {
                        "HTTP/1.0 404 Not Found\r\n\r\n{}".to_string()
                    };
                    let _ = stream.write_all(resp.as_bytes()).await;
                });
            }
        }));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.resolver_log = std::fs::read(self.base.join("resolver.log")).unwrap_or_default();
        if std::thread::panicking() {
            eprintln!(
                "---- resolver.log (tail) ----\n{}",
                self.tail("resolver.log")
            );
            eprintln!(
                "---- containerd.log (tail) ----\n{}",
                self.containerd.log_tail()
            );
        }
        self.stop_resolver();
        if let Some(h) = self.docker_api.take() {
            h.abort();
        }
        for e in std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&link_prefix(self.pid)) {
                // Gone already if its container's namespace went first.
                let _ = lab::delete_link(&name);
            }
        }
        if let Ok(dir) = std::env::var("RESOLVER_TEST_LOG_DIR") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(Path::new(&dir).join("resolver.log"), &self.resolver_log);
        }
        // The containerd (its containers, cgroups and state) goes with
        // its field.
    }
}

async fn status_of(client: &ResolverClient, source_prefix: &str) -> proto::resolver::SourceStatus {
    let status = client.status(ctx()).await.expect("status over tarpc");
    status
        .sources
        .iter()
        .find(|s| s.name.starts_with(source_prefix))
        .cloned()
        .unwrap_or_else(|| panic!("no source {source_prefix} in {status:?}"))
}

async fn wait_source(
    client: &ResolverClient,
    connected: bool,
    what: &str,
) -> proto::resolver::SourceStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status_of(client, "containerd:").await;
        if s.connected == connected {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; last status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cgroup_path_of(pid: u32) -> String {
    resolver::cgroup::parse_proc_cgroup(&std::fs::read(format!("/proc/{pid}/cgroup")).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_follows_a_real_containerd() {
    if !root_or_skip("resolver_follows_a_real_containerd") {
        return;
    }
    let mut env = Env::new();
    let pid = env.pid;

    // ---- containerd absent: the resolver serves anyway and says why ----
    env.stop_containerd();
    let socket = env.start_resolver(&[]);
    let client = connect(&socket).await;
    let s = wait_source(&client, false, "containerd reported unreachable").await;
    assert!(s.last_error.is_some(), "the reason is reported: {s:?}");
    assert!(list(&client).await.containers.is_empty());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        std::fs::read_to_string(env.base.join("resolver.log"))
            .unwrap()
            .contains("containerd unavailable"),
        "the log says containerd is unavailable and that it retries"
    );
    env.stop_resolver();
    env.start_containerd();

    // ---- start-up with containers already running ----
    let c1 = cid(pid, "c1");
    let p_c1 = env.run_container("default", &c1, &["--label", "egress=block"], &[]);
    let h1 = cid(pid, "h1");
    let p_h1 = env.run_container("default", &h1, &["--net-host"], &[]);
    let (d1, d2) = (docker_id(pid, 1), docker_id(pid, 2));
    let p_d1 = env.run_container("moby", &d1, &[], &[]);
    let p_d2 = env.run_container("moby", &d2, &[], &[]);
    // A CNI plugin's work: a veth whose peer goes into c1's namespace.
    let veth0 = format!("{}0", link_prefix(pid));
    lab::add_veth(VethEnd::own(&veth0), VethEnd::of_process(p_c1, "eth1"))
        .unwrap_or_else(|e| panic!("{e}"));
    // Docker's side: d1 through the API, d2 only through config.v2.json.
    env.serve_docker_api(format!(
        r#"[{{"Id":"{d1}","Names":["/web"],"Image":"nginx:1.25","Labels":{{"egress":"block","tier":"public"}}}}]"#
    ));
    let d2_dir = env.base.join("docker/containers").join(&d2);
    std::fs::create_dir_all(&d2_dir).unwrap();
    std::fs::File::create(d2_dir.join("config.v2.json"))
        .unwrap()
        .write_all(
            br#"{"Name":"/curler","Config":{"Image":"curlimages/curl:8","Labels":{"team":"sec"}}}"#,
        )
        .unwrap();

    let socket = env.start_resolver(&[]);
    let client = connect(&socket).await;
    // The first inventory a client gets already holds every running
    // container: an empty one would tell policyd they are all gone.
    let first = list(&client).await;
    for (ns, id) in [
        ("default", &c1),
        ("default", &h1),
        ("moby", &d1),
        ("moby", &d2),
    ] {
        assert!(
            find(&first, ns, id).is_some(),
            "{ns}/{id} is missing from the first inventory served: {first:?}"
        );
    }
    let ifindex0 = ifindex(&veth0);
    let snap = wait_for(&client, WAIT, "c1, h1, d1 and d2 mapped", |s| {
        let ready = find(s, "default", &c1).is_some_and(|c| !c.host_veths.is_empty())
            && find(s, "default", &h1).is_some()
            && find(s, "moby", &d1).is_some_and(|c| c.name == "web")
            && find(s, "moby", &d2).is_some_and(|c| c.name == "curler");
        ready.then(|| s.clone())
    })
    .await;
    let mount = cgroup_mount();
    let c = find(&snap, "default", &c1).unwrap();
    assert_eq!(c.runtime, Runtime::Containerd);
    assert_eq!(c.pids.first(), Some(&p_c1), "init pid first");
    assert_eq!(c.cgroup_path, cgroup_path_of(p_c1));
    assert_eq!(
        c.cgroup_path,
        format!("/{}/{c1}", cgroup_parent(pid)),
        "the path ctr was given"
    );
    assert_eq!(
        c.cgroup_id,
        inode(&mount.join(c.cgroup_path.trim_start_matches('/')))
    );
    assert_eq!(
        c.netns_inode,
        inode(Path::new(&format!("/proc/{p_c1}/ns/net")))
    );
    assert_eq!(
        c.host_veths.iter().map(|v| v.ifindex).collect::<Vec<_>>(),
        vec![ifindex0]
    );
    assert_eq!(c.image, containerd::TEST_IMAGE);
    assert_eq!(
        c.labels.get("egress").map(String::as_str),
        Some("block"),
        "containerd labels"
    );
    assert!(!c.host_network);
    let h = find(&snap, "default", &h1).unwrap();
    assert!(h.host_network && h.host_veths.is_empty(), "{h:?}");
    assert_eq!(h.pids.first(), Some(&p_h1));
    let d = find(&snap, "moby", &d1).unwrap();
    assert_eq!(
        (d.runtime, d.image.as_str()),
        (Runtime::Docker, "nginx:1.25")
    );
    assert_eq!(
        d.labels.get("tier").map(String::as_str),
        Some("public"),
        "Docker's labels from the API"
    );
    assert_eq!(d.pids.first(), Some(&p_d1));
    let d = find(&snap, "moby", &d2).unwrap();
    assert_eq!(
        (d.image.as_str(), d.labels["team"].as_str()),
        ("curlimages/curl:8", "sec"),
        "from config.v2.json"
    );
    assert_eq!(d.pids.first(), Some(&p_d2));
    let web = list(&client).await.containers;
    let web = web
        .iter()
        .find(|c| c.name == "web")
        .expect("a container named web");
    assert_eq!(web.id, d1);
    let s = status_of(&client, "containerd:").await;
    assert!(s.connected && s.resyncs >= 1, "{s:?}");

    // ---- executables: what paths name in each container's own root ----
    let lookup = |namespace: &str, id: &str, path: &str, sha256: bool| proto::resolver::ExeLookup {
        namespace: namespace.into(),
        container_id: id.into(),
        path: path.into(),
        sha256,
    };
    let got = client
        .executables(
            ctx(),
            vec![
                lookup("default", &c1, "/bin/sleep", true),
                lookup("default", &c1, "/bin/busybox", false),
                lookup("moby", &d1, "/bin/busybox", false),
                lookup("default", &c1, "/usr/bin/curl", false),
                lookup("moby", &c1, "/bin/busybox", false),
            ],
        )
        .await
        .unwrap();
    let stat = |path: String| resolver::exe::file_id(&std::fs::metadata(path).unwrap());
    let busybox_c1 = got[0].as_ref().expect("/bin/sleep in c1");
    // /bin/sleep is the image's symlink to busybox, followed inside c1.
    assert_eq!(
        busybox_c1.file,
        stat(format!("/proc/{p_c1}/root/bin/busybox"))
    );
    assert_eq!(got[1].as_ref().unwrap().file, busybox_c1.file);
    // Where the symlinks end, as a path in the container's own root (the
    // kernel shows it from the top of c1's mount namespace): /bin/sleep is
    // BusyBox, and a rule naming it would be every applet.
    assert_eq!(busybox_c1.final_path.as_deref(), Some("/bin/busybox"));
    assert_eq!(
        busybox_c1
            .shared("/bin/sleep")
            .and_then(|s| s.other_name)
            .as_deref(),
        Some("busybox")
    );
    // Named as itself, with one link (the image's applets are symlinks).
    let named = got[1].as_ref().unwrap();
    assert_eq!(
        (named.final_path.as_deref(), named.links),
        (Some("/bin/busybox"), 1)
    );
    assert_eq!(named.shared("/bin/busybox"), None);
    // The image's busybox is a copy of the host's: same content, other file.
    let host = resolver::exe::hash(&mut std::fs::File::open("/bin/busybox").unwrap()).unwrap();
    assert_eq!(busybox_c1.sha256.as_deref(), Some(host.as_str()));
    assert_ne!(busybox_c1.file, stat("/bin/busybox".into()));
    // d1 has its own root filesystem: its busybox is another file.
    let busybox_d1 = got[2].as_ref().expect("/bin/busybox in d1");
    assert_eq!(
        busybox_d1.file,
        stat(format!("/proc/{p_d1}/root/bin/busybox"))
    );
    assert_ne!(busybox_d1.file, busybox_c1.file);
    assert!(
        got[3].as_ref().unwrap_err().contains("no such file"),
        "{:?}",
        got[3]
    );
    // An id is a container's only within its namespace.
    assert!(
        got[4]
            .as_ref()
            .unwrap_err()
            .contains(&format!("no container {c1} is running in namespace moby")),
        "{:?}",
        got[4]
    );

    // ---- a read-only root filesystem, as the OCI spec says ----
    let ro = cid(pid, "ro");
    env.run_container("default", &ro, &["--read-only"], &[]);
    let r = wait_for(&client, WAIT, "ro mapped", |s| {
        find(s, "default", &ro).cloned()
    })
    .await;
    assert_eq!(r.readonly_rootfs, Some(true));
    let c = find(&list(&client).await, "default", &c1).unwrap().clone();
    assert_eq!(c.readonly_rootfs, Some(false));
    env.remove_container("default", &ro);

    // ---- a container joining c1's network namespace (a pod) ----
    let mut watcher = Watcher::new(&client).await;
    let s1 = cid(pid, "s1");
    let netns_flag = format!("network:/proc/{p_c1}/ns/net");
    env.run_container("default", &s1, &["--with-ns", &netns_flag], &[]);
    let s = wait_for(&client, WAIT, "s1 shares c1's namespace and veth", |s| {
        find(s, "default", &s1)
            .filter(|c| !c.host_veths.is_empty())
            .cloned()
    })
    .await;
    let c = find(&list(&client).await, "default", &c1).unwrap().clone();
    assert_eq!(
        (s.netns_inode, &s.host_veths),
        (c.netns_inode, &c.host_veths)
    );
    assert_ne!(s.cgroup_id, c.cgroup_id);
    let by_if: Vec<String> = list(&client)
        .await
        .containers
        .into_iter()
        .filter(|c| c.host_veths.iter().any(|v| v.ifindex == ifindex0))
        .map(|c| c.id)
        .collect();
    assert_eq!(by_if, vec![c1.clone(), s1.clone()]);
    watcher.converge(&client, WAIT).await;

    // ---- a running container's labels change (containerd update event) ----
    env.ctr("default", &["containers", "label", &c1, "tier=web"]);
    wait_for(&client, WAIT, "c1 carries its new label", |s| {
        find(s, "default", &c1)
            .filter(|c| c.labels.get("tier").map(String::as_str) == Some("web"))
            .cloned()
    })
    .await;

    // ---- containers coming and going quickly ----
    let mut kept = Vec::new();
    for i in 0..8 {
        let id = cid(pid, &format!("q{i}"));
        match i % 3 {
            0 => {
                let p = env.run_container("default", &id, &[], &[]);
                kept.push((id, p));
            }
            1 => {
                env.run_container("default", &id, &[], &[]);
                env.remove_container("default", &id);
            }
            _ => {
                // Exits by itself at once.
                env.run_container("default", &id, &[], &["true"]);
            }
        }
        watcher.poll(&client, 0).await;
    }
    let snap = wait_for(
        &client,
        WAIT,
        "only the q containers still running are listed",
        |s| {
            let qs: Vec<&str> = s
                .containers
                .iter()
                .filter(|c| c.id.contains("-q"))
                .map(|c| c.id.as_str())
                .collect();
            let want: Vec<&str> = kept.iter().map(|(id, _)| id.as_str()).collect();
            (qs == want).then(|| s.clone())
        },
    )
    .await;
    for (id, p) in &kept {
        assert_eq!(find(&snap, "default", id).unwrap().pids.first(), Some(p));
    }
    watcher.converge(&client, WAIT).await;
    for (id, _) in &kept {
        assert!(
            watcher.seen_added.contains(&format!("default/{id}")),
            "the watcher saw {id} arrive"
        );
    }

    // ---- containerd restarts; a container dies while it is down ----
    let resyncs_before = status_of(&client, "containerd:").await.resyncs;
    env.stop_containerd();
    wait_source(&client, false, "containerd reported down").await;
    let snap = list(&client).await;
    assert!(
        find(&snap, "default", &c1).is_some(),
        "containers stay listed while containerd is down"
    );
    let (victim, victim_pid) = kept.remove(0);
    unsafe {
        libc::kill(victim_pid as i32, libc::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.start_containerd();
    let s = wait_source(&client, true, "containerd reconnected").await;
    assert!(
        s.resyncs > resyncs_before,
        "a reconnect resynchronises: {s:?}"
    );
    wait_for(
        &client,
        WAIT,
        "the container that died during the outage is gone",
        |s| find(s, "default", &victim).is_none().then_some(()),
    )
    .await;
    let n1 = cid(pid, "n1");
    let p_n1 = env.run_container("default", &n1, &[], &[]);
    let n = wait_for(
        &client,
        WAIT,
        "a container started after the restart",
        |s| find(s, "default", &n1).cloned(),
    )
    .await;
    assert_eq!(n.pids.first(), Some(&p_n1));
    let snap = list(&client).await;
    for id in [&c1, &h1, &s1] {
        assert!(
            find(&snap, "default", id).is_some(),
            "{id} survived the restart"
        );
    }
    watcher.converge(&client, WAIT).await;

    // ---- a container deleted: gone, and its cgroup id no longer maps ----
    let cg = find(&snap, "default", &c1).unwrap().cgroup_id;
    env.remove_container("default", &c1);
    wait_for(&client, WAIT, "c1 removed", |s| {
        find(s, "default", &c1).is_none().then_some(())
    })
    .await;
    assert!(list(&client)
        .await
        .containers
        .iter()
        .all(|c| c.cgroup_id != cg));
    watcher.converge(&client, WAIT).await;

    // ---- containerd too busy to answer a listing in time ----
    // The resolver again, listing every second; containerd paused past the
    // 5 s call timeout, as by a burst of starts. The listings time out and
    // status says so, but the session and its event stream stay: once
    // containerd answers, a new container arrives with no reconnect, and
    // the next listing clears the error.
    env.stop_resolver();
    let resolver_log = env.base.join("resolver.log");
    let sessions = || {
        std::fs::read_to_string(&resolver_log)
            .unwrap_or_default()
            .matches("following containerd")
            .count()
    };
    let sessions_before = sessions() + 1;
    let socket = env.start_resolver(&["--rescan-secs", "1"]);
    let client = connect(&socket).await;
    wait_source(&client, true, "the restarted resolver follows containerd").await;
    // Its session's log line comes right after status says connected.
    let deadline = Instant::now() + WAIT;
    while sessions() < sessions_before {
        assert!(
            Instant::now() < deadline,
            "the restarted resolver never logged its session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let _paused = env.containerd.pause().unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_secs(8)).await;
        let s = status_of(&client, "containerd:").await;
        assert!(
            s.connected
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("timed out")),
            "a listing timed out, and the source is still connected: {s:?}"
        );
    }
    let b1 = cid(pid, "b1");
    let p_b1 = env.run_container("default", &b1, &[], &[]);
    let b = wait_for(
        &client,
        WAIT,
        "a container started once containerd answers",
        |s| find(s, "default", &b1).cloned(),
    )
    .await;
    assert_eq!(b.pids.first(), Some(&p_b1));
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status_of(&client, "containerd:").await;
        if s.connected && s.last_error.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the error stays: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sessions(),
        sessions_before,
        "no new session: the event stream stayed through the timeouts\n{}",
        env.tail("resolver.log")
    );
    assert!(
        std::fs::read_to_string(&resolver_log)
            .unwrap_or_default()
            .contains("a full listing of containerd failed"),
        "the log says why"
    );
}
