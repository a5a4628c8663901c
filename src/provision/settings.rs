//! Where the job's settings come from: the service connection string (flag, then
//! `IOTHUB_CONNECTION_STRING`, then `.env` in the working directory, as iotedgedev reads it) and
//! the CA that signs the hub's certificate (flag, `EDGETWIN_CA_FILE`, `REQUESTS_CA_BUNDLE`).
//! Pure: the environment and the `.env` text are passed in.

use std::path::PathBuf;
use std::str::FromStr;

use edgetwin_wire::connection_string::{ConnectionString, ConnectionStringKind};

use super::error::ProvisionError;

/// The environment variable (and `.env` key) holding the service connection string.
pub const CONNECTION_STRING_VAR: &str = "IOTHUB_CONNECTION_STRING";
/// The environment variable naming a PEM file with the CA to trust.
pub const CA_FILE_VAR: &str = "EDGETWIN_CA_FILE";
/// The variable Python `requests` (and so the azure-iot-hub SDK) reads for a CA bundle.
pub const REQUESTS_CA_BUNDLE_VAR: &str = "REQUESTS_CA_BUNDLE";

/// Where the connection string was found, for messages (never the string itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--connection-string`.
    Flag,
    /// The `IOTHUB_CONNECTION_STRING` environment variable.
    Environment,
    /// `IOTHUB_CONNECTION_STRING` in `./.env`.
    DotEnv,
}

impl Source {
    /// A short description for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Source::Flag => "--connection-string",
            Source::Environment => "the IOTHUB_CONNECTION_STRING environment variable",
            Source::DotEnv => "IOTHUB_CONNECTION_STRING in .env",
        }
    }
}

/// Parses `.env` text the way python-dotenv (used by iotedgedev) does, with the parser `manifest
/// gen` uses ([`crate::manifest::env::parse_dotenv`]): keys without `=` are dropped and later
/// lines win.
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in crate::manifest::env::parse_dotenv(text) {
        if let Some(value) = value {
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
        }
    }
    pairs
}

/// Finds the service connection string: the flag, else the environment variable, else `.env`.
/// Empty values count as unset (iotedgedev's template `.env` ships `IOTHUB_CONNECTION_STRING=""`).
/// The string must be a shared-access-policy (service) connection string.
pub fn resolve_connection_string(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    dotenv: Option<&str>,
) -> Result<(ConnectionString, Source), ProvisionError> {
    let from_dotenv = || {
        dotenv.and_then(|text| {
            parse_dotenv(text)
                .into_iter()
                .find(|(k, _)| k == CONNECTION_STRING_VAR)
                .map(|(_, v)| v)
        })
    };
    let candidates = [
        (flag.map(str::to_owned), Source::Flag),
        (env(CONNECTION_STRING_VAR), Source::Environment),
        (from_dotenv(), Source::DotEnv),
    ];
    let (text, source) = candidates
        .into_iter()
        .find_map(|(value, source)| {
            value
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (v, source))
        })
        .ok_or(ProvisionError::NoConnectionString)?;
    let parsed = ConnectionString::from_str(&text).map_err(|source_error| {
        ProvisionError::ConnectionString {
            origin: source.describe(),
            source: source_error,
        }
    })?;
    if parsed.kind() != ConnectionStringKind::Service {
        return Err(ProvisionError::Input(format!(
            "the connection string from {} is a {} connection string; provisioning needs a \
             shared access policy (service) connection string, e.g. the hub's iothubowner policy",
            source.describe(),
            match parsed.kind() {
                ConnectionStringKind::Device => "device",
                _ => "module",
            }
        )));
    }
    Ok((parsed, source))
}

/// The CA file to trust besides the system roots: the flag, else `EDGETWIN_CA_FILE`, else
/// `REQUESTS_CA_BUNDLE`. Empty values count as unset.
pub fn resolve_ca_file(
    flag: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<PathBuf> {
    resolve_ca_file_and_origin(flag, env).map(|(path, _)| path)
}

/// As [`resolve_ca_file`], with where the file was named (`--ca-file` or the variable), for
/// messages about it.
pub fn resolve_ca_file_and_origin(
    flag: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(PathBuf, &'static str)> {
    match flag.filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => Some((path, "--ca-file")),
        None => [CA_FILE_VAR, REQUESTS_CA_BUNDLE_VAR]
            .into_iter()
            .find_map(|var| Some((PathBuf::from(env(var).filter(|v| !v.is_empty())?), var))),
    }
}

/// The host name devices and modules put in their connection strings: the service host without
/// a `:port`. The local hub serves REST on its own port (`HostName=localhost:8443` in the service
/// string) but devices connect with `HostName=localhost` (MQTT on 8883); on Azure there is no port.
pub fn device_host_name(service_host: &str) -> &str {
    match service_host.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => service_host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==";

    fn service(host: &str) -> String {
        format!("HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn dotenv_handles_quotes_export_comments_and_the_equals_signs_of_a_key() {
        let text = format!(
            "# iotedgedev\nIOTHUB_CONNECTION_STRING=\"{}\"\nexport A='x y' \nB=plain # note\nC=\"q\\\"d\"\nB=later\nnot a pair\n",
            service("h.net")
        );
        let pairs = parse_dotenv(&text);
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("IOTHUB_CONNECTION_STRING"),
            Some(service("h.net").as_str())
        );
        assert_eq!(get("A"), Some("x y"));
        assert_eq!(get("B"), Some("later"));
        assert_eq!(get("C"), Some("q\"d"));
    }

    #[test]
    fn the_flag_wins_over_the_environment_which_wins_over_dotenv() {
        let env = |k: &str| (k == CONNECTION_STRING_VAR).then(|| service("env.net"));
        let dotenv = format!("IOTHUB_CONNECTION_STRING={}", service("dotenv.net"));
        let flag = service("flag.net");
        let (cs, source) = resolve_connection_string(Some(&flag), &env, Some(&dotenv)).unwrap();
        assert_eq!((cs.host_name.as_str(), source), ("flag.net", Source::Flag));
        let (cs, source) = resolve_connection_string(None, &env, Some(&dotenv)).unwrap();
        assert_eq!(
            (cs.host_name.as_str(), source),
            ("env.net", Source::Environment)
        );
        let (cs, source) = resolve_connection_string(None, &no_env, Some(&dotenv)).unwrap();
        assert_eq!(
            (cs.host_name.as_str(), source),
            ("dotenv.net", Source::DotEnv)
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let env = |_: &str| Some(String::new());
        let dotenv = "IOTHUB_CONNECTION_STRING=\"\"\n";
        let err = resolve_connection_string(Some(""), &env, Some(dotenv)).unwrap_err();
        assert!(matches!(err, ProvisionError::NoConnectionString));
        assert!(err.to_string().contains("IOTHUB_CONNECTION_STRING"));
    }

    #[test]
    fn a_device_connection_string_is_refused_without_echoing_its_key() {
        let device = format!("HostName=h.net;DeviceId=d;SharedAccessKey={KEY}");
        let err = resolve_connection_string(Some(&device), &no_env, None).unwrap_err();
        assert!(err.to_string().contains("device connection string"));
        assert!(!err.to_string().contains(KEY));
        assert!(!format!("{err:?}").contains(KEY));
    }

    #[test]
    fn a_malformed_connection_string_names_where_it_came_from() {
        let err = resolve_connection_string(None, &|_| Some("nonsense".into()), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("IOTHUB_CONNECTION_STRING environment"),
            "{err}"
        );
    }

    #[test]
    fn the_ca_file_comes_from_the_flag_then_edgetwin_then_requests() {
        let env = |k: &str| match k {
            CA_FILE_VAR => Some("/edgetwin.pem".to_owned()),
            REQUESTS_CA_BUNDLE_VAR => Some("/requests.pem".to_owned()),
            _ => None,
        };
        assert_eq!(
            resolve_ca_file(Some("/flag.pem".into()), &env),
            Some(PathBuf::from("/flag.pem"))
        );
        assert_eq!(
            resolve_ca_file(None, &env),
            Some(PathBuf::from("/edgetwin.pem"))
        );
        let requests_only = |k: &str| (k == REQUESTS_CA_BUNDLE_VAR).then(|| "/r.pem".to_owned());
        assert_eq!(
            resolve_ca_file(None, &requests_only),
            Some(PathBuf::from("/r.pem"))
        );
        assert_eq!(resolve_ca_file(None, &no_env), None);
    }

    #[test]
    fn the_device_host_name_drops_the_rest_port_only() {
        assert_eq!(device_host_name("localhost:8443"), "localhost");
        assert_eq!(
            device_host_name("hub.azure-devices.net"),
            "hub.azure-devices.net"
        );
        assert_eq!(device_host_name("hub:"), "hub:");
    }
}
