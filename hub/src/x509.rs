//! Client certificates of X.509 identities. The TLS listeners ask every client for a certificate
//! without requiring one and take any chain a client presents ([`AnyClientCertificate`]: the
//! client still proves it holds the leaf's key, in the handshake); which identity it may be is
//! decided at CONNECT, as IoT Hub and edgeHub do: a `selfSigned` identity's leaf must have one of
//! its thumbprints ([`thumbprint_matches`]), a `certificateAuthority` identity's chain must verify
//! to a CA the hub trusts for devices ([`DeviceCas`]) and its leaf's common name must be the device
//! id ([`common_name`]).
//!
//! A leaf: depends on nothing else of the hub.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::Digest;

/// The certificates a client presented in the TLS handshake, its leaf first (empty: none).
#[derive(Clone, Debug, Default)]
pub struct ClientChain(pub Vec<CertificateDer<'static>>);

impl ClientChain {
    /// The chain a finished TLS handshake received.
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        Self(
            connection
                .peer_certificates()
                .map(<[CertificateDer<'static>]>::to_vec)
                .unwrap_or_default(),
        )
    }

    /// The leaf (end-entity) certificate, if the client presented one.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.0.first()
    }
}

/// Whether the SHA-1 or SHA-256 thumbprint of `leaf`'s DER is one of `thumbprints` (hex, any
/// case), as IoT Hub compares a `selfSigned` identity's `x509Thumbprint` (the Azure CLI made
/// SHA-1 thumbprints before azure-iot 0.25.0, SHA-256 since).
pub fn thumbprint_matches(leaf: &[u8], thumbprints: &[String]) -> bool {
    let (sha1, sha256) = thumbprints_of(leaf);
    thumbprints
        .iter()
        .any(|t| t.eq_ignore_ascii_case(&sha1) || t.eq_ignore_ascii_case(&sha256))
}

/// The SHA-1 and SHA-256 thumbprints of a DER certificate, upper-case hex.
pub fn thumbprints_of(der: &[u8]) -> (String, String) {
    (
        hex(&sha1::Sha1::digest(der)),
        hex(&sha2::Sha256::digest(der)),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The CAs the hub trusts for `certificateAuthority` identities: its own CA and any given with
/// `--device-ca`.
#[derive(Debug)]
pub struct DeviceCas {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl DeviceCas {
    /// Trusts `roots`; `Err` names why rustls refused them.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, rustls::Error> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .map_err(|e| rustls::Error::General(format!("device CAs: {e}")))?;
        Ok(Self { verifier })
    }

    /// Checks that `chain` (leaf first) verifies at `now` to one of the CAs, for client
    /// authentication; `Err` says why not.
    pub fn verify(&self, chain: &ClientChain, now: UnixTime) -> Result<(), String> {
        let (leaf, intermediates) = chain.0.split_first().ok_or("no client certificate")?;
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The subject common name (CN, OID 2.5.4.3) of a DER certificate, if it has one in a string type
/// this reads (UTF8String, PrintableString, IA5String, TeletexString).
pub fn common_name(der: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut names = tbs_fields(der)?.subject;
    while !names.is_empty() {
        let (_, set, rest) = tlv(names)?;
        names = rest;
        let (_, attribute, _) = tlv(set)?;
        let (_, oid, value) = tlv(attribute)?;
        if oid == CN {
            let (tag, text, _) = tlv(value)?;
            return matches!(tag, 0x0C | 0x13 | 0x14 | 0x16)
                .then(|| String::from_utf8(text.to_vec()).ok())
                .flatten();
        }
    }
    None
}

/// Whether a DER certificate is within its validity period at `now` (Unix seconds); `false` when
/// the period cannot be read. IoT Hub checks this, and the thumbprint, for `selfSigned`
/// identities ("For Thumbprint Auth, IoTHub validates only if the cert is not expired and if the
/// thumbprints match", Azure/iotedge #621).
pub fn valid_at(der: &[u8], now: i64) -> bool {
    let period = || {
        let validity = tbs_fields(der)?.validity;
        let (not_before_tag, not_before, rest) = tlv(validity)?;
        let (not_after_tag, not_after, _) = tlv(rest)?;
        Some((
            asn1_time(not_before_tag, not_before)?,
            asn1_time(not_after_tag, not_after)?,
        ))
    };
    period().is_some_and(|(from, until)| from <= now && now <= until)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18) as Unix
/// seconds.
fn asn1_time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let month = time::Month::try_from(field(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, field(2)?).ok()?;
    let at = date.with_hms(field(4)?, field(6)?, field(8)?).ok()?;
    Some(at.assume_utc().unix_timestamp())
}

/// What a certificate says of itself, as a provisioning service shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The X.509 version (1 to 3).
    pub version: u8,
    /// The serial number's bytes, big-endian, as encoded.
    pub serial: Vec<u8>,
    /// The issuer's name: its attributes in the order encoded, as (short name or dotted OID, value).
    pub issuer: Vec<(String, String)>,
    /// The subject's name, likewise.
    pub subject: Vec<(String, String)>,
    /// The start of the validity period (Unix seconds).
    pub not_before: i64,
    /// The end of the validity period (Unix seconds).
    pub not_after: i64,
}

/// Reads a DER certificate's version, serial, names and validity; `None` if it is not one.
pub fn describe(der: &[u8]) -> Option<Description> {
    let fields = tbs_fields(der)?;
    let (not_before_tag, not_before, rest) = tlv(fields.validity)?;
    let (not_after_tag, not_after, _) = tlv(rest)?;
    Some(Description {
        version: fields.version,
        serial: fields.serial.to_vec(),
        issuer: name_attributes(fields.issuer)?,
        subject: name_attributes(fields.subject)?,
        not_before: asn1_time(not_before_tag, not_before)?,
        not_after: asn1_time(not_after_tag, not_after)?,
    })
}

/// The attributes of a `Name` (a sequence of sets of type-value pairs), strings only.
fn name_attributes(mut names: &[u8]) -> Option<Vec<(String, String)>> {
    let mut attributes = Vec::new();
    while !names.is_empty() {
        let (_, mut set, rest) = tlv(names)?;
        names = rest;
        while !set.is_empty() {
            let (_, attribute, rest) = tlv(set)?;
            set = rest;
            let (_, oid, value) = tlv(attribute)?;
            let (_, text, _) = tlv(value)?;
            attributes.push((
                attribute_name(oid),
                String::from_utf8_lossy(text).into_owned(),
            ));
        }
    }
    Some(attributes)
}

/// The short name of a name attribute's OID (RFC 4514's, and `E` as Windows writes the
/// e-mail address), or the OID dotted.
fn attribute_name(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "SERIALNUMBER",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "S",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01] => "E",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19] => "DC",
        _ => return dotted(oid),
    };
    short.to_owned()
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value = 0u64;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.extend([first, value - first * 40]);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The fields of a certificate's `TBSCertificate` this module reads.
struct TbsFields<'a> {
    version: u8,
    serial: &'a [u8],
    issuer: &'a [u8],
    validity: &'a [u8],
    subject: &'a [u8],
}

fn tbs_fields(der: &[u8]) -> Option<TbsFields<'_>> {
    let (_, certificate, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    let (tag, explicit, rest) = tlv(tbs)?;
    let mut version = 1;
    if tag == 0xA0 {
        // the explicit version: INTEGER 0 (v1), 1 (v2) or 2 (v3)
        let (_, number, _) = tlv(explicit)?;
        version = number.last().map_or(1, |v| v.saturating_add(1));
        tbs = rest;
    }
    let (_, serial, rest) = tlv(tbs)?;
    let (_, _signature, rest) = tlv(rest)?;
    let (_, issuer, rest) = tlv(rest)?;
    let (_, validity, rest) = tlv(rest)?;
    let (_, subject, _) = tlv(rest)?;
    Some(TbsFields {
        version,
        serial,
        issuer,
        validity,
        subject,
    })
}

/// One DER tag-length-value with a one-byte tag: `(tag, value, what follows)`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The TLS layer's client verifier: asks for a certificate, never requires one, accepts any chain
/// (CONNECT decides), and checks the client's handshake signature with the leaf's key, so that a
/// client cannot present a certificate whose key it does not hold.
#[derive(Debug)]
pub struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCertificate {
    /// With the signature algorithms of `provider`.
    pub fn new(provider: &rustls::crypto::CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName as Dn, DnType, IsCa, KeyPair};

    fn certificate(
        cn: &str,
        issuer: Option<(&rcgen::Certificate, &KeyPair)>,
    ) -> rcgen::Certificate {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = Dn::new();
        dn.push(DnType::OrganizationName, "edgetwin tests");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        match issuer {
            Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key).unwrap(),
            None => params.self_signed(&key).unwrap(),
        }
    }

    #[test]
    fn the_common_name_is_read_from_the_subject_not_the_issuer() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "the CA");
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = certificate("device-1", Some((&ca, &ca_key)));
        assert_eq!(common_name(leaf.der()).as_deref(), Some("device-1"));
        assert_eq!(common_name(ca.der()).as_deref(), Some("the CA"));
        assert_eq!(common_name(&leaf.der()[..20]), None);
        assert_eq!(common_name(b""), None);
    }

    #[test]
    fn a_description_reads_version_serial_names_and_period() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "root");
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = Dn::new();
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::OrganizationName, "edgetwin tests");
        dn.push(DnType::CommonName, "device-1");
        params.distinguished_name = dn;
        params.serial_number = Some(vec![0x01, 0xAB, 0xCD].into());
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let leaf = params
            .signed_by(&KeyPair::generate().unwrap(), &ca, &ca_key)
            .unwrap();
        let d = describe(leaf.der()).unwrap();
        assert_eq!(d.version, 3);
        assert_eq!(d.serial, vec![0x01, 0xAB, 0xCD]);
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            d.subject,
            vec![
                pair("C", "DE"),
                pair("O", "edgetwin tests"),
                pair("CN", "device-1")
            ]
        );
        assert_eq!(d.issuer, vec![pair("CN", "root")]);
        assert_eq!((d.not_before, d.not_after), (1_893_542_400, 1_925_078_400));
        assert_eq!(describe(&leaf.der()[..30]), None);
        assert_eq!(
            dotted(&[0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37]),
            "1.3.6.1.4.1.311"
        );
    }

    #[test]
    fn a_certificate_is_valid_only_within_its_period() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 6, 30); // GeneralizedTime from 2050
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let from = 1_893_542_400; // 2030-01-02T00:00:00Z
        let until = 2_571_696_000; // 2051-06-30T00:00:00Z
        assert!(!valid_at(cert.der(), from - 1));
        assert!(valid_at(cert.der(), from));
        assert!(valid_at(cert.der(), until));
        assert!(!valid_at(cert.der(), until + 1));
        assert!(!valid_at(b"", from));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x17, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(asn1_time(0x18, b"2030010200000Z"), None);
    }

    #[test]
    fn a_thumbprint_matches_as_sha1_or_sha256_in_any_case() {
        let leaf = certificate("d", None);
        let der = leaf.der().as_ref();
        let sha1 = hex(&sha1::Sha1::digest(der));
        let sha256 = hex(&sha2::Sha256::digest(der)).to_ascii_lowercase();
        assert_eq!((sha1.len(), sha256.len()), (40, 64));
        assert!(thumbprint_matches(der, std::slice::from_ref(&sha1)));
        assert!(thumbprint_matches(der, &["0".repeat(40), sha256]));
        assert!(!thumbprint_matches(der, &["0".repeat(40)]));
        assert!(!thumbprint_matches(certificate("d", None).der(), &[sha1]));
    }

    #[test]
    fn only_a_chain_to_a_device_ca_verifies() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let cas = DeviceCas::new(vec![ca.der().clone()]).unwrap();
        let now = UnixTime::now();
        let signed = certificate("d", Some((&ca, &ca_key)));
        assert_eq!(
            cas.verify(&ClientChain(vec![signed.der().clone()]), now),
            Ok(())
        );
        let self_signed = certificate("d", None);
        assert!(cas
            .verify(&ClientChain(vec![self_signed.der().clone()]), now)
            .is_err());
        assert_eq!(
            cas.verify(&ClientChain::default(), now),
            Err("no client certificate".into())
        );
    }
}
