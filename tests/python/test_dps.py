"""The local Device Provisioning Service (docs/dps.md), judged by Microsoft's Python device SDK
unchanged: `ProvisioningDeviceClient.create_from_symmetric_key(provisioning_host=<the hub's
host>, …)` registers over MQTT (port 8883) and over MQTT over WebSockets (443), then
`IoTHubDeviceClient` connects to the assigned hub with the same key and reads the twin the
enrollment's `initialTwin` gave it. Enrollments are made through the DPS service REST API with
the DPS connection string the hub prints (`hub.json`'s `dps`); refusals are checked on the wire
(CONNACK codes, HTTPS status and DPS `errorCode`), and that nothing was stored.
"""

import base64
import hashlib
import hmac
import http.server
import json
import pathlib
import shutil
import threading
import time
import types
import urllib.parse

import pytest
import requests
from azure.iot.device import IoTHubDeviceClient, ProvisioningDeviceClient, exceptions

from conftest import (Hub, http_status, make_registry_manager, parse_connection_string, sas_token,
                      unique_id)

DPS_API_VERSION = "2021-10-01"
DEVICE_API_VERSION = "2019-03-31"


def derive(group_key, registration_id):
    """A device key derived from its group's key, as Microsoft documents it."""
    mac = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


class Dps:
    """The service REST API, signed as a DPS connection string's policy signs it."""

    def __init__(self, hub):
        self.hub = hub
        self.info = hub.info["dps"]
        cs = parse_connection_string(self.info["connectionString"])
        self.host, self.policy, self.key = cs["HostName"], cs["SharedAccessKeyName"], cs["SharedAccessKey"]

    @property
    def id_scope(self):
        return self.info["idScope"]

    def call(self, method, path, body=None, headers=None):
        token = sas_token(urllib.parse.quote_plus(self.host), self.key, int(time.time()) + 600, self.policy)
        return requests.request(
            method, f"{self.hub.rest_url}/{path}", params={"api-version": DPS_API_VERSION}, json=body,
            headers={"Authorization": token, **(headers or {})}, verify=self.hub.ca_path, timeout=10)

    def group(self, **fields):
        group_id = unique_id("grp")
        body = {"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}, **fields}
        r = self.call("PUT", f"enrollmentGroups/{group_id}", body)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def dps(hub):
    return Dps(hub)


def register(hub, dps, registration_id, key, websockets=False, payload=None):
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=hub.host, registration_id=registration_id, id_scope=dps.id_scope,
        symmetric_key=key, server_verification_cert=hub.ca_pem, websockets=websockets)
    if payload is not None:
        client.provisioning_payload = payload
    return client.register()


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt", "websockets"])
def test_a_group_derived_key_registers_and_the_device_then_reads_its_initial_twin(
        hub, dps, registry_manager, websockets):
    group = dps.group(initialTwin={"tags": {"site": "lab"}, "properties": {"desired": {"interval": 30}}},
                      capabilities={"iotEdge": True})
    registration_id = unique_id("dev")
    key = derive(group["attestation"]["symmetricKey"]["primaryKey"], registration_id)

    result = register(hub, dps, registration_id, key, websockets)
    assert result.status == "assigned"
    state = result.registration_state
    assert (state.assigned_hub, state.device_id) == (hub.host, registration_id)
    assert state.sub_status == "initialAssignment"

    device = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=hub.ca_pem, websockets=websockets)
    try:
        device.connect()
        assert device.get_twin()["desired"]["interval"] == 30
    finally:
        device.shutdown()
    twin = registry_manager.get_twin(registration_id)
    assert twin.tags == {"site": "lab"}
    assert registry_manager.get_device(registration_id).capabilities.iot_edge is True

    shown = dps.call("GET", f"registrations/{registration_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["status"] == "assigned" and shown.json()["assignedHub"] == hub.host
    of_group = dps.call("POST", f"registrations/{group['enrollmentGroupId']}/query", {"query": "*"})
    assert [r["registrationId"] for r in of_group.json()] == [registration_id], of_group.text
    assert of_group.headers["x-ms-item-type"] == "DeviceRegistration"


def test_a_bulk_operation_takes_at_most_ten_enrollments_and_nothing_of_a_refused_one_is_stored(dps):
    enrollments = [{"registrationId": unique_id("bulk"), "attestation": {"type": "symmetricKey"}}
                   for _ in range(11)]
    r = dps.call("POST", "enrollments", {"mode": "create", "enrollments": enrollments})
    assert (r.status_code, r.json()["errorCode"]) == (400, 400004), r.text
    assert dps.call("GET", f"enrollments/{enrollments[0]['registrationId']}").status_code == 404


def register_over_https(hub, id_scope, registration_id, key, skn=None):
    """`PUT …/register` as the Node HTTP transport sends it; the response, and the polled
    operation's when the registration was accepted."""
    resource = f"{id_scope}/registrations/{registration_id}"
    token = sas_token(urllib.parse.quote(resource, safe=""), key, int(time.time()) + 600, skn)
    url = f"https://{hub.host}/{urllib.parse.quote(resource)}"
    call = dict(params={"api-version": DEVICE_API_VERSION}, headers={"Authorization": token},
                verify=hub.ca_path, timeout=10)
    put = requests.put(f"{url}/register", json={"registrationId": registration_id}, **call)
    if put.status_code != 202:
        return put, None
    return put, requests.get(f"{url}/operations/{put.json()['operationId']}", **call)


def test_an_individual_enrollment_registers_over_https_with_202_then_polling(hub, dps, registry_manager):
    registration_id = unique_id("ind")
    r = dps.call("PUT", f"enrollments/{registration_id}",
                 {"registrationId": registration_id, "attestation": {"type": "symmetricKey"},
                  "deviceId": registration_id + "-device"})
    assert r.status_code == 200, r.text
    key = r.json()["attestation"]["symmetricKey"]["primaryKey"]
    put, polled = register_over_https(hub, dps.id_scope, registration_id, key)
    assert put.status_code == 202, put.text
    assert put.json()["status"] == "assigning"
    assert polled.status_code == 200, polled.text
    state = polled.json()["registrationState"]
    assert polled.json()["status"] == "assigned"
    assert state["deviceId"] == registration_id + "-device"
    assert {"registrationId", "createdDateTimeUtc", "assignedHub", "status", "substatus", "etag",
            "lastUpdatedDateTimeUtc"} <= set(state)
    device = registry_manager.get_device(registration_id + "-device")
    assert device.authentication.symmetric_key.primary_key == key


def refused_over_https(hub, id_scope, registration_id, key, skn=None):
    response, _ = register_over_https(hub, id_scope, registration_id, key, skn)
    return response


def connack_of(raw_mqtt, id_scope, registration_id, key, skn="registration"):
    resource = f"{id_scope}/registrations/{registration_id}"
    token = sas_token(urllib.parse.quote(resource, safe=""), key, int(time.time()) + 600, skn)
    client = raw_mqtt(types.SimpleNamespace(device_id=registration_id, module_id=None), client_id=registration_id,
                      username=f"{resource}/api-version={DEVICE_API_VERSION}", password=token, clean_session=True)
    return client.connect()


def assert_nothing_stored(dps, registry_manager, registration_id):
    assert dps.call("GET", f"registrations/{registration_id}").json()["errorCode"] == 404202
    assert registration_id not in [d.device_id for d in registry_manager.get_devices(1000)]


def test_bad_registrations_are_refused_as_dps_refuses_them_and_nothing_is_stored(
        hub, dps, registry_manager, raw_mqtt):
    group = dps.group()
    group_key = group["attestation"]["symmetricKey"]["primaryKey"]
    wrong = unique_id("wrong")
    wrong_key = derive(base64.b64encode(b"not the group key").decode(), wrong)
    assert connack_of(raw_mqtt, dps.id_scope, wrong, wrong_key) == 5
    r = refused_over_https(hub, dps.id_scope, wrong, wrong_key, "registration")
    assert (r.status_code, r.json()["errorCode"]) == (401, 401002), r.text
    assert_nothing_stored(dps, registry_manager, wrong)

    unknown_scope = unique_id("scope")
    key = derive(group_key, unknown_scope)
    assert connack_of(raw_mqtt, "0ne99999999", unknown_scope, key) == 5
    r = refused_over_https(hub, "0ne99999999", unknown_scope, key, "registration")
    assert (r.status_code, r.json()["errorCode"]) == (401, 401002), r.text
    assert_nothing_stored(dps, registry_manager, unknown_scope)

    invalid = "bad#id"
    r = refused_over_https(hub, dps.id_scope, invalid, derive(group_key, invalid), "registration")
    assert (r.status_code, r.json()["errorCode"]) == (400, 400004), r.text
    assert connack_of(raw_mqtt, dps.id_scope, invalid, derive(group_key, invalid)) == 5

    disabled = dps.group(provisioningStatus="disabled")
    off = unique_id("off")
    # DPS answers `assigning`, then the terminal status `disabled` (the Java SDK handles it since
    # Azure/azure-iot-sdk-java#1641); the Python SDK raises on any status but assigned/failed
    with pytest.raises(exceptions.ClientError) as refused:
        register(hub, dps, off, derive(disabled["attestation"]["symmetricKey"]["primaryKey"], off))
    assert "invalid registration status disabled" in str(refused.value.__cause__)
    assert_nothing_stored(dps, registry_manager, off)


def test_reprovisioning_keeps_the_twin_or_resets_it_as_the_policy_says(hub, dps, registry_manager):
    for migrate, substatus, interval in [(True, "deviceDataMigrated", 99), (False, "deviceDataReset", 1)]:
        group = dps.group(initialTwin={"properties": {"desired": {"interval": 1}}},
                          reprovisionPolicy={"updateHubAssignment": True, "migrateDeviceData": migrate})
        registration_id = unique_id("re")
        key = derive(group["attestation"]["symmetricKey"]["primaryKey"], registration_id)
        _, first = register_over_https(hub, dps.id_scope, registration_id, key)
        assert first.json()["registrationState"]["substatus"] == "initialAssignment", first.text
        twin = registry_manager.get_twin(registration_id)
        registry_manager.update_twin(registration_id, type(twin)(properties=type(twin.properties)(
            desired={"interval": 99})), twin.etag)
        _, again = register_over_https(hub, dps.id_scope, registration_id, key)
        assert again.json()["registrationState"]["substatus"] == substatus
        assert registry_manager.get_twin(registration_id).properties.desired["interval"] == interval


def test_provision_dps_writes_one_private_aziot_config_per_device_whose_key_registers(hub, dps, tmp_path):
    import os
    import subprocess
    import tomllib

    group_id = unique_id("fleet")
    prefix = unique_id("pi") + "-"
    out = tmp_path / "fleet"
    done = subprocess.run(
        [hub.binary, "provision", "--dps", "--count", "3", "--prefix", prefix, "--out", str(out),
         "--enrollment-group", group_id, "--id-scope", dps.id_scope,
         "--global-endpoint", f"https://{hub.host}", "--ca-file", hub.ca_path],
        env=dict(os.environ, DPS_CONNECTION_STRING=dps.info["connectionString"]),
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    files = sorted(out.glob("*/config.toml"))
    assert [f.parent.name for f in files] == [f"{prefix}{n}" for n in (1, 2, 3)]
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    config = tomllib.loads(files[0].read_text())
    assert config["provisioning"]["source"] == "dps"
    assert config["provisioning"]["global_endpoint"] == f"https://{hub.host}"
    assert config["provisioning"]["id_scope"] == dps.id_scope
    attestation = config["provisioning"]["attestation"]
    assert attestation["method"] == "symmetric_key"
    group = dps.call("POST", f"enrollmentGroups/{group_id}/attestationmechanism").json()
    key = attestation["symmetric_key"]["value"]
    assert key == derive(group["symmetricKey"]["primaryKey"], attestation["registration_id"])
    _, polled = register_over_https(hub, dps.id_scope, attestation["registration_id"], key)
    assert polled.json()["status"] == "assigned", polled.text


# ---------------------------------------------------------------------------
# linked hubs: a second hub on 127.0.0.2 whose DPS links the session hub (localhost)


@pytest.fixture(scope="module")
def dps_hub(hub, tmp_path_factory):
    """A hub on 127.0.0.2 (named so, on the same ports) whose provisioning service links the
    session hub with `--dps-linked-hub`; it shares the session hub's CA, so the SDKs (and
    REQUESTS_CA_BUNDLE) trust both."""
    tmp = tmp_path_factory.mktemp("dps-hub")
    certs = tmp / "data" / "certs"
    certs.mkdir(parents=True)
    for name in ("ca.pem", "ca.key.pem"):
        shutil.copy(pathlib.Path(hub.ca_path).parent / name, certs / name)
    linked = f"{hub.service_connection_string};CaFile={hub.ca_path}"
    second = Hub(hub.binary, tmp / "data", tmp / "hub.log", ["--dps-linked-hub", linked],
                 address="127.0.0.2")
    try:
        second.start()
    except RuntimeError as exc:
        second.stop()
        pytest.fail(str(exc))
    yield second
    second.stop()


@pytest.fixture(scope="module")
def linked(dps_hub):
    return Dps(dps_hub)


def read_twin(hub, state, key):
    device = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=hub.ca_pem)
    try:
        device.connect()
        return device.get_twin()
    finally:
        device.shutdown()


@pytest.mark.parametrize("update, migrate", [(True, True), (True, False), (False, True)],
                         ids=["migrate", "reset", "never"])
def test_reprovisioning_to_another_linked_hub_moves_the_device_and_its_twin_as_the_policy_says(
        hub, dps_hub, linked, registry_manager, update, migrate):
    group = linked.group(iotHubs=[dps_hub.host], initialTwin={
        "tags": {"site": "a"}, "properties": {"desired": {"interval": 1}}},
        reprovisionPolicy={"updateHubAssignment": update, "migrateDeviceData": migrate})
    registration_id = unique_id("move")
    key = derive(group["attestation"]["symmetricKey"]["primaryKey"], registration_id)
    # the first registration over HTTPS (no retry-after wait); the one that moves, with the SDK
    _, first = register_over_https(dps_hub, linked.id_scope, registration_id, key)
    assert first.json()["registrationState"]["assignedHub"] == dps_hub.host, first.text
    old = make_registry_manager(dps_hub.service_connection_string)
    twin = old.get_twin(registration_id)
    old.update_twin(registration_id, type(twin)(tags={"site": "b"}, properties=type(twin.properties)(
        desired={"interval": 99})), twin.etag)

    group["iotHubs"] = [hub.host]
    r = linked.call("PUT", f"enrollmentGroups/{group['enrollmentGroupId']}", group)
    assert r.status_code == 200, r.text
    again = register(dps_hub, linked, registration_id, key)
    state = again.registration_state
    if not update:
        assert (state.assigned_hub, state.sub_status) == (dps_hub.host, "initialAssignment")
        assert old.get_twin(registration_id).properties.desired["interval"] == 99
        return
    assert state.assigned_hub == hub.host
    assert state.sub_status == ("deviceDataMigrated" if migrate else "deviceDataReset")
    desired = read_twin(hub, state, key)["desired"]
    assert desired["interval"] == (99 if migrate else 1)
    assert registry_manager.get_twin(registration_id).tags == {"site": "b" if migrate else "a"}
    with pytest.raises(Exception) as gone:
        old.get_device(registration_id)
    assert http_status(gone.value) == 404
    registry_manager.delete_device(registration_id)


def test_hashed_allocation_spreads_devices_over_the_linked_hubs_and_a_refusing_hub_fails_the_registration(
        hub, dps_hub, linked, registry_manager):
    assert [(h["name"], h["allocationWeight"]) for h in dps_hub.info["dps"]["linkedHubs"]] == \
        [(dps_hub.host, 1), (hub.host, 1)]
    group = linked.group()
    key = group["attestation"]["symmetricKey"]["primaryKey"]
    assigned = {}
    for _ in range(16):
        registration_id = unique_id("spread")
        _, polled = register_over_https(dps_hub, linked.id_scope, registration_id, derive(key, registration_id))
        assert polled.json()["status"] == "assigned", polled.text
        assigned[registration_id] = polled.json()["registrationState"]["assignedHub"]
    assert set(assigned.values()) == {hub.host, dps_hub.host}, assigned
    on_session = [r for r, h in assigned.items() if h == hub.host]
    assert registry_manager.get_device(on_session[0]).authentication.symmetric_key.primary_key == \
        derive(key, on_session[0])
    for registration_id in on_session:
        registry_manager.delete_device(registration_id)

    # an IoT Hub device id may not hold a space: the linked hub refuses it, the registration fails
    registration_id = unique_id("refused")
    r = linked.call("PUT", f"enrollments/{registration_id}", {
        "registrationId": registration_id, "attestation": {"type": "symmetricKey"},
        "deviceId": "bad id", "iotHubs": [hub.host]})
    assert r.status_code == 200, r.text
    _, polled = register_over_https(dps_hub, linked.id_scope, registration_id,
                                    r.json()["attestation"]["symmetricKey"]["primaryKey"])
    assert polled.json()["status"] == "failed", polled.text
    state = polled.json()["registrationState"]
    assert state["errorCode"] == 500001 and hub.host in state["errorMessage"], state
    shown = linked.call("GET", f"registrations/{registration_id}").json()
    assert (shown["status"], shown["errorCode"]) == ("failed", 500001), shown


class Webhook:
    """A custom allocation webhook (an Azure Function's stand-in): records each request and
    answers `self.answer` with `self.status`."""

    def __init__(self):
        self.requests, self.status, self.answer = [], 200, {}
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhook.requests.append((self.path, json.loads(body)))
                out = json.dumps(webhook.answer).encode()
                self.send_response(webhook.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/allocate?code=secret"


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()


def test_custom_allocation_asks_the_webhook_and_returns_its_payload_to_the_device(
        hub, dps_hub, linked, registry_manager, webhook):
    group = linked.group(allocationPolicy="custom", customAllocationDefinition={
        "webhookUrl": webhook.url, "apiVersion": "2021-10-01"})
    registration_id = unique_id("custom")
    key = derive(group["attestation"]["symmetricKey"]["primaryKey"], registration_id)
    webhook.answer = {"iotHubHostName": hub.host, "initialTwin": {"tags": {"kind": "toaster"}},
                      "payload": {"firmware": "2.0"}}
    result = register(dps_hub, linked, registration_id, key, payload={"model": "t-1000"})
    assert (result.status, result.registration_state.assigned_hub) == ("assigned", hub.host)
    assert json.loads(result.registration_state.response_payload) == {"firmware": "2.0"}
    path, request = webhook.requests[-1]
    assert path == "/api/allocate?code=secret"
    assert request["enrollmentGroup"]["enrollmentGroupId"] == group["enrollmentGroupId"]
    assert "symmetricKey" not in request["enrollmentGroup"]["attestation"]
    assert request["deviceRuntimeContext"] == {
        "registrationId": registration_id, "symmetricKey": {}, "payload": {"model": "t-1000"}}
    assert sorted(request["linkedHubs"]) == sorted([hub.host, dps_hub.host])
    assert registry_manager.get_twin(registration_id).tags == {"kind": "toaster"}

    webhook.status = 400
    with pytest.raises(exceptions.ClientError):
        register(dps_hub, linked, registration_id, key)
    assert webhook.requests[-1][1]["deviceRuntimeContext"]["currentIotHubHostName"] == hub.host
    shown = linked.call("GET", f"registrations/{registration_id}").json()
    assert (shown["status"], shown["errorCode"]) == ("failed", 400207), shown
    assert shown["errorMessage"] == "Custom allocation failed with status code: 400"
    registry_manager.delete_device(registration_id)
