//! The loader's socket: root only, checked by peer credentials, and robust
//! against garbage.

mod common;

use std::{io::Write, os::unix::fs::PermissionsExt, os::unix::net::UnixStream};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_root_clients_are_refused_and_garbage_does_not_crash_it() {
    let Some(()) = require_root("non_root_clients_are_refused_and_garbage_does_not_crash_it")
    else {
        return;
    };
    let mut lab = Lab::new();
    let client = lab.start_loader().await;
    let mode = std::fs::metadata(&lab.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "loader socket must be root-only");

    // Even with the file mode opened up, the credential check refuses
    // uid 65534: the connection is dropped before any request is read.
    std::fs::set_permissions(&lab.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::fs::set_permissions(&lab.scratch, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = format!(
        "import socket,struct\n\
         s=socket.socket(socket.AF_UNIX); s.connect('{}'); s.settimeout(5)\n\
         try:\n\
         \x20   s.sendall(struct.pack('>I',2)+b'{{}}')\n\
         \x20   print('closed' if s.recv(16)==b'' else 'answered')\n\
         except (BrokenPipeError, ConnectionResetError): print('closed')",
        lab.socket.display()
    );
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
            &script,
        ])
        .output()
        .expect("setpriv");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "closed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Closed because of who it was, not because of what it sent (the
    // frame is no request either): the loader says so.
    let refused = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(lab.loader_log()).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("peer refused by credential check") && l.contains("\"uid\":65534"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < refused,
            "the loader did not log refusing uid 65534: {log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Garbage from root: a bogus frame and a huge length prefix.
    for payload in [&b"\x00\x00\x00\x05hello"[..], &b"\xff\xff\xff\xffxx"[..]] {
        let mut s = UnixStream::connect(&lab.socket).expect("connect");
        let _ = s.write_all(payload);
    }
    // Still serving.
    let info = client
        .version(tarpc::context::current())
        .await
        .expect("loader still answers");
    assert_eq!(info.api_version, proto::API_VERSION);
    let fresh = lab.client().await.expect("new connection");
    fresh
        .version(tarpc::context::current())
        .await
        .expect("new client answered");
}
