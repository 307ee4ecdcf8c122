//! The rtnetlink + procfs + cgroup path against "containers" built from
//! network namespaces, veth pairs, cgroup v2 directories and `sleep`
//! processes. Privileged: run as root (`cargo test -p resolver --test netns`).
//!
//! The runtime side is played by the test: it tells the engine "container X
//! has init pid P", as containerd would. Everything after that is the real
//! chain: rtnetlink events and dumps, RTM_GETNSID, /proc, the cgroup tree,
//! and the tarpc service. Full rescans are disabled (one per hour), so every
//! update seen here came from an event.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use proto::resolver::Runtime;
use resolver::{
    source::{RuntimeContainer, SourceEvent},
    Config, Daemon,
};
use test_kit::{
    cgroup::Cgroup,
    lab::{self, Netns, VethEnd},
    process::Proc,
};

const CG_PREFIX: &str = "contain-test-resolver-";
const NS_PREFIX: &str = "contain-rv-";
const LINK_PREFIX: &str = "crv";
const SOCKET_PREFIX: &str = "contain-resolver-test-";
const WAIT: Duration = Duration::from_secs(10);

/// Removes what an earlier, dead run of these tests left behind.
fn sweep_leftovers() {
    for prefix in [CG_PREFIX, NS_PREFIX, SOCKET_PREFIX, LINK_PREFIX] {
        test_kit::cleanup::sweep_dead_runs(prefix);
    }
}

/// Everything one test creates, removed by name on drop.
struct Scene {
    tag: String,
    cgroup_base: Cgroup,
    netns: Vec<Netns>,
    links: Vec<String>,
    procs: Vec<Proc>,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        sweep_leftovers();
        let pid = std::process::id();
        let tag = format!("{pid}{tag}");
        let cgroup_base = Cgroup::create(&cgroup_mount().join(format!("{CG_PREFIX}{tag}")))
            .unwrap_or_else(|e| panic!("{e}"));
        Scene {
            tag,
            cgroup_base,
            netns: vec![],
            links: vec![],
            procs: vec![],
        }
    }

    fn netns(&mut self, n: &str) -> String {
        let name = format!("{NS_PREFIX}{}-{n}", self.tag);
        let netns = Netns::new(&name).unwrap_or_else(|e| panic!("{e}"));
        self.netns.push(netns);
        name
    }

    /// Deletes namespace `name` of this scene now (a container gone).
    fn delete_netns(&mut self, name: &str) {
        let at = self
            .netns
            .iter()
            .position(|ns| ns.name() == name)
            .unwrap_or_else(|| panic!("no namespace {name} in this scene"));
        self.netns
            .remove(at)
            .delete()
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A veth pair: host side `crv<tag><n>`, peer `eth<n>` inside `netns`.
    fn veth(&mut self, n: &str, netns: &str) -> (String, u32) {
        let host = format!("{LINK_PREFIX}{}{n}", self.tag);
        assert!(host.len() <= 15, "interface name {host} too long");
        // A stale one of this name, if any.
        let _ = lab::delete_link(&host);
        let peer = format!("eth{n}");
        lab::add_veth(VethEnd::own(&host), VethEnd::new(netns, &peer))
            .unwrap_or_else(|e| panic!("{e}"));
        self.links.push(host.clone());
        let peer_ifindex = lab::link_in(netns, &peer)
            .unwrap_or_else(|e| panic!("{e}"))
            .ifindex;
        (host, peer_ifindex)
    }

    fn cgroup(&self, n: &str) -> PathBuf {
        let dir = self.cgroup_base.path().join(n);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        dir
    }

    /// `sleep` in cgroup `cg` and (if given) network namespace `netns`;
    /// returns once it is `sleep` in both.
    fn process(&mut self, cg: &Path, netns: Option<&str>) -> u32 {
        let child = match netns {
            // Through `ip netns exec`, which gives it a mount namespace of
            // its own too, as a container has.
            Some(ns) => lab::in_cgroup_ns_cmd(cg, ns, &["sleep".into(), "600".into()])
                .spawn()
                .expect("spawning sh"),
            None => {
                let mut sleep = Command::new("sleep");
                sleep.arg("600");
                lab::spawn_in(sleep, None, Some(cg)).unwrap_or_else(|e| panic!("{e}"))
            }
        };
        let proc = Proc(child);
        let pid = proc.pid();
        self.procs.push(proc);
        for _ in 0..500 {
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
            {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("process {pid} did not become `sleep` in {}", cg.display());
    }

    /// A process in cgroup `cg` and namespace `netns` whose main thread
    /// has ended (`exit`, not `exit_group`) while another thread runs on:
    /// `/proc/<pid>` keeps its pid, start time and cgroup but shows no
    /// namespace. Returns once that is so.
    fn leaderless_process(&mut self, cg: &Path, netns: &str) -> u32 {
        // SYS_exit (60 on x86_64) ends only the calling thread.
        let code = "import ctypes, threading, time\n\
                    threading.Thread(target=time.sleep, args=(600,)).start()\n\
                    ctypes.CDLL(None).syscall(60, 0)\n";
        let child = lab::in_cgroup_ns_cmd(cg, netns, &["python3".into(), "-c".into(), code.into()])
            .spawn()
            .expect("spawning python3");
        let proc = Proc(child);
        let pid = proc.pid();
        self.procs.push(proc);
        for _ in 0..1000 {
            let python = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "python3");
            let no_namespace = std::fs::metadata(format!("/proc/{pid}/ns/net")).is_err();
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
            if python && no_namespace && threads == 2 {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "process {pid} did not end its main thread in {}",
            cg.display()
        );
    }

    fn kill(&mut self, pid: u32) {
        self.procs.retain(|p| p.pid() != pid);
    }

    fn rel(&self, dir: &Path) -> String {
        format!(
            "/{}",
            dir.strip_prefix(cgroup_mount())
                .expect("under the mount")
                .display()
        )
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.procs.clear();
        for l in &self.links {
            // A test may have deleted it already.
            let _ = lab::delete_link(l);
        }
        self.netns.clear();
        let socket = std::env::temp_dir().join(format!("{SOCKET_PREFIX}{}.sock", self.tag));
        let _ = std::fs::remove_file(socket);
        // The cgroups go with their field, after the processes.
    }
}

/// Every test's resolver sees every link event of the host, the other
/// tests' too: run one at a time, no test's namespace churn can overrun
/// another's event socket (a gap re-reads every container in full, which
/// the failed-read test must not meet).
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ALONE.lock().await
}

fn rc(id: &str, pid: u32) -> RuntimeContainer {
    RuntimeContainer {
        runtime: Runtime::Containerd,
        namespace: "test".into(),
        id: id.into(),
        name: format!("name-{id}"),
        labels: BTreeMap::from([("egress".into(), "block".into())]),
        image: "test/image:1".into(),
        pid,
        metadata_complete: true,
        readonly_rootfs: None,
    }
}

async fn start_daemon(tag: &str) -> (Daemon, PathBuf) {
    start_daemon_with(tag, |_| {}).await
}

/// [`start_daemon`], with `adjust` changing the test's configuration.
async fn start_daemon_with(tag: &str, adjust: impl FnOnce(&mut Config)) -> (Daemon, PathBuf) {
    let socket = std::env::temp_dir().join(format!(
        "contain-resolver-test-{}{tag}.sock",
        std::process::id()
    ));
    let mut config = Config::new(&socket);
    config.containerd_socket = None;
    config.rescan = Duration::from_secs(3600);
    adjust(&mut config);
    let daemon = Daemon::start(config)
        .await
        .unwrap_or_else(|e| panic!("starting the resolver: {e}"));
    (daemon, socket)
}

async fn upsert(daemon: &Daemon, c: RuntimeContainer) {
    daemon
        .sender()
        .send(SourceEvent::Upsert {
            source: "test".into(),
            container: c,
        })
        .await
        .expect("engine running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_veth_to_netns_to_pid_to_cgroup_from_events() {
    if !root_or_skip("maps_veth_to_netns_to_pid_to_cgroup_from_events") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("a");
    // Containers already running when the resolver starts.
    let ns = scene.netns("a");
    let (veth0, peer0) = scene.veth("a0", &ns);
    let (cg_a, cg_b, cg_c) = (scene.cgroup("a"), scene.cgroup("b"), scene.cgroup("c"));
    let pa = scene.process(&cg_a, Some(&ns));
    let pb = scene.process(&cg_b, None); // host network
    let pc = scene.process(&cg_c, Some(&ns)); // shares a's namespace

    let (daemon, socket) = start_daemon("a").await;
    let client = connect(&socket).await;
    for (id, pid) in [("a", pa), ("b", pb), ("c", pc)] {
        upsert(&daemon, rc(id, pid)).await;
    }
    let ifindex0 = ifindex(&veth0);
    let snap = wait_for(&client, WAIT, "a, b and c mapped", |s| {
        (find(s, "test", "a").is_some_and(|a| !a.host_veths.is_empty())
            && find(s, "test", "b").is_some()
            && find(s, "test", "c").is_some())
        .then(|| s.clone())
    })
    .await;

    let a = find(&snap, "test", "a").unwrap();
    assert_eq!(a.pids, vec![pa]);
    assert_eq!(a.cgroup_path, scene.rel(&cg_a));
    assert_eq!(
        a.cgroup_id,
        inode(&cg_a),
        "cgroup id is the inode of the cgroup directory"
    );
    assert_eq!(a.netns_inode, inode(&lab::netns_path(&ns)));
    assert!(!a.host_network);
    assert_eq!(a.host_veths.len(), 1);
    assert_eq!(
        (
            a.host_veths[0].ifindex,
            a.host_veths[0].name.as_str(),
            a.host_veths[0].peer_ifindex
        ),
        (ifindex0, veth0.as_str(), peer0)
    );
    assert_eq!(
        (a.name.as_str(), a.runtime, a.labels["egress"].as_str()),
        ("name-a", Runtime::Containerd, "block")
    );

    let b = find(&snap, "test", "b").unwrap();
    assert!(b.host_network, "b runs in the host namespace");
    assert!(b.host_veths.is_empty());
    assert_eq!(b.netns_inode, inode(Path::new("/proc/self/ns/net")));
    assert_eq!(b.cgroup_id, inode(&cg_b));

    let c = find(&snap, "test", "c").unwrap();
    assert_eq!(c.netns_inode, a.netns_inode, "c shares a's namespace");
    assert_eq!(c.host_veths, a.host_veths);
    assert_eq!(c.cgroup_id, inode(&cg_c));

    // Who holds which veth and cgroup, as a client reads it from the list.
    let snap = list(&client).await;
    let on_veth = |ifindex: u32| -> Vec<String> {
        snap.containers
            .iter()
            .filter(|c| c.host_veths.iter().any(|v| v.ifindex == ifindex))
            .map(|c| c.id.clone())
            .collect()
    };
    assert_eq!(on_veth(ifindex0), vec!["a", "c"]);
    assert!(on_veth(1).is_empty(), "lo is no container's veth");
    let in_cgroup = |id: u64| snap.containers.iter().find(|c| c.cgroup_id == id);
    assert_eq!(in_cgroup(inode(&cg_b)).map(|c| c.id.as_str()), Some("b"));
    assert!(in_cgroup(1).is_none());
    assert_eq!(
        snap.containers
            .iter()
            .filter(|c| c.name == "name-c")
            .count(),
        1
    );

    // From here on, a watcher must see every change.
    let mut watcher = Watcher::new(&client).await;

    // A second veth into a's namespace appears: an rtnetlink event, no rescan.
    let (veth1, _) = scene.veth("a1", &ns);
    let ifindex1 = ifindex(&veth1);
    wait_for(&client, WAIT, "a has both veths", |s| {
        find(s, "test", "a")
            .filter(|a| {
                a.host_veths.iter().map(|v| v.ifindex).collect::<Vec<_>>()
                    == vec![ifindex0, ifindex1]
            })
            .cloned()
    })
    .await;
    watcher.converge(&client, WAIT).await;

    // The first veth vanishes.
    lab::delete_link(&veth0).unwrap_or_else(|e| panic!("{e}"));
    let a = wait_for(&client, WAIT, "a keeps only the second veth", |s| {
        find(s, "test", "a")
            .filter(|a| a.host_veths.len() == 1)
            .cloned()
    })
    .await;
    assert_eq!(a.host_veths[0].ifindex, ifindex1);
    assert_eq!(
        find(&list(&client).await, "test", "c").unwrap().host_veths,
        a.host_veths
    );
    assert!(list(&client)
        .await
        .containers
        .iter()
        .all(|c| c.host_veths.iter().all(|v| v.ifindex != ifindex0)));

    // A new process joins a's cgroup (an exec): seen on the runtime's refresh.
    let pa2 = scene.process(&cg_a, Some(&ns));
    daemon
        .sender()
        .send(SourceEvent::Refresh {
            namespace: "test".into(),
            id: "a".into(),
        })
        .await
        .unwrap();
    wait_for(&client, WAIT, "a lists both processes", |s| {
        find(s, "test", "a")
            .filter(|a| a.pids == vec![pa, pa2])
            .cloned()
    })
    .await;

    // b's init process dies: on the next look at b, it is gone.
    scene.kill(pb);
    daemon
        .sender()
        .send(SourceEvent::Refresh {
            namespace: "test".into(),
            id: "b".into(),
        })
        .await
        .unwrap();
    wait_for(&client, WAIT, "b gone after its process died", |s| {
        find(s, "test", "b").is_none().then_some(())
    })
    .await;

    // c is removed by its runtime.
    daemon
        .sender()
        .send(SourceEvent::Remove {
            source: "test".into(),
            namespace: "test".into(),
            id: "c".into(),
        })
        .await
        .unwrap();
    wait_for(&client, WAIT, "c removed", |s| {
        find(s, "test", "c").is_none().then_some(())
    })
    .await;

    watcher.converge(&client, WAIT).await;
    assert_eq!(
        watcher.resyncs, 0,
        "a watcher keeping up never needs a resync"
    );
    let status = client.status(ctx()).await.unwrap();
    assert_eq!(status.containers, 1);
    assert!(
        status
            .sources
            .iter()
            .any(|s| s.name == "rtnetlink" && s.connected),
        "{status:?}"
    );

    daemon.shutdown().await;
    assert!(!socket.exists(), "socket removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_coming_and_going_quickly() {
    if !root_or_skip("containers_coming_and_going_quickly") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("b");
    let (daemon, socket) = start_daemon("b").await;
    let client = connect(&socket).await;
    let mut watcher = Watcher::new(&client).await;

    // Ten containers, each with its own namespace, veth and cgroup, created
    // back to back; every other one is torn down again at once (process
    // killed, veth and namespace deleted) before anyone looks.
    let mut kept = BTreeMap::new();
    for i in 0..10 {
        let n = format!("{i}");
        let ns = scene.netns(&n);
        let (veth, _) = scene.veth(&format!("c{i}"), &ns);
        let cg = scene.cgroup(&n);
        let pid = scene.process(&cg, Some(&ns));
        upsert(&daemon, rc(&format!("q{i}"), pid)).await;
        if i % 2 == 1 {
            scene.kill(pid);
            lab::delete_link(&veth).unwrap_or_else(|e| panic!("{e}"));
            scene.delete_netns(&ns);
            daemon
                .sender()
                .send(SourceEvent::Remove {
                    source: "test".into(),
                    namespace: "test".into(),
                    id: format!("q{i}"),
                })
                .await
                .unwrap();
        } else {
            kept.insert(format!("q{i}"), (ifindex(&veth), inode(&cg)));
        }
        // The watcher polls as it goes, without waiting.
        watcher.poll(&client, 0).await;
    }
    let snap = wait_for(
        &client,
        WAIT,
        "exactly the kept containers, each with its veth",
        |s| {
            let ok = s.containers.len() == kept.len()
                && kept.iter().all(|(id, (ifindex, cg))| {
                    find(s, "test", id).is_some_and(|c| {
                        c.cgroup_id == *cg
                            && c.host_veths.iter().map(|v| v.ifindex).collect::<Vec<_>>()
                                == vec![*ifindex]
                    })
                });
            ok.then(|| s.clone())
        },
    )
    .await;
    let netns: std::collections::BTreeSet<u64> =
        snap.containers.iter().map(|c| c.netns_inode).collect();
    assert_eq!(
        netns.len(),
        kept.len(),
        "every kept container has its own namespace"
    );
    watcher.converge(&client, WAIT).await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executables_are_the_files_paths_name_in_the_containers_root() {
    if !root_or_skip("executables_are_the_files_paths_name_in_the_containers_root") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("e");
    let cg = scene.cgroup("e");
    // Its root is the host's: what the paths name is what stat says here.
    let pid = scene.process(&cg, None);
    let (daemon, socket) = start_daemon("e").await;
    let client = connect(&socket).await;
    upsert(&daemon, rc("e", pid)).await;
    wait_for(&client, WAIT, "e mapped", |s| {
        find(s, "test", "e").map(|_| ())
    })
    .await;

    let lookup = |id: &str, path: &str, sha256: bool| proto::resolver::ExeLookup {
        namespace: "test".into(),
        container_id: id.into(),
        path: path.into(),
        sha256,
    };
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let got = client
        .executables(
            ctx(),
            vec![
                lookup("e", "/bin/sh", true),
                lookup("e", "/no/such/file", false),
                lookup("e", "/proc/self/exe", false),
                lookup("e", "/etc", false),
                lookup("nobody", "/bin/sh", false),
            ],
        )
        .await
        .expect("executables over tarpc");
    let file = got[0].as_ref().expect("/bin/sh resolves");
    assert_eq!(
        file.file,
        resolver::exe::file_id(&std::fs::metadata(&sh).unwrap())
    );
    let content = resolver::exe::hash(&mut std::fs::File::open(&sh).unwrap()).unwrap();
    assert_eq!(file.sha256.as_deref(), Some(content.as_str()));
    assert_eq!(
        got[1].as_ref().unwrap_err(),
        "/no/such/file: no such file in container e"
    );
    assert!(
        got[2].is_err(),
        "magic links are not followed: {:?}",
        got[2]
    );
    assert_eq!(
        got[3].as_ref().unwrap_err(),
        "/etc: not a regular file in container e"
    );
    assert!(
        got[4].as_ref().unwrap_err().contains("no container nobody"),
        "{:?}",
        got[4]
    );

    // The container's processes gone: said so, not guessed.
    scene.kill(pid);
    let got = client
        .executables(ctx(), vec![lookup("e", "/bin/sh", false)])
        .await
        .unwrap();
    assert!(got[0].is_err(), "{got:?}");
    daemon.shutdown().await;
}

/// The addresses container `id` shows, if it is in the inventory.
fn addresses_of(snap: &proto::resolver::Snapshot, id: &str) -> Option<Vec<std::net::IpAddr>> {
    find(snap, "test", id).map(|c| c.addresses.clone())
}

fn ips(list: &[&str]) -> Vec<std::net::IpAddr> {
    let mut v: Vec<std::net::IpAddr> = list.iter().map(|a| a.parse().unwrap()).collect();
    v.sort_unstable();
    v
}

/// The status of the address reads.
async fn addresses_status(
    client: &proto::resolver::ResolverClient,
) -> proto::resolver::SourceStatus {
    let status = client.status(ctx()).await.unwrap();
    status
        .sources
        .into_iter()
        .find(|s| s.name == "procfs-addresses")
        .unwrap_or_else(|| panic!("no procfs-addresses in the status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_addresses_are_read_again_at_link_events() {
    if !root_or_skip("a_containers_addresses_are_read_again_at_link_events") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("f");
    let ns = scene.netns("f");
    let (veth0, _) = scene.veth("f0", &ns);
    lab::add_addr(&ns, "ethf0", "198.18.7.2/24").unwrap();
    lab::add_addr(&ns, "ethf0", "2001:db8:7::2/64").unwrap();
    let cg = scene.cgroup("f");
    let pid = scene.process(&cg, Some(&ns));
    let (daemon, socket) = start_daemon("f").await;
    let client = connect(&socket).await;
    upsert(&daemon, rc("f", pid)).await;
    let first = ips(&["198.18.7.2", "2001:db8:7::2"]);
    wait_for(&client, WAIT, "f shows its addresses", |s| {
        (addresses_of(s, "f")? == first).then_some(())
    })
    .await;
    assert!(addresses_status(&client).await.connected);

    // An address added inside the namespace: nothing on the host's side
    // says so. A second veth into the namespace is a link event for it,
    // and the namespace's addresses are read again.
    lab::add_addr(&ns, "ethf0", "198.18.8.2/24").unwrap();
    let (veth1, _) = scene.veth("f1", &ns);
    let second = ips(&["198.18.7.2", "198.18.8.2", "2001:db8:7::2"]);
    let f = wait_for(&client, WAIT, "f shows the new address", |s| {
        find(s, "test", "f")
            .filter(|f| f.addresses == second && f.host_veths.len() == 2)
            .cloned()
    })
    .await;
    assert_eq!(
        lab::addresses_in(&ns, "ethf0").unwrap(),
        second,
        "what `ip` shows"
    );
    assert_eq!(f.host_veths[0].ifindex, ifindex(&veth0));

    // The second peer configured, then up, as a runtime does: its host
    // side's carrier comes on, a link event for the namespace. (IPv6 off
    // on it: the link-local the kernel would add as it comes up races
    // the read, and shows at the next one.)
    lab::sysctl(&ns, &["net.ipv6.conf.ethf1.disable_ipv6=1"]).unwrap();
    lab::add_addr(&ns, "ethf1", "198.18.9.2/24").unwrap();
    lab::link_up(&ns, "ethf1").unwrap();
    lab::own_link_up(&veth1).unwrap();
    let third = ips(&["198.18.7.2", "198.18.8.2", "198.18.9.2", "2001:db8:7::2"]);
    wait_for(&client, WAIT, "f shows the second peer's address", |s| {
        (addresses_of(s, "f")? == third).then_some(())
    })
    .await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_keeps_what_the_same_namespace_showed_and_says_so() {
    if !root_or_skip("a_failed_read_keeps_what_the_same_namespace_showed_and_says_so") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("g");
    let ns = scene.netns("g");
    scene.veth("g0", &ns);
    lab::add_addr(&ns, "ethg0", "198.18.10.2/24").unwrap();
    let cg = scene.cgroup("g");
    let pid = scene.process(&cg, Some(&ns));
    let (daemon, socket) = start_daemon("g").await;
    let client = connect(&socket).await;
    upsert(&daemon, rc("g", pid)).await;
    let before = ips(&["198.18.10.2"]);
    wait_for(&client, WAIT, "g shows its address", |s| {
        (addresses_of(s, "g")? == before).then_some(())
    })
    .await;

    // Its init process exits, and its runtime has not reaped it yet: the
    // process is still the one announced (same pid, same start time), but
    // it is in no namespace, and its /proc/<pid>/net is gone. A link event
    // for the namespace: g keeps what was read in it, the new address is
    // not made up, the status says why.
    test_kit::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lab::add_addr(&ns, "ethg0", "198.18.11.2/24").unwrap();
    let (veth1, _) = scene.veth("g1", &ns);
    let ifindex1 = ifindex(&veth1);
    let g = wait_for(&client, WAIT, "g's second veth mapped", |s| {
        find(s, "test", "g")
            .filter(|g| g.host_veths.iter().any(|v| v.ifindex == ifindex1))
            .cloned()
    })
    .await;
    assert_eq!(g.addresses, before);
    let status = addresses_status(&client).await;
    assert!(!status.connected, "{status:?}");
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains("test/g") && error.contains(&format!("process {pid}")),
        "names the container and its process: {error}"
    );

    // A full look (as a rescan, or a netlink overrun, makes): g keeps the
    // namespace it was in, and its veths.
    daemon
        .sender()
        .send(SourceEvent::Refresh {
            namespace: "test".into(),
            id: "g".into(),
        })
        .await
        .unwrap();
    let probe = scene.cgroup("g-probe");
    let probe_pid = scene.process(&probe, None);
    upsert(&daemon, rc("g-probe", probe_pid)).await;
    wait_for(&client, WAIT, "the refresh done", |s| {
        find(s, "test", "g-probe").map(|_| ())
    })
    .await;
    let g = find(&list(&client).await, "test", "g")
        .cloned()
        .expect("g still there");
    assert_eq!(g.host_veths.len(), 2, "{g:?}");

    // Its namespace goes before its runtime reaps it: the namespace's id is
    // freed, and the next namespace given one gets the same id. g claims
    // nothing through that id any more: not the new namespace's veth.
    scene.delete_netns(&ns);
    let ns2 = scene.netns("g2");
    let (veth2, _) = scene.veth("g2", &ns2);
    let ifindex2 = ifindex(&veth2);
    let cg2 = scene.cgroup("g2");
    let pid2 = scene.process(&cg2, Some(&ns2));
    upsert(&daemon, rc("g2", pid2)).await;
    wait_for(&client, WAIT, "g2 has its veth", |s| {
        find(s, "test", "g2")
            .filter(|c| c.host_veths.iter().any(|v| v.ifindex == ifindex2))
            .map(|_| ())
    })
    .await;
    let g = wait_for(&client, WAIT, "g has no veth left", |s| {
        find(s, "test", "g")
            .filter(|g| g.host_veths.is_empty())
            .cloned()
    })
    .await;
    assert!(g.host_veths.is_empty(), "{g:?}");

    // Reaped: g is gone at the next look, and with it the failure.
    scene.kill(pid);
    daemon
        .sender()
        .send(SourceEvent::Refresh {
            namespace: "test".into(),
            id: "g".into(),
        })
        .await
        .unwrap();
    wait_for(&client, WAIT, "g gone", |s| {
        find(s, "test", "g").is_none().then_some(())
    })
    .await;
    assert!(addresses_status(&client).await.connected);
    daemon.shutdown().await;
}

/// A container announced before the resolver's first scan (a runtime's
/// first listing, sent as the daemon starts) is published with its veths
/// from its first version on: resolved against a link table not yet read,
/// it would reach policyd's watch, and the veth backstop, with none until
/// the scan. Every version the change log holds is checked, on one thread
/// so the announcement is queued before the resolver's task first runs,
/// over several starts, since which of the two the task took first was a
/// coin toss.
#[tokio::test(flavor = "current_thread")]
async fn a_container_announced_at_start_is_published_with_its_veths() {
    use proto::resolver::{ChangeKind, WatchReply};
    if !root_or_skip("a_container_announced_at_start_is_published_with_its_veths") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("s");
    let ns = scene.netns("s");
    let (veth, _) = scene.veth("s0", &ns);
    let cg = scene.cgroup("s");
    let pid = scene.process(&cg, Some(&ns));
    for start in 0..8 {
        let (daemon, socket) = start_daemon("s").await;
        let first = daemon.snapshot().generation;
        upsert(&daemon, rc("s", pid)).await;
        let client = connect(&socket).await;
        wait_for(&client, WAIT, "s published with a veth", |s| {
            find(s, "test", "s")
                .filter(|s| !s.host_veths.is_empty())
                .map(|_| ())
        })
        .await;
        let Some(WatchReply::Changes { changes, .. }) = daemon.shared().read().changes_after(first)
        else {
            panic!("start {start}: the change log lost the changes after {first}");
        };
        let versions: Vec<Vec<u32>> = changes
            .iter()
            .filter_map(|c| match &c.kind {
                ChangeKind::Added { container } | ChangeKind::Updated { container }
                    if container.id == "s" =>
                {
                    Some(container.host_veths.iter().map(|v| v.ifindex).collect())
                }
                _ => None,
            })
            .collect();
        assert!(!versions.is_empty(), "start {start}: s was never published");
        assert!(
            versions.iter().all(|v| *v == vec![ifindex(&veth)]),
            "start {start}: the veths of each version of s: {versions:?}"
        );
        daemon.shutdown().await;
    }
}

/// A container's init whose main thread has ended while another runs on
/// shows no namespace under `/proc/<pid>`: the resolver reads it through
/// the live thread, so the container keeps its veth and its addresses
/// (without that, the veth backstop would count the veth as no
/// container's, and pass what it should judge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_without_its_main_thread_keeps_its_namespace() {
    if !root_or_skip("an_init_without_its_main_thread_keeps_its_namespace") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("h");
    let ns = scene.netns("h");
    let (veth, _) = scene.veth("h0", &ns);
    lab::add_addr(&ns, "ethh0", "198.18.12.2/24").unwrap();
    let cg = scene.cgroup("h");
    let pid = scene.leaderless_process(&cg, &ns);
    let (daemon, socket) = start_daemon("h").await;
    let client = connect(&socket).await;
    upsert(&daemon, rc("h", pid)).await;
    let addresses = ips(&["198.18.12.2"]);
    let h = wait_for(&client, WAIT, "h resolved", |s| {
        find(s, "test", "h").cloned()
    })
    .await;
    assert_eq!(
        h.host_veths.iter().map(|v| v.ifindex).collect::<Vec<_>>(),
        vec![ifindex(&veth)],
        "{h:?}"
    );
    assert_eq!(h.addresses, addresses, "{h:?}");

    // A full look again (the runtime's refresh, as the periodic rescan
    // does), after an address is added: read through the thread too.
    lab::add_addr(&ns, "ethh0", "198.18.13.2/24").unwrap();
    daemon
        .sender()
        .send(SourceEvent::Refresh {
            namespace: "test".into(),
            id: "h".into(),
        })
        .await
        .unwrap();
    let again = ips(&["198.18.12.2", "198.18.13.2"]);
    wait_for(&client, WAIT, "h read again through its thread", |s| {
        find(s, "test", "h")
            .filter(|h| h.addresses == again && h.host_veths.len() == 1)
            .cloned()
    })
    .await;
    assert!(addresses_status(&client).await.connected);
    daemon.shutdown().await;
}

/// Everything on this one thread (a current-thread runtime), with the
/// effective capabilities of the resolver's unit and no others
/// (debian/systemd/contain-resolver.service, nixos/module.nix): the whole
/// chain, addresses included, as the deployed resolver runs it.
#[tokio::test(flavor = "current_thread")]
async fn the_units_capabilities_are_enough_for_the_whole_chain() {
    use test_kit::privileged::{EffectiveCapabilities, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE};
    if !root_or_skip("the_units_capabilities_are_enough_for_the_whole_chain") {
        return;
    }
    let _alone = one_at_a_time().await;
    let mut scene = Scene::new("h");
    let ns = scene.netns("h");
    let (veth0, _) = scene.veth("h0", &ns);
    for cidr in ["198.18.12.2/24", "198.18.12.3/24", "2001:db8:12::2/64"] {
        lab::add_addr(&ns, "ethh0", cidr).unwrap();
    }
    let cg = scene.cgroup("h");
    let pid = scene.process(&cg, Some(&ns));
    let want = ips(&["198.18.12.2", "198.18.12.3", "2001:db8:12::2"]);
    assert_eq!(lab::addresses_in(&ns, "ethh0").unwrap(), want);

    let unit = EffectiveCapabilities::only(&[CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE])
        .expect("narrowing to the unit's capabilities");
    // The socket's group is this process's own: without CAP_CHOWN, root
    // may give its file only a group it is in (the unit runs with
    // Group=contain, the group the resolver then gives it).
    let gid = nix::unistd::getgid().as_raw();
    let (daemon, socket) = start_daemon_with("h", |c| c.socket_group = Some(gid)).await;
    let client = connect(&socket).await;
    upsert(&daemon, rc("h", pid)).await;
    let h = wait_for(&client, WAIT, "h mapped with its addresses", |s| {
        find(s, "test", "h")
            .filter(|h| h.addresses == want && !h.host_veths.is_empty())
            .cloned()
    })
    .await;
    assert_eq!(h.host_veths[0].ifindex, ifindex(&veth0));
    assert_eq!(h.cgroup_id, inode(&cg));
    assert!(addresses_status(&client).await.connected);
    daemon.shutdown().await;
    drop(unit);
}
