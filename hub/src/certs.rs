//! The hub's certificate authority and TLS server certificate.
//!
//! On first start the hub creates a CA (`ca.pem`, `ca.key.pem`) in its data directory and a server
//! certificate signed by it. The CA is what clients trust (`server_verification_cert`, the workload
//! trust bundle, `REQUESTS_CA_BUNDLE`), so it is kept forever; the server certificate is reissued
//! only when the set of names it must cover changes.
//!
//! A leaf: depends on nothing else of the hub.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors while creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file in the data directory could not be read or written.
    #[error("certificate file {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen refused to generate or parse a key or certificate.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM file held no usable item.
    #[error("{path}: no certificate or key found")]
    EmptyPem {
        /// The file concerned.
        path: PathBuf,
    },
}

/// The hub's TLS material, loaded and ready to serve.
pub struct TlsMaterial {
    /// Path of the CA certificate clients should trust.
    pub ca_path: PathBuf,
    /// The CA certificate in PEM form (served as the workload trust bundle).
    pub ca_pem: String,
    /// Server configuration shared by the MQTT and REST listeners (TLS 1.2 and 1.3).
    pub server_config: Arc<rustls::ServerConfig>,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key.pem";
const SERVER_NAMES: &str = "server.names";

/// Loads the CA and the server certificate from `dir`, creating what is missing, so that the server
/// certificate covers `localhost`, `127.0.0.1`, `::1` and every name in `host_names`.
pub fn load_or_create(dir: &Path, host_names: &[String]) -> Result<TlsMaterial, CertError> {
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let ca_key = load_or_create_ca(dir)?;
    let names = server_names(host_names);
    let names_text = names.join("\n");
    let names_path = dir.join(SERVER_NAMES);
    let current = fs::read_to_string(&names_path).unwrap_or_default();
    if current != names_text || !dir.join(SERVER_CERT).exists() || !dir.join(SERVER_KEY).exists() {
        issue_server_certificate(dir, &ca_key, &names)?;
        write_private(&names_path, &names_text)?;
    }
    let ca_path = dir.join(CA_CERT);
    let ca_pem = read(&ca_path)?;
    let server_config = server_config(dir)?;
    Ok(TlsMaterial {
        ca_path,
        ca_pem,
        server_config,
    })
}

fn server_names(host_names: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    for name in host_names {
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The CA's parameters; rebuilt identically whenever the CA must sign, since only its key is stored.
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "edgetwin local hub CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    Ok(params)
}

fn load_or_create_ca(dir: &Path) -> Result<KeyPair, CertError> {
    let key_path = dir.join(CA_KEY);
    let cert_path = dir.join(CA_CERT);
    if key_path.exists() && cert_path.exists() {
        return Ok(KeyPair::from_pem(&read(&key_path)?)?);
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok(key)
}

fn issue_server_certificate(
    dir: &Path,
    ca_key: &KeyPair,
    names: &[String],
) -> Result<(), CertError> {
    let ca = ca_params()?.self_signed(ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.last().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let cert = params.signed_by(&key, &ca, ca_key)?;
    write_private(&dir.join(SERVER_KEY), &key.serialize_pem())?;
    write_public(&dir.join(SERVER_CERT), &cert.pem())?;
    Ok(())
}

fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let cert_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut read(&cert_path)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|source| io_error(&cert_path, source))?;
    if certs.is_empty() {
        return Err(CertError::EmptyPem { path: cert_path });
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(&key_path)?.as_bytes())
        .map_err(|source| io_error(&key_path, source))?
        .ok_or(CertError::EmptyPem { path: key_path })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

fn write_public(path: &Path, text: &str) -> Result<(), CertError> {
    fs::write(path, text).map_err(|source| io_error(path, source))
}

/// Writes a file only its owner may read (keys, and files next to them).
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| io_error(&tmp, source))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| io_error(&tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_keeps_the_ca_and_a_new_name_reissues_only_the_server_certificate() {
        let dir = std::env::temp_dir().join(format!("edgetwin-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = load_or_create(&dir, &["hub.local".into()]).unwrap();
        let server_before = fs::read_to_string(dir.join(SERVER_CERT)).unwrap();
        let second = load_or_create(&dir, &["hub.local".into()]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(
            server_before,
            fs::read_to_string(dir.join(SERVER_CERT)).unwrap()
        );
        let third = load_or_create(&dir, &["other.local".into()]).unwrap();
        assert_eq!(first.ca_pem, third.ca_pem);
        assert_ne!(
            server_before,
            fs::read_to_string(dir.join(SERVER_CERT)).unwrap()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
