//! X.509 attestation of the local Device Provisioning Service, as DPS does it (Microsoft Learn,
//! "X.509 certificate attestation" for DPS): a device proves who it is with the TLS client
//! certificate it presented ([`ClientChain`]), and no token.
//!
//! - An individual enrollment's `clientCertificates` hold the device's own certificate: the leaf
//!   must have the primary's or the secondary's thumbprint and be within its validity period.
//! - An enrollment group's `signingCertificates` hold a root or intermediate CA: the device's
//!   chain (its leaf and the intermediates it sends) must verify to one of them.
//! - Either way the leaf's subject CN is the registration id (the maintainers of
//!   Azure/iot-identity-service, PR #111: "IoT Hub rejects the request if registration ID does
//!   not match the cert CN"; aziot's `check` compares them, PR #123).
//! - `caReferences` (certificates uploaded to DPS through Azure Resource Manager, verified by
//!   proof of possession) are refused when an enrollment is written: this local service has no
//!   ARM certificate store to name them from.
//!
//! The device DPS then creates in IoT Hub is a `selfSigned` one with the leaf's SHA-256
//! thumbprint as both its primary and its secondary, whatever the enrollment
//! (MicrosoftDocs/azure-docs #70976 and #108289, Azure/azure-iot-sdk-csharp #3360: devices of a
//! CA enrollment group show as "X.509 self-signed" in IoT Hub; Azure/iotedge #2951: the hub
//! shows the device certificate's SHA-256 where DPS shows SHA-1, and one thumbprint fills both
//! slots; Azure/azure-iot-sdk-java #1220: both slots hold the registering certificate's). So the
//! same certificate connects to the hub with no CA to trust there.
//!
//! Beside `dps`, below the doors: depends on `dps`, `x509` and the store.

use edgetwin_wire::dps::{
    self, DpsError, EnrollmentCommon, EnrollmentGroup, IndividualEnrollment, X509Attestation,
    X509CertificateInfo, X509CertificateWithInfo, X509Certificates,
};
use edgetwin_wire::rest::{AuthenticationMechanism, X509Thumbprint};
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::store::{DpsTable, Transaction};
use crate::x509::{self, ClientChain, DeviceCas};

/// Checks the `x509` attestation of a record of `table` about to be stored, and fills each
/// certificate's `info` from the certificate: an individual enrollment takes
/// `clientCertificates`, a group `signingCertificates`, each with a primary; a slot read back
/// without its certificate (the service never shows it) keeps the `existing` record's.
/// Attestations of other types are left alone.
pub fn prepare(
    table: DpsTable,
    common: &mut EnrollmentCommon,
    existing: Option<&EnrollmentCommon>,
) -> Result<(), DpsError> {
    let Some(x509) = common.attestation.x509.as_mut() else {
        return Ok(());
    };
    if common.attestation.kind != "x509" {
        return Err(DpsError::invalid(format!(
            "attestation.x509 is given but attestation.type is '{}'",
            common.attestation.kind
        )));
    }
    if x509.ca_references.is_some() {
        return Err(DpsError::invalid(
            "attestation.x509.caReferences names certificates uploaded to a provisioning service \
             through Azure Resource Manager, which this local DPS does not have: give the CA \
             certificate itself in signingCertificates",
        ));
    }
    let (field, wanted, other) = match table {
        DpsTable::Groups => (
            "signingCertificates",
            &mut x509.signing_certificates,
            x509.client_certificates.is_some(),
        ),
        _ => (
            "clientCertificates",
            &mut x509.client_certificates,
            x509.signing_certificates.is_some(),
        ),
    };
    if other {
        let kind = match table {
            DpsTable::Groups => "an enrollment group",
            _ => "an individual enrollment",
        };
        return Err(DpsError::invalid(format!(
            "attestation.x509 of {kind} takes {field} only"
        )));
    }
    let certificates = wanted
        .as_mut()
        .ok_or_else(|| DpsError::invalid(format!("attestation.x509.{field} is missing")))?;
    let kept = existing
        .and_then(|e| e.attestation.x509.as_ref())
        .and_then(|x| match table {
            DpsTable::Groups => x.signing_certificates.clone(),
            _ => x.client_certificates.clone(),
        })
        .unwrap_or_default();
    for (name, slot, kept) in [
        ("primary", &mut certificates.primary, kept.primary),
        ("secondary", &mut certificates.secondary, kept.secondary),
    ] {
        let path = format!("attestation.x509.{field}.{name}");
        match slot {
            Some(X509CertificateWithInfo {
                certificate: Some(text),
                info,
            }) => {
                let der = certificate_der(text).ok_or_else(|| {
                    DpsError::invalid(format!(
                        "{path}.certificate is not an X.509 certificate in PEM or base64 DER"
                    ))
                })?;
                *info = Some(info_of(&der).ok_or_else(|| {
                    DpsError::invalid(format!("{path}.certificate could not be read"))
                })?);
            }
            // read back without its certificate: the stored one stays
            Some(_) if kept.is_some() => *slot = kept,
            Some(_) => return Err(DpsError::invalid(format!("{path}.certificate is missing"))),
            None if name == "primary" => {
                return Err(DpsError::invalid(format!("{path} is missing")))
            }
            None => {}
        }
    }
    Ok(())
}

/// The DER of a certificate given as PEM (the first `CERTIFICATE` block) or as base64 DER (how
/// the Azure CLI sends a binary `.cer` file).
fn certificate_der(text: &str) -> Option<CertificateDer<'static>> {
    use base64::Engine;
    if text.contains("-----BEGIN") {
        return rustls_pemfile::certs(&mut text.as_bytes()).next()?.ok();
    }
    let compact: String = text.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()?;
    Some(CertificateDer::from(der))
}

/// `X509CertificateInfo` of a DER certificate. Names are written most specific first
/// (`CN=…, O=…, C=…`), as .NET's `X509Certificate2.Subject` writes them; the times to the second
/// with `Z`.
fn info_of(der: &[u8]) -> Option<X509CertificateInfo> {
    let description = x509::describe(der)?;
    let name = |attributes: &[(String, String)]| {
        attributes
            .iter()
            .rev()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (sha1, sha256) = x509::thumbprints_of(der);
    Some(X509CertificateInfo {
        subject_name: name(&description.subject),
        sha1_thumbprint: sha1,
        sha256_thumbprint: sha256,
        issuer_name: name(&description.issuer),
        not_before_utc: utc_seconds(description.not_before)?,
        not_after_utc: utc_seconds(description.not_after)?,
        serial_number: description
            .serial
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect(),
        version: description.version,
    })
}

fn utc_seconds(unix: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    ))
}

/// What a registering device proved with its token or its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The registration id.
    pub registration_id: String,
    /// The enrollment group whose derived key signed the token (or whose signing certificate
    /// the device's chain verified to); `None` for an individual enrollment.
    pub group: Option<String>,
    /// The SHA-256 thumbprint of the certificate an X.509 device presented
    /// ([`attest`]); `None` for a token.
    pub thumbprint: Option<String>,
}

/// Checks a device registering for `registration_id` under `id_scope` (which must be this
/// service's, `own_scope`) with the certificates
/// `chain` it presented, at `now` (Unix seconds): the individual enrollment of the registration
/// id if it has one (its certificate's thumbprint), otherwise the first enrollment group whose
/// signing certificate the chain verifies to. Every refusal is 401002 `Unauthorized`, as DPS
/// answers a certificate it does not accept (Azure/azure-iot-sdk-node #532: `{"errorCode":
/// 401002, …}`), the reason logged; a registration id DPS would never accept is 400004.
pub fn attest(
    tx: &Transaction<'_>,
    own_scope: &str,
    id_scope: &str,
    registration_id: &str,
    chain: &ClientChain,
    now: i64,
) -> Result<Attested, DpsError> {
    let refuse = |why: &str| {
        tracing::info!(
            registration_id,
            reason = why,
            "DPS X.509 registration refused"
        );
        DpsError::unauthorized()
    };
    if id_scope != own_scope {
        return Err(refuse("unknown id scope"));
    }
    dps::check_registration_id(registration_id)?;
    let leaf = chain
        .leaf()
        .ok_or_else(|| refuse("no client certificate"))?;
    if x509::common_name(leaf).as_deref() != Some(registration_id) {
        return Err(refuse("the certificate's CN is not the registration id"));
    }
    let attested = |group: Option<String>| Attested {
        registration_id: registration_id.to_owned(),
        group,
        thumbprint: Some(x509::thumbprints_of(leaf).1),
    };
    // An individual enrollment of the registration id comes first, as in DPS; then the groups.
    let enrollment: Option<IndividualEnrollment> =
        tx.dps_record(DpsTable::Enrollments, registration_id)?;
    if let Some(enrollment) = enrollment {
        let certificates = client_certificates(&enrollment.common)
            .ok_or_else(|| refuse("the individual enrollment is not an X.509 one"))?;
        let thumbprints: Vec<String> = certificates
            .slots()
            .filter_map(|slot| slot.info.as_ref())
            .flat_map(|info| [info.sha1_thumbprint.clone(), info.sha256_thumbprint.clone()])
            .collect();
        if !x509::thumbprint_matches(leaf, &thumbprints) {
            return Err(refuse(
                "the certificate is neither the enrollment's primary nor its secondary",
            ));
        }
        if !x509::valid_at(leaf, now) {
            return Err(refuse("the certificate is expired or not yet valid"));
        }
        return Ok(attested(None));
    }
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    let mut after = String::new();
    loop {
        let groups: Vec<EnrollmentGroup> = tx.dps_records(DpsTable::Groups, &after, 100, None)?;
        for group in &groups {
            let Some(signing) = signing_certificates(&group.common) else {
                continue;
            };
            let roots: Vec<CertificateDer<'static>> = signing
                .slots()
                .filter_map(|slot| slot.certificate.as_deref().and_then(certificate_der))
                .collect();
            let verified = DeviceCas::new(roots).is_ok_and(|cas| cas.verify(chain, at).is_ok());
            if verified {
                return Ok(attested(Some(group.enrollment_group_id.clone())));
            }
        }
        match groups.last() {
            Some(last) => last.enrollment_group_id.clone_into(&mut after),
            None => {
                return Err(refuse(
                    "the chain verifies to no enrollment group's certificate",
                ))
            }
        }
    }
}

fn x509_of(common: &EnrollmentCommon) -> Option<&X509Attestation> {
    (common.attestation.kind == "x509")
        .then_some(common.attestation.x509.as_ref())
        .flatten()
}

fn client_certificates(common: &EnrollmentCommon) -> Option<&X509Certificates> {
    x509_of(common)?.client_certificates.as_ref()
}

fn signing_certificates(common: &EnrollmentCommon) -> Option<&X509Certificates> {
    x509_of(common)?.signing_certificates.as_ref()
}

/// The IoT Hub authentication of a device DPS registered with the certificate whose SHA-256
/// thumbprint is `thumbprint`: `selfSigned`, the thumbprint in both slots (see the module
/// comment).
pub fn authentication(thumbprint: &str) -> AuthenticationMechanism {
    AuthenticationMechanism {
        auth_type: Some("selfSigned".into()),
        symmetric_key: None,
        x509_thumbprint: Some(X509Thumbprint {
            primary_thumbprint: Some(thumbprint.to_owned()),
            secondary_thumbprint: Some(thumbprint.to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;
    use crate::store::StoreError;
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
    use serde_json::json;

    /// 2030-06-01T00:00:00Z, inside every test certificate's validity.
    const NOW: i64 = 1_906_416_000;

    struct Issued {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn issue(cn: &str, ca: bool, issuer: Option<&Issued>, until: (i32, u8, u8)) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        if ca {
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate().unwrap();
        let cert = match issuer {
            Some(i) => params.signed_by(&key, &i.cert, &i.key).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        Issued { cert, key }
    }

    fn chain(certs: &[&Issued]) -> ClientChain {
        ClientChain(certs.iter().map(|c| c.cert.der().clone()).collect())
    }

    #[test]
    fn info_is_read_from_the_pem_and_the_certificate_is_kept_when_read_back_without_it() {
        let device = issue("dev-1", false, None, (2031, 1, 1));
        let mut enrollment: IndividualEnrollment = serde_json::from_value(json!({
            "attestation": {"type": "x509", "x509": {"clientCertificates": {
                "primary": {"certificate": device.cert.pem()}}}}
        }))
        .unwrap();
        prepare(DpsTable::Enrollments, &mut enrollment.common, None).unwrap();
        let x509 = enrollment.common.attestation.x509.clone().unwrap();
        let info = x509
            .client_certificates
            .unwrap()
            .primary
            .unwrap()
            .info
            .unwrap();
        assert_eq!(info.subject_name, "CN=dev-1");
        assert_eq!(info.issuer_name, "CN=dev-1");
        assert_eq!(info.not_before_utc, "2030-01-01T00:00:00Z");
        assert_eq!(info.version, 3);
        assert_eq!(
            (info.sha1_thumbprint.clone(), info.sha256_thumbprint.clone()),
            x509::thumbprints_of(device.cert.der())
        );

        let mut shown = enrollment.common.clone();
        shown
            .attestation
            .x509
            .as_mut()
            .unwrap()
            .without_certificates();
        prepare(DpsTable::Enrollments, &mut shown, Some(&enrollment.common)).unwrap();
        assert_eq!(shown.attestation, enrollment.common.attestation);
    }

    #[test]
    fn x509_enrollments_this_service_cannot_honour_are_refused_naming_the_field() {
        let pem = issue("d", false, None, (2031, 1, 1)).cert.pem();
        let refused = |table: DpsTable, x509: serde_json::Value| {
            let mut common: EnrollmentCommon =
                serde_json::from_value(json!({"attestation": {"type": "x509", "x509": x509}}))
                    .unwrap();
            prepare(table, &mut common, None).unwrap_err().message
        };
        let client = json!({"clientCertificates": {"primary": {"certificate": pem}}});
        let signing = json!({"signingCertificates": {"primary": {"certificate": pem}}});
        assert!(refused(DpsTable::Groups, client.clone()).contains("signingCertificates"));
        assert!(refused(DpsTable::Enrollments, signing).contains("clientCertificates"));
        assert!(refused(
            DpsTable::Groups,
            json!({"caReferences": {"primary": "root"}})
        )
        .contains("Azure Resource Manager"));
        assert!(refused(
            DpsTable::Enrollments,
            json!({"clientCertificates": {"primary": {"certificate": "not a certificate"}}})
        )
        .contains("clientCertificates.primary.certificate"));
        assert!(refused(
            DpsTable::Enrollments,
            json!({"clientCertificates": {"secondary": {"certificate": pem}}})
        )
        .contains("clientCertificates.primary is missing"));
        // base64 DER, as the Azure CLI sends a binary .cer
        let der = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            issue("d", false, None, (2031, 1, 1)).cert.der(),
        );
        let mut common: EnrollmentCommon = serde_json::from_value(json!({"attestation": {
            "type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": der}}}}}))
        .unwrap();
        prepare(DpsTable::Enrollments, &mut common, None).unwrap();
    }

    #[test]
    fn a_chain_attests_by_its_individual_enrollment_first_then_by_a_groups_signing_certificate() {
        let (mut store, dir) = temp_store("dps-x509");
        let root = issue("root", true, None, (2040, 1, 1));
        let intermediate = issue("intermediate", true, Some(&root), (2040, 1, 1));
        let member = issue("member-1", false, Some(&intermediate), (2031, 1, 1));
        let solo = issue("solo", false, None, (2031, 1, 1));
        let expired = issue("solo", false, None, (2030, 2, 1));
        let impostor = issue("solo", false, Some(&root), (2031, 1, 1));
        let stranger = issue(
            "member-1",
            false,
            Some(&issue("other", true, None, (2040, 1, 1))),
            (2031, 1, 1),
        );
        store
            .transaction(|tx| {
                let scope = "0ne00TESTSC".to_owned();
                let put = |table: DpsTable, id: &str, section: &str, pem: String| {
                    let mut common: EnrollmentCommon = serde_json::from_value(json!({
                        "attestation": {"type": "x509", "x509": {section: {"primary": {"certificate": pem}}}}
                    }))
                    .unwrap();
                    prepare(table, &mut common, None).unwrap();
                    match table {
                        DpsTable::Groups => tx.put_dps_record(table, id, None, &EnrollmentGroup {
                            enrollment_group_id: id.into(), common }),
                        _ => tx.put_dps_record(table, id, None, &IndividualEnrollment {
                            registration_id: id.into(), common, ..Default::default() }),
                    }
                };
                put(DpsTable::Groups, "fleet", "signingCertificates", root.cert.pem())?;
                put(DpsTable::Enrollments, "solo", "clientCertificates", solo.cert.pem())?;
                let check = |id: &str, chain: &ClientChain, now: i64| {
                    attest(tx, &scope, &scope, id, chain, now).map(|a| (a.group, a.thumbprint))
                };
                let leaf_sha256 = |c: &Issued| Some(x509::thumbprints_of(c.cert.der()).1);
                assert_eq!(
                    check("member-1", &chain(&[&member, &intermediate]), NOW),
                    Ok((Some("fleet".into()), leaf_sha256(&member)))
                );
                assert_eq!(check("solo", &chain(&[&solo]), NOW), Ok((None, leaf_sha256(&solo))));
                let unauthorized = |id: &str, chain: &ClientChain, now: i64| {
                    check(id, chain, now).unwrap_err().code == 401002
                };
                // without its intermediate the leaf does not chain to the root
                assert!(unauthorized("member-1", &chain(&[&member]), NOW));
                // a chain to another root, an expired certificate, another enrollment's one
                assert!(unauthorized("member-1", &chain(&[&stranger]), NOW));
                assert!(unauthorized("solo", &chain(&[&expired]), NOW));
                // the individual enrollment decides, though the group's root signed this one
                assert!(unauthorized("solo", &chain(&[&impostor]), NOW));
                // the CN must be the registration id; a group member expires too
                assert!(unauthorized("member-2", &chain(&[&member, &intermediate]), NOW));
                assert!(unauthorized("member-1", &chain(&[&member, &intermediate]), 1_956_528_001));
                assert!(unauthorized("solo", &ClientChain::default(), NOW));
                let elsewhere = attest(tx, &scope, "0ne00000000", "solo", &chain(&[&solo]), NOW);
                assert_eq!(elsewhere.unwrap_err().code, 401002);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
