//! A device's cloud-to-device messages over HTTPS, as IoT Hub's device REST API serves them
//! ("Receive / Complete / Abandon Device Bound Notification"; the clients: Node
//! `azure-iot-device-http` `Http.receive` / `_sendFeedback`, the Azure CLI's
//! `az iot device c2d-message receive / complete / reject / abandon`):
//!
//! - `GET /devices/{id}/messages/deviceBound`: 200 with the oldest message no receive holds, its
//!   body as is, its properties as headers ([`c2d::https_headers`]) and its lock token as `ETag`
//!   (in quotes), locked for a minute; 204 when there is none;
//! - `DELETE …/deviceBound/{lockToken}`: complete (204); with `?reject`: reject (204), the
//!   message dead-lettered;
//! - `POST …/deviceBound/{lockToken}/abandon`: back in the queue (204), its delivery count one
//!   more;
//! - a lock token that holds no message (unknown, settled, timed out): 412002
//!   `DeviceMessageLockLost`.
//!
//! The caller (the device's own token, or a policy with `DeviceConnect`) was checked by
//! [`super::device_messages::route`].

use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::{not_found, Reply, Request};
use crate::c2d::{self, Settlement};
use crate::c2d_queue;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::ids;

/// Routes `rest`, the path after `/devices/{device_id}/messages/deviceBound`.
pub async fn route(
    hub: &Hub,
    request: &Request,
    device_id: &str,
    rest: &[&str],
) -> Result<Reply, ApiError> {
    let settlement = match (rest, &request.method) {
        ([], &Method::GET) => return receive(hub, device_id).await,
        ([_], &Method::DELETE) if request.query.contains_key("reject") => Settlement::Reject,
        ([_], &Method::DELETE) => Settlement::Complete,
        ([_, _], &Method::POST) => Settlement::Abandon,
        _ => return Err(not_found(request)),
    };
    let (device_id, lock_token) = (device_id.to_owned(), rest[0].to_owned());
    hub.write(move |tx| {
        c2d_queue::settle(tx, &device_id, &lock_token, settlement, ids::now_unix_ms())
    })
    .await?;
    Reply::no_content()
}

/// Locks and answers the oldest message no receive holds, or 204. A read first, so that a device
/// polling an empty queue (Node's HTTP client does, every second) never waits for the writer.
async fn receive(hub: &Hub, device_id: &str) -> Result<Reply, ApiError> {
    let now_ms = ids::now_unix_ms();
    let available = hub.read(|tx| {
        Ok(tx
            .c2d_queue(device_id)?
            .iter()
            .any(|m| c2d::is_available(m, now_ms)))
    })?;
    if !available {
        return Reply::no_content();
    }
    let owned = device_id.to_owned();
    let lock_token = lock_token();
    let token = lock_token.clone();
    let message = hub
        .write(move |tx| c2d_queue::receive(tx, &owned, &token, ids::now_unix_ms()))
        .await?;
    let Some(message) = message else {
        return Reply::no_content();
    };
    let headers = c2d::https_headers(device_id, &message);
    Ok(Reply {
        status: StatusCode::OK,
        body: None,
        etag: Some(lock_token),
        headers: Vec::new(),
        message: Some((headers, Bytes::from(message.body))),
    })
}

/// A new lock token: a random UUID, as IoT Hub's are.
fn lock_token() -> String {
    edgetwin_wire::ids::uuid_v4(rand::random())
}
