//! `edgetwin-service`: a client of IoT Hub's service REST API, as a back-end service uses it
//! with a shared access policy's connection string.
//!
//! - [`ServiceClient`] ([`client`]): parses nothing itself (the connection string comes from
//!   [`edgetwin_wire::connection_string`]), signs policy SAS tokens and renews them, connects
//!   over TLS (a given CA, and the system's if asked) with hyper, keeps a connection alive,
//!   retries per [`RetryPolicy`], and sends every request with `api-version`, `Host`,
//!   `Authorization` and JSON headers.
//! - [`request`]: a [`Request`] (path segments percent-encoded one by one) and its [`Response`].
//! - [`error`]: IoT Hub's error envelope decoded into a [`ServiceError`] (status, error code
//!   name, message), network failures typed by kind; never a key or a token in a message.
//! - [`calls`]: the typed calls its callers use (devices, modules, bulk, twins, query pages,
//!   configurations, methods, the local hub's module environment and message log).
//! - [`retry`]: the retry policy, pure.
//!
//! Used by the `edgetwin` CLI (`provision`, `twin`, `query`, `quickstart`), the hub's
//! `TestHub`, and the integration tests and benches. It depends only on `edgetwin-wire` and
//! tokio, hyper and rustls (and the system's CA store); never on `edgetwin-hub`, which depends on
//! it for `TestHub`, nor on the CLI, whose flags its messages do not name.

pub mod calls;
pub mod client;
pub mod error;
pub mod request;
pub mod retry;

pub use calls::{MessageFilter, QueryPage};
pub use client::{ClientOptions, ServiceClient};
pub use error::{Error, NetworkFailure, NetworkFailureKind, ServiceError};
pub use request::{Request, Response};
pub use retry::RetryPolicy;
