//! The device's `config.toml`, as IoT Edge has it (`/etc/aziot/config.toml`, read by
//! `iotedge config apply`): the keys of Azure/iot-identity-service's super-config
//! (`aziotctl-common/src/config/super_config.rs`) and Azure/iotedge's edge part (`[agent]`,
//! `[moby_runtime]`, `[connect]`, `[listen]`, …), so that a user's existing file works.
//!
//! What `edgetwin edge` uses: `hostname`, `trust_bundle_cert`, `[provisioning] source = "manual"`
//! with `connection_string` or `iothub_hostname` + `device_id` + `[provisioning.authentication]
//! method = "sas"` and `device_id_pk = { value = "…" }` or `{ uri = "file:///…" }`;
//! `[provisioning] source = "dps"` with `global_endpoint`, `id_scope` and
//! `[provisioning.attestation] method = "symmetric_key"`, `registration_id` and
//! `symmetric_key = { value = "…" }` or `{ uri = "file:///…" }` (the super-config's
//! `ProvisioningType::Dps { global_endpoint, id_scope, attestation }` with
//! `DpsAttestationMethod::SymmetricKey { registration_id, symmetric_key: SymmetricKey::Inline
//! { value } | Preloaded { uri } }`, which `iotedge config apply` turns into aziot-identityd's
//! `scope_id`);
//! `[agent.config] image`, `[moby_runtime] uri` and `network`. Other documented keys are accepted
//! and listed as unused; an unknown key or a missing one is one error naming its path.
//! Pure: parsing never touches the file system except for a `device_id_pk` given as a file URI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgetwin_wire::connection_string::{ConnectionString, ConnectionStringKind};
use edgetwin_wire::Secret;

/// The Docker engine IoT Edge uses when `[moby_runtime] uri` is not set.
pub const DEFAULT_MOBY_URI: &str = "unix:///var/run/docker.sock";
/// The network IoT Edge puts modules on when `[moby_runtime] network` is not set.
pub const DEFAULT_NETWORK: &str = "azure-iot-edge";

/// Top-level keys of IoT Edge's config.toml that `edgetwin edge` accepts but does not use.
const UNUSED_TOP_LEVEL: [&str; 17] = [
    "local_gateway_hostname",
    "parent_hostname",
    "localid",
    "aziot_keys",
    "preloaded_keys",
    "cert_issuance",
    "preloaded_certs",
    "auto_reprovisioning_mode",
    "imported_master_encryption_key",
    "manifest_trust_bundle_cert",
    "additional_info",
    "allow_elevated_docker_permissions",
    "iotedge_max_requests",
    "connect",
    "listen",
    "watchdog",
    "edge_ca",
];

/// A device's IoT Hub identity with its symmetric key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCredentials {
    /// The IoT Hub host name (`HostName`, `iothub_hostname`).
    pub iothub_hostname: String,
    /// The device id.
    pub device_id: String,
    /// The device's primary key, base64 (redacted in `Debug`).
    pub key: Secret,
}

/// `[provisioning] source = "dps"` with symmetric-key attestation: where and as whom the device
/// registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpsProvisioning {
    /// `global_endpoint`: the DPS URL (`https://host[:port]`), without its trailing `/`.
    pub global_endpoint: String,
    /// `id_scope`.
    pub id_scope: String,
    /// `attestation.registration_id`.
    pub registration_id: String,
    /// `attestation.symmetric_key`: the device's (derived) key, base64 (redacted in `Debug`).
    pub key: Secret,
}

/// How the device gets its IoT Hub identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provisioning {
    /// `source = "manual"`: the identity is in the file.
    Manual(DeviceCredentials),
    /// `source = "dps"`: the device registers through DPS at start.
    Dps(DpsProvisioning),
}

/// What `edgetwin edge run` needs from config.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// The name modules reach their gateway (edgeHub) by: `IOTEDGE_GATEWAYHOSTNAME` (the
    /// machine's host name when the file has none, as `iotedge config apply` does).
    pub hostname: String,
    /// The device identity, or how to get it.
    pub provisioning: Provisioning,
    /// PEM file of CA certificates trusted for IoT Hub and handed to modules as the trust bundle.
    pub trust_bundle_cert: Option<PathBuf>,
    /// `[agent.config] image`: the edgeAgent image (reported; the runtime is the agent here).
    pub agent_image: Option<String>,
    /// The container engine's Docker API endpoint.
    pub moby_uri: String,
    /// The network modules are attached to (`host` runs them in the host's network).
    pub network: String,
    /// Documented keys present in the file that `edgetwin edge` does not use.
    pub unused: Vec<String>,
}

/// Why config.toml was refused: one line naming the key (or the file, and why it cannot be read).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (line and column).
        message: String,
    },
    /// A key this file format does not have.
    #[error("{path}: unknown key `{key}`")]
    Unknown {
        /// The file.
        path: String,
        /// The dotted key.
        key: String,
    },
    /// A required key is absent.
    #[error("{path}: missing `{key}`")]
    Missing {
        /// The file.
        path: String,
        /// The dotted key.
        key: String,
    },
    /// A key has a value it cannot have.
    #[error("{path}: `{key}` {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The dotted key.
        key: String,
        /// What is wrong, never the value of a secret.
        reason: String,
    },
}

/// A TOML table being read, with the dotted path of its keys for errors.
struct Table<'a> {
    /// The file, for errors.
    file: &'a str,
    /// The table's dotted path (`""` at the top).
    prefix: String,
    /// The entries not read yet.
    entries: BTreeMap<String, toml::Value>,
}

impl<'a> Table<'a> {
    fn new(file: &'a str, prefix: &str, table: toml::Table) -> Self {
        Table {
            file,
            prefix: prefix.to_owned(),
            entries: table.into_iter().collect(),
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn invalid(&self, name: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.to_owned(),
            key: self.key(name),
            reason: reason.into(),
        }
    }

    fn missing(&self, name: &str) -> ConfigError {
        ConfigError::Missing {
            path: self.file.to_owned(),
            key: self.key(name),
        }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.entries.remove(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
            Some(toml::Value::String(_)) => Err(self.invalid(name, "is empty")),
            Some(_) => Err(self.invalid(name, "must be a string")),
        }
    }

    fn required_string(&mut self, name: &str) -> Result<String, ConfigError> {
        self.string(name)?.ok_or_else(|| self.missing(name))
    }

    fn table(&mut self, name: &str) -> Result<Option<Table<'a>>, ConfigError> {
        match self.entries.remove(name) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(Table::new(self.file, &self.key(name), t))),
            Some(_) => Err(self.invalid(name, "must be a table")),
        }
    }

    fn required_table(&mut self, name: &str) -> Result<Table<'a>, ConfigError> {
        self.table(name)?.ok_or_else(|| self.missing(name))
    }

    /// Moves the documented keys in `names` that are present into `unused`.
    fn skip(&mut self, names: &[&str], unused: &mut Vec<String>) {
        for name in names {
            if self.entries.remove(*name).is_some() {
                unused.push(self.key(name));
            }
        }
    }

    /// Refuses any key left unread.
    fn finish(self) -> Result<(), ConfigError> {
        match self.entries.keys().next() {
            None => Ok(()),
            Some(name) => Err(ConfigError::Unknown {
                path: self.file.to_owned(),
                key: self.key(name),
            }),
        }
    }
}

impl EdgeConfig {
    /// Parses the text of config.toml; `file` names it in errors, `machine_hostname` is the
    /// `hostname` when the file has none, and `read_key` reads a
    /// `device_id_pk = { uri = "file:///…" }` (the file system in production).
    pub fn parse(
        file: &str,
        text: &str,
        machine_hostname: &str,
        read_key: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        let root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: file.to_owned(),
                message: e.to_string().lines().next().unwrap_or_default().to_owned(),
            })?;
        let mut top = Table::new(file, "", root);
        let mut unused = Vec::new();
        top.skip(&UNUSED_TOP_LEVEL, &mut unused);
        let hostname = top.string("hostname")?;
        let trust_bundle_cert = top
            .string("trust_bundle_cert")?
            .map(|uri| file_uri(&top, "trust_bundle_cert", &uri))
            .transpose()?;
        let provisioning =
            provisioning(top.required_table("provisioning")?, &read_key, &mut unused)?;
        let agent_image = match top.table("agent")? {
            Some(agent) => agent_section(agent, &mut unused)?,
            None => None,
        };
        let (moby_uri, network) = match top.table("moby_runtime")? {
            Some(mut moby) => {
                let uri = moby.string("uri")?;
                let network = match moby.entries.remove("network") {
                    None => None,
                    Some(toml::Value::String(s)) => Some(s),
                    // `network = { name = "…", ipv6 = … }` is IoT Edge's long form.
                    Some(toml::Value::Table(mut t)) => match t.remove("name") {
                        Some(toml::Value::String(s)) => Some(s),
                        _ => return Err(moby.missing("network.name")),
                    },
                    Some(_) => return Err(moby.invalid("network", "must be a string or table")),
                };
                moby.skip(&["content_trust"], &mut unused);
                moby.finish()?;
                (uri, network)
            }
            None => (None, None),
        };
        top.skip(&["image_garbage_collection"], &mut unused);
        top.finish()?;
        Ok(EdgeConfig {
            hostname: hostname.unwrap_or_else(|| machine_hostname.to_owned()),
            provisioning,
            trust_bundle_cert,
            agent_image,
            moby_uri: moby_uri.unwrap_or_else(|| DEFAULT_MOBY_URI.to_owned()),
            network: network.unwrap_or_else(|| DEFAULT_NETWORK.to_owned()),
            unused,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        Self::parse(&name, &text, &machine, |p| std::fs::read_to_string(p))
    }
}

/// A `file:///…` URI (or a plain absolute path) as a path.
fn file_uri(table: &Table<'_>, name: &str, uri: &str) -> Result<PathBuf, ConfigError> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if !path.starts_with('/') {
        return Err(table.invalid(name, "must be a file:/// URI or an absolute path"));
    }
    Ok(PathBuf::from(path))
}

/// `[provisioning]`: manual provisioning with a connection string or explicit SAS credentials,
/// or DPS with a symmetric key.
fn provisioning(
    mut table: Table<'_>,
    read_key: &impl Fn(&Path) -> std::io::Result<String>,
    unused: &mut Vec<String>,
) -> Result<Provisioning, ConfigError> {
    let source = table.required_string("source")?;
    table.skip(&["always_reprovision_on_startup"], unused);
    match source.as_str() {
        "manual" => manual(table, read_key).map(Provisioning::Manual),
        "dps" => dps(table, read_key, unused).map(Provisioning::Dps),
        _ => Err(table.invalid(
            "source",
            format!("is \"{source}\"; edgetwin edge provisions with \"manual\" or \"dps\" (none is not supported)"),
        )),
    }
}

/// `source = "dps"`: `global_endpoint`, `id_scope`, and `[provisioning.attestation]` with
/// `method = "symmetric_key"`, `registration_id` and `symmetric_key`.
fn dps(
    mut table: Table<'_>,
    read_key: &impl Fn(&Path) -> std::io::Result<String>,
    unused: &mut Vec<String>,
) -> Result<DpsProvisioning, ConfigError> {
    let global_endpoint = table.required_string("global_endpoint")?;
    let rest = global_endpoint
        .strip_prefix("https://")
        .ok_or_else(|| table.invalid("global_endpoint", "must be an https:// URL"))?;
    if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
        return Err(table.invalid(
            "global_endpoint",
            "must be an https:// URL with a host and no path",
        ));
    }
    let id_scope = table.required_string("id_scope")?;
    let mut attestation = table.required_table("attestation")?;
    let method = attestation.required_string("method")?;
    if method != "symmetric_key" {
        return Err(attestation.invalid(
            "method",
            format!("is \"{method}\"; edgetwin edge supports \"symmetric_key\" only (x509 and tpm are not supported yet)"),
        ));
    }
    let registration_id = attestation.required_string("registration_id")?;
    edgetwin_wire::dps::check_registration_id(&registration_id)
        .map_err(|e| attestation.invalid("registration_id", e.message))?;
    let key = key_of(&mut attestation, "symmetric_key", read_key)?;
    attestation.finish()?;
    table.skip(&["payload"], unused);
    table.finish()?;
    Ok(DpsProvisioning {
        global_endpoint: global_endpoint.trim_end_matches('/').to_owned(),
        id_scope,
        registration_id,
        key,
    })
}

/// `source = "manual"`: a connection string, or `iothub_hostname`, `device_id` and SAS
/// authentication.
fn manual(
    mut table: Table<'_>,
    read_key: &impl Fn(&Path) -> std::io::Result<String>,
) -> Result<DeviceCredentials, ConfigError> {
    let device = if let Some(text) = table.string("connection_string")? {
        let connection = text
            .parse::<ConnectionString>()
            .map_err(|e| table.invalid("connection_string", format!("is not valid: {e}")))?;
        if connection.kind() != ConnectionStringKind::Device {
            return Err(table.invalid(
                "connection_string",
                "must be a device connection string (HostName, DeviceId, SharedAccessKey)",
            ));
        }
        let key = connection.shared_access_key.clone().ok_or_else(|| {
            table.invalid(
                "connection_string",
                "has no SharedAccessKey (only SAS keys are supported)",
            )
        })?;
        edgetwin_wire::sas::decode_key(key.expose()).map_err(|_| {
            table.invalid(
                "connection_string",
                "has a SharedAccessKey that is not base64",
            )
        })?;
        DeviceCredentials {
            iothub_hostname: connection.host_name.clone(),
            device_id: connection.device_id.clone().unwrap_or_default(),
            key,
        }
    } else {
        let iothub_hostname = table.required_string("iothub_hostname")?;
        let device_id = table.required_string("device_id")?;
        let mut auth = table.required_table("authentication")?;
        let method = auth.required_string("method")?;
        if method != "sas" {
            return Err(auth.invalid(
                "method",
                format!("is \"{method}\"; edgetwin edge supports \"sas\" only (x509 is not supported yet)"),
            ));
        }
        let key = key_of(&mut auth, "device_id_pk", read_key)?;
        auth.finish()?;
        DeviceCredentials {
            iothub_hostname,
            device_id,
            key,
        }
    };
    table.finish()?;
    Ok(device)
}

/// `{name} = { value = "<base64>" }` or `{ uri = "file:///…" }` (`device_id_pk`,
/// `symmetric_key`), checked to be base64.
fn key_of(
    auth: &mut Table<'_>,
    name: &str,
    read_key: &impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Secret, ConfigError> {
    let mut pk = auth.required_table(name)?;
    let key = if let Some(value) = pk.string("value")? {
        value
    } else if let Some(uri) = pk.string("uri")? {
        let path = file_uri(&pk, "uri", &uri)?;
        read_key(&path).map_err(|e| {
            pk.invalid(
                "uri",
                format!("names {} which cannot be read: {e}", path.display()),
            )
        })?
    } else {
        return Err(pk.missing("value"));
    };
    pk.finish()?;
    let key = Secret::new(key.trim().to_owned());
    edgetwin_wire::sas::decode_key(key.expose())
        .map_err(|_| auth.invalid(name, "is not a base64 symmetric key"))?;
    Ok(key)
}

/// `[agent]`: `name`, `type`, `imagePullPolicy`, `[agent.config]` and `[agent.env]`.
fn agent_section(
    mut agent: Table<'_>,
    unused: &mut Vec<String>,
) -> Result<Option<String>, ConfigError> {
    if let Some(kind) = agent.string("type")? {
        if kind != "docker" {
            return Err(agent.invalid(
                "type",
                format!("is \"{kind}\"; only \"docker\" is supported"),
            ));
        }
    }
    agent.skip(&["name", "imagePullPolicy", "env"], unused);
    let image = match agent.table("config")? {
        Some(mut config) => {
            let image = config.string("image")?;
            config.skip(&["createOptions", "auth"], unused);
            config.finish()?;
            image
        }
        None => None,
    };
    agent.finish()?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn manual(config: &EdgeConfig) -> &DeviceCredentials {
        match &config.provisioning {
            Provisioning::Manual(device) => device,
            Provisioning::Dps(_) => panic!("not manual: {config:?}"),
        }
    }

    fn parse(text: &str) -> Result<EdgeConfig, ConfigError> {
        EdgeConfig::parse("config.toml", text, "pi-host", |p| {
            if p == Path::new("/var/secrets/device-id") {
                Ok(format!("{KEY}\n"))
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
        })
    }

    #[test]
    fn a_connection_string_file_as_the_iot_edge_docs_show_it_is_read_with_its_defaults() {
        let config = parse(&format!(
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=hub.example;DeviceId=pi-1;SharedAccessKey={KEY}\"\n"
        ))
        .unwrap();
        assert_eq!(manual(&config).iothub_hostname, "hub.example");
        assert_eq!(manual(&config).device_id, "pi-1");
        assert_eq!(manual(&config).key.expose(), KEY);
        assert_eq!(
            config.hostname, "pi-host",
            "the machine's name when the file has none"
        );
        assert_eq!(config.moby_uri, DEFAULT_MOBY_URI);
        assert_eq!(config.network, DEFAULT_NETWORK);
        assert!(config.unused.is_empty());
    }

    #[test]
    fn explicit_sas_credentials_with_a_key_file_and_the_edge_sections_are_read() {
        let config = parse(
            r#"
hostname = "gateway.local"
trust_bundle_cert = "file:///etc/edgetwin/ca.pem"
auto_reprovisioning_mode = "Dynamic"
[provisioning]
source = "manual"
iothub_hostname = "hub.example"
device_id = "pi-2"
[provisioning.authentication]
method = "sas"
device_id_pk = { uri = "file:///var/secrets/device-id" }
[agent]
name = "edgeAgent"
type = "docker"
[agent.config]
image = "mcr.microsoft.com/azureiotedge-agent:1.5"
[agent.env]
RuntimeLogLevel = "debug"
[moby_runtime]
uri = "unix:///run/podman/podman.sock"
network = { name = "host" }
"#,
        )
        .unwrap();
        assert_eq!(config.hostname, "gateway.local");
        assert_eq!(manual(&config).device_id, "pi-2");
        assert_eq!(manual(&config).key.expose(), KEY);
        assert_eq!(
            config.trust_bundle_cert,
            Some(PathBuf::from("/etc/edgetwin/ca.pem"))
        );
        assert_eq!(
            config.agent_image.as_deref(),
            Some("mcr.microsoft.com/azureiotedge-agent:1.5")
        );
        assert_eq!(config.moby_uri, "unix:///run/podman/podman.sock");
        assert_eq!(config.network, "host");
        assert_eq!(
            config.unused,
            ["auto_reprovisioning_mode", "agent.name", "agent.env"]
        );
    }

    #[test]
    fn an_unknown_key_is_one_error_naming_its_dotted_path() {
        let error = parse(&format!(
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey={KEY}\"\n[moby_runtime]\nurl = \"unix:///x\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "config.toml: unknown key `moby_runtime.url`"
        );
    }

    #[test]
    fn a_missing_field_is_named_with_its_section() {
        let error =
            parse("[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "config.toml: missing `provisioning.device_id`"
        );
        let error = parse("hostname = \"h\"\n").unwrap_err();
        assert_eq!(error.to_string(), "config.toml: missing `provisioning`");
        let error = parse(
            "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\ndevice_id = \"d\"\n[provisioning.authentication]\nmethod = \"sas\"\n",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "config.toml: missing `provisioning.authentication.device_id_pk`"
        );
    }

    #[test]
    fn bad_values_are_named_without_showing_secrets() {
        let error = parse(
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey=not-base64!\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("`provisioning.connection_string`"),
            "{error}"
        );
        assert!(!error.contains("not-base64!"), "{error}");
        let error = parse("[provisioning]\nsource = \"none\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`provisioning.source` is \"none\""),
            "{error}"
        );
        let error = parse(
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=AAAA\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("must be a device connection string"),
            "{error}"
        );
        let error = parse("hostname = 3\n").unwrap_err().to_string();
        assert_eq!(error, "config.toml: `hostname` must be a string");
        let error = parse("[provisioning\n").unwrap_err().to_string();
        assert!(error.starts_with("config.toml: not valid TOML"), "{error}");
    }

    #[test]
    fn a_key_file_that_cannot_be_read_names_the_key_and_the_file() {
        let error = parse(
            "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\ndevice_id = \"d\"\n[provisioning.authentication]\nmethod = \"sas\"\ndevice_id_pk = { uri = \"file:///nope\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("config.toml: `provisioning.authentication.device_id_pk.uri` names /nope which cannot be read"),
            "{error}"
        );
    }

    /// The `[provisioning]` section `edgetwin provision --dps` writes (src/provision/edge_config.rs).
    fn dps_text(endpoint: &str, method: &str, key: &str) -> String {
        format!(
            "[provisioning]\nsource = \"dps\"\nglobal_endpoint = \"{endpoint}\"\nid_scope = \"0ne0000ABCD\"\n\n\
             [provisioning.attestation]\nmethod = \"{method}\"\nregistration_id = \"pi-1\"\n\
             symmetric_key = {key}\n"
        )
    }

    #[test]
    fn a_dps_config_as_provision_dps_writes_it_is_read() {
        let value = format!("{{ value = \"{KEY}\" }}");
        let config = parse(&dps_text(
            "https://localhost:8443/",
            "symmetric_key",
            &value,
        ))
        .unwrap();
        let Provisioning::Dps(dps) = &config.provisioning else {
            panic!("not dps: {config:?}");
        };
        assert_eq!(dps.global_endpoint, "https://localhost:8443");
        assert_eq!(dps.id_scope, "0ne0000ABCD");
        assert_eq!(dps.registration_id, "pi-1");
        assert_eq!(dps.key.expose(), KEY);
        assert!(!format!("{config:?}").contains(KEY), "{config:?}");
        let from_file = parse(&dps_text(
            "https://localhost",
            "symmetric_key",
            "{ uri = \"file:///var/secrets/device-id\" }",
        ))
        .unwrap();
        assert!(matches!(&from_file.provisioning, Provisioning::Dps(d) if d.key.expose() == KEY));
    }

    #[test]
    fn a_bad_dps_section_is_refused_naming_the_key_never_the_secret() {
        let value = format!("{{ value = \"{KEY}\" }}");
        let cases = [
            (
                dps_text("http://localhost", "symmetric_key", &value),
                "`provisioning.global_endpoint` must be an https:// URL",
            ),
            (
                dps_text("https://localhost/x", "symmetric_key", &value),
                "`provisioning.global_endpoint` must be an https:// URL with a host and no path",
            ),
            (
                dps_text("https://localhost", "x509", &value),
                "`provisioning.attestation.method` is \"x509\"",
            ),
            (
                dps_text(
                    "https://localhost",
                    "symmetric_key",
                    "{ value = \"sec ret!\" }",
                ),
                "`provisioning.attestation.symmetric_key` is not a base64 symmetric key",
            ),
            (
                "[provisioning]\nsource = \"dps\"\nglobal_endpoint = \"https://h\"\n".to_owned(),
                "missing `provisioning.id_scope`",
            ),
            (
                dps_text("https://localhost", "symmetric_key", &value)
                    .replace("\"pi-1\"", "\"bad id!\""),
                "`provisioning.attestation.registration_id`",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(
                !error.contains("sec ret!") && !error.contains(KEY),
                "{error}"
            );
        }
    }
}
