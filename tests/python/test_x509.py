"""X.509 identities as IoT Hub serves them: `selfSigned` (a SHA-1 or SHA-256 thumbprint of the
device's certificate) and `certificateAuthority` (a certificate chained to a CA the hub trusts, its
CN the device id), created through the service SDK and the Azure CLI, and connected with a TLS
client certificate by the Python device SDK (`create_from_x509_certificate`), which sends no
password. The certificates are made here with `cryptography`; CA-signed ones are signed with the
hub's own CA (its key is in the hub's data directory, `certs/ca.key.pem`).
"""

import json

import pytest
from azure.iot.device import IoTHubDeviceClient, X509
from azure.iot.device.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from msrest.exceptions import HttpOperationError

from certs import DeviceCert
from conftest import delete_devices, http_status, unique_id, wait_until
from test_az_cli import az, ok  # noqa: F401  (the `az` fixture)


@pytest.fixture(scope="session")
def hub_ca(hub):
    """(name, key) of the hub's CA, to sign device certificates with."""
    certs = hub.data_dir / "certs"
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((certs / "ca.key.pem").read_bytes(), password=None)
    return ca.subject, key


@pytest.fixture
def x509_device(registry_manager):
    """Creates an X.509 device through the service SDK; deletes it after the test."""
    created = []

    def _make(kind, *args, device_id=None):
        device_id = device_id or unique_id("x509")
        if kind == "selfSigned":
            registry_manager.create_device_with_x509(device_id, *args, "enabled")
        else:
            registry_manager.create_device_with_certificate_authority(device_id, "enabled")
        created.append(device_id)
        return device_id

    yield _make
    delete_devices(registry_manager, created)


# ---------------------------------------------------------------------------
# the registry


def test_self_signed_devices_keep_sha1_and_sha256_thumbprints(registry_manager, x509_device):
    sha1, sha256 = "ab" * 20, "CD" * 32
    device_id = x509_device("selfSigned", sha1, sha256)
    device = registry_manager.get_device(device_id)
    assert device.authentication.type == "selfSigned"
    assert device.authentication.x509_thumbprint.primary_thumbprint == sha1
    assert device.authentication.x509_thumbprint.secondary_thumbprint == sha256
    assert device.authentication.symmetric_key.primary_key is None
    twin = registry_manager.get_twin(device_id)
    assert twin.authentication_type == "selfSigned"
    assert twin.x509_thumbprint.primary_thumbprint == sha1


def test_a_bad_thumbprint_is_refused_naming_the_field(registry_manager):
    with pytest.raises(HttpOperationError) as err:
        registry_manager.create_device_with_x509(unique_id("x509"), "A" * 40, "B" * 39, "enabled")
    assert http_status(err.value) == 400
    assert "x509Thumbprint.secondaryThumbprint" in err.value.response.text


def test_certificate_authority_devices_and_x509_modules_are_created(registry_manager, x509_device):
    device_id = x509_device("certificateAuthority")
    device = registry_manager.get_device(device_id)
    assert device.authentication.type == "certificateAuthority"
    assert device.authentication.symmetric_key.primary_key is None
    module_id = unique_id("x509mod")
    registry_manager.create_module_with_x509(device_id, module_id, None, "A" * 40, "b" * 64)
    module = registry_manager.get_module(device_id, module_id)
    assert module.authentication.type == "selfSigned"
    assert module.authentication.x509_thumbprint.secondary_thumbprint == "b" * 64


def test_the_cli_creates_x509_devices_and_modules(az, registry_manager):
    thumbprint_device, ca_device = unique_id("azx509"), unique_id("azx509ca")
    sha1, sha256 = "0A" * 20, "1b" * 32
    created = ok(az("iot", "hub", "device-identity", "create", "-d", thumbprint_device,
                    "--am", "x509_thumbprint", "--ptp", sha1, "--stp", sha256))
    assert created["authentication"]["type"] == "selfSigned"
    assert created["authentication"]["x509Thumbprint"] == {"primaryThumbprint": sha1,
                                                           "secondaryThumbprint": sha256}
    shown = ok(az("iot", "hub", "device-identity", "show", "-d", thumbprint_device))
    assert shown["authentication"]["x509Thumbprint"]["primaryThumbprint"] == sha1

    ok(az("iot", "hub", "device-identity", "create", "-d", ca_device, "--am", "x509_ca"))
    assert registry_manager.get_device(ca_device).authentication.type == "certificateAuthority"

    module = ok(az("iot", "hub", "module-identity", "create", "-d", thumbprint_device,
                   "-m", "x509mod", "--am", "x509_thumbprint", "--ptp", sha256))
    assert module["authentication"]["type"] == "selfSigned"
    read = registry_manager.get_module(thumbprint_device, "x509mod")
    assert read.authentication.x509_thumbprint.primary_thumbprint == sha256
    for device_id in (thumbprint_device, ca_device):
        ok(az("iot", "hub", "device-identity", "delete", "-d", device_id))


# ---------------------------------------------------------------------------
# connecting with a certificate


def _x509_client(hub, clients, device_id, cert, **kw):
    """The Python device SDK's X.509 client (it sends no password), tracked for shutdown."""
    return clients.track(IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert.cert_file, cert.key_file), hostname=hub.host, device_id=device_id,
        server_verification_cert=hub.ca_pem, **kw))


def _assert_sends_and_reads_its_twin(hub, client, device_id):
    client.connect()
    assert isinstance(client.get_twin()["desired"]["$version"], int)
    client.send_message("hello over x509")
    wait_until(lambda: [m for m in hub.messages(device_id) if m["body"] == "hello over x509"],
               timeout=10, message="X.509 device telemetry in /edgetwin/messages")


@pytest.mark.parametrize("thumbprint", ["sha1", "sha256"])
def test_a_self_signed_device_connects_with_its_certificate(hub, clients, x509_device, tmp_path,
                                                           thumbprint):
    device_id = unique_id("x509ss")
    cert = DeviceCert(tmp_path, device_id)
    # the matching thumbprint is the secondary one: both are tried
    device_id = x509_device("selfSigned", "00" * 20, getattr(cert, thumbprint), device_id=device_id)
    _assert_sends_and_reads_its_twin(hub, _x509_client(hub, clients, device_id, cert), device_id)


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt", "websockets"])
def test_a_device_signed_by_the_hub_ca_connects(hub, clients, x509_device, hub_ca, tmp_path,
                                                websockets):
    device_id = x509_device("certificateAuthority")
    cert = DeviceCert(tmp_path, device_id, issuer=hub_ca)
    client = _x509_client(hub, clients, device_id, cert, websockets=websockets)
    _assert_sends_and_reads_its_twin(hub, client, device_id)


def test_a_wrong_certificate_is_refused(hub, clients, x509_device, make_device, hub_ca, tmp_path):
    def refused(device_id, cert):
        client = _x509_client(hub, clients, device_id, cert, connection_retry=False)
        with pytest.raises(ClientError):
            client.connect()

    # self-signed: a certificate with another thumbprint
    registered = DeviceCert(tmp_path, "d")
    self_signed = x509_device("selfSigned", registered.sha256, None)
    refused(self_signed, DeviceCert(tmp_path, self_signed))
    # self-signed: the registered thumbprint, but expired (IoT Hub checks that too)
    expired = DeviceCert(tmp_path, "d", expired=True)
    refused(x509_device("selfSigned", expired.sha1, None), expired)
    # CA: the right CN from a CA the hub does not trust, and the hub CA's signature on another CN
    ca_device = x509_device("certificateAuthority")
    refused(ca_device, DeviceCert(tmp_path, ca_device))
    refused(ca_device, DeviceCert(tmp_path, "someone-else", issuer=hub_ca))
    # a SAS device still needs its token when it presents a certificate
    sas_device = make_device().device_id
    refused(sas_device, DeviceCert(tmp_path, sas_device, issuer=hub_ca))
    # positive control: the registered certificate gets in
    _assert_sends_and_reads_its_twin(hub, _x509_client(hub, clients, self_signed, registered),
                                     self_signed)


def test_telemetry_says_how_its_x509_device_authenticated(hub, clients, x509_device, hub_ca, tmp_path):
    # IoT Hub's `iothub-connection-auth-method` (hub/src/events.rs `AuthMethod::annotation`):
    # "x509Certificate", issued "external" for a CA-signed certificate, "iothub" for a thumbprint
    from test_event_hub import consumer, from_device, receive

    self_signed = unique_id("x509ss")
    cert = DeviceCert(tmp_path, self_signed)
    x509_device("selfSigned", "00" * 20, cert.sha256, device_id=self_signed)
    signed = x509_device("certificateAuthority")
    for device_id, cert in [(self_signed, cert),
                            (signed, DeviceCert(tmp_path, signed, issuer=hub_ca))]:
        client = _x509_client(hub, clients, device_id, cert)
        client.connect()
        client.send_message("how did I authenticate")
    events, errors = receive(
        consumer(hub),
        lambda es: any(map(from_device(self_signed), es)) and any(map(from_device(signed), es)))
    assert not errors, errors

    def auth_method(device_id):
        [(_, event)] = [e for e in events if from_device(device_id)(e)]
        return json.loads(event.system_properties[b"iothub-connection-auth-method"])

    assert auth_method(self_signed) == {"scope": "device", "type": "x509Certificate",
                                        "issuer": "iothub", "acceptingIpFilterRule": None}
    assert auth_method(signed) == {"scope": "device", "type": "x509Certificate",
                                   "issuer": "external", "acceptingIpFilterRule": None}
