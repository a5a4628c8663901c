//! The IoT Edge workload API, as aziot-edged serves it to modules: one unix socket per edge device
//! (`{workload_dir}/{deviceId}.sock`) answering `GET /trust-bundle` and
//! `POST /modules/{m}/genid/{g}/sign`. A module started with `IOTEDGE_WORKLOADURI` pointing at the
//! socket gets its SAS tokens signed with its key, which it never holds.
//!
//! Unlike aziot-edged, the hub cannot tell containers apart by PID: any process that can open the
//! socket may sign for any module of that device. The socket is created mode 0600.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use edgetwin_wire::edge::{
    SignRequest, SignResponse, TrustBundleResponse, WorkloadErrorBody, WORKLOAD_API_VERSIONS,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::store::IdentityKey;

/// The socket of an edge device's workload API.
pub fn socket_path(workload_dir: &Path, device_id: &str) -> PathBuf {
    workload_dir.join(format!("{device_id}.sock"))
}

/// The workload sockets being served, one per edge device.
pub struct WorkloadSockets {
    /// Where sockets are created.
    dir: PathBuf,
    /// Devices whose socket is listening.
    serving: Mutex<HashSet<String>>,
    /// Stops every listener.
    shutdown: watch::Receiver<bool>,
}

impl WorkloadSockets {
    /// Sockets under `dir`, stopped by `shutdown`.
    pub fn new(dir: PathBuf, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            dir,
            serving: Mutex::new(HashSet::new()),
            shutdown,
        }
    }

    /// The directory holding the sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts serving the socket of `device_id` unless it already is.
    pub fn ensure(&self, hub: &Arc<Hub>, device_id: &str) {
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if serving.contains(device_id) {
            return;
        }
        let path = socket_path(&self.dir, device_id);
        let _ = std::fs::remove_file(&path);
        let listener = match bind(&path) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot create workload socket");
                return;
            }
        };
        serving.insert(device_id.to_owned());
        tracing::info!(device_id, path = %path.display(), "workload API listening");
        tokio::spawn(serve(
            listener,
            Arc::downgrade(hub),
            device_id.to_owned(),
            self.shutdown.clone(),
        ));
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve(
    listener: UnixListener,
    hub: Weak<Hub>,
    device_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (hub, device_id) = (hub.clone(), device_id.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (hub, device_id) = (hub.clone(), device_id.clone());
                        async move { Ok::<_, Infallible>(handle(hub, &device_id, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

type Response = hyper::Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_default();
    hyper::Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(
        status,
        &WorkloadErrorBody {
            message: message.into(),
        },
    )
}

async fn handle(
    hub: Weak<Hub>,
    device_id: &str,
    request: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let Some(hub) = hub.upgrade() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down");
    };
    let query = crate::rest::query_pairs(request.uri().query().unwrap_or(""));
    match query.get("api-version") {
        None => return error(StatusCode::BAD_REQUEST, "api-version not specified"),
        Some(v) if !WORKLOAD_API_VERSIONS.contains(&v.as_str()) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid api-version \"{v}\""),
            )
        }
        Some(_) => {}
    }
    let segments = crate::rest::path_segments(request.uri().path());
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method().clone();
    let json_body = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    match (method, segments.as_slice()) {
        (Method::GET, ["trust-bundle"] | ["manifest-trust-bundle"]) => json_response(
            StatusCode::OK,
            &TrustBundleResponse {
                certificate: hub.ca_pem.clone(),
            },
        ),
        (Method::POST, ["modules", module_id, "genid", _, "sign"]) => {
            let module_id = (*module_id).to_owned();
            let Ok(body) = Limited::new(request.into_body(), 64 * 1024).collect().await else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid parameter: body too large or unreadable",
                );
            };
            if !json_body {
                return error(
                    StatusCode::BAD_REQUEST,
                    "missing request body (Content-Type is not JSON)",
                );
            }
            sign(&hub, device_id, &module_id, &body.to_bytes())
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn sign(hub: &Hub, device_id: &str, module_id: &str, body: &[u8]) -> Response {
    let request: SignRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid request body: {e}"),
            )
        }
    };
    let Ok(data) = BASE64.decode(request.data.as_bytes()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid parameter: data is not base64",
        );
    };
    let key = IdentityKey::module(device_id, module_id);
    let keys = hub.transact(|tx| crate::registry::connect_keys(tx, &key));
    let Some(primary) = keys.ok().flatten().and_then(|k| k.into_iter().next()) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("module {module_id} not found on device {device_id}"),
        );
    };
    let Ok(key_bytes) = edgetwin_wire::sas::decode_key(primary.expose()) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the module's key is not valid base64",
        );
    };
    let digest = edgetwin_wire::sas::sign_bytes(&key_bytes, &data);
    json_response(StatusCode::OK, &SignResponse { digest })
}
