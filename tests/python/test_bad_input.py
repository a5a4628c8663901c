"""Bad credentials, bad bytes, bad twin patches, insufficient permissions."""

import base64
import json
import os
import time

import pytest
from azure.iot.device.exceptions import ClientError, ServiceError
from azure.iot.hub.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from conftest import (
    Identity,
    device_sas,
    http_status,
    make_registry_manager,
    read_until_closed,
    tls_socket,
    unique_id,
)


def assert_twin_request_rejected_with_400(call):
    """The sync SDK wraps the twin ServiceError ("... status 400") in ClientError."""
    with pytest.raises((ServiceError, ClientError)) as err:
        call()
    exc = err.value
    causes = [exc, exc.__cause__]
    assert any(isinstance(e, ServiceError) and "status 400" in str(e) for e in causes), repr(causes)


def random_key():
    return base64.b64encode(os.urandom(32)).decode()


def assert_module_client_works(clients, identity):
    c = clients.module(identity)
    c.connect()
    assert isinstance(c.get_twin()["desired"]["$version"], int)
    return c


# --- credentials -------------------------------------------------------------------------------


def test_wrong_key_is_refused_and_the_right_key_still_works(hub, clients, make_module):
    mod = make_module()
    wrong = Identity(hub, mod.device_id, mod.module_id, random_key(), None)
    bad = clients.module(wrong, connection_retry=False)
    with pytest.raises(ClientError):
        bad.connect()
    assert not bad.connected
    assert_module_client_works(clients, mod)


def test_secondary_key_is_accepted(hub, clients, make_module):
    mod = make_module()
    secondary = Identity(hub, mod.device_id, mod.module_id, mod.secondary_key, None)
    assert_module_client_works(clients, secondary)


def test_unknown_device_is_refused(hub, clients, raw_mqtt, make_device):
    known = clients.device(make_device())
    known.connect()  # positive control: a registered device gets in
    ghost = Identity(hub, unique_id("ghost"), None, random_key(), None)
    c = clients.device(ghost, connection_retry=False)
    with pytest.raises(ClientError):
        c.connect()
    assert raw_mqtt(ghost).connect() == 5
    assert known.connected


def test_disabled_device_is_refused_until_enabled_again(hub, clients, registry_manager, make_device):
    dev = make_device()
    registry_manager.update_device_with_sas(
        dev.device_id, "*", dev.primary_key, dev.secondary_key, "disabled")
    assert registry_manager.get_device(dev.device_id).status == "disabled"
    c = clients.device(dev, connection_retry=False)
    with pytest.raises(ClientError):
        c.connect()

    registry_manager.update_device_with_sas(
        dev.device_id, "*", dev.primary_key, dev.secondary_key, "enabled")
    ok = clients.device(dev)
    ok.connect()
    assert isinstance(ok.get_twin()["desired"]["$version"], int)


def test_raw_client_with_valid_sas_is_accepted(raw_mqtt, make_module):
    mod = make_module()
    c = raw_mqtt(mod)
    assert c.connect() == 0


def assert_valid_sas_connects(raw_mqtt, identity):
    """Positive control: the same identity with a good token gets CONNACK 0."""
    good = raw_mqtt(identity)
    assert good.connect() == 0
    good.close()


def test_expired_sas_is_refused_with_connack_not_authorized(raw_mqtt, make_module):
    mod = make_module()
    assert_valid_sas_connects(raw_mqtt, mod)
    expired = mod.sas(expiry=int(time.time()) - 3600)  # well beyond any clock-skew allowance
    c = raw_mqtt(mod, password=expired)
    assert c.connect() == 5


def test_sas_of_another_device_is_refused(hub, raw_mqtt, make_device):
    a, b = make_device(), make_device()
    assert_valid_sas_connects(raw_mqtt, b)
    token_for_a = device_sas(hub.host, a.device_id, a.primary_key)
    c = raw_mqtt(b, password=token_for_a)
    assert c.connect() == 5


def test_sas_with_tampered_signature_is_refused(raw_mqtt, make_module):
    mod = make_module()
    assert_valid_sas_connects(raw_mqtt, mod)
    token = mod.sas()
    se = token.rsplit("&se=", 1)[1]
    tampered = token.replace(f"&se={se}", f"&se={int(se) + 60}")  # signature no longer matches
    c = raw_mqtt(mod, password=tampered)
    assert c.connect() == 5


# --- bytes on the wire ---------------------------------------------------------------------------


def test_garbage_bytes_close_the_connection_and_others_are_unaffected(hub, clients, make_module):
    mod = make_module()
    survivor = assert_module_client_works(clients, mod)
    s = tls_socket(hub)
    try:
        s.sendall(b"\xff" * 64)
        closed, data = read_until_closed(s, timeout=10)
    finally:
        s.close()
    assert closed, "hub kept a connection open after garbage"
    assert not data.startswith(b"\x20\x02\x00\x00") and not data.startswith(b"\x20\x02\x01\x00")
    assert isinstance(survivor.get_twin()["desired"]["$version"], int)
    assert_module_client_works(clients, make_module())


def test_malformed_connect_closes_the_connection_and_others_are_unaffected(hub, clients, make_module):
    mod = make_module()
    survivor = assert_module_client_works(clients, mod)
    # CONNECT whose protocol-name length (200) overruns the 12-byte packet
    packet = bytes([0x10, 12, 0x00, 0xC8]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x00])
    s = tls_socket(hub)
    try:
        s.sendall(packet)
        closed, data = read_until_closed(s, timeout=10)
    finally:
        s.close()
    assert closed, "hub kept a connection open after a malformed CONNECT"
    assert not (len(data) >= 4 and data[0] == 0x20 and data[3] == 0x00), "malformed CONNECT was accepted"
    assert isinstance(survivor.get_twin()["desired"]["$version"], int)


def test_tls_handshake_then_silence_does_not_block_other_clients(hub, clients, make_module):
    s = tls_socket(hub)  # handshake done, no CONNECT sent
    try:
        assert_module_client_works(clients, make_module())
    finally:
        s.close()


def test_publish_to_unknown_topic_disconnects_the_client(raw_mqtt, make_module):
    mod = make_module()
    c = raw_mqtt(mod)
    assert c.connect() == 0
    c.publish(f"devices/{mod.device_id}/modules/{mod.module_id}/nonsense/topic", b"x", qos=1)
    c.wait_disconnect(timeout=10)


# --- twin patches ----------------------------------------------------------------------------------


def _twin_res(c, rid, timeout=10):
    topic, payload = c.wait_message(
        lambda t, p: t.startswith("$iothub/twin/res/") and f"$rid={rid}" in t, timeout=timeout)
    return int(topic.split("/")[3]), topic, payload


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'], ids=["garbage", "array", "string"])
def test_reported_patch_that_is_not_a_json_object_is_400_and_twin_unchanged(
        body, registry_manager, raw_mqtt, make_module):
    mod = make_module()
    before = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported
    c = raw_mqtt(mod)
    assert c.connect() == 0
    c.subscribe("$iothub/twin/res/#")
    c.publish("$iothub/twin/PATCH/properties/reported/?$rid=bad1", body)
    status, topic, _ = _twin_res(c, "bad1")
    assert status == 400, topic

    # the connection is still usable and the twin did not change
    c.publish("$iothub/twin/GET/?$rid=get1", b" ")
    status, _, payload = _twin_res(c, "get1")
    assert status == 200
    mqtt_reported = json.loads(payload)["reported"]
    assert mqtt_reported["$version"] == before["$version"]
    assert [k for k in mqtt_reported if not k.startswith("$")] == []
    after = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported
    assert after["$version"] == before["$version"]


def test_raw_reported_patch_gets_204_with_new_version(registry_manager, raw_mqtt, make_module):
    mod = make_module()
    v0 = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported["$version"]
    c = raw_mqtt(mod)
    assert c.connect() == 0
    c.subscribe("$iothub/twin/res/#")
    c.publish("$iothub/twin/PATCH/properties/reported/?$rid=ok1", json.dumps({"raw": 1}))
    status, topic, _ = _twin_res(c, "ok1")
    assert status == 204
    assert f"$version={v0 + 1}" in topic.split("?", 1)[1].split("&")


def test_a_username_without_api_version_connects_and_sends_but_cannot_report(hub, raw_mqtt, make_device,
                                                                             registry_manager):
    # IoT Hub accepts it ("It's recommended to include api-version ... Otherwise it could cause
    # unexpected behaviors", its MQTT doc; MicrosoftDocs/azure-docs#16306) and answers reported
    # patches 400 (andriyadi/AzureIoTHubMQTTClient#5)
    device = make_device()
    for username in (f"{hub.host}/{device.device_id}/", f"{hub.host}/{device.device_id}"):
        c = raw_mqtt(device, username=username)
        assert c.connect() == 0, username
        c.subscribe("$iothub/twin/res/#")
        c.publish("$iothub/twin/PATCH/properties/reported/?$rid=nov", json.dumps({"x": 1}))
        status, _, _ = _twin_res(c, "nov")
        assert status == 400
        c.publish(f"devices/{device.device_id}/messages/events/", b"hello").wait_for_publish(5)
        c.close()
    assert "x" not in registry_manager.get_twin(device.device_id).properties.reported
    assert [m["body"] for m in hub.messages(device.device_id)] == ["hello", "hello"]


def test_reported_patch_over_32kb_is_rejected_and_twin_unchanged(clients, registry_manager, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    client.patch_twin_reported_properties({"small": 1})  # positive control
    before = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported
    big = {f"k{i}": "x" * 3500 for i in range(10)}  # 10 * (2 + 3500) bytes > 32 KB, each string < 4 KB
    assert_twin_request_rejected_with_400(lambda: client.patch_twin_reported_properties(big))
    after = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported
    assert after["$version"] == before["$version"]
    assert not any(k.startswith("k") for k in after if k != "$version")
    assert client.get_twin()["reported"]["small"] == 1


def _nested(depth):
    """`depth` nested objects ending in a leaf. Microsoft's device-twin guide ("Tags and
    properties format") calls tags.one.two...ten.{"property": "value"} valid at the
    maximum depth of 10; _nested(10) has exactly that shape."""
    doc = {"leaf": "value"}
    for i in range(depth, 0, -1):
        doc = {f"l{i}": doc}
    return doc


def test_reported_patch_nested_ten_deep_is_accepted(clients, registry_manager, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    client.patch_twin_reported_properties(_nested(10))
    reported = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported
    assert reported["l1"] == _nested(10)["l1"]


def test_reported_patch_nested_eleven_deep_is_400(clients, registry_manager, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    v0 = client.get_twin()["reported"]["$version"]
    assert_twin_request_rejected_with_400(lambda: client.patch_twin_reported_properties(_nested(11)))
    reported = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported
    assert "l1" not in reported and reported["$version"] == v0


def test_reported_patch_with_forbidden_key_characters_is_400(clients, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    for bad_key in ("has.dot", "$dollar", "has space"):
        assert_twin_request_rejected_with_400(lambda: client.patch_twin_reported_properties({bad_key: 1}))


# --- service permissions ---------------------------------------------------------------------------


def test_registry_read_policy_cannot_create_devices_but_can_list(hub, make_device):
    existing = make_device()
    reader = make_registry_manager(hub.policy_connection_string("registryRead"))
    new_id = unique_id("nope")
    with pytest.raises(HttpOperationError) as err:
        reader.create_device_with_sas(new_id, None, None, "enabled")
    assert http_status(err.value) == 401
    ids = {d.device_id for d in reader.get_devices()}
    assert existing.device_id in ids
    assert new_id not in ids


def test_registry_read_write_policy_can_create_devices(hub, registry_manager):
    writer = make_registry_manager(hub.policy_connection_string("registryReadWrite"))
    dev_id = unique_id("rw")
    try:
        d = writer.create_device_with_sas(dev_id, None, None, "enabled")
        assert d.device_id == dev_id
    finally:
        try:
            registry_manager.delete_device(dev_id)
        except HttpOperationError:
            pass


def test_device_policy_cannot_read_the_registry(hub):
    dev_only = make_registry_manager(hub.policy_connection_string("device"))
    with pytest.raises(HttpOperationError) as err:
        dev_only.get_devices()
    assert http_status(err.value) == 401


def test_wrong_service_key_is_401(hub):
    cs = f"HostName={hub.service_host};SharedAccessKeyName=iothubowner;SharedAccessKey={random_key()}"
    with pytest.raises(HttpOperationError) as err:
        make_registry_manager(cs).get_devices()
    assert http_status(err.value) == 401


def test_service_twin_patch_with_invalid_key_is_400(registry_manager, make_module):
    mod = make_module()
    with pytest.raises(HttpOperationError) as err:
        registry_manager.update_module_twin(
            mod.device_id, mod.module_id, Twin(properties=TwinProperties(desired={"bad.key": 1})))
    assert http_status(err.value) == 400


def test_rest_body_that_is_not_json_is_400_naming_the_problem_and_nothing_is_created(hub, registry_manager):
    import requests
    device_id = unique_id("badjson")
    r = requests.put(f"{hub.rest_url}/devices/{device_id}", params={"api-version": "2021-04-12"},
                     data=b'{"deviceId": ', headers={"Authorization": hub.service_token(),
                                                     "Content-Type": "application/json"},
                     verify=hub.ca_path, timeout=10)
    assert r.status_code == 400
    assert r.headers["iothub-errorcode"] == "IotHubFormatError"
    assert "not valid" in r.json()["Message"]
    with pytest.raises(HttpOperationError) as err:
        registry_manager.get_device(device_id)
    assert http_status(err.value) == 404
    registry_manager.get_devices(1)  # the hub keeps serving
