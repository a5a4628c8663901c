//! CONNECT authentication: the username names the identity, the password is a SAS token signed
//! with that identity's key (or a policy with DeviceConnect). Any failure is CONNACK 5, as IoT Hub
//! and edgeHub answer; the reason goes to the log, never the token.
//!
//! Part of the MQTT door: depends on the hub, registry, store and ids; never on another door.

use edgetwin_wire::rest::Permission;
use edgetwin_wire::sas::{SasScope, SasToken};
use edgetwin_wire::topic;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode};

use crate::hub::{grants, host_matches, Hub};
use crate::ids;
use crate::registry;
use crate::store::IdentityKey;

/// A client that may connect.
#[derive(Debug)]
pub struct Authenticated {
    /// Its identity.
    pub key: IdentityKey,
    /// When its token expires (Unix seconds); the hub drops the connection then.
    pub expiry: u64,
}

/// Checks a CONNECT; `Err` carries the CONNACK code to refuse with.
pub fn authenticate(hub: &Hub, connect: &Connect) -> Result<Authenticated, ConnectReturnCode> {
    let refuse = |why: &str| {
        tracing::info!(client_id = %connect.client_id, reason = why, "CONNECT refused");
        ConnectReturnCode::NotAuthorized
    };
    let login = connect
        .login
        .as_ref()
        .ok_or_else(|| refuse("no username/password (X.509 is not supported)"))?;
    let username =
        topic::parse_username(&login.username).map_err(|_| refuse("malformed username"))?;
    let key = IdentityKey {
        device_id: username.device_id.clone(),
        module_id: username.module_id.clone(),
    };
    if key.client_id() != connect.client_id {
        return Err(refuse("username and client id name different identities"));
    }
    if !host_matches(&username.host, hub.host_name()) {
        return Err(refuse("username names another hub"));
    }
    let token =
        SasToken::parse(&login.password).map_err(|_| refuse("password is not a SAS token"))?;
    if token.is_expired(ids::now_unix(), 0) {
        return Err(refuse("SAS token expired"));
    }
    let scope = token.scope().map_err(|_| refuse("malformed sr"))?;
    if !host_matches(scope.host(), hub.host_name()) {
        return Err(refuse("sr names another hub"));
    }
    // Which identity connects is the username's (and client id's) device and module id, compared
    // exactly, as IoT Hub's ids are case-sensitive ("DeviceId is case-sensitive", IoT Hub
    // developer guide, "Control access to IoT Hub with SAS", protocol specifics), and the
    // registry is looked up by it exactly; only that identity's keys (or a DeviceConnect
    // policy's) can sign. The token's `sr` only has to name it ignoring case: the same guide
    // specifies `{URL-encoded-resourceURI}` as the "lower case URL-encoding of the lower case
    // resource URI", so IoT Hub accepts `sr=host/devices/mydevice` for device `MyDevice`, and
    // edgeHub compares audience ids ignoring case for that reason (Azure/iotedge #3532, which
    // cites that page; #3817 did the same for the host name). Comparing exactly here would refuse
    // tokens made as Microsoft documents them, and would not be stricter than IoT Hub.
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let scope_fits = match (&scope, &key.module_id) {
        (SasScope::Device { device_id, .. }, _) => same(device_id, &key.device_id),
        (
            SasScope::Module {
                device_id,
                module_id,
                ..
            },
            Some(m),
        ) => same(device_id, &key.device_id) && same(module_id, m),
        _ => false,
    };
    if !scope_fits {
        return Err(refuse("sr does not name the connecting identity"));
    }
    let keys = match &token.key_name {
        Some(policy_name) => {
            let policy = hub
                .policies()
                .iter()
                .find(|p| &p.name == policy_name && grants(p, Permission::DeviceConnect))
                .ok_or_else(|| refuse("policy unknown or without DeviceConnect"))?;
            if hub
                .read(|tx| registry::connect_keys(tx, &key))
                .ok()
                .flatten()
                .is_none()
            {
                return Err(refuse("identity unknown or disabled"));
            }
            vec![policy.primary_key.clone(), policy.secondary_key.clone()]
        }
        None => hub
            .read(|tx| registry::connect_keys(tx, &key))
            .map_err(|_| ConnectReturnCode::ServiceUnavailable)?
            .ok_or_else(|| refuse("identity unknown, disabled or without SAS keys"))?,
    };
    if !keys.iter().any(|k| token.verify(k)) {
        return Err(refuse("signature does not verify"));
    }
    Ok(Authenticated {
        key,
        expiry: token.expiry,
    })
}
