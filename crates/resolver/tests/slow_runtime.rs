//! A runtime that accepts connections and never answers (a hung containerd,
//! a hung dockerd) must not block the resolver: start-up waits a bounded
//! time for containerd's first listing (so that no client gets an inventory
//! that leaves out running containers), then the inventory is served and
//! answers at once, and the source reports the trouble and retries. Needs
//! no privileges.

mod common;

use std::time::{Duration, Instant};

use resolver::{Config, Daemon};

/// A scratch directory `<tmp>/<prefix><pid>`, removed on drop (also when
/// the test fails); those of earlier, dead runs are removed first.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Scratch {
        test_kit::cleanup::sweep_dead_runs(prefix);
        let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Accepts connections on `path` and holds them open without a word.
fn hung_server(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).expect("binding the hung socket");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_containerd_never_blocks_the_service() {
    let scratch = Scratch::new("contain-resolver-slow-");
    let dir = scratch.0.clone();
    let hung = hung_server(&dir.join("containerd.sock"));

    let mut config = Config::new(dir.join("resolver.sock"));
    config.containerd_socket = Some(dir.join("containerd.sock"));
    config.docker_socket = dir.join("docker.sock");
    config.docker_root = dir.join("docker");
    // Unprivileged runs may use the socket through their own group.
    config.socket_group = Some(unsafe { libc::getegid() });
    let starting = Instant::now();
    let daemon = Daemon::start(config)
        .await
        .unwrap_or_else(|e| panic!("starting the resolver: {e}"));
    // It waited for the listing that never came, as long as it waits and
    // no longer: until then no client could take an empty inventory for
    // the truth.
    let waited = starting.elapsed();
    assert!(
        waited >= resolver::FIRST_LISTING_WAIT
            && waited < resolver::FIRST_LISTING_WAIT + Duration::from_secs(5),
        "start-up waited {waited:?} for the hung containerd's listing"
    );
    let client = common::connect(&dir.join("resolver.sock")).await;

    // Answers at once, while the containerd source is stuck.
    for _ in 0..5 {
        let started = Instant::now();
        let snap = common::list(&client).await;
        assert!(snap.containers.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "list took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A watch with nothing to report answers when its wait is over.
    let started = Instant::now();
    let reply = client
        .watch(common::ctx(), snap_generation(&client).await, 300)
        .await
        .unwrap();
    assert!(
        matches!(reply, proto::resolver::WatchReply::Changes { ref changes, .. } if changes.is_empty())
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // The source gives up on the silent containerd, says why, and retries.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.status(common::ctx()).await.unwrap();
        let source = status
            .sources
            .iter()
            .find(|s| s.name.starts_with("containerd:"))
            .cloned();
        if let Some(s) = source.filter(|s| s.last_error.is_some()) {
            assert!(!s.connected);
            assert!(s.last_error.unwrap().contains("timed out"));
            break;
        }
        assert!(Instant::now() < deadline, "no timeout reported: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.shutdown().await;
    hung.abort();
}

async fn snap_generation(client: &proto::resolver::ResolverClient) -> u64 {
    common::list(client).await.generation
}

#[tokio::test]
async fn a_hung_docker_api_falls_back_to_config_v2_json() {
    let scratch = Scratch::new("contain-resolver-slow-docker-");
    let dir = scratch.0.clone();
    let id = "ab".repeat(32);
    let config_dir = dir.join("root/containers").join(&id);
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.v2.json"),
        br#"{"Name":"/slowpoke","Config":{"Image":"x","Labels":{}}}"#,
    )
    .unwrap();
    let hung = hung_server(&dir.join("docker.sock"));
    let docker = resolver::docker::Docker::new(dir.join("docker.sock"), dir.join("root"));

    let started = Instant::now();
    assert_eq!(
        docker.lookup(&id).await.map(|m| m.name),
        Some("slowpoke".to_string())
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "first lookup waited {:?}",
        started.elapsed()
    );
    // After one timeout the API is left alone for a while: no more waiting.
    let started = Instant::now();
    assert_eq!(
        docker.lookup(&id).await.map(|m| m.name),
        Some("slowpoke".to_string())
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "second lookup waited {:?}",
        started.elapsed()
    );
    hung.abort();
}
