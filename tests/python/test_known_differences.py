"""Every line of the README's "Known differences from IoT Hub", as a test: what the hub does not
serve is refused or absent in a way a client can see, and where it behaves otherwise than IoT Hub
it does so as the README says. A difference that goes away makes its test fail."""

import queue

import pytest
import requests
from azure.iot.device import Message
from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.models import Configuration, ConfigurationContent, QuerySpecification

from conftest import unique_id
from test_routes import _apply_routes, _module

API = {"api-version": "2021-04-12"}


def test_x509_v1_client_certificates_are_refused_in_the_tls_handshake(hub, registry_manager, tmp_path):
    # webpki (rustls) reads X.509 v3 certificates only; `openssl x509 -req` without extensions makes
    # a v1 one, which IoT Hub takes for a thumbprint device
    import hashlib
    import ssl
    import subprocess
    from azure.iot.device import IoTHubDeviceClient, X509
    from azure.iot.device.exceptions import ClientError
    from cryptography import x509

    key, csr, cert = (str(tmp_path / n) for n in ("v1.key", "v1.csr", "v1.pem"))
    device_id = unique_id("x509v1")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-subj", f"/CN={device_id}", "-out", csr],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-signkey", key, "-days", "1", "-out", cert],
                   check=True, capture_output=True)
    pem = open(cert, "rb").read()
    assert x509.load_pem_x509_certificate(pem).version == x509.Version.v1
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    registry_manager.create_device_with_x509(device_id, hashlib.sha256(der).hexdigest(), None, "enabled")
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert, key), hostname=hub.host, device_id=device_id,
        server_verification_cert=hub.ca_pem, connection_retry=False)
    try:
        with pytest.raises(ClientError):
            client.connect()
    finally:
        client.shutdown()
        registry_manager.delete_device(device_id)


def test_import_and_export_jobs_are_not_served(hub):
    auth = {"Authorization": hub.service_token()}
    created = requests.post(f"{hub.rest_url}/jobs/create", params=API, headers=auth, verify=hub.ca_path,
                            json={"type": "export", "outputBlobContainerUri": "https://x/y"}, timeout=10)
    assert created.status_code == 400
    assert "import and export jobs" in created.json()["Message"]
    listed = requests.get(f"{hub.rest_url}/jobs", params=API, headers=auth, verify=hub.ca_path, timeout=10)
    assert listed.status_code == 200 and listed.json() == []


def test_an_unknown_route_is_a_400_argument_invalid_in_iot_hubs_envelope(hub):
    # what IoT Hub answers for a path it does not serve is not documented, nor shown by its SDKs'
    # tests or issues; the hub answers in IoT Hub's envelope, naming the request
    for method, path in (("GET", "nothing/here"), ("DELETE", "digitaltwins/d1")):
        r = requests.request(method, f"{hub.rest_url}/{path}", params=API,
                             headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=10)
        assert r.status_code == 400 and r.headers["iothub-errorcode"] == "ArgumentInvalid", r.text
        assert r.json()["Message"].startswith(f"ErrorCode:ArgumentInvalid;{method} /{path} ")


def test_a_query_sees_a_change_at_once(registry_manager, make_device):
    from azure.iot.hub.models import Twin
    device = make_device()
    marker = unique_id("now")
    registry_manager.update_twin(device.device_id, Twin(tags={"marker": marker}), "*")
    result = registry_manager.query_iot_hub(
        QuerySpecification(query=f"SELECT * FROM devices WHERE tags.marker = '{marker}'"))
    assert [t.device_id for t in result.items] == [device.device_id]


def test_a_message_routed_to_an_offline_module_is_dropped(hub, registry_manager, make_device, clients):
    device = make_device(edge=True, prefix="gw")
    sensor = _module(hub, registry_manager, device.device_id, "sensor")
    sink = _module(hub, registry_manager, device.device_id, "sink")
    _apply_routes(hub, device.device_id, {
        "r": 'FROM /messages/modules/sensor/outputs/* INTO BrokeredEndpoint("/modules/sink/inputs/in")'})
    sender = clients.module(sensor)
    sender.connect()
    sender.send_message_to_output(Message("while sink is offline"), "out")
    received = queue.Queue()
    receiver = clients.module(sink)
    receiver.on_message_received = received.put
    receiver.connect()
    sender.send_message_to_output(Message("while sink is online"), "out")
    assert received.get(timeout=10).data == b"while sink is online"
    with pytest.raises(queue.Empty):
        received.get(timeout=1.0)


def test_deployments_are_evaluated_at_once_not_every_five_minutes(hub, registry_manager, make_device):
    from azure.iot.hub.models import Twin
    device = make_device(edge=True, prefix="gw")
    ring = unique_id("ring").lower()
    manager = IoTHubConfigurationManager.from_connection_string(hub.service_connection_string)
    config_id = unique_id("now").lower()
    manager.create_configuration(Configuration(
        id=config_id, target_condition=f"tags.ring='{ring}'", priority=1,
        content=ConfigurationContent(modules_content={
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.2", "routes": {"x": "FROM /* INTO $upstream"}}}})))
    try:
        registry_manager.update_twin(device.device_id, Twin(tags={"ring": ring}), "*")
        routes = registry_manager.get_module_twin(device.device_id, "$edgeHub").properties.desired["routes"]
        assert routes == {"x": "FROM /* INTO $upstream"}
    finally:
        manager.delete_configuration(config_id)


def test_the_default_policies_carry_iot_hubs_names(hub):
    assert set(hub.info["policies"]) == {"iothubowner", "service", "device", "registryRead",
                                         "registryReadWrite"}
