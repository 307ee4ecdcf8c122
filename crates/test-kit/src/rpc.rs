//! Serving a stand-in for a daemon (the in-memory loader, a test's fake
//! resolver) on a Unix socket the way the daemons serve: proto's accept
//! loop, root peers only, each request on a task of its own.

/// Serves `$server` (a tarpc `Serve` value, e.g. `loader.serve()`) as
/// `$service` (a `proto::transport::Service`) on the Unix socket at
/// `$socket`, from the current tokio runtime. Evaluates to the bind's
/// `std::io::Result<()>`.
///
/// A macro, not a function: requests are spawned, and that their futures
/// are `Send` is only known for a concrete server type.
#[macro_export]
macro_rules! serve_root_only {
    ($socket:expr, $service:expr, $server:expr $(,)?) => {{
        let server = $server;
        $crate::rpc::private::transport::bind($socket, 0o600, None).map(|listener| {
            $crate::rpc::private::tokio::spawn($crate::rpc::private::transport::serve(
                listener,
                $crate::rpc::private::transport::PeerPolicy::RootOnly,
                $service,
                move |channel, _| {
                    $crate::rpc::private::StreamExt::for_each(
                        $crate::rpc::private::Channel::execute(channel, server.clone()),
                        $crate::rpc::private::transport::spawn_request,
                    )
                },
            ));
        })
    }};
}

/// What [`serve_root_only!`] expands to uses, whatever its caller imports.
#[doc(hidden)]
pub mod private {
    pub use futures::StreamExt;
    pub use proto::transport;
    pub use tarpc::server::Channel;
    pub use tokio;
}

/// A Unix socket another user holds where a daemon's should be: bound and
/// listened on by `nobody` (uid 65534), so `SO_PEERCRED` names that user.
/// A client that checks its server must refuse it before it sends a byte.
/// Root only (the kit switches to `nobody` with `setpriv`). The process is
/// killed when this is dropped.
pub struct Squatter {
    _process: crate::process::Proc,
}

/// The uid a [`Squatter`] runs as.
pub const SQUATTER_UID: u32 = 65534;

impl Squatter {
    /// Binds `path`; its directory (a test's scratch directory) is made
    /// writable by everyone first, so `nobody` can bind there.
    pub fn bind(path: &std::path::Path) -> crate::Result<Squatter> {
        use std::{io::BufRead as _, os::unix::fs::PermissionsExt as _};
        let dir = path
            .parent()
            .ok_or_else(|| crate::Error::Setup(format!("{} has no directory", path.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(crate::io_error("making writable by nobody", dir))?;
        let script = format!(
            "import socket,time;s=socket.socket(socket.AF_UNIX);s.bind({:?});s.listen();print('ready',flush=True);time.sleep(300)",
            path.display().to_string()
        );
        let uid = format!("--reuid={SQUATTER_UID}");
        let gid = format!("--regid={SQUATTER_UID}");
        let args = [
            &uid[..],
            &gid,
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ];
        let mut child = std::process::Command::new("setpriv")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| crate::Error::Spawn {
                command: format!("setpriv {}", args.join(" ")),
                source,
            })?;
        let stdout = child.stdout.take();
        let process = crate::process::Proc(child);
        let mut ready = String::new();
        if let Some(out) = stdout {
            let _ = std::io::BufReader::new(out).read_line(&mut ready);
        }
        if ready.trim() != "ready" {
            return Err(crate::Error::Setup(format!(
                "the squatter did not bind {} as uid {SQUATTER_UID}",
                path.display()
            )));
        }
        Ok(Squatter { _process: process })
    }
}
