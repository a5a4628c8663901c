"""MQTT session rules of IoT Hub that the SDKs rely on: persistent subscriptions (CleanSession=0),
keep-alive, token expiry, unknown subscriptions, QoS 2, and direct-method timeouts."""

import struct
import time

import pytest
import requests

from conftest import read_until_closed, tls_socket, wait_until

DESIRED = "$iothub/twin/PATCH/properties/desired/#"


def _patch_desired(hub, device_id, module_id, desired):
    r = requests.patch(
        f"{hub.rest_url}/twins/{device_id}/modules/{module_id}",
        params={"api-version": "2021-04-12"},
        json={"properties": {"desired": desired}},
        headers={"Authorization": hub.service_token(), "If-Match": '"*"'},
        verify=hub.ca_path, timeout=10)
    assert r.status_code == 200, r.text


def _mqtt_string(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _connect_packet(client_id, username, password, keep_alive):
    variable = _mqtt_string("MQTT") + bytes([4, 0xC0]) + struct.pack("!H", keep_alive)
    payload = _mqtt_string(client_id) + _mqtt_string(username) + _mqtt_string(password)
    body = variable + payload
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


def test_subscriptions_of_a_persistent_session_survive_a_reconnect(hub, make_module, raw_mqtt):
    module = make_module()
    first = raw_mqtt(module)
    assert first.connect() == 0
    assert first.subscribe(DESIRED) == (1,)
    first.close()
    second = raw_mqtt(module)  # CleanSession=0, subscribes to nothing, like the Python SDK
    assert second.connect() == 0
    _patch_desired(hub, module.device_id, module.module_id, {"telemetryInterval": 122})
    topic, payload = second.wait_message(lambda t, p: t.startswith("$iothub/twin/PATCH/properties/desired/"))
    assert b'"telemetryInterval":122' in payload.replace(b" ", b"")


def test_a_clean_session_forgets_the_subscriptions(hub, make_module, raw_mqtt):
    module = make_module()
    first = raw_mqtt(module)
    assert first.connect() == 0
    first.subscribe(DESIRED)
    first.close()
    clean = raw_mqtt(module, clean_session=True)
    assert clean.connect() == 0
    _patch_desired(hub, module.device_id, module.module_id, {"x": 1})
    with pytest.raises(AssertionError):
        clean.wait_message(lambda t, p: True, timeout=1.0)


def test_unknown_subscriptions_are_refused_in_the_suback(make_module, raw_mqtt):
    module = make_module()
    client = raw_mqtt(module)
    assert client.connect() == 0
    assert client.subscribe("devices/someone-else/messages/devicebound/#") == (128,)
    assert client.subscribe("$iothub/twin/res/#", qos=2) == (1,), "QoS 2 is granted as 1"


def test_a_qos2_publish_closes_the_connection(make_module, raw_mqtt):
    module = make_module()
    client = raw_mqtt(module)
    assert client.connect() == 0
    client.publish(f"devices/{module.device_id}/modules/{module.module_id}/messages/events/", b"{}", qos=2)
    assert client.wait_disconnect(timeout=5) != 0


def _connected_socket(hub, module, keep_alive):
    """A raw TLS socket that has sent CONNECT with `keep_alive` seconds and got CONNACK 0."""
    sock = tls_socket(hub)
    username = f"{hub.host}/{module.device_id}/{module.module_id}/?api-version=2021-04-12"
    sock.sendall(_connect_packet(f"{module.device_id}/{module.module_id}", username, module.sas(), keep_alive))
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def test_a_client_silent_past_its_keep_alive_is_disconnected(hub, make_module):
    module = make_module()
    sock = _connected_socket(hub, module, 1)
    started = time.monotonic()
    closed, _ = read_until_closed(sock, timeout=5)
    assert closed, "the hub kept a silent connection open past 1.5 x keep-alive"
    assert time.monotonic() - started >= 1.0


def test_the_connection_is_dropped_when_its_token_expires(make_module, raw_mqtt):
    module = make_module()
    client = raw_mqtt(module, password=module.sas(expiry=int(time.time()) + 2))
    assert client.connect() == 0
    started = time.monotonic()
    client.wait_disconnect(timeout=6)
    assert time.monotonic() - started >= 0.5


def test_a_method_nobody_answers_times_out_with_504_after_its_timeout_given_as_a_string(hub, make_module, raw_mqtt):
    module = make_module()
    client = raw_mqtt(module)
    assert client.connect() == 0
    client.subscribe("$iothub/methods/POST/#")
    started = time.monotonic()
    r = requests.post(
        f"{hub.rest_url}/twins/{module.device_id}/modules/{module.module_id}/methods",
        params={"api-version": "2021-04-12"},
        # The timeouts as strings, as `az iot hub invoke-module-method` sends them (IoT Hub
        # accepts them): the 504 comes after these 5 s, not the default 30.
        json={"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": "5",
              "connectTimeoutInSeconds": "5"},
        headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=20)
    assert r.status_code == 504, r.text
    assert r.headers["iothub-errorcode"] == "GatewayTimeout"
    assert time.monotonic() - started >= 4.5
    client.wait_message(lambda t, p: t.startswith("$iothub/methods/POST/ping/?$rid="))


def test_keep_alive_counts_what_the_client_sends_not_what_the_hub_sends_it(hub, make_module):
    module = make_module()
    sock = _connected_socket(hub, module, 1)
    topic = _mqtt_string(DESIRED)
    sock.sendall(bytes([0x82, 2 + len(topic) + 1]) + b"\x00\x01" + topic + b"\x01")
    started = time.monotonic()
    sock.settimeout(0.2)
    closed = False
    while time.monotonic() - started < 5 and not closed:
        _patch_desired(hub, module.device_id, module.module_id, {"tick": time.monotonic()})
        try:
            closed = sock.recv(65536) == b""
        except TimeoutError:
            pass
        except OSError:
            closed = True
    assert closed, "desired patches sent by the hub kept a silent client alive"
    assert time.monotonic() - started < 3


def test_telemetry_published_with_retain_carries_mqtt_retain_and_is_not_kept(hub, make_device, raw_mqtt):
    # IoT Hub MQTT doc: a message with RETAIN=1 gets the `mqtt-retain` application property;
    # IoT Hub passes it on and retains nothing.
    device = make_device()
    client = raw_mqtt(device)
    assert client.connect() == 0
    topic = f"devices/{device.device_id}/messages/events/kind=retained"
    client.client.publish(topic, b"kept?", qos=1, retain=True).wait_for_publish(10)
    client.client.publish(f"devices/{device.device_id}/messages/events/kind=plain", b"plain", qos=1) \
        .wait_for_publish(10)
    messages = wait_until(lambda: len(hub.messages(device.device_id)) == 2 and hub.messages(device.device_id),
                          message="both messages in the hub's log")
    by_kind = {m["properties"]["kind"]: m for m in messages}
    assert by_kind["retained"]["properties"]["mqtt-retain"] == "true"
    assert "mqtt-retain" not in by_kind["plain"]["properties"]
