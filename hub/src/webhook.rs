//! Outbound webhook calls (the custom allocation webhook of the provisioning service): one JSON
//! `POST` to an `http` or `https` URL, bounded in time ([`TIMEOUT`]) and in the size of the
//! answer read ([`MAX_RESPONSE`]); `https` trusts the system's CA certificates. A leaf: depends
//! on nothing of the hub.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Longest a webhook call may take, connect to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read (an allocation response is a host name, a twin and a payload).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Why a webhook call got no answer; the URL's query (an Azure Function's `code`) is never in it.
#[derive(Debug, thiserror::Error)]
#[error("webhook {target}: {detail}")]
pub struct WebhookError {
    /// The scheme, host and path called.
    target: String,
    /// What failed.
    detail: String,
}

/// `POST`s `body` (JSON) to `url`; the answer's status and body.
pub async fn post_json(url: &str, body: Vec<u8>) -> Result<(u16, Bytes), WebhookError> {
    let uri: Uri = url.parse().map_err(|_| WebhookError {
        target: "(not a URL)".into(),
        detail: "the webhook URL does not parse".into(),
    })?;
    let target = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or(""),
        uri.authority().map_or("", |a| a.as_str()),
        uri.path()
    );
    let fail = |detail: String| WebhookError {
        target: target.clone(),
        detail,
    };
    match tokio::time::timeout(TIMEOUT, call(&uri, body)).await {
        Ok(result) => result.map_err(fail),
        Err(_) => Err(fail(format!("no answer within {TIMEOUT:?}"))),
    }
}

async fn call(uri: &Uri, body: Vec<u8>) -> Result<(u16, Bytes), String> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("only http and https URLs are called".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            hyper::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .header(
            hyper::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = if https {
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("TLS name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("reading the answer (at most {MAX_RESPONSE} bytes): {e}"))?
        .to_bytes();
    Ok((status, body))
}

async fn send<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// TLS trusting the system's CA certificates, loaded once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            edgetwin_wire::tls::client_config(roots).map_err(|e| e.to_string())
        })
        .clone()
}
