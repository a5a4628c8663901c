//! The IoT Edge workload API, as aziot-edged serves it to modules: one unix socket per edge device
//! answering `GET /trust-bundle` and `POST /modules/{m}/genid/{g}/sign`. A module started with
//! `IOTEDGE_WORKLOADURI` pointing at the socket gets its SAS tokens signed with its key, which it
//! never holds.
//!
//! Sockets exist on demand: one is created when a module's Edge environment is asked for, a
//! module identity is added to the edge device on its own, or `applyConfigurationContent` tells
//! its `$edgeAgent` to run modules (never for a bulk import or an at-scale deployment's targets);
//! the store records it, so the hub serves it again after a restart, and it stops listening and
//! is removed with the device: a registry of 100,000 edge devices does not hold 100,000 file
//! descriptors. Asking for an environment opens a socket only for a caller whose policy may
//! write the registry: a `registryRead` key reads, it never creates. And the sockets one hub
//! holds are capped ([`WorkloadSockets::new`]'s `max`, `edgetwin hub --max-workload-sockets`):
//! past the cap, a new socket is refused with an error that names the cap, and the listeners,
//! bound before any recorded socket is reopened, keep their descriptors. The file
//! name is derived from a hash of the device id ([`socket_file_name`]): an id never becomes a path,
//! and the name has the same short length for every id (a unix socket path is at most
//! [`MAX_SOCKET_PATH`] bytes).
//!
//! With `edgetwin hub --no-workload-api` ([`WorkloadSockets::off`]) the hub is a plain IoT Hub:
//! no socket is created or served, and a module's Edge environment is refused; modules then run
//! under an IoT Edge runtime that serves its own workload API.
//!
//! Unlike aziot-edged, the hub cannot tell containers apart by PID: any process that can open the
//! socket may sign for any module of that device. The socket is created mode 0600.
//!
//! A door beside the hub, not inside it: it answers from the store's read-only connections and
//! the CA certificate it is given ([`WorkloadSockets::new`]), and opens or closes sockets as the
//! writer's after-commit hook hands it the effects of writes ([`WorkloadSockets::apply`]); depends
//! on the store, registry, writer, listener and http modules, never on the hub or another door.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edgetwin_wire::ids::IdError;
use edgetwin_wire::workload::{self, KeyId, WorkloadAnswer, WorkloadRequest};
use http_body_util::Full;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::{http1_server, read_body};
use crate::listener::{self, Limits};
use crate::store::{off_the_async_worker, IdentityKey, Readers};
use crate::writer::Effect;

/// Longest unix socket path, in bytes, that binds everywhere (`sun_path` is 108 bytes on Linux and
/// 104 on macOS, both with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 103;

/// The file name of an edge device's socket: 32 hex digits of the SHA-256 of the id, then `.sock`.
pub fn socket_file_name(device_id: &str) -> String {
    let digest = Sha256::digest(device_id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.sock")
}

/// Why a workload socket could not be made to listen.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The hub's workload API is switched off (`--no-workload-api`).
    #[error("this hub's IoT Edge workload API is switched off (--no-workload-api): it is a plain IoT Hub; run the module under an IoT Edge runtime (`edgetwin edge run` or aziot-edged), which serves its own workload API")]
    Off,
    /// The device id is not one IoT Hub allows (no socket is named after it).
    #[error("device id '{device_id}' {source}")]
    InvalidId {
        /// The refused id.
        device_id: String,
        /// What is wrong with it.
        source: IdError,
    },
    /// The hub already serves as many sockets as it may.
    #[error("this hub already serves {max} workload sockets, as many as it may hold open (edgetwin hub --max-workload-sockets); delete the edge devices no longer used, or raise the cap")]
    Full {
        /// The cap.
        max: usize,
    },
    /// The data directory is so deep that the socket path does not fit a unix socket address.
    #[error("workload socket path {} is {} bytes, longer than the {MAX_SOCKET_PATH} a unix socket allows; use a shorter --data-dir", .path.display(), .path.as_os_str().len())]
    PathTooLong {
        /// The path that does not fit.
        path: PathBuf,
    },
    /// Creating or binding the socket failed.
    #[error("cannot create workload socket {}: {source}", .path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A socket being served; dropping it stops its listener.
struct Served {
    /// Where the socket file is.
    path: PathBuf,
    /// Turns true (or is dropped) to stop the listener and its connections.
    stop: watch::Sender<bool>,
    /// The listener task, which ends once its connections have.
    task: JoinHandle<()>,
}

/// What every workload socket answers from: the store's read-only connections (the modules'
/// keys and generation ids) and the CA certificate (PEM), served as the trust bundle.
pub struct Api {
    /// Read-only connections to the hub's store.
    readers: Arc<Readers>,
    /// The CA certificate (PEM).
    ca_pem: String,
}

impl Api {
    /// Answers from `readers` and the CA certificate `ca_pem`.
    pub fn new(readers: Arc<Readers>, ca_pem: String) -> Self {
        Self { readers, ca_pem }
    }
}

/// The workload sockets being served, one per edge device that has asked for one.
pub struct WorkloadSockets {
    /// Where sockets are created, and what they answer from; `None` when the workload API is
    /// switched off.
    on: Option<(PathBuf, Arc<Api>)>,
    /// Most sockets served at once: each holds a file descriptor, and the process has a limit.
    max: usize,
    /// Devices whose socket is listening.
    serving: Mutex<HashMap<String, Served>>,
}

impl WorkloadSockets {
    /// At most `max` sockets under `dir`, answering from `api`.
    pub fn new(dir: PathBuf, max: usize, api: Api) -> Self {
        Self::serving_in(Some((dir, Arc::new(api))), max)
    }

    /// No sockets at all: the workload API is switched off and every request for a socket is
    /// answered [`SocketError::Off`].
    pub fn off() -> Self {
        Self::serving_in(None, 0)
    }

    fn serving_in(on: Option<(PathBuf, Arc<Api>)>, max: usize) -> Self {
        Self {
            on,
            max,
            serving: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the workload API is served at all.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Whether the socket of `device_id` is being served.
    pub fn is_serving(&self, device_id: &str) -> bool {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(device_id)
    }

    /// Whether [`WorkloadSockets::ensure`] would serve the socket of `device_id`: it already is,
    /// or the cap leaves room for it.
    pub fn has_room_for(&self, device_id: &str) -> Result<(), SocketError> {
        self.path_of(device_id)?;
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if serving.contains_key(device_id) || serving.len() < self.max {
            Ok(())
        } else {
            Err(SocketError::Full { max: self.max })
        }
    }

    /// The socket path of `device_id`, once the id is known to be one IoT Hub allows.
    pub fn path_of(&self, device_id: &str) -> Result<PathBuf, SocketError> {
        let (dir, _) = self.on.as_ref().ok_or(SocketError::Off)?;
        path_in(dir, device_id)
    }

    /// Starts serving the socket of `device_id` unless it already is, and returns its path.
    pub fn ensure(&self, device_id: &str) -> Result<PathBuf, SocketError> {
        let (dir, api) = self.on.as_ref().ok_or(SocketError::Off)?;
        let path = path_in(dir, device_id)?;
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if serving.contains_key(device_id) {
            return Ok(path);
        }
        if serving.len() >= self.max {
            return Err(SocketError::Full { max: self.max });
        }
        let dir = path.parent().unwrap_or(&path);
        let listener = bind(dir, &path).map_err(|source| SocketError::Bind {
            path: path.clone(),
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, api.clone(), device_id.to_owned(), stopped));
        let served = Served {
            path: path.clone(),
            stop,
            task,
        };
        serving.insert(device_id.to_owned(), served);
        tracing::info!(device_id, path = %path.display(), "workload API listening");
        Ok(path)
    }

    /// Starts serving the socket of `device_id` (unless the workload API is off), logging (not
    /// returning) a failure: for callers whose own operation succeeded whether or not a socket
    /// could be made.
    fn ensure_or_log(&self, device_id: &str) {
        if !self.is_on() {
            return;
        }
        if let Err(error) = self.ensure(device_id) {
            tracing::error!(device_id, %error, "no workload socket");
        }
    }

    /// The writer's after-commit hook for the sockets ([`crate::hub::Hub::start`]'s `beside`):
    /// applies each effect in `runtime`, where the sockets' listeners run (the writer's thread
    /// has none).
    pub fn after_commit(
        self: &Arc<Self>,
        runtime: tokio::runtime::Handle,
    ) -> impl Fn(&Effect) + Send + 'static {
        let sockets = self.clone();
        move |effect| {
            let _runtime = runtime.enter();
            sockets.apply(effect);
        }
    }

    /// Applies a committed write's effect on the sockets: opens or closes one (logging a socket
    /// that cannot be served); the other effects are not the sockets'.
    fn apply(&self, effect: &Effect) {
        match effect {
            Effect::OpenWorkloadSocket { device_id } => self.ensure_or_log(device_id),
            Effect::CloseWorkloadSocket { device_id } => self.remove(device_id),
            _ => {}
        }
    }

    /// Stops serving the socket of `device_id` (a deleted device) and removes its file.
    pub fn remove(&self, device_id: &str) {
        let removed = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device_id);
        if let Some(served) = removed {
            let _ = std::fs::remove_file(&served.path);
            tracing::info!(device_id, "workload socket removed");
        }
    }

    /// Stops every socket and waits for their connections to end (the hub is stopping).
    pub async fn stop_all(&self) {
        let all: Vec<Served> = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, served)| served)
            .collect();
        for served in all {
            let _ = served.stop.send(true);
            let _ = served.task.await;
        }
    }
}

/// The socket path of `device_id` in `dir`, once the id is known to be one IoT Hub allows.
fn path_in(dir: &Path, device_id: &str) -> Result<PathBuf, SocketError> {
    edgetwin_wire::ids::check_identity_id(device_id).map_err(|source| SocketError::InvalidId {
        device_id: device_id.to_owned(),
        source,
    })?;
    let path = dir.join(socket_file_name(device_id));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SocketError::PathTooLong { path });
    }
    Ok(path)
}

/// Binds `path` (a name [`socket_file_name`] made, inside `dir`), replacing a stale socket file
/// left by an earlier run.
fn bind(dir: &Path, path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Connections one workload socket holds at once, and how long a write may wait for the reader.
const LIMITS: Limits = Limits {
    max_connections: 64,
    write_timeout: std::time::Duration::from_secs(10),
};

async fn serve(
    listener: UnixListener,
    api: Arc<Api>,
    device_id: String,
    stop: watch::Receiver<bool>,
) {
    listener::serve(listener, "workload", LIMITS, stop, move |stream, _, _| {
        let (api, device_id) = (api.clone(), device_id.clone());
        async move {
            let service = hyper::service::service_fn(move |request| {
                let (api, device_id) = (api.clone(), device_id.clone());
                async move { Ok::<_, Infallible>(handle(&api, &device_id, request).await) }
            });
            let _ = http1_server()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
}

type Response = hyper::Response<Full<Bytes>>;

fn respond(answer: WorkloadAnswer) -> Response {
    hyper::Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// Answers one request on `device_id`'s socket; requests are read by
/// [`edgetwin_wire::workload::parse_request`], as `edgetwin edge` reads them.
pub(crate) async fn handle(
    api: &Api,
    device_id: &str,
    request: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let json_body = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    let Some(body) = read_body(request.into_body(), workload::MAX_BODY).await else {
        return respond(WorkloadAnswer::error(
            400,
            "invalid parameter: body too large or unreadable",
        ));
    };
    respond(
        match workload::parse_request(&method, &path, &query, json_body, &body) {
            Err(answer) => answer,
            Ok(WorkloadRequest::TrustBundle) => WorkloadAnswer::trust_bundle(&api.ca_pem),
            Ok(WorkloadRequest::Sign {
                module_id,
                generation_id,
                key,
                data,
            }) => sign(api, device_id, &module_id, &generation_id, key, &data),
        },
    )
}

fn sign(
    api: &Api,
    device_id: &str,
    module_id: &str,
    generation_id: &str,
    key: KeyId,
    data: &[u8],
) -> WorkloadAnswer {
    let key_index = match key {
        KeyId::Primary => 0,
        KeyId::Secondary => 1,
    };
    let identity = IdentityKey::module(device_id, module_id);
    let keys = off_the_async_worker(|| {
        api.readers.read(|tx| {
            let current = tx
                .module(device_id, module_id)?
                .and_then(|m| m.generation_id)
                .is_some_and(|g| g == generation_id);
            if !current {
                return Ok(None);
            }
            crate::registry::connect_keys(tx, &identity)
        })
    });
    let Some(secret) = keys
        .ok()
        .flatten()
        .and_then(|k| k.into_iter().nth(key_index))
    else {
        return WorkloadAnswer::error(
            404,
            format!(
                "module {module_id} with generation id {generation_id} not found on device {device_id}"
            ),
        );
    };
    match edgetwin_wire::sas::decode_key(secret.expose()) {
        Ok(key_bytes) => WorkloadAnswer::signed(&key_bytes, data),
        Err(_) => WorkloadAnswer::error(500, "the module's key is not valid base64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_the_same_short_length_for_every_id_and_differ_between_ids() {
        let short = socket_file_name("a");
        let long = socket_file_name(&"g".repeat(128));
        assert_eq!(short.len(), 37);
        assert_eq!(long.len(), 37);
        assert_ne!(short, long);
        assert!(short.ends_with(".sock"));
    }

    #[test]
    fn an_id_that_is_not_an_iot_hub_id_never_becomes_a_path() {
        let error = path_in(Path::new("/data/workload"), "../x").unwrap_err();
        assert!(matches!(error, SocketError::InvalidId { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            "device id '../x' contains '/', which IoT Hub does not allow"
        );
    }

    #[test]
    fn a_data_directory_too_deep_for_a_socket_path_is_named_in_the_error() {
        let deep = format!("/{}", "d".repeat(80));
        let error = path_in(Path::new(&deep), "gw").unwrap_err();
        assert!(error.to_string().contains(&deep), "{error}");
        assert!(error.to_string().contains("--data-dir"), "{error}");
    }
}
