//! One HTTP/1.1 exchange over a stream already open (the engine's unix socket, TLS to the hub):
//! a request with an optional JSON body out, the status and the whole body back. The one place
//! the runtime speaks HTTP as a client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// Sends `request` (with `body` as JSON, if any) on `stream` and reads the answer. The error is
/// the transport's message.
pub async fn exchange<S>(
    stream: S,
    request: hyper::http::request::Builder,
    body: Option<&Value>,
) -> Result<(StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (status, _, bytes) = exchange_with_headers(stream, request, body).await?;
    Ok((status, bytes))
}

/// [`exchange`], with the answer's headers.
pub async fn exchange_with_headers<S>(
    stream: S,
    request: hyper::http::request::Builder,
    body: Option<&Value>,
) -> Result<(StatusCode, HeaderMap, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request: Request<Full<Bytes>> = match body {
        Some(body) => request
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.to_string()))),
        None => request.body(Full::new(Bytes::new())),
    }
    .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, bytes))
}
