//! The hub's one domain error: an IoT Hub error code with a message safe to show to the caller.
//! REST turns it into IoT Hub's error envelope, MQTT into a twin response status.
//!
//! A leaf: depends on the store's error only.

use edgetwin_wire::rest::ErrorCode;

use crate::store::StoreError;

/// An operation the hub refused or failed, as IoT Hub would report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// IoT Hub's error code (gives the HTTP status and the numeric code).
    pub code: ErrorCode,
    /// Text for the caller; never contains keys or tokens.
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `ArgumentInvalid` (400) naming what is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "store failure");
        let message = match &error {
            StoreError::Corrupt { what, .. } => format!("the stored record of {what} is damaged"),
            _ => "internal storage error".to_owned(),
        };
        Self::new(ErrorCode::ServerError, message)
    }
}
