//! policyd's connections to the loader and the resolver, shared by the
//! engine and the readers: each redials on demand after a failure.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use proto::{
    loader::{LoaderClient, VETH_ATTACHMENTS_SINCE},
    policyd::{Connection, PolicydError},
    resolver::{ExeFile, ExeLookup, ResolverClient},
    transport,
};

/// Connection to the loader, shared by the engine and the readers,
/// re-established on demand.
pub struct LoaderLink {
    pub path: PathBuf,
    client: Mutex<Option<LoaderClient>>,
    last_error: Mutex<Option<String>>,
}

/// Who may serve the loader's and the resolver's sockets: root, or this
/// daemon's own user (stand-ins a test runs as it). The sockets' directory
/// is writable by the daemons' group: another member's socket in their
/// place would take the policy, or feed a forged inventory.
fn daemon_server() -> transport::ServerIs {
    transport::ServerIs::root_or([nix::unistd::geteuid().as_raw()])
}

/// A client of the resolver at `path`.
pub(super) async fn resolver_client(path: &Path) -> std::io::Result<ResolverClient> {
    let stream = transport::connect(path, &daemon_server()).await?;
    Ok(ResolverClient::new(
        tarpc::client::Config::default(),
        transport::client(stream, transport::Service::Resolver),
    )
    .spawn())
}

/// Locks `m`; a panic elsewhere while it was held left a plain value.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoaderLink {
    pub fn new(path: PathBuf) -> Self {
        LoaderLink {
            path,
            client: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    pub async fn client(&self) -> Result<LoaderClient, PolicydError> {
        if let Some(client) = lock(&self.client).clone() {
            return Ok(client);
        }
        let stream = transport::connect(&self.path, &daemon_server())
            .await
            .map_err(|e| self.failed(e.to_string()))?;
        let client = LoaderClient::new(
            tarpc::client::Config::default(),
            transport::client(stream, transport::Service::Loader),
        )
        .spawn();
        *lock(&self.client) = Some(client.clone());
        *lock(&self.last_error) = None;
        Ok(client)
    }

    /// Drops the connection after a transport error; the next call redials.
    pub fn failed(&self, error: String) -> PolicydError {
        *lock(&self.client) = None;
        *lock(&self.last_error) = Some(error.clone());
        PolicydError::LoaderUnavailable(error)
    }

    /// Records an error the loader answered with (the connection is fine).
    pub fn refused(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub fn connected(&self) -> bool {
        lock(&self.client).is_some()
    }

    pub fn connection(&self) -> Connection {
        Connection {
            connected: self.connected(),
            endpoint: self.path.display().to_string(),
            error: lock(&self.last_error).clone(),
        }
    }

    /// Calls the loader; a transport failure drops the connection. A
    /// request the loader turned away (too many in flight on this
    /// connection) leaves the connection as it is.
    pub async fn call<T, Answer>(
        &self,
        what: &str,
        call: impl FnOnce(LoaderClient) -> Answer,
    ) -> Result<T, PolicydError>
    where
        Answer: std::future::Future<Output = Result<T, tarpc::client::RpcError>>,
    {
        let client = self.client().await?;
        call(client).await.map_err(|e| {
            let error = format!("{what} request failed: {e}");
            match e {
                tarpc::client::RpcError::Server(_) => {
                    self.refused(error.clone());
                    PolicydError::LoaderUnavailable(error)
                }
                _ => self.failed(error),
            }
        })
    }

    /// The cgroups the loader's programs are attached to, relative to the
    /// cgroup2 mount, or why they are not known.
    pub async fn attached_parents(&self) -> crate::coverage::AttachedParents {
        let ctx = transport::context_with_deadline(10);
        let attachments = self
            .call("attachments", |c| async move { c.attachments(ctx).await })
            .await
            .map_err(|e| e.to_string())?;
        Ok(attachments.into_iter().map(|a| a.cgroup_path).collect())
    }

    /// The generation the loader's maps are at now, or why it is not known.
    pub async fn generation(&self) -> Result<u64, String> {
        let ctx = transport::context_with_deadline(10);
        self.call("generation", |c| async move { c.generation(ctx).await })
            .await
            .map_err(|e| e.to_string())
    }

    /// The host-side veths the loader's backstop is attached to, by
    /// ifindex, or why they are not known.
    pub async fn attached_veths(&self) -> Result<BTreeSet<u32>, String> {
        let ctx = transport::context_with_deadline(10);
        let info = self
            .call("version", |c| async move { c.version(ctx).await })
            .await
            .map_err(|e| e.to_string())?;
        // An older loader would close the connection on the request, and
        // with it every other call in flight.
        if info.api_version < VETH_ATTACHMENTS_SINCE {
            return Err(format!(
                "the loader ({}, API version {}) does not report its veth attachments: restart it on this version",
                info.version, info.api_version
            ));
        }
        let ctx = transport::context_with_deadline(10);
        let veths = self
            .call("veth_attachments", |c| async move {
                c.veth_attachments(ctx).await
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(veths.into_iter().map(|v| v.ifindex).collect())
    }
}

/// Context for a state transfer or apply, which take a while on a big host.
pub fn loader_deadline() -> tarpc::context::Context {
    transport::context_with_deadline(60)
}

/// The resolver, asked what `exe` paths name inside containers (policyd
/// cannot open other users' `/proc/<pid>/root`; the resolver can).
pub struct ExeResolver {
    path: PathBuf,
    client: Mutex<Option<ResolverClient>>,
}

/// How a resolution the resolver could not be asked for starts.
pub const UNANSWERED: &str = "not resolved: the resolver could not be asked";

/// Paths asked for in one request.
const EXE_LOOKUPS_PER_REQUEST: usize = 4096;

impl ExeResolver {
    pub fn new(path: PathBuf) -> Self {
        ExeResolver {
            path,
            client: Mutex::new(None),
        }
    }

    /// Resolves `lookups`, in order; `Err` when the resolver could not be
    /// asked (nothing is known then).
    pub async fn executables(
        &self,
        lookups: Vec<ExeLookup>,
    ) -> Result<Vec<Result<ExeFile, String>>, String> {
        let mut results = Vec::with_capacity(lookups.len());
        for chunk in lookups.chunks(EXE_LOOKUPS_PER_REQUEST) {
            let cached = lock(&self.client).clone();
            let client = match cached {
                Some(c) => c,
                None => {
                    let client = resolver_client(&self.path).await.map_err(|e| {
                        format!("the resolver ({}) is unavailable: {e}", self.path.display())
                    })?;
                    *lock(&self.client) = Some(client.clone());
                    client
                }
            };
            // Hashing large executables takes a while.
            let got = client
                .executables(transport::context_with_deadline(60), chunk.to_vec())
                .await
                .map_err(|e| {
                    *lock(&self.client) = None;
                    format!("the resolver's executables request failed: {e}")
                })?;
            if got.len() != chunk.len() {
                return Err(format!(
                    "the resolver answered {} results for {} paths",
                    got.len(),
                    chunk.len()
                ));
            }
            results.extend(got);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader's and the resolver's sockets sit in a directory the
    /// daemons' group may write: a socket another user binds there must be
    /// refused before policyd sends it the policy or takes its inventory.
    #[tokio::test]
    async fn a_loader_or_resolver_socket_another_user_serves_is_refused() {
        if !test_kit::privileged::root_or_skip(
            "a_loader_or_resolver_socket_another_user_serves_is_refused",
            "a socket bound by another user",
        ) {
            return;
        }
        let dir = std::env::temp_dir().join(format!("policyd-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let path = dir.join("taken.sock");
        let squatter = test_kit::rpc::Squatter::bind(&path).expect("nobody binds the socket");

        let loader = LoaderLink::new(path.clone());
        let err = loader
            .client()
            .await
            .expect_err("the loader's socket, served by nobody, is refused");
        assert!(
            err.to_string()
                .contains("another process took the socket's place"),
            "{err}"
        );
        let err = resolver_client(&path)
            .await
            .expect_err("the resolver's socket, served by nobody, is refused");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

        drop(squatter);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
