//! The `policyd` binary's contract with scripts: exit codes, output on the
//! right stream, `--json`.

use std::process::{Command, Output};

fn policyd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_policyd"))
        .args(args)
        .output()
        .expect("run policyd")
}

fn sample(name: &str) -> String {
    format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory removed when dropped, even if the test fails.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("policyd-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn check_accepts_the_samples() {
    for file in ["policy.toml", "allowlist.json"] {
        let out = policyd(&["check", &sample(file)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
    let out = policyd(&[
        "check",
        &sample("policy.toml"),
        "--inventory",
        &sample("inventory.json"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("runner-1") && stdout.contains("ci-runners"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("packet sockets"),
        "every sample container has a veth of its own: {stdout}"
    );
}

#[test]
fn check_inventory_shows_containers_not_covered_against_packet_sockets() {
    let scratch = Scratch::new("packet-sockets");
    let policy = scratch.file(
        "p.toml",
        "[[policy]]\nname='web'\nselect={image='nginx:*'}\n[[policy]]\nname='tools'\nselect={image='busybox:*'}\n",
    );
    // debug runs with `--network container:web`; edge on the host network;
    // lan on a macvlan network.
    let inventory = scratch.file(
        "inventory.json",
        r#"{"containers": [
  {"id": "a1", "name": "web", "image": "nginx:1.27", "cgroup_id": 1, "host_veths": [7]},
  {"id": "b2", "name": "debug", "image": "busybox:1.36", "cgroup_id": 2, "host_veths": [7]},
  {"id": "c3", "name": "edge", "image": "nginx:1.27", "cgroup_id": 3, "host_network": true},
  {"id": "d4", "name": "lan", "image": "nginx:1.27", "cgroup_id": 4}
]}"#,
    );
    let out = policyd(&["check", &policy, "--inventory", &inventory]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "container edge is not covered against packet sockets: uses the host network: no veth of its own",
        "container lan is not covered against packet sockets: no host-side veth",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    // debug's packet sockets are judged under its own policy on web's veth.
    for covered in ["web", "debug"] {
        assert!(
            !stdout.contains(&format!("container {covered} is not covered")),
            "{stdout}"
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("container \"debug\" shares the network namespace of \"web\"; packets from no container's socket there (the kernel's answers, Docker's DNS forwarding) are judged under \"web\"'s policy (policy \"web\")"),
        "{stderr}"
    );

    let json: serde_json::Value = serde_json::from_slice(
        &policyd(&["check", "--json", &policy, "--inventory", &inventory]).stdout,
    )
    .expect("one JSON document");
    let uncovered: Vec<(&str, bool)> = json["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["packet_sockets_uncovered"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        uncovered,
        [
            ("web", false),
            ("debug", false),
            ("edge", true),
            ("lan", true)
        ]
    );
}

#[test]
fn check_inventory_shows_containers_outside_the_attached_parents_unenforced() {
    let args = [
        "check",
        &sample("policy.toml"),
        "--inventory",
        &sample("inventory.json"),
    ];
    let out = policyd(&[&args[..], &["--attached", "/contain.slice"]].concat());
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("container runner-1 is unenforced: cgroup /system.slice/docker-0a1b2c3d4e5f.scope is not below an attached parent (/contain.slice)"),
        "{stdout}"
    );
    let json_args = [
        &["--json"][..],
        &args[..],
        &["--attached", "/contain.slice"],
    ]
    .concat();
    let json: serde_json::Value =
        serde_json::from_slice(&policyd(&json_args).stdout).expect("one JSON document");
    let modes: Vec<(&str, &str)> = json["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(
        modes,
        [
            ("curler", "enforce"),
            ("nginx", "enforce"),
            ("runner-1", "unenforced"),
            ("grafana", "unrestricted")
        ]
    );

    // Without the attached parents, enforcement is never claimed.
    let stdout = String::from_utf8_lossy(&policyd(&args).stdout).into_owned();
    assert!(
        stdout.contains("containers curler, nginx, runner-1 are unverified: ")
            && stdout.contains("--attached /contain.slice"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_an_invalid_file_with_exit_1_and_a_location() {
    let scratch = Scratch::new("bad");
    let path = scratch.file(
        "bad.toml",
        "[[policy]]\nname = \"a\"\nselect = { name = \"a\" }\nallow = [{ to = \"10.0.0.0/33\" }]\n",
    );
    let out = policyd(&["check", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{path}:4:17: error: invalid destination")),
        "{stderr}"
    );

    let out = policyd(&["--json", "check", &path]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["valid"], false);
    assert_eq!(json["diagnostics"][0]["line"], 4);
    assert_eq!(json["diagnostics"][0]["column"], 17);
}

#[test]
fn unreadable_file_is_exit_1() {
    let out = policyd(&["check", "/nonexistent/policy.toml"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn an_unreachable_daemon_is_exit_2() {
    for cmd in [
        &["status"][..],
        &["reload"],
        &["reload", "--dry-run"],
        &["events"],
        &["explain", "x", "1.1.1.1"],
    ] {
        let mut args = vec!["--socket", "/nonexistent/policyd.sock"];
        args.extend_from_slice(cmd);
        let out = policyd(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The CLI talks only to a policyd run by root or the `contain` user (or
/// its own user): a socket another user binds in the daemon's place gets
/// no request, and the command says why.
#[test]
fn a_socket_another_user_serves_is_refused() {
    if !test_kit::privileged::root_or_skip(
        "a_socket_another_user_serves_is_refused",
        "a socket bound by another user",
    ) {
        return;
    }
    let scratch = Scratch::new("squatted");
    let path = scratch.0.join("policyd.sock");
    let _squatter = test_kit::rpc::Squatter::bind(&path).expect("nobody binds the socket");
    let socket = path.display().to_string();
    for cmd in [&["status"][..], &["reload"], &["events"]] {
        let mut args = vec!["--socket", &socket];
        args.extend_from_slice(cmd);
        let out = policyd(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
        assert!(
            stderr.contains("another process took the socket's place"),
            "{cmd:?}: {stderr}"
        );
    }
}

#[test]
fn usage_errors_are_64_and_help_is_0() {
    assert_eq!(policyd(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(
        policyd(&["explain", "x", "not-an-ip"]).status.code(),
        Some(64)
    );
    assert_eq!(policyd(&["--help"]).status.code(), Some(0));
    let help = String::from_utf8_lossy(&policyd(&["--help"]).stdout).to_string();
    assert!(help.contains("Exit codes"), "{help}");
}

#[test]
fn offline_explain() {
    let args = |process: &str| {
        vec![
            "explain".to_string(),
            "curler".into(),
            "1.1.1.9".into(),
            "--port".into(),
            "443".into(),
            "--process".into(),
            process.into(),
            "--policy".into(),
            sample("policy.toml"),
            "--inventory".into(),
            sample("inventory.json"),
        ]
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        policyd(&refs)
    };
    let out = run(args("/usr/bin/curl"));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ALLOW"));
    let out = run(args("/tmp/curl"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("DENY"));
    let mut a = args("curl");
    a.insert(0, "--json".into());
    let out = run(a);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["verdict"], "deny",
        "comm curl is not exe /usr/bin/curl"
    );
    let mut a = args("curl");
    a[1] = "nobody".into();
    assert_eq!(run(a).status.code(), Some(4));
}

/// Two event lines as policyd writes them: an audited curl and an audited
/// DNS query of container `web`, and a line of another kind.
const EVENT_LINES: &str = r#"{"timestamp":"2026-11-30T08:00:00.000000001Z","level":"info","event.name":"contain.egress.audit","contain.verdict":"audit","contain.reason":"not_allowed","contain.policy":"observe","contain.hook":"connect4","contain.seq":1,"contain.cgroup_id":7,"contain.suppressed":0,"container.name":"web","container.id":"abc","process.pid":10,"process.user.id":0,"process.executable.name":"curl","process.executable.path":"/usr/bin/curl","network.type":"ipv4","network.transport":"tcp","source.address":"172.17.0.2","source.port":40000,"destination.address":"198.18.0.1","destination.port":443}
{"timestamp":"2026-11-30T09:00:00.000000001Z","level":"info","event.name":"contain.egress.audit","contain.verdict":"audit","contain.reason":"not_allowed","contain.policy":"observe","contain.hook":"sendmsg4","contain.seq":2,"contain.cgroup_id":7,"contain.suppressed":0,"container.name":"web","container.id":"abc","process.pid":11,"process.user.id":0,"process.executable.name":"python3","network.type":"ipv4","network.transport":"udp","source.address":"172.17.0.2","source.port":40001,"destination.address":"198.18.0.53","destination.port":53}
2026-11-30T08:00:00Z  INFO policyd listening
"#;

#[test]
fn suggest_writes_a_policy_that_check_accepts() {
    let scratch = Scratch::new("suggest");
    let events = scratch.file("events.json", EVENT_LINES);
    let out = policyd(&["suggest", "--input", &events]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let suggested = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(suggested.contains("[[policy.process]]\nexe = \"/usr/bin/curl\""));
    assert!(suggested.contains("{ to = [\"198.18.0.53\"], proto = \"udp\", ports = [53] }"));
    let file = scratch.file("suggested.toml", &suggested);
    let check = policyd(&["check", &file]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "policyd check refused the suggestion:\n{suggested}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // A window: only the 08:00 event.
    let out = policyd(&[
        "suggest",
        "--input",
        &events,
        "--until",
        "2026-11-30T08:30:00Z",
    ]);
    let windowed = String::from_utf8_lossy(&out.stdout);
    assert!(windowed.contains("198.18.0.1") && !windowed.contains("198.18.0.53"));

    // journalctl's relative times start with a dash; with a file they
    // are refused for what they are, not taken for flags.
    let out = policyd(&["suggest", "--input", &events, "--since", "-2h"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since \"-2h\""));
    let out = policyd(&["suggest", "--input", &events, "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}
