//! The service client's retry loop against a scripted HTTPS server: 429 with `Retry-After`, 5xx,
//! dropped connections and timeouts are retried until the job finishes, the attempts bounded;
//! an untrusted certificate and a port nothing listens on are errors at once.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgetwin::provision::ProvisionError;
use edgetwin_service::{ClientOptions, RetryPolicy, ServiceClient};
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::rest::ExportImportDevice;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One scripted answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

struct Server {
    port: u16,
    ca_file: PathBuf,
    /// Requests received.
    hits: Arc<AtomicUsize>,
}

/// Serves `script[i]` to the i-th request (the last answer repeats).
async fn serve(script: Vec<Answer>) -> Server {
    serve_dropping(0, script).await
}

/// As [`serve`], but the first `drop_first` connections are closed as soon as they are accepted
/// (a reset the client sees in the TLS handshake).
async fn serve_dropping(drop_first: usize, script: Vec<Answer>) -> Server {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "edgetwin-retry-ca-{}-{}.pem",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let counter = hits.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            accepted += 1;
            if accepted <= drop_first {
                drop(socket);
                continue;
            }
            let (acceptor, script, counter) = (acceptor.clone(), script.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(socket).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let (script, counter) = (script.clone(), counter.clone());
                    async move {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        assert!(request.headers().contains_key("authorization"));
                        let (status, headers, body) = script[n.min(script.len() - 1)].clone();
                        let mut response = Response::builder()
                            .status(StatusCode::from_u16(status).unwrap())
                            .header("content-type", "application/json; charset=utf-8");
                        for (name, value) in headers {
                            response = response.header(name, value);
                        }
                        Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server {
        port,
        ca_file,
        hits,
    }
}

const THROTTLED: &str = r#"{"Message":"ErrorCode:ThrottlingException;Throttled","ExceptionMessage":"Tracking ID:0-G:0-TimeStamp:01/01/2025 00:00:00"}"#;
const UNAVAILABLE: &str =
    r#"{"Message":"ErrorCode:ServiceUnavailable;try later","ExceptionMessage":""}"#;
const DEVICE: &str = r#"{"deviceId":"d1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"a2V5","secondaryKey":"a2V5"}},"capabilities":{"iotEdge":true}}"#;

fn client(server: &Server, retry: RetryPolicy) -> ServiceClient {
    let cs: ConnectionString = format!(
        "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==",
        server.port
    )
    .parse()
    .unwrap();
    ServiceClient::new(
        &cs,
        ClientOptions {
            ca_file: Some(server.ca_file.clone()),
            retry,
            attempt_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_hub_answering_429_is_retried_after_retry_after_and_the_call_finishes() {
    let server = serve(vec![
        (
            429,
            vec![
                ("retry-after", "1"),
                ("iothub-errorcode", "ThrottlingException"),
            ],
            THROTTLED,
        ),
        (200, vec![], DEVICE),
    ])
    .await;
    let started = Instant::now();
    let device = client(&server, fast())
        .get_device("d1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.device_id, "d1");
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured"
    );
}

#[tokio::test]
async fn a_bulk_post_is_retried_through_server_errors() {
    let server = serve(vec![
        (503, vec![], UNAVAILABLE),
        (500, vec![], UNAVAILABLE),
        (
            200,
            vec![],
            r#"{"isSuccessful":true,"errors":[],"warnings":[]}"#,
        ),
    ])
    .await;
    let item = ExportImportDevice {
        id: "d1".into(),
        import_mode: Some(edgetwin_wire::rest::ImportMode::Create),
        ..ExportImportDevice::default()
    };
    let result = client(&server, fast()).bulk(&[item]).await.unwrap();
    assert!(result.is_successful);
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_stop_at_the_limit_with_a_clear_message() {
    let server = serve(vec![(429, vec![("retry-after", "0")], THROTTLED)]).await;
    let err = client(&server, fast())
        .get_device("d1")
        .await
        .map_err(ProvisionError::from)
        .unwrap_err();
    assert_eq!(server.hits.load(Ordering::SeqCst), 4);
    let service = err.service().expect("a service error");
    assert_eq!(service.status, 429);
    assert!(service.is("ThrottlingException"));
    assert!(err.to_string().contains("--rate"), "{err}");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = serve(vec![(
        409,
        vec![("iothub-errorcode", "DeviceAlreadyExists")],
        r#"{"Message":"ErrorCode:DeviceAlreadyExists;A device with ID 'd1' is already registered.","ExceptionMessage":""}"#,
    )])
    .await;
    let device = edgetwin_wire::rest::Device {
        device_id: "d1".into(),
        ..Default::default()
    };
    let err = client(&server, fast())
        .create_device(&device)
        .await
        .map_err(ProvisionError::from)
        .unwrap_err();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert!(err.service().unwrap().is("DeviceAlreadyExists"));
    assert!(err.to_string().contains("already registered"), "{err}");
}

#[tokio::test]
async fn connections_dropped_before_an_answer_are_retried_and_the_call_finishes() {
    let server = serve_dropping(2, vec![(200, vec![], DEVICE)]).await;
    let device = client(&server, fast())
        .get_device("d1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.device_id, "d1");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hub_whose_certificate_is_not_signed_by_the_trusted_ca_is_an_error_at_once() {
    let server = serve(vec![(200, vec![], DEVICE)]).await;
    let other = serve(vec![]).await;
    let untrusting = Server {
        port: server.port,
        ca_file: other.ca_file.clone(),
        hits: server.hits.clone(),
    };
    let started = Instant::now();
    let err = client(&untrusting, slow())
        .get_device("d1")
        .await
        .map_err(ProvisionError::from)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "retried: {err}");
    assert!(matches!(err, ProvisionError::Network { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("not trusted") && text.contains("--ca-file"),
        "{text}"
    );
    assert!(!text.contains("attempts"), "{text}");
}

/// The default policy's pace (8 attempts, 0.5 s doubling): a test that retried would take
/// tens of seconds.
fn slow() -> RetryPolicy {
    RetryPolicy::default()
}

#[tokio::test]
async fn a_port_nothing_listens_on_is_an_error_at_once_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let server = Server {
        port,
        ca_file: serve(vec![(200, vec![], DEVICE)]).await.ca_file,
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let started = Instant::now();
    let err = client(&server, slow())
        .get_device("d1")
        .await
        .map_err(ProvisionError::from)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "retried: {err}");
    assert!(matches!(err, ProvisionError::Network { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("refused") && text.contains(&format!("port {port}")),
        "{text}"
    );
}

#[tokio::test]
async fn a_hub_that_accepts_but_never_answers_is_a_network_error_after_the_retries() {
    // Accepts (the kernel's backlog does) but never speaks TLS: every attempt times out.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = Server {
        port: listener.local_addr().unwrap().port(),
        ca_file: serve(vec![(200, vec![], DEVICE)]).await.ca_file,
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let cs: ConnectionString = format!(
        "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==",
        server.port
    )
    .parse()
    .unwrap();
    let client = ServiceClient::new(
        &cs,
        ClientOptions {
            ca_file: Some(server.ca_file.clone()),
            retry: fast(),
            attempt_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let err = client
        .get_device("d1")
        .await
        .map_err(ProvisionError::from)
        .unwrap_err();
    drop(listener);
    assert!(matches!(err, ProvisionError::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("after 4 attempts"), "{err}");
}
