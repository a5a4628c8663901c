//! CONNECT authentication: the username names the identity; the password is a SAS token signed
//! with that identity's key (or a policy with DeviceConnect), or, for an X.509 identity, the TLS
//! client certificate proves it. Any failure is CONNACK 5, as IoT Hub and edgeHub answer; the
//! reason goes to the log, never the token or a certificate.
//!
//! Part of the MQTT door: depends on the hub, registry, store, ids and x509; never on another door.

use edgetwin_wire::rest::Permission;
use edgetwin_wire::sas::{SasScope, SasToken};
use edgetwin_wire::topic;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Login};
use rustls::pki_types::UnixTime;

use crate::events::AuthMethod;
use crate::hub::{grants, host_matches, Hub};
use crate::ids;
use crate::registry::{self, Credentials};
use crate::store::IdentityKey;
use crate::x509::{self, ClientChain, DeviceCas};

/// A client that may connect.
#[derive(Debug)]
pub struct Authenticated {
    /// Its identity.
    pub key: IdentityKey,
    /// When its token expires (Unix seconds); the hub drops the connection then.
    pub expiry: u64,
    /// The IoT Plug and Play model id its username announces (`model-id`), if any.
    pub model_id: Option<String>,
    /// Whether its username names an `api-version` (reported properties need one).
    pub versioned: bool,
    /// How it authenticated.
    pub auth: AuthMethod,
}

/// How long an X.509 connection may live: its certificate was checked once, at CONNECT, and no
/// token expires (tokio caps the far deadline).
const NO_EXPIRY: u64 = u64::MAX;

/// Checks a CONNECT from a client that presented `chain` in its TLS handshake; `Err` carries the
/// CONNACK code to refuse with.
///
/// An X.509 identity sends its username and no password (the device SDKs send none) and is checked
/// as edgeHub's `DeviceScopeCertificateAuthenticator` checks it offline (Azure/iotedge, edge-hub
/// `CloudProxy/Authenticators`): `selfSigned`, the leaf's thumbprint is the primary or secondary
/// one; `certificateAuthority`, the chain verifies to a trusted CA and the leaf's CN is the
/// device id (`ValidateCommonName(cert, serviceIdentity.DeviceId)`, for a module too; IoT Hub's
/// "Authenticate identities with X.509 certificates" asks for the device id as the subject's
/// CN). A `selfSigned` leaf must also be within its validity period, the one other check IoT Hub
/// makes for thumbprints (Azure/iotedge #621). A SAS identity needs its token whatever
/// certificate it presents.
pub fn authenticate(
    hub: &Hub,
    device_cas: &DeviceCas,
    connect: &Connect,
    chain: &ClientChain,
) -> Result<Authenticated, ConnectReturnCode> {
    let refuse = |why: &str| {
        tracing::info!(client_id = %connect.client_id, reason = why, "CONNECT refused");
        ConnectReturnCode::NotAuthorized
    };
    let login = connect
        .login
        .as_ref()
        .ok_or_else(|| refuse("no username"))?;
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
    let credentials = hub
        .read(|tx| registry::connect_credentials(tx, &key))
        .map_err(|_| ConnectReturnCode::ServiceUnavailable)?;
    let certificate = |why: &str| refuse(&format!("X.509 identity: {why}"));
    let auth = match credentials {
        Some(Credentials::SelfSigned(thumbprints)) => {
            let leaf = chain
                .leaf()
                .ok_or_else(|| certificate("no client certificate"))?;
            if !x509::thumbprint_matches(leaf, &thumbprints) {
                return Err(certificate(
                    "the certificate's thumbprint is neither the primary nor the secondary",
                ));
            }
            let now = i64::try_from(ids::now_unix()).unwrap_or(i64::MAX);
            if !x509::valid_at(leaf, now) {
                return Err(certificate("the certificate is expired or not yet valid"));
            }
            AuthMethod::SelfSigned
        }
        Some(Credentials::CertificateAuthority) => {
            device_cas
                .verify(chain, UnixTime::now())
                .map_err(|why| certificate(&format!("the chain does not verify: {why}")))?;
            let cn = chain.leaf().and_then(|leaf| x509::common_name(leaf));
            if cn.as_deref() != Some(key.device_id.as_str()) {
                return Err(certificate("the certificate's CN is not the device id"));
            }
            AuthMethod::CertificateAuthority
        }
        sas => {
            let expiry = authenticate_sas(hub, login, &key, sas, &refuse)?;
            return Ok(Authenticated {
                key,
                expiry,
                model_id: username.model_id,
                versioned: username.api_version.is_some(),
                auth: AuthMethod::Sas,
            });
        }
    };
    Ok(Authenticated {
        key,
        expiry: NO_EXPIRY,
        model_id: username.model_id,
        versioned: username.api_version.is_some(),
        auth,
    })
}

/// Checks the SAS token in the password of a CONNECT for `key`, whose own credentials are
/// `credentials` (`None`: unknown or disabled); returns when the token expires.
fn authenticate_sas(
    hub: &Hub,
    login: &Login,
    key: &IdentityKey,
    credentials: Option<Credentials>,
    refuse: &dyn Fn(&str) -> ConnectReturnCode,
) -> Result<u64, ConnectReturnCode> {
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
            if credentials.is_none() {
                return Err(refuse("identity unknown or disabled"));
            }
            vec![policy.primary_key.clone(), policy.secondary_key.clone()]
        }
        None => match credentials {
            Some(Credentials::Sas(keys)) => keys,
            _ => return Err(refuse("identity unknown, disabled or without SAS keys")),
        },
    };
    if !keys.iter().any(|k| token.verify(k)) {
        return Err(refuse("signature does not verify"));
    }
    Ok(token.expiry)
}
