//! The one rustls client configuration edgetwin's clients use (module client, service client,
//! tests): the ring provider, TLS 1.2 and 1.3, the given roots, no client certificate. Pure: the
//! caller reads the PEM and gathers the roots. Only with the `tls` feature, so that crates that
//! need no TLS (the fuzz targets) do not build rustls.

use std::sync::Arc;

use rustls::RootCertStore;

/// A client configuration trusting exactly `roots` (ring provider, rustls' safe default
/// protocol versions: TLS 1.2 and 1.3).
pub fn client_config(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why PEM certificates could not be trusted.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The text is not PEM.
    #[error("not a PEM file: {0}")]
    Parse(#[source] std::io::Error),
    /// A certificate rustls refuses as a trust anchor.
    #[error("not a usable CA certificate: {0}")]
    Certificate(#[source] rustls::Error),
    /// The text holds no `CERTIFICATE` block.
    #[error("no PEM certificate found")]
    Empty,
}

/// The certificates of the PEM text `pem` as trust anchors; at least one.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots
            .add(cert.map_err(PemError::Parse)?)
            .map_err(PemError::Certificate)?;
    }
    match roots.is_empty() {
        true => Err(PemError::Empty),
        false => Ok(roots),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_a_certificate_is_refused() {
        assert!(matches!(roots_from_pem(b"not a pem"), Err(PemError::Empty)));
    }

    #[test]
    fn a_config_trusting_nothing_is_still_a_config() {
        assert!(client_config(RootCertStore::empty()).is_ok());
    }
}
