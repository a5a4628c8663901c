//! The typed calls of [`ServiceClient`], one per service operation its callers use: devices and
//! modules (read, create, bulk), twins (read, patch), query pages, deployments (apply to a
//! device, read and write configurations), direct methods, and the local hub's own
//! `/edgetwin/...` reads (a module's `IOTEDGE_*` environment, the message log); and, with a DPS
//! connection string, the Device Provisioning Service's enrollment groups.

use std::collections::BTreeMap;

use edgetwin_wire::dps::{AttestationMechanism, EnrollmentGroup};
use edgetwin_wire::query::exec::ITEM_TYPE_HEADER;
use edgetwin_wire::query::page;
use edgetwin_wire::rest::{
    BulkRegistryOperationResult, CloudToDeviceMethod, CloudToDeviceMethodResult, Configuration,
    ConfigurationContent, Device, ExportImportDevice, Module, Permission, QuerySpecification,
};
use hyper::Method;
use serde_json::Value;

use crate::client::ServiceClient;
use crate::error::Error;
use crate::request::{encode, Request};

/// One page of a query's answer.
#[derive(Debug, Clone)]
pub struct QueryPage {
    /// The rows.
    pub items: Vec<Value>,
    /// `x-ms-item-type`: `twin` for whole twins, `raw` for projections and aggregates.
    pub item_type: Option<String>,
    /// `x-ms-continuation`: the token of the next page, `None` on the last one.
    pub continuation: Option<String>,
}

/// Which messages of the local hub's message log to read (`GET /edgetwin/messages`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageFilter<'a> {
    /// Only this device's.
    pub device_id: Option<&'a str>,
    /// Only this module's.
    pub module_id: Option<&'a str>,
    /// Only those sent on this output.
    pub output: Option<&'a str>,
    /// Only those with a larger `sequence`.
    pub after: Option<u64>,
}

fn twin_segments<'a>(device_id: &'a str, module_id: Option<&'a str>) -> Vec<&'a str> {
    match module_id {
        Some(m) => vec!["twins", device_id, "modules", m],
        None => vec!["twins", device_id],
    }
}

fn twin_name(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(m) => format!("module twin '{device_id}/{m}'"),
        None => format!("device twin '{device_id}'"),
    }
}

impl ServiceClient {
    /// `GET /devices/{id}`; `None` if the device does not exist.
    pub async fn get_device(&self, id: &str) -> Result<Option<Device>, Error> {
        let request = Request::new(
            Method::GET,
            &["devices", id],
            Permission::RegistryRead,
            format!("read device '{id}'"),
        );
        self.call_optional(&request, &["DeviceNotFound"]).await
    }

    /// `PUT /devices/{id}` without `If-Match`: create only (409 DeviceAlreadyExists otherwise).
    pub async fn create_device(&self, device: &Device) -> Result<Device, Error> {
        let request = Request::new(
            Method::PUT,
            &["devices", &device.device_id],
            Permission::RegistryWrite,
            format!("create device '{}'", device.device_id),
        )
        .json(device);
        self.call_json(&request).await
    }

    /// `PUT /devices/{id}` with `If-Match: *`: replace the device whatever its etag.
    pub async fn replace_device(&self, device: &Device) -> Result<Device, Error> {
        let mut request = Request::new(
            Method::PUT,
            &["devices", &device.device_id],
            Permission::RegistryWrite,
            format!("update device '{}'", device.device_id),
        )
        .json(device);
        request.if_match = Some("*".into());
        self.call_json(&request).await
    }

    /// `DELETE /devices/{id}` with `If-Match: *`; a device that does not exist is no error.
    pub async fn delete_device(&self, id: &str) -> Result<(), Error> {
        let mut request = Request::new(
            Method::DELETE,
            &["devices", id],
            Permission::RegistryWrite,
            format!("delete device '{id}'"),
        );
        request.if_match = Some("*".into());
        match self.call_empty(&request).await {
            Err(Error::Service(e)) if e.status == 404 => Ok(()),
            other => other,
        }
    }

    /// `GET /devices/{id}/modules/{mid}`; `None` if the module does not exist.
    pub async fn get_module(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<Option<Module>, Error> {
        let request = Request::new(
            Method::GET,
            &["devices", device_id, "modules", module_id],
            Permission::RegistryRead,
            format!("read module '{device_id}/{module_id}'"),
        );
        self.call_optional(&request, &["ModuleNotFound"]).await
    }

    /// `PUT /devices/{id}/modules/{mid}` without `If-Match`: create only.
    pub async fn create_module(&self, module: &Module) -> Result<Module, Error> {
        let request = Request::new(
            Method::PUT,
            &["devices", &module.device_id, "modules", &module.module_id],
            Permission::RegistryWrite,
            format!("create module '{}/{}'", module.device_id, module.module_id),
        )
        .json(module);
        self.call_json(&request).await
    }

    /// Bulk `POST /devices` (at most 100 items). Both 200 and a 400 carrying per-item errors are
    /// answers; a 400 without a bulk result (the whole request refused) is an error.
    pub async fn bulk(
        &self,
        items: &[ExportImportDevice],
    ) -> Result<BulkRegistryOperationResult, Error> {
        let request = Request::new(
            Method::POST,
            &["devices"],
            Permission::RegistryWrite,
            format!("bulk registry request ({} items)", items.len()),
        )
        .json(&items);
        let response = self.send(&request).await?;
        let parsed = response
            .json::<Value>()
            .ok()
            .filter(|v| v.get("isSuccessful").is_some())
            .and_then(|v| serde_json::from_value::<BulkRegistryOperationResult>(v).ok());
        match (response.status, parsed) {
            (200 | 400, Some(result)) => Ok(result),
            (200..=299, None) => Err(Error::Protocol {
                operation: request.operation,
                detail: "the answer is not a BulkRegistryOperationResult".into(),
            }),
            _ => Err(self.service_error(&request, &response).into()),
        }
    }

    /// `GET /twins/{id}[/modules/{mid}]`, the whole twin as JSON.
    pub async fn get_twin(&self, device_id: &str, module_id: Option<&str>) -> Result<Value, Error> {
        let request = Request::new(
            Method::GET,
            &twin_segments(device_id, module_id),
            Permission::ServiceConnect,
            format!("read {}", twin_name(device_id, module_id)),
        );
        self.call_json(&request).await
    }

    /// `PATCH /twins/{id}[/modules/{mid}]` with a partial twin (`tags`, `properties.desired`),
    /// whatever its etag (`If-Match: *`); the whole twin after the patch.
    pub async fn patch_twin(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        patch: &Value,
    ) -> Result<Value, Error> {
        let mut request = Request::new(
            Method::PATCH,
            &twin_segments(device_id, module_id),
            Permission::ServiceConnect,
            format!("update {}", twin_name(device_id, module_id)),
        )
        .json(patch);
        request.if_match = Some("*".into());
        self.call_json(&request).await
    }

    /// `PUT /twins/{id}` with a twin's `tags` and `properties.desired`, whatever its etag
    /// (`If-Match: *`): both replaced; the whole twin after.
    pub async fn replace_twin(&self, device_id: &str, twin: &Value) -> Result<Value, Error> {
        let mut request = Request::new(
            Method::PUT,
            &twin_segments(device_id, None),
            Permission::ServiceConnect,
            format!("replace {}", twin_name(device_id, None)),
        )
        .json(twin);
        request.if_match = Some("*".into());
        self.call_json(&request).await
    }

    /// `POST /devices/query`: one page of the query's rows, from `continuation` (the first page
    /// without one), at most `max_item_count` rows if given.
    pub async fn query_page(
        &self,
        query: &str,
        continuation: Option<&str>,
        max_item_count: Option<usize>,
    ) -> Result<QueryPage, Error> {
        let mut request = Request::new(
            Method::POST,
            &["devices", "query"],
            Permission::RegistryRead,
            "run the query",
        )
        .json(&QuerySpecification {
            query: query.to_owned(),
        });
        if let Some(n) = max_item_count {
            request = request.header(page::MAX_ITEM_COUNT_HEADER, n.to_string());
        }
        if let Some(token) = continuation {
            request = request.header(page::CONTINUATION_HEADER, token);
        }
        let response = self.send_ok(&request).await?;
        Ok(QueryPage {
            items: response.json().map_err(|e| Error::Protocol {
                operation: request.operation.clone(),
                detail: e.to_string(),
            })?,
            item_type: response.header(ITEM_TYPE_HEADER).map(str::to_owned),
            continuation: response
                .header(page::CONTINUATION_HEADER)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    /// `POST /devices/{id}/applyConfigurationContent` (204).
    pub async fn apply_configuration_content(
        &self,
        device_id: &str,
        content: &ConfigurationContent,
    ) -> Result<(), Error> {
        let request = Request::new(
            Method::POST,
            &["devices", device_id, "applyConfigurationContent"],
            Permission::ServiceConnect,
            format!("apply the deployment to device '{device_id}'"),
        )
        .json(content);
        self.call_empty(&request).await
    }

    /// `GET /configurations/{id}`; `None` if absent.
    pub async fn get_configuration(&self, id: &str) -> Result<Option<Configuration>, Error> {
        let request = Request::new(
            Method::GET,
            &["configurations", id],
            Permission::RegistryRead,
            format!("read deployment '{id}'"),
        );
        self.call_optional(&request, &["ConfigurationNotFound"])
            .await
    }

    /// `PUT /configurations/{id}`: create when `if_match` is `None`, else update.
    pub async fn put_configuration(
        &self,
        configuration: &Configuration,
        if_match: Option<&str>,
    ) -> Result<Configuration, Error> {
        let verb = if if_match.is_some() {
            "update"
        } else {
            "create"
        };
        let mut request = Request::new(
            Method::PUT,
            &["configurations", &configuration.id],
            Permission::RegistryWrite,
            format!("{verb} deployment '{}'", configuration.id),
        )
        .json(configuration);
        request.if_match = if_match.map(|e| format!("\"{}\"", e.trim_matches('"')));
        self.call_json(&request).await
    }

    /// `POST /twins/{id}/modules/{mid}/methods`: invokes a direct method on a module; what the
    /// module answered.
    pub async fn invoke_module_method(
        &self,
        device_id: &str,
        module_id: &str,
        method: &CloudToDeviceMethod,
    ) -> Result<CloudToDeviceMethodResult, Error> {
        let request = Request::new(
            Method::POST,
            &["twins", device_id, "modules", module_id, "methods"],
            Permission::ServiceConnect,
            format!(
                "invoke {} on module '{device_id}/{module_id}'",
                method.method_name
            ),
        )
        .json(method);
        self.call_json(&request).await
    }

    /// The `IOTEDGE_*` environment a module of an edge device gets from a local `edgetwin hub`
    /// (`GET /edgetwin/devices/{d}/modules/{m}/edgeEnvironment`; not an IoT Hub operation).
    pub async fn edge_environment(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let request = Request::new(
            Method::GET,
            &[
                "edgetwin",
                "devices",
                device_id,
                "modules",
                module_id,
                "edgeEnvironment",
            ],
            Permission::RegistryRead,
            format!("read the Edge environment of module '{device_id}/{module_id}'"),
        );
        self.call_json(&request).await
    }

    /// One page of a local `edgetwin hub`'s message log (`GET /edgetwin/messages`; not an IoT
    /// Hub operation), oldest first: `sequence`, `deviceId`, `moduleId`, `output`,
    /// `properties`, `body` (text) or `bodyBase64`. A page is cut by count or by bytes, so only
    /// an empty one says there is no more.
    pub async fn messages(&self, filter: &MessageFilter<'_>) -> Result<Vec<Value>, Error> {
        let mut query = Vec::new();
        for (name, value) in [
            ("deviceId", filter.device_id),
            ("moduleId", filter.module_id),
            ("output", filter.output),
        ] {
            if let Some(value) = value {
                query.push(format!("{name}={}", encode(value)));
            }
        }
        if let Some(after) = filter.after {
            query.push(format!("after={after}"));
        }
        let path = match query.is_empty() {
            true => "/edgetwin/messages".to_owned(),
            false => format!("/edgetwin/messages?{}", query.join("&")),
        };
        let request = Request::raw(
            Method::GET,
            path,
            Permission::ServiceConnect,
            "read the message log",
        );
        self.call_json(&request).await
    }

    /// `POST /enrollmentGroups/{id}/attestationmechanism` on DPS: the group's keys; `None` if
    /// there is no such group.
    pub async fn enrollment_group_attestation(
        &self,
        id: &str,
    ) -> Result<Option<AttestationMechanism>, Error> {
        let request = dps_request(
            Method::POST,
            &["enrollmentGroups", id, "attestationmechanism"],
            format!("read enrollment group '{id}'"),
        );
        match self.call_json(&request).await {
            Ok(attestation) => Ok(Some(attestation)),
            Err(Error::Service(e)) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /enrollmentGroups/{id}` on DPS without `If-Match`: create or replace the group.
    pub async fn put_enrollment_group(
        &self,
        group: &EnrollmentGroup,
    ) -> Result<EnrollmentGroup, Error> {
        let request = dps_request(
            Method::PUT,
            &["enrollmentGroups", &group.enrollment_group_id],
            format!("create enrollment group '{}'", group.enrollment_group_id),
        )
        .json(group);
        self.call_json(&request).await
    }
}

/// The DPS service api-version its requests name (DPS does not take IoT Hub's).
const DPS_API_VERSION: &str = "2021-10-01";

/// A DPS service request of the path made of `segments`, with DPS's api-version.
fn dps_request(method: Method, segments: &[&str], operation: String) -> Request {
    let mut request = Request::new(method, segments, Permission::RegistryWrite, operation);
    request
        .path
        .push_str(&format!("?api-version={DPS_API_VERSION}"));
    request.api_version = false;
    request
}
