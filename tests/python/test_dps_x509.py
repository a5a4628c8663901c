"""X.509 attestation of the local Device Provisioning Service (docs/dps.md), judged by Microsoft's
Python device SDK unchanged: `ProvisioningDeviceClient.create_from_x509_certificate` registers
with a TLS client certificate and no password, over MQTT and MQTT over WebSockets, for an
individual enrollment (the device's certificate) and for an enrollment group (a root CA; the
device sends its leaf and an intermediate), then `IoTHubDeviceClient.create_from_x509_certificate`
connects to the assigned hub with the same certificate and reads the twin the enrollment's
`initialTwin` gave it. Refusals are checked on the wire (CONNACK 5; HTTPS 401 with `errorCode`
401002) and that nothing was stored. Certificates are made with `cryptography` (certs.py).
"""

import urllib.parse

import pytest
import requests
from azure.iot.device import IoTHubDeviceClient, ProvisioningDeviceClient, X509, exceptions

from certs import DeviceCert
from conftest import unique_id
from test_az_cli import az, ok  # noqa: F401  (the `az` fixture)
from test_dps import DEVICE_API_VERSION, assert_nothing_stored, dps  # noqa: F401  (the `dps` fixture)


def enroll(dps, registration_id, cert, **fields):
    """An individual X.509 enrollment of `cert`; the service's answer."""
    body = {"registrationId": registration_id,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": cert.pem}}}},
            **fields}
    r = dps.call("PUT", f"enrollments/{registration_id}", body)
    assert r.status_code == 200, r.text
    return r.json()


def group_of(dps, root, **fields):
    """An X.509 enrollment group whose signing certificate is `root`; the service's answer."""
    group_id = unique_id("x509grp")
    body = {"enrollmentGroupId": group_id,
            "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": root.pem}}}},
            **fields}
    r = dps.call("PUT", f"enrollmentGroups/{group_id}", body)
    assert r.status_code == 200, r.text
    return r.json()


def register(hub, dps, registration_id, cert, websockets=False):
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=hub.host, registration_id=registration_id, id_scope=dps.id_scope,
        x509=X509(cert.cert_file, cert.key_file), server_verification_cert=hub.ca_pem,
        websockets=websockets)
    return client.register()


def assert_connects_and_reads_its_twin(hub, clients, state, cert, websockets=False):
    device = clients.track(IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert.cert_file, cert.key_file), hostname=state.assigned_hub,
        device_id=state.device_id, server_verification_cert=hub.ca_pem, websockets=websockets))
    device.connect()
    return device.get_twin()


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt", "websockets"])
def test_an_individual_x509_enrollment_registers_and_its_certificate_then_connects_to_the_hub(
        hub, dps, registry_manager, clients, tmp_path, websockets):
    registration_id = unique_id("x509ind")
    cert = DeviceCert(tmp_path, registration_id)
    created = enroll(dps, registration_id, cert, initialTwin={"properties": {"desired": {"interval": 7}}})
    # the service shows what it read from the certificate, never the certificate
    primary = created["attestation"]["x509"]["clientCertificates"]["primary"]
    assert "certificate" not in primary
    assert (primary["info"]["sha1Thumbprint"], primary["info"]["sha256Thumbprint"]) == (cert.sha1, cert.sha256)
    assert primary["info"]["subjectName"] == f"CN={registration_id}"
    assert primary["info"]["version"] == 3
    shown = dps.call("GET", f"enrollments/{registration_id}").json()
    assert shown["attestation"]["x509"]["clientCertificates"]["primary"] == primary

    result = register(hub, dps, registration_id, cert, websockets)
    assert result.status == "assigned"
    state = result.registration_state
    assert (state.assigned_hub, state.device_id) == (hub.host, registration_id)
    # DPS creates the device self-signed, with the certificate's SHA-256 thumbprint
    device = registry_manager.get_device(registration_id)
    assert device.authentication.type == "selfSigned"
    assert device.authentication.x509_thumbprint.primary_thumbprint == cert.sha256
    assert assert_connects_and_reads_its_twin(hub, clients, state, cert, websockets)["desired"]["interval"] == 7


def test_a_group_with_a_root_registers_a_device_that_sends_its_intermediate(
        hub, dps, registry_manager, clients, tmp_path):
    root = DeviceCert(tmp_path, "fleet root", ca=True)
    intermediate = DeviceCert(tmp_path, "line 7", issuer=root, ca=True)
    group = group_of(dps, root, initialTwin={"tags": {"line": 7}})
    registration_id = unique_id("x509member")
    cert = DeviceCert(tmp_path, registration_id, issuer=intermediate, chain=[intermediate])

    result = register(hub, dps, registration_id, cert)
    assert result.status == "assigned"
    assert assert_connects_and_reads_its_twin(hub, clients, result.registration_state, cert)
    assert registry_manager.get_twin(registration_id).tags == {"line": 7}
    of_group = dps.call("POST", f"registrations/{group['enrollmentGroupId']}/query", {"query": "*"})
    assert [r["registrationId"] for r in of_group.json()] == [registration_id], of_group.text


def connack_of(raw_mqtt, id_scope, registration_id, cert):
    """The CONNACK code a DPS CONNECT with `cert` and no password gets."""
    from types import SimpleNamespace
    client = raw_mqtt(SimpleNamespace(device_id=registration_id, module_id=None), client_id=registration_id,
                      username=f"{id_scope}/registrations/{registration_id}/api-version={DEVICE_API_VERSION}",
                      password="", clean_session=True, client_cert=(cert.cert_file, cert.key_file))
    return client.connect()


def register_over_https(hub, id_scope, registration_id, cert):
    """`PUT …/register` with the client certificate and no Authorization, as the Node HTTP
    transport sends it with `X509Security`."""
    resource = urllib.parse.quote(f"{id_scope}/registrations/{registration_id}")
    return requests.put(f"https://{hub.host}/{resource}/register", params={"api-version": DEVICE_API_VERSION},
                        json={"registrationId": registration_id}, cert=(cert.cert_file, cert.key_file),
                        verify=hub.ca_path, timeout=10)


def test_a_wrong_expired_or_unknown_certificate_is_refused_as_dps_refuses_it_and_nothing_is_stored(
        hub, dps, registry_manager, raw_mqtt, tmp_path):
    root = DeviceCert(tmp_path, "known root", ca=True)
    group_of(dps, root)
    enrolled = unique_id("x509solo")
    enroll(dps, enrolled, DeviceCert(tmp_path, enrolled))
    expired, stranger, misnamed = unique_id("x509old"), unique_id("x509stranger"), unique_id("x509name")
    refused = {
        # the right name but not the enrollment's certificate, though the group's root signed
        # it: the individual enrollment decides
        enrolled: DeviceCert(tmp_path, enrolled, issuer=root),
        expired: DeviceCert(tmp_path, expired, issuer=root, expired=True),
        stranger: DeviceCert(tmp_path, stranger, issuer=DeviceCert(tmp_path, "other root", ca=True)),
        # the group's root signed it, but its CN is not the registration id
        misnamed: DeviceCert(tmp_path, misnamed + "-other", issuer=root),
    }
    for registration_id, cert in refused.items():
        assert connack_of(raw_mqtt, dps.id_scope, registration_id, cert) == 5, registration_id
        r = register_over_https(hub, dps.id_scope, registration_id, cert)
        assert (r.status_code, r.json()["errorCode"]) == (401, 401002), (registration_id, r.text)
        with pytest.raises(exceptions.ClientError):
            register(hub, dps, registration_id, cert)
        assert_nothing_stored(dps, registry_manager, registration_id)

    # positive control over HTTPS: the group's member is accepted (202, then polled)
    member = unique_id("x509https")
    r = register_over_https(hub, dps.id_scope, member, DeviceCert(tmp_path, member, issuer=root))
    assert r.status_code == 202, r.text


def test_ca_references_are_refused_naming_why(dps):
    group_id = unique_id("x509ref")
    r = dps.call("PUT", f"enrollmentGroups/{group_id}", {
        "enrollmentGroupId": group_id,
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "my-root"}}}})
    assert (r.status_code, r.json()["errorCode"]) == (400, 400004), r.text
    assert "caReferences" in r.json()["message"]
    assert dps.call("GET", f"enrollmentGroups/{group_id}").status_code == 404


def test_the_cli_creates_x509_enrollments_from_certificate_files(az, hub, dps, tmp_path):
    login = hub.info["dps"]["connectionString"]
    registration_id = unique_id("azx509")
    cert = DeviceCert(tmp_path, registration_id)
    created = ok(az("iot", "dps", "enrollment", "create", "--enrollment-id", registration_id,
                    "--attestation-type", "x509", "--certificate-path", cert.cert_file, login=login))
    info = created["attestation"]["x509"]["clientCertificates"]["primary"]["info"]
    assert (info["sha1Thumbprint"], info["sha256Thumbprint"]) == (cert.sha1, cert.sha256)

    root = DeviceCert(tmp_path, "az root", ca=True)
    group_id = unique_id("azx509grp")
    group = ok(az("iot", "dps", "enrollment-group", "create", "--enrollment-id", group_id,
                  "--certificate-path", root.cert_file, login=login))
    assert group["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"] == "CN=az root"
    member = unique_id("azx509member")
    assert register(hub, dps, member, DeviceCert(tmp_path, member, issuer=root)).status == "assigned"
