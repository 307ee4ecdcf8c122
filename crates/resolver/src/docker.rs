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

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Pure: splits an HTTP/1.x response into status code and body, undoing a
/// chunked transfer encoding.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let bad = |what: &str| {
        Error::Docker(format!(
            "malformed HTTP response from the Docker API: {what}"
        ))
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or_else(|| bad("chunk not followed by CRLF"))?;
    }
}

/// Percent-encodes a query value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Largest API response read (a list of thousands of containers fits).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

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

    async fn get(&self, path: &str) -> Result<Vec<u8>> {
        let request = async {
            let mut stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| Error::Docker(format!("{}: {e}", self.socket.display())))?;
            let req = format!(
                "GET {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: contain-resolver\r\n\r\n"
            );
            stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| Error::Docker(format!("request: {e}")))?;
            let mut raw = Vec::new();
            (&mut stream)
                .take(MAX_RESPONSE_BYTES as u64)
                .read_to_end(&mut raw)
                .await
                .map_err(|e| Error::Docker(format!("response: {e}")))?;
            let (status, body) = parse_http_response(&raw)?;
            if status != 200 {
                return Err(Error::Docker(format!("GET {path}: HTTP {status}")));
            }
            Ok(body)
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
                format!("/containers/json?all=1&filters={}", url_encode(&filter))
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

    pub async fn lookup(&self, id: &str) -> Option<DockerMeta> {
        self.lookup_many(&[id.to_string()]).await.remove(id)
    }

    async fn read_config(&self, id: &str) -> Result<DockerMeta> {
        if !is_docker_id(id) {
            return Err(Error::Docker(format!(
                "{id:?} is not a Docker container id"
            )));
        }
        let path = config_path(&self.root, id);
        let body = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::io(&path, e))?;
        parse_config_v2(&body)
    }
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

    #[test]
    fn http_plain_body() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[1]";
        assert_eq!(parse_http_response(raw).unwrap(), (200, b"[1]".to_vec()));
    }

    #[test]
    fn http_chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2;ext=1\r\n2]\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(raw).unwrap(), (200, b"[1,2]".to_vec()));
    }

    #[test]
    fn http_errors() {
        assert!(parse_http_response(b"").is_err());
        assert!(parse_http_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_http_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        .is_err());
        assert!(parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort"
        )
        .is_err());
        assert_eq!(
            parse_http_response(b"HTTP/1.1 404 Not Found\r\n\r\n{}")
                .unwrap()
                .0,
            404
        );
    }

    #[test]
    fn url_encoding_of_filters() {
        assert_eq!(
            url_encode(r#"{"id":["ab"]}"#),
            "%7B%22id%22%3A%5B%22ab%22%5D%7D"
        );
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
