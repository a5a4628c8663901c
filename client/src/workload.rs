//! The IoT Edge workload API client (docs/spec/iothub-device-protocol.md §8.2, §8.3): HTTP/1.1 over the Unix socket (or TCP)
//! of `IOTEDGE_WORKLOADURI`, for the trust bundle and SAS signatures.

use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::edge::{
    EdgeEnvironment, SignRequest, SignResponse, TrustBundleResponse, WorkloadErrorBody, WorkloadUri,
};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::WorkloadError;

/// How long one workload API call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The trust bundle PEM (`GET /trust-bundle`).
pub async fn trust_bundle(env: &EdgeEnvironment) -> Result<String, WorkloadError> {
    let path = format!("/trust-bundle?api-version={}", env.api_version);
    let body = call(&env.workload_uri, "GET", &path, None).await?;
    let bundle: TrustBundleResponse = decode(&path, &body)?;
    Ok(bundle.certificate)
}

/// The base64 HMAC of the SAS string for this module's resource and `expiry`, computed by the
/// workload API with the module key the module never sees.
pub async fn sign_token(env: &EdgeEnvironment, expiry: u64) -> Result<String, WorkloadError> {
    let path = format!("{}?api-version={}", env.sign_path(), env.api_version);
    let request = SignRequest::for_token(&env.resource(), expiry);
    let body = serde_json::to_vec(&request).map_err(|source| WorkloadError::Body {
        path: path.clone(),
        source,
    })?;
    let answer = call(&env.workload_uri, "POST", &path, Some(body)).await?;
    let signed: SignResponse = decode(&path, &answer)?;
    Ok(signed.digest)
}

/// Parses the JSON answer of `path`.
fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, WorkloadError> {
    serde_json::from_slice(body).map_err(|source| WorkloadError::Body {
        path: path.to_owned(),
        source,
    })
}

/// One request on a fresh connection; returns the body of a 2xx answer.
async fn call(
    uri: &WorkloadUri,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, WorkloadError> {
    let connect_error = |source| WorkloadError::Connect {
        uri: uri.to_string(),
        source,
    };
    let work = async {
        match uri {
            WorkloadUri::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(connect_error)?;
                exchange(stream, "localhost", method, path, body).await
            }
            WorkloadUri::Http { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_error)?;
                exchange(stream, host, method, path, body).await
            }
        }
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| WorkloadError::Timeout {
            path: path.to_owned(),
        })?
}

async fn exchange<S>(
    stream: S,
    host: &str,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, WorkloadError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |source| WorkloadError::Http {
        path: path.to_owned(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", host)
        .header("User-Agent", crate::client_type());
    if body.is_some() {
        request = request.header("Content-Type", "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("static request parts are valid");
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        let message = serde_json::from_slice::<WorkloadErrorBody>(&bytes)
            .map(|b| b.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        return Err(WorkloadError::Status {
            path: path.to_owned(),
            status: status.as_u16(),
            message,
        });
    }
    Ok(bytes)
}
