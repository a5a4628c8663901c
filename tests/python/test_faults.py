"""Faults on demand (/edgetwin/faults): the failures clients must survive, injected into a live hub."""

import time

import pytest
import requests

from conftest import unique_id

API = {"api-version": "2021-04-12"}


def _fault(hub, method, path, body=None):
    r = requests.request(method, f"{hub.rest_url}/edgetwin/faults{path}", params=API, json=body,
                         headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=10)
    assert r.status_code in (200, 204), r.text
    return r


@pytest.fixture(autouse=True)
def no_faults_left_behind(hub):
    yield
    _fault(hub, "DELETE", "")


def test_a_throttled_rest_call_gets_429_with_retry_after_and_the_sdk_retries_it(hub, registry_manager):
    _fault(hub, "POST", "/throttle", {"operation": "PUT /devices/", "count": 1, "retryAfterSeconds": 1})
    device_id = unique_id("thr")
    raw = requests.put(f"{hub.rest_url}/devices/{device_id}", params=API, json={"deviceId": device_id},
                       headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=10)
    assert raw.status_code == 429
    assert raw.headers["Retry-After"] == "1"
    assert raw.headers["iothub-errorcode"] == "ThrottlingException"
    _fault(hub, "POST", "/throttle", {"operation": "PUT /devices/", "count": 1, "retryAfterSeconds": 1})
    started = time.monotonic()
    registry_manager.create_device_with_sas(unique_id("thr"), None, None, "enabled")
    assert time.monotonic() - started >= 0.9, "the SDK waited Retry-After before its retry"
    assert _fault(hub, "GET", "").json()["throttles"] == []


def test_delays_slow_down_the_chosen_operation(hub, registry_manager):
    _fault(hub, "POST", "/delay", {"operation": "GET /devices", "milliseconds": 400})
    started = time.monotonic()
    registry_manager.get_devices(1)
    assert time.monotonic() - started >= 0.4


def test_refused_connects_get_connack_3_until_the_fault_lifts(hub, make_module, raw_mqtt):
    module = make_module()
    _fault(hub, "POST", "/refuseConnects", {"seconds": 2})
    assert raw_mqtt(module).connect() == 3
    time.sleep(2.2)
    assert raw_mqtt(module).connect() == 0


def test_dropping_all_connections_disconnects_clients(hub, make_module, raw_mqtt):
    module = make_module()
    client = raw_mqtt(module)
    assert client.connect() == 0
    body = _fault(hub, "POST", "/disconnect", {}).json()
    assert f"{module.device_id}/{module.module_id}" in body["disconnected"]
    client.wait_disconnect(timeout=5)


def test_a_short_token_lifetime_drops_new_connections_early(hub, make_module, raw_mqtt):
    module = make_module()
    _fault(hub, "POST", "/tokenLifetime", {"seconds": 1})
    client = raw_mqtt(module)
    assert client.connect() == 0
    client.wait_disconnect(timeout=5)


def test_a_throttled_twin_get_over_mqtt_is_answered_429(hub, make_module, raw_mqtt):
    module = make_module()
    client = raw_mqtt(module)
    assert client.connect() == 0
    client.subscribe("$iothub/twin/res/#")
    _fault(hub, "POST", "/throttle", {"operation": "MQTT twin/GET", "count": 1})
    client.publish("$iothub/twin/GET/?$rid=1", b" ")
    topic, _ = client.wait_message(lambda t, p: "$rid=1" in t)
    assert topic.startswith("$iothub/twin/res/429/")
    client.publish("$iothub/twin/GET/?$rid=2", b" ")
    topic, _ = client.wait_message(lambda t, p: "$rid=2" in t)
    assert topic.startswith("$iothub/twin/res/200/")


def test_only_a_policy_with_write_and_service_rights_may_inject_faults(hub):
    r = requests.post(f"{hub.rest_url}/edgetwin/faults/refuseConnects", params=API, json={"seconds": 60},
                      headers={"Authorization": hub.service_token("registryRead")}, verify=hub.ca_path,
                      timeout=10)
    assert r.status_code == 401
    assert _fault(hub, "GET", "").json()["refuseConnectsSeconds"] == 0


@pytest.mark.parametrize("fault", ["/serverError", "/throttle"])
def test_telemetry_the_hub_fails_to_store_is_not_acknowledged_and_the_sdk_sends_it_again(
        hub, make_device, clients, raw_mqtt, fault):
    # A message the hub could not take (a server error or throttling) gets no PUBACK: the
    # connection ends and the device SDK publishes it again, so it is stored once, not lost.
    device = make_device()
    raw = raw_mqtt(device)
    assert raw.connect() == 0
    _fault(hub, "POST", fault, {"operation": "MQTT messages/events", "count": 1})
    raw.publish(f"devices/{device.device_id}/messages/events/", b"refused")
    raw.wait_disconnect(timeout=5)
    assert hub.messages(device.device_id) == []

    _fault(hub, "POST", fault, {"operation": "MQTT messages/events", "count": 1})
    client = clients.device(device)
    client.connect()
    from azure.iot.device import Message
    client.send_message(Message("kept", message_id="once"))
    bodies = [m["body"] for m in hub.messages(device.device_id)]
    assert bodies == ["kept"]
