//! Docker's own names and labels for the containers containerd runs in its
//! `moby` namespace.
//!
//! containerd knows a Docker container only by its id: Docker creates the
//! containerd container with the OCI spec and a bundle-path label, not with
//! the container's name or its labels. So those come from Docker itself:
//!
//! 1. The Engine API (`GET /containers/json?all=1`, on `/var/run/docker.sock`):
//!    Docker's documented, versioned interface. It is served from dockerd's
//!    in-memory view of its containers (the one `docker ps` uses), which does
//!    not wait on the lock a container holds while it is being started, so
//!    it answers during the very start the resolver is reacting to.
//! 2. If the API does not answer in time (dockerd busy, hung, restarting, or
//!    its socket not mounted where the resolver runs), `config.v2.json` in
//!    Docker's data root (`/var/lib/docker/containers/<id>/`): an internal
//!    file, but written atomically before the container is started and
//!    stable since Docker 1.10. After an API failure the file is used alone
//!    for a while, so a hung dockerd costs one timeout, not one per event.
//!
//! The id correlates the two sides; nothing is inferred from cgroup names.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{
    body::Bytes,
    header::{HOST, USER_AGENT},
    Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use crate::error::{Error, Result};

/// What Docker says about a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerMeta {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
}

/// Docker names start with `/`; users never type it.
fn clean_name(name: &str) -> String {
    name.strip_prefix('/').unwrap_or(name).to_string()
}

#[derive(Deserialize)]
struct ApiContainer {
    #[serde(rename = "Id", default)]
    id: String,
    #[serde(rename = "Names", default)]
    names: Option<Vec<String>>,
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Pure: parses the body of `GET /containers/json` into metadata by id.
pub fn parse_api_list(body: &[u8]) -> Result<HashMap<String, DockerMeta>> {
    let list: Vec<ApiContainer> =
        serde_json::from_slice(body).map_err(|e| Error::Docker(format!("container list: {e}")))?;
    Ok(list
        .into_iter()
        .filter(|c| !c.id.is_empty())
        .map(|c| {
            // The first name is the container's own; others are legacy links
            // (`/other/alias`).
            let name = c
                .names
                .unwrap_or_default()
                .iter()
                .map(|n| clean_name(n))
                .find(|n| !n.contains('/'))
                .unwrap_or_default();
            let meta = DockerMeta {
                name,
                labels: c.labels.unwrap_or_default(),
                image: c.image.unwrap_or_default(),
            };
            (c.id, meta)
        })
        .collect())
}

#[derive(Deserialize)]
struct ConfigV2 {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Option<ConfigV2Config>,
}

#[derive(Deserialize, Default)]
struct ConfigV2Config {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Pure: parses a container's `config.v2.json`.
pub fn parse_config_v2(body: &[u8]) -> Result<DockerMeta> {
    let c: ConfigV2 =
        serde_json::from_slice(body).map_err(|e| Error::Docker(format!("config.v2.json: {e}")))?;
    let config = c.config.unwrap_or_default();
    Ok(DockerMeta {
        name: clean_name(&c.name),
        labels: config.labels.unwrap_or_default(),
        image: config.image.unwrap_or_default(),
    })
}

/// A Docker container id: 64 lowercase hex digits. Anything else is never
/// used to build a path.
pub fn is_docker_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Largest API response read (a list of thousands of containers fits).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Largest `config.v2.json` read. Docker writes a few kilobytes (the
/// container's config, environment and labels); a bigger file is refused
/// rather than read whole into memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Largest `config.v2.json` read for a container's image reference alone:
/// streamed, everything else skipped as it is read, so only the reference
/// is kept (an image's environment and labels, which land in the same
/// file, cannot push it past what is read for names and labels).
const MAX_IMAGE_CONFIG_BYTES: u64 = 64 << 20;

/// The one field of `config.v2.json` [`Docker::read_image_reference`] keeps.
#[derive(Deserialize)]
struct ImageOnly {
    #[serde(rename = "Config", default)]
    config: Option<ImageOnlyConfig>,
}

#[derive(Deserialize)]
struct ImageOnlyConfig {
    #[serde(rename = "Image", default)]
    image: Option<String>,
}

/// How Docker's metadata is looked up.
pub struct Docker {
    socket: PathBuf,
    root: PathBuf,
    timeout: Duration,
    /// After an API failure, until when the API is not tried.
    api_cooldown_until: Mutex<Option<Instant>>,
}

impl Docker {
    pub fn new(socket: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Docker {
            socket: socket.into(),
            root: root.into(),
            timeout: Duration::from_millis(800),
            api_cooldown_until: Mutex::new(None),
        }
    }

    fn api_allowed(&self) -> bool {
        let guard = self
            .api_cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        guard.is_none_or(|until| Instant::now() >= until)
    }

    fn api_failed(&self, why: &Error) {
        let mut guard = self
            .api_cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if guard.is_none_or(|until| Instant::now() >= until) {
            tracing::warn!(socket = %self.socket.display(), error = %why, "Docker API unavailable; reading names and labels from config.v2.json for the next 10 s");
        }
        *guard = Some(Instant::now() + Duration::from_secs(10));
    }

    /// `GET path` on the Engine API, with hyper's HTTP/1.1 client over the
    /// Unix socket; the body up to [`MAX_RESPONSE_BYTES`].
    async fn get(&self, path: &str) -> Result<Vec<u8>> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Error::Docker(format!(
                "GET {path} on {}: {what}: {e}",
                self.socket.display()
            ))
        };
        let request = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| failed("connect", &e))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| failed("handshake", &e))?;
            let exchange = async {
                let request = Request::get(path)
                    .header(HOST, "docker")
                    .header(USER_AGENT, "contain-resolver")
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| failed("request", &e))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| failed("response", &e))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| failed("body", &e))?
                    .to_bytes();
                if status != StatusCode::OK {
                    return Err(failed("status", &status));
                }
                Ok(body.to_vec())
            };
            // The connection is driven beside the exchange and dropped with
            // it (a timeout leaves nothing behind). Once it ends, the
            // exchange has its response or its error.
            tokio::pin!(exchange);
            tokio::select! {
                result = &mut exchange => result,
                _ = connection => exchange.await,
            }
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| Error::Timeout(format!("Docker API GET {path}")))?
    }

    /// Docker's metadata for containers `ids` (API first, then files).
    pub async fn lookup_many(&self, ids: &[String]) -> HashMap<String, DockerMeta> {
        let mut found = HashMap::new();
        if ids.is_empty() {
            return found;
        }
        if self.api_allowed() {
            let path = if ids.len() == 1 {
                let filter = serde_json::json!({ "id": [ids[0]] }).to_string();
                let filter = utf8_percent_encode(&filter, NON_ALPHANUMERIC);
                format!("/containers/json?all=1&filters={filter}")
            } else {
                "/containers/json?all=1".to_string()
            };
            match self.get(&path).await.and_then(|body| parse_api_list(&body)) {
                Ok(mut all) => {
                    for id in ids {
                        if let Some(meta) = all.remove(id) {
                            found.insert(id.clone(), meta);
                        }
                    }
                }
                Err(e) => self.api_failed(&e),
            }
            for (id, meta) in found.iter_mut() {
                if is_image_id(&meta.image) {
                    self.restore_image_reference(id, meta).await;
                }
            }
        }
        for id in ids {
            if found.contains_key(id) {
                continue;
            }
            match self.read_config(id).await {
                Ok(meta) => {
                    found.insert(id.clone(), meta);
                }
                Err(e) => tracing::debug!(container = %id, error = %e, "no Docker metadata"),
            }
        }
        found
    }

    /// The image reference container `id` was created from, from its
    /// `config.v2.json`, in place of the image id the API lists.
    async fn restore_image_reference(&self, id: &str, meta: &mut DockerMeta) {
        match self.read_image_reference(id).await {
            Ok(image) if !image.is_empty() => meta.image = image,
            Ok(_) => {}
            Err(e) => tracing::warn!(
                container = %id,
                image = %meta.image,
                error = %e,
                "Docker lists this container's image by id only (the name it was created from \
                 now names another image) and its config.v2.json cannot be read: image \
                 selectors do not match it until it can"
            ),
        }
    }

    pub async fn lookup(&self, id: &str) -> Option<DockerMeta> {
        self.lookup_many(&[id.to_string()]).await.remove(id)
    }

    /// `Config.Image` of container `id`'s `config.v2.json`, streamed (up to
    /// [`MAX_IMAGE_CONFIG_BYTES`]).
    async fn read_image_reference(&self, id: &str) -> Result<String> {
        if !is_docker_id(id) {
            return Err(Error::Docker(format!(
                "{id:?} is not a Docker container id"
            )));
        }
        let path = config_path(&self.root, id);
        let read = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let reader = std::io::BufReader::new(std::io::Read::take(file, MAX_IMAGE_CONFIG_BYTES));
            let config: ImageOnly = serde_json::from_reader(reader).map_err(|e| {
                Error::Docker(format!(
                    "{} (read up to {MAX_IMAGE_CONFIG_BYTES} bytes): {e}",
                    path.display()
                ))
            })?;
            Ok(config.config.and_then(|c| c.image).unwrap_or_default())
        });
        read.await
            .map_err(|e| Error::Docker(format!("reading container {id}'s image reference: {e}")))?
    }

    async fn read_config(&self, id: &str) -> Result<DockerMeta> {
        if !is_docker_id(id) {
            return Err(Error::Docker(format!(
                "{id:?} is not a Docker container id"
            )));
        }
        let path = config_path(&self.root, id);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::io(&path, e))?;
        let mut body = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| Error::io(&path, e))?;
        if body.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Error::Docker(format!(
                "{} is over {MAX_CONFIG_BYTES} bytes; not read (the container's name and labels come from the Docker API once it answers)",
                path.display()
            )));
        }
        parse_config_v2(&body)
    }
}

/// An image id as Docker's container list gives it (`sha256:` and 64 hex
/// digits). Docker lists a container's image so once the reference it was
/// created from (`nginx:1.25`) names another image (after a `docker pull`
/// or `docker tag`): selectors name the reference, which the container's
/// `config.v2.json` keeps.
fn is_image_id(image: &str) -> bool {
    image
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn config_path(root: &Path, id: &str) -> PathBuf {
    root.join("containers").join(id).join("config.v2.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn api_list_gives_name_labels_image() {
        let body = format!(
            r#"[{{"Id":"{ID}","Names":["/web/db","/curler"],"Image":"curlimages/curl:8","ImageID":"sha256:x",
               "Labels":{{"egress":"block","com.example":"1"}},"State":"running"}},
               {{"Id":"other","Names":null,"Labels":null}}]"#
        );
        let all = parse_api_list(body.as_bytes()).unwrap();
        let meta = &all[ID];
        assert_eq!(meta.name, "curler");
        assert_eq!(meta.image, "curlimages/curl:8");
        assert_eq!(meta.labels.get("egress").map(String::as_str), Some("block"));
        assert_eq!(all["other"], DockerMeta::default());
    }

    #[test]
    fn api_list_garbage_is_an_error() {
        assert!(parse_api_list(b"{\"message\":\"nope\"}").is_err());
        assert!(parse_api_list(b"").is_err());
    }

    #[tokio::test]
    async fn an_oversized_config_v2_is_refused_unread() {
        let root = tempfile::tempdir().unwrap();
        let path = config_path(root.path(), ID);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let docker = Docker::new(root.path().join("no-docker.sock"), root.path());
        let fits = br#"{"Name":"/web","Config":{"Image":"nginx","Labels":{}}}"#;
        std::fs::write(&path, fits).unwrap();
        assert_eq!(docker.read_config(ID).await.unwrap().name, "web");
        // Valid JSON, one byte over: a label Docker would have written.
        let padding = MAX_CONFIG_BYTES as usize - fits.len() + 1;
        let huge = format!(
            r#"{{"Name":"/web","Config":{{"Image":"nginx","Labels":{{"x":"{}"}}}}}}"#,
            "a".repeat(padding)
        );
        std::fs::write(&path, huge).unwrap();
        let error = docker.read_config(ID).await.unwrap_err().to_string();
        assert!(error.contains("config.v2.json is over"), "{error}");
    }

    #[test]
    fn config_v2_gives_name_labels_image() {
        let body = br#"{"ID":"x","Name":"/nginx-public","Config":{"Image":"nginx:1.25","Labels":{"egress":"block"}},"State":{"Running":true}}"#;
        let meta = parse_config_v2(body).unwrap();
        assert_eq!(meta.name, "nginx-public");
        assert_eq!(meta.image, "nginx:1.25");
        assert_eq!(meta.labels["egress"], "block");
        let minimal = parse_config_v2(br#"{"Name":"/a","Config":{"Labels":null}}"#).unwrap();
        assert!(minimal.labels.is_empty());
        assert!(parse_config_v2(b"[1,2]").is_err());
    }

    #[test]
    fn ids_are_validated_before_use_in_paths() {
        assert!(is_docker_id(ID));
        assert!(!is_docker_id("../../etc/passwd"));
        assert!(!is_docker_id(&ID.to_uppercase()));
        assert!(!is_docker_id(&ID[1..]));
    }

    /// A stand-in for dockerd on a Unix socket: answers each connection
    /// with `reply` (raw HTTP) and records the request line.
    async fn fake_docker(socket: &Path, reply: &'static [u8]) -> tokio::task::JoinHandle<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let n = stream.read(&mut request).await.unwrap();
            stream.write_all(reply).await.unwrap();
            let text = String::from_utf8_lossy(&request[..n]).into_owned();
            text.lines().next().unwrap_or_default().to_string()
        })
    }

    #[tokio::test]
    async fn asks_the_engine_api_and_reads_a_chunked_reply() {
        let dir = std::env::temp_dir().join(format!("contain-docker-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        // Built by hand: a body split over two chunks.
        let body = format!(r#"[{{"Id":"{ID}","Names":["/web"],"Image":"nginx"}}]"#);
        let (first, second) = body.split_at(10);
        let raw = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        );
        let served = fake_docker(&socket, Box::leak(raw.into_bytes().into_boxed_slice())).await;
        let docker = Docker::new(&socket, dir.join("no-root"));
        let meta = docker.lookup(ID).await.expect("metadata from the API");
        assert_eq!((meta.name.as_str(), meta.image.as_str()), ("web", "nginx"));
        let request_line = served.await.unwrap();
        assert!(
            request_line.starts_with("GET /containers/json?all=1&filters=%7B%22id%22%3A%5B%22"),
            "{request_line}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// After `docker pull` or `docker tag` moves the name a container was
    /// created from, the API lists its image by id: the reference comes
    /// from its `config.v2.json`, so an image selector keeps matching.
    #[tokio::test]
    async fn an_image_listed_by_id_is_named_by_the_reference_it_was_created_from() {
        let dir = std::env::temp_dir().join(format!("contain-docker-retag-{}", std::process::id()));
        let config = dir.join("containers").join(ID);
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("config.v2.json"),
            br#"{"Name":"/web","Config":{"Image":"nginx:1.25","Labels":{}}}"#,
        )
        .unwrap();
        let socket = dir.join("docker.sock");
        let body = format!(
            r#"[{{"Id":"{ID}","Names":["/web"],"Image":"sha256:{}"}}]"#,
            "ab".repeat(32)
        );
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _served = fake_docker(&socket, Box::leak(raw.into_bytes().into_boxed_slice())).await;
        let docker = Docker::new(&socket, &dir);
        let meta = docker.lookup(ID).await.expect("metadata from the API");
        assert_eq!(
            (meta.name.as_str(), meta.image.as_str()),
            ("web", "nginx:1.25")
        );

        // A config over the 1 MiB read for names and labels (an image's
        // environment is in it): the reference is still read.
        let env = "A".repeat(2 << 20);
        std::fs::write(
            config.join("config.v2.json"),
            format!(r#"{{"Name":"/web","Config":{{"Env":["X={env}"],"Image":"nginx:1.26","Labels":{{}}}}}}"#),
        )
        .unwrap();
        let mut listed = DockerMeta {
            image: format!("sha256:{}", "ab".repeat(32)),
            ..DockerMeta::default()
        };
        docker.restore_image_reference(ID, &mut listed).await;
        assert_eq!(listed.image, "nginx:1.26");
        assert!(is_image_id(&format!("sha256:{}", "0f".repeat(32))));
        assert!(!is_image_id("nginx:1.25"));
        assert!(!is_image_id("sha256:abc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_error_status_is_an_api_failure_not_metadata() {
        let dir = std::env::temp_dir().join(format!("contain-docker-404-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let _served = fake_docker(
            &socket,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n[]",
        )
        .await;
        let docker = Docker::new(&socket, dir.join("no-root"));
        let error = docker.get("/containers/json").await.unwrap_err();
        assert!(error.to_string().contains("404"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn falls_back_to_config_v2_json_when_the_api_is_absent() {
        let root = std::env::temp_dir().join(format!(
            "contain-resolver-docker-test-{}",
            std::process::id()
        ));
        let dir = root.join("containers").join(ID);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            br#"{"Name":"/curler","Config":{"Image":"curl","Labels":{"a":"b"}}}"#,
        )
        .unwrap();
        let docker = Docker::new(root.join("no-such.sock"), &root);
        let meta = docker.lookup(ID).await.unwrap();
        assert_eq!(meta.name, "curler");
        assert!(docker.lookup("not-an-id").await.is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
