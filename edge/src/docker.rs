//! A thin Docker Engine API client over a unix socket (Docker/Moby on a Pi, Podman's
//! Docker-compatible service elsewhere): the calls the agent makes and nothing else. One HTTP/1.1
//! connection per call; a unix socket is cheap and the agent makes a few calls a second at most.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE as BASE64_URL;
use base64::Engine as _;
use bytes::Bytes;
use hyper::{Method, Request, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::container::{OWNER, OWNER_LABEL};
use crate::deployment::RegistryCredential;

/// The Engine API version the calls are written against (Docker 20.10+, Podman 3+).
const API: &str = "/v1.41";
/// How long one call may take (a pull has its own).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Seconds a container is given to stop before it is killed (edgeAgent's default).
const STOP_GRACE_SECS: u32 = 30;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's socket cannot be reached.
    #[error("no container engine at {}: {source}; start Docker (`systemctl start docker`) or Podman's Docker-compatible service (`podman system service --time=0 unix://{}`), or set [moby_runtime] uri", .socket.display(), .socket.display())]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The engine answered with an error.
    #[error("{what}: the engine answered {status}: {message}")]
    Api {
        /// The call.
        what: String,
        /// HTTP status.
        status: StatusCode,
        /// The engine's message.
        message: String,
    },
    /// The HTTP exchange failed or timed out.
    #[error("{what}: {reason}")]
    Transport {
        /// The call.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

impl EngineError {
    /// Whether the engine said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::Api { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// Where the engine listens, from `[moby_runtime] uri`.
pub fn socket_of(uri: &str) -> Result<PathBuf, String> {
    match uri.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(format!(
            "[moby_runtime] uri \"{uri}\" is not unix:///path (only unix sockets are supported)"
        )),
    }
}

/// The engine client.
#[derive(Clone, Debug)]
pub struct Engine {
    /// The engine's socket.
    socket: PathBuf,
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// `repository` and `tag` (or digest) of an image reference, for `fromImage`/`tag`.
fn split_reference(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

impl Engine {
    /// A client for the engine at `socket`.
    pub fn new(socket: &Path) -> Self {
        Engine {
            socket: socket.to_owned(),
        }
    }

    async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        let transport = |reason: String| EngineError::Transport {
            what: what.to_owned(),
            reason,
        };
        let exchange = async {
            let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
                EngineError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                }
            })?;
            let mut request = Request::builder()
                .method(method)
                .uri(format!("{API}{path}"))
                .header("Host", "docker");
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            crate::http::exchange(stream, request, body)
                .await
                .map_err(transport)
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| transport(format!("no answer within {} s", timeout.as_secs())))??;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok((status, bytes));
        }
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
        Err(EngineError::Api {
            what: what.to_owned(),
            status,
            message,
        })
    }

    async fn json(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, EngineError> {
        let (_, bytes) = self
            .call(what, method, path, body, &[], CALL_TIMEOUT)
            .await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| EngineError::Transport {
            what: what.to_owned(),
            reason: format!("the engine's answer is not JSON: {e}"),
        })
    }

    /// Checks that the engine answers (`GET /_ping`).
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.call("ping", Method::GET, "/_ping", None, &[], CALL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// The ids of every container the agent owns (by edgeAgent's owner label), running or not.
    pub async fn owned_containers(&self) -> Result<Vec<String>, EngineError> {
        let filters = json!({ "label": [format!("{OWNER_LABEL}={OWNER}")] }).to_string();
        let list = self
            .json(
                "list containers",
                Method::GET,
                &format!("/containers/json?all=true&filters={}", enc(&filters)),
                None,
            )
            .await?;
        Ok(list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("Id").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `GET /containers/{id}/json`.
    pub async fn inspect(&self, id: &str) -> Result<Value, EngineError> {
        self.json(
            "inspect container",
            Method::GET,
            &format!("/containers/{}/json", enc(id)),
            None,
        )
        .await
    }

    /// Whether `image` is on the device.
    pub async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        match self
            .call(
                "inspect image",
                Method::GET,
                &format!("/images/{}/json", enc(image)),
                None,
                &[],
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pulls `image`, with `credentials` for its registry if given. The engine streams progress
    /// as JSON lines; an `error` line is the failure.
    pub async fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredential>,
    ) -> Result<(), EngineError> {
        let what = format!("pull {image}");
        let (repository, tag) = split_reference(image);
        let mut headers = Vec::new();
        if let Some(c) = credentials {
            let auth = json!({ "username": c.username, "password": c.password.expose(), "serveraddress": c.address });
            headers.push(("X-Registry-Auth", BASE64_URL.encode(auth.to_string())));
        }
        let path = format!(
            "/images/create?fromImage={}&tag={}",
            enc(repository),
            enc(tag)
        );
        let (_, bytes) = self
            .call(&what, Method::POST, &path, None, &headers, PULL_TIMEOUT)
            .await?;
        let failure = String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find_map(|event| {
                event
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        match failure {
            Some(message) => Err(EngineError::Api {
                what,
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message,
            }),
            None => Ok(()),
        }
    }

    /// Creates container `name` from `body`; its id.
    pub async fn create(&self, name: &str, body: &Value) -> Result<String, EngineError> {
        let answer = self
            .json(
                "create container",
                Method::POST,
                &format!("/containers/create?name={}", enc(name)),
                Some(body),
            )
            .await?;
        answer
            .get("Id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| EngineError::Transport {
                what: "create container".into(),
                reason: "the answer has no Id".into(),
            })
    }

    /// Starts a container.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.json(
            "start container",
            Method::POST,
            &format!("/containers/{}/start", enc(id)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Restarts a container (stopping it first if it runs).
    pub async fn restart(&self, id: &str) -> Result<(), EngineError> {
        let path = format!("/containers/{}/restart?t={STOP_GRACE_SECS}", enc(id));
        self.json("restart container", Method::POST, &path, None)
            .await
            .map(|_| ())
    }

    /// Stops a container, killing it after the grace period.
    pub async fn stop(&self, id: &str) -> Result<(), EngineError> {
        let path = format!("/containers/{}/stop?t={STOP_GRACE_SECS}", enc(id));
        let timeout = CALL_TIMEOUT + Duration::from_secs(STOP_GRACE_SECS.into());
        self.call("stop container", Method::POST, &path, None, &[], timeout)
            .await
            .map(|_| ())
    }

    /// Removes a container, stopping it if it runs.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let path = format!("/containers/{}?force=true", enc(id));
        match self
            .json("remove container", Method::DELETE, &path, None)
            .await
        {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// The container's log, stdout and stderr interleaved: the last `tail` lines (`None`: all),
    /// from `since` (unix seconds) on.
    pub async fn logs(
        &self,
        id: &str,
        tail: Option<u32>,
        since: Option<i64>,
    ) -> Result<String, EngineError> {
        let mut path = format!("/containers/{}/logs?stdout=true&stderr=true", enc(id));
        path.push_str(&format!(
            "&tail={}",
            tail.map_or("all".to_owned(), |t| t.to_string())
        ));
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let (_, bytes) = self
            .call(
                "container logs",
                Method::GET,
                &path,
                None,
                &[],
                CALL_TIMEOUT,
            )
            .await?;
        Ok(demultiplex(&bytes))
    }
}

/// The text of a log stream: without a TTY the engine frames each chunk with an 8-byte header
/// (stream, 0, 0, 0, big-endian length); with one it is raw.
pub fn demultiplex(bytes: &[u8]) -> String {
    let framed = bytes.len() >= 8 && matches!(bytes[0], 0..=2) && bytes[1..4] == [0, 0, 0];
    if !framed {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut text = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while rest.len() >= 8 {
        let length = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + length).min(rest.len());
        text.extend_from_slice(&rest[8..end]);
        rest = &rest[end..];
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_repository_and_tag() {
        assert_eq!(
            split_reference("localhost:5000/edgetwin:0.1.0-amd64"),
            ("localhost:5000/edgetwin", "0.1.0-amd64")
        );
        assert_eq!(
            split_reference("localhost:5000/edgetwin"),
            ("localhost:5000/edgetwin", "latest")
        );
        assert_eq!(split_reference("alpine"), ("alpine", "latest"));
        assert_eq!(split_reference("r/a@sha256:ab"), ("r/a", "sha256:ab"));
    }

    #[test]
    fn framed_log_streams_are_joined_and_raw_ones_kept() {
        let mut framed = vec![1, 0, 0, 0, 0, 0, 0, 6];
        framed.extend_from_slice(b"hello\n");
        framed.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 4]);
        framed.extend_from_slice(b"err\n");
        assert_eq!(demultiplex(&framed), "hello\nerr\n");
        assert_eq!(demultiplex(b"plain text log\n"), "plain text log\n");
    }

    #[test]
    fn only_unix_socket_uris_are_taken() {
        assert_eq!(
            socket_of("unix:///var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert!(socket_of("tcp://127.0.0.1:2375")
            .unwrap_err()
            .contains("tcp://127.0.0.1:2375"));
    }
}
