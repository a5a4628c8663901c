//! The workload API modules sign their SAS tokens with, as aziot-edged serves it: one unix
//! socket per module (`<data dir>/mnt/<module>/workload.sock`, its directory bound into the
//! module's container at `/var/run/iotedge`), so a module can sign only as itself — the socket says who
//! is asking. Keys come from [`Identities`]; requests are read by `edgetwin_wire::workload`.
//!
//! A module is not trusted with the runtime's resources: each socket serves at most
//! [`LIMITS`]`.max_connections` connections at once (more are closed at once), each for at most
//! [`LIMITS`]`.deadline`, and a failed accept (out of file descriptors) pauses instead of spinning.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::workload::{self, WorkloadAnswer, WorkloadRequest};
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::identity::Identities;

/// How much of the runtime one module's socket may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long one connection may stay open (a request and its answer take milliseconds).
    pub deadline: Duration,
    /// The pause after a failed accept (e.g. out of file descriptors).
    pub accept_backoff: Duration,
}

/// The limits of every module's socket: a module signs a token now and then, so eight
/// connections at once is already a module misbehaving.
pub const LIMITS: Limits = Limits {
    max_connections: 8,
    deadline: Duration::from_secs(30),
    accept_backoff: Duration::from_millis(100),
};

/// What every module's socket needs.
struct Shared {
    /// The module keys.
    identities: Arc<Identities>,
    /// The trust bundle handed to modules.
    trust_pem: String,
}

/// The per-module workload sockets.
pub struct WorkloadSockets {
    /// The directory of the sockets (`<data dir>/mnt`, mode 0700).
    dir: PathBuf,
    /// Keys and trust bundle.
    shared: Arc<Shared>,
    /// The listening task of each module's socket.
    serving: Mutex<BTreeMap<String, JoinHandle<()>>>,
}

impl WorkloadSockets {
    /// Sockets under `dir`, signing with `identities` and handing out `trust_pem`.
    pub fn new(dir: PathBuf, identities: Arc<Identities>, trust_pem: String) -> Self {
        WorkloadSockets {
            dir,
            shared: Arc::new(Shared {
                identities,
                trust_pem,
            }),
            serving: Mutex::new(BTreeMap::new()),
        }
    }

    /// The directory of `module_id`'s socket (module names are container names: no `/`).
    pub fn dir_of(&self, module_id: &str) -> PathBuf {
        self.dir.join(module_id)
    }

    /// Makes `module_id`'s socket listen (again, after a restart of the runtime); the directory
    /// to bind into its container.
    pub fn ensure(&self, module_id: &str) -> std::io::Result<PathBuf> {
        let dir = self.dir_of(module_id);
        let path = dir.join("workload.sock");
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if serving
            .get(module_id)
            .is_some_and(|task| !task.is_finished())
        {
            return Ok(dir);
        }
        let listener = bind(&self.dir, &dir, &path)?;
        let shared = self.shared.clone();
        let module = module_id.to_owned();
        serving.insert(
            module_id.to_owned(),
            tokio::spawn(serve(listener, shared, module)),
        );
        tracing::debug!(module_id, path = %path.display(), "workload socket listening");
        Ok(dir)
    }

    /// Stops serving `module_id` and removes its socket.
    pub fn remove(&self, module_id: &str) {
        if let Some(task) = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(module_id)
        {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(self.dir_of(module_id));
    }
}

/// Binds `path` in `module_dir` (replacing a stale socket), mode 0666 in a 0755 directory inside
/// `root` (0700): only the container the directory is bound into, and root, can reach it.
fn bind(root: &Path, module_dir: &Path, path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(module_dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is in the way and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    // The module runs as its image's user, so the socket itself must let anyone connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

async fn serve(listener: UnixListener, shared: Arc<Shared>, module_id: String) {
    let module = module_id.clone();
    accept_within(listener, LIMITS, &module, move |stream| {
        let (shared, module_id) = (shared.clone(), module_id.clone());
        async move {
            let service = hyper::service::service_fn(move |request| {
                let (shared, module_id) = (shared.clone(), module_id.clone());
                async move { Ok::<_, Infallible>(handle(&shared, &module_id, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
}

/// Accepts connections on `listener` forever and runs `serve_one` on each, within `limits`.
async fn accept_within<F, Fut>(
    listener: UnixListener,
    limits: Limits,
    module_id: &str,
    serve_one: F,
) where
    F: Fn(UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(module_id, %error, "workload socket: accept failed; pausing");
                tokio::time::sleep(limits.accept_backoff).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refusing {
                tracing::warn!(
                    module_id,
                    max = limits.max_connections,
                    "workload socket: the module holds the most connections allowed; closing new ones until it lets some go"
                );
                refusing = true;
            }
            continue;
        };
        refusing = false;
        let connection = serve_one(stream);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limits.deadline, connection).await;
            drop(slot);
        });
    }
}

async fn handle(
    shared: &Shared,
    socket_module: &str,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let json_body = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    let body = match Limited::new(request.into_body(), workload::MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return respond(WorkloadAnswer::error(
                400,
                "invalid parameter: body too large or unreadable",
            ))
        }
    };
    let answer = match workload::parse_request(&method, &path, &query, json_body, &body) {
        Err(answer) => answer,
        Ok(WorkloadRequest::TrustBundle) => WorkloadAnswer::trust_bundle(&shared.trust_pem),
        Ok(WorkloadRequest::Sign {
            module_id,
            generation_id,
            key,
            data,
        }) => {
            if module_id != socket_module {
                WorkloadAnswer::error(
                    403,
                    format!("this socket belongs to module {socket_module}, not {module_id}"),
                )
            } else {
                match shared.identities.key_for(&module_id, &generation_id, key) {
                    Some(key) => WorkloadAnswer::signed(&key, &data),
                    None => WorkloadAnswer::error(
                        404,
                        format!(
                            "module {module_id} with generation id {generation_id} not found on device {}",
                            shared.identities.device_id()
                        ),
                    ),
                }
            }
        }
    };
    respond(answer)
}

fn respond(answer: WorkloadAnswer) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// True when the server closed `stream` within `wait` (the read sees end of file).
    async fn closed_within(stream: &mut UnixStream, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn a_socket_serves_a_bounded_number_of_connections_each_for_a_bounded_time() {
        let dir =
            std::env::temp_dir().join(format!("edgetwin-edge-workload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let listener = bind(&dir, &dir.join("m"), &dir.join("m/workload.sock")).unwrap();
        let limits = Limits {
            max_connections: 2,
            deadline: Duration::from_millis(600),
            accept_backoff: Duration::from_millis(10),
        };
        // A module that opens connections and never sends a request.
        let server = tokio::spawn(async move {
            accept_within(listener, limits, "m", |stream| async move {
                let _held = stream;
                std::future::pending::<()>().await;
            })
            .await;
        });
        let path = dir.join("m/workload.sock");
        let mut first = UnixStream::connect(&path).await.unwrap();
        let mut second = UnixStream::connect(&path).await.unwrap();
        let mut third = UnixStream::connect(&path).await.unwrap();
        assert!(
            closed_within(&mut third, Duration::from_secs(2)).await,
            "a connection past the limit is closed at once"
        );
        assert!(!closed_within(&mut first, Duration::from_millis(100)).await);
        assert!(!closed_within(&mut second, Duration::from_millis(100)).await);
        assert!(
            closed_within(&mut first, Duration::from_secs(2)).await
                && closed_within(&mut second, Duration::from_secs(2)).await,
            "a connection is closed at its deadline"
        );
        let mut later = UnixStream::connect(&path).await.unwrap();
        assert!(
            !closed_within(&mut later, Duration::from_millis(100)).await,
            "the slots are free again"
        );
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
