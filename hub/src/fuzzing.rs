//! In-process entry points for the fuzz targets (feature `fuzzing`, used by `fuzz/`): raw bytes
//! through the hub's HTTP/1.1 server settings into its REST or workload handlers, over an
//! in-memory stream, against one hub (in a scratch directory) that holds an edge device `gw` with
//! a module `m`.
//!
//! Test entry points: may depend on anything below `lib.rs`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edgetwin_wire::rest::{Device, DeviceCapabilities, Module};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::faults::Faults;
use crate::hub::{Database, Hub};
use crate::rest;
use crate::workload::{self, WorkloadSockets};

/// The hub every input is served by, and the runtime it runs on.
struct Fixture {
    /// Runs the connections.
    runtime: tokio::runtime::Runtime,
    /// The REST door of the hub.
    rest: rest::State,
    /// What the workload sockets answer from.
    workload: Arc<workload::Api>,
    /// Where its state lives.
    _dir: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("edgetwin-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let database = Database::open(&dir, true).expect("database");
        let api = || workload::Api::new(database.readers(), "CA".into());
        let workload = Arc::new(api());
        let sockets = Arc::new(WorkloadSockets::new(dir.join("workload"), 16, api()));
        let beside = sockets.after_commit(runtime.handle().clone());
        let hub = runtime.block_on(async {
            let hub = Hub::start(database, "localhost".into(), beside).expect("hub");
            hub.write(|tx| {
                let edge = Device {
                    capabilities: Some(DeviceCapabilities { iot_edge: true }),
                    ..Device::default()
                };
                crate::registry::create_device(tx, "gw", edge)?;
                crate::registry::create_module(tx, "gw", "m", Module::default())
            })
            .await
            .expect("fixture identities");
            hub
        });
        let rest = rest::State {
            hub: Arc::new(hub),
            faults: Arc::new(Faults::default()),
            workload: sockets,
        };
        Fixture {
            runtime,
            rest,
            workload,
            _dir: dir,
        }
    })
}

/// Writes `input` as a client would (then closes its side) and returns what the server
/// answered.
async fn exchange<S>(input: &[u8], service: S) -> Vec<u8>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<http_body_util::Full<bytes::Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let mut builder = crate::http::http1_server();
    // The client closes its side once it has written: answer what it sent anyway.
    builder.half_close(true);
    let connection = tokio::spawn(builder.serve_connection(TokioIo::new(server), service));
    let _ = client.write_all(input).await;
    let _ = client.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), client.read_to_end(&mut answer)).await;
    connection.abort();
    answer
}

/// `input` as raw bytes on a REST connection (mostly refused: it carries no valid token).
pub fn rest_raw(input: &[u8]) -> Vec<u8> {
    let fixture = fixture();
    let rest = fixture.rest.clone();
    let service = hyper::service::service_fn(move |request| {
        let rest = rest.clone();
        async move { Ok::<_, Infallible>(rest::handle(rest, request).await) }
    });
    fixture.runtime.block_on(exchange(input, service))
}

/// `input` as `METHOD PATH\nBODY`, sent as an `iothubowner` request with a valid token, so that
/// it reaches the routes. Fault injection is left out (a fuzzed delay would stall every later
/// input).
pub fn rest_authenticated(input: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(input);
    let (line, body) = text.split_once('\n').unwrap_or((&text, ""));
    let (method, path) = line.split_once(' ').unwrap_or(("GET", line));
    if path.contains("faults") {
        return Vec::new();
    }
    let fixture = fixture();
    let Some(owner) = fixture
        .rest
        .hub
        .policies()
        .iter()
        .find(|p| p.name == "iothubowner")
    else {
        return Vec::new();
    };
    let expiry = crate::ids::now_unix() + 3600;
    let Ok(token) = edgetwin_wire::sas::generate_token(
        &owner.primary_key,
        "localhost",
        expiry,
        Some("iothubowner"),
    ) else {
        return Vec::new();
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n{body}",
        token.expose(),
        body.len()
    );
    rest_raw(request.as_bytes())
}

/// `input` as raw bytes on the workload socket of edge device `gw`.
pub fn workload_raw(input: &[u8]) -> Vec<u8> {
    let fixture = fixture();
    let api = fixture.workload.clone();
    let service = hyper::service::service_fn(move |request| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(workload::handle(&api, "gw", request).await) }
    });
    fixture.runtime.block_on(exchange(input, service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_entry_points_answer_http() {
        let answer = rest_authenticated(b"GET /devices/gw?api-version=2021-04-12\n");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let answer = rest_raw(b"GET /devices HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            answer.starts_with(b"HTTP/1.1 4"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let answer =
            workload_raw(b"GET /trust-bundle?api-version=2022-08-03 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}
