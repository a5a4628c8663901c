"""IoT Plug and Play against the hub: a device announces its model in its MQTT username (the
Python device SDK 2.14 sends a `product_info` starting with `dtmi` as `model-id`,
`pipeline_stages_iothub_mqtt.py`), its twin shows `modelId`, and the service reads, updates and
commands its digital twin with `azure-iot-hub`'s `DigitalTwinClient` unchanged. Shapes are those of
"Understand IoT Plug and Play digital twins" and "IoT Plug and Play conventions" (azure-docs).
"""

import queue
import threading

import pytest
import requests
from azure.iot.device import MethodResponse
from azure.iot.hub import DigitalTwinClient
from azure.iot.hub.models import QuerySpecification

from conftest import API_VERSION, wait_until

MODEL = "dtmi:com:example:TemperatureController;1"


@pytest.fixture
def digital_twins(hub):
    return DigitalTwinClient.from_connection_string(hub.service_connection_string)


@pytest.fixture
def pnp_device(make_device, clients):
    """A connected device that announces MODEL; its desired patches and method requests queue up."""
    device = make_device(prefix="pnp")
    client = clients.device(device, product_info=MODEL)
    device.patches, device.requests = queue.Queue(), queue.Queue()
    client.on_twin_desired_properties_patch_received = device.patches.put
    client.on_method_request_received = device.requests.put
    client.connect()
    device.client = client
    return device


def rest(hub, method, path, params=None, headers=None, **kw):
    """A raw service request, for what the SDK hides (headers, error bodies)."""
    return requests.request(method, f"{hub.rest_url}/{path}",
                            params={"api-version": API_VERSION, **(params or {})},
                            headers={"Authorization": hub.service_token(), **(headers or {})},
                            verify=hub.ca_path, timeout=30, **kw)


def test_a_device_announcing_its_model_shows_it_in_its_twin_its_digital_twin_and_queries(
        hub, pnp_device, registry_manager, digital_twins):
    twin = rest(hub, "GET", f"twins/{pnp_device.device_id}").json()
    assert twin["modelId"] == MODEL
    assert digital_twins.get_digital_twin(pnp_device.device_id) == {
        "$dtId": pnp_device.device_id, "$metadata": {"$model": MODEL}}
    rows = registry_manager.query_iot_hub(
        QuerySpecification(query=f"SELECT * FROM devices WHERE modelId = '{MODEL}'")).items
    assert pnp_device.device_id in [row.device_id for row in rows]
    # The model stays after the device disconnects.
    pnp_device.client.disconnect()
    assert rest(hub, "GET", f"twins/{pnp_device.device_id}").json()["modelId"] == MODEL


def test_a_module_announcing_its_model_shows_it_in_its_module_twin(hub, make_module, clients):
    module = make_module(edge=False)
    clients.module(module, product_info=MODEL).connect()
    twin = rest(hub, "GET", f"twins/{module.device_id}/modules/{module.module_id}").json()
    assert twin["modelId"] == MODEL
    assert rest(hub, "GET", f"twins/{module.device_id}").json()["modelId"] == ""


def test_a_device_without_a_model_has_a_digital_twin_without_model(make_device, digital_twins, hub):
    device = make_device()
    assert rest(hub, "GET", f"twins/{device.device_id}").json()["modelId"] == ""
    assert digital_twins.get_digital_twin(device.device_id) == {"$dtId": device.device_id, "$metadata": {}}


def test_digital_twin_updates_reach_the_device_and_its_acknowledgements_show_in_the_metadata(
        hub, pnp_device, digital_twins):
    device_id = pnp_device.device_id
    digital_twins.update_digital_twin(device_id, [
        {"op": "add", "path": "/targetTemperature", "value": 21.5},
        {"op": "add", "path": "/thermostat1/targetTemperature", "value": 22},
    ])
    patch = pnp_device.patches.get(timeout=10)
    version = patch["$version"]
    assert patch["targetTemperature"] == 21.5
    assert patch["thermostat1"] == {"__t": "c", "targetTemperature": 22}
    pnp_device.client.patch_twin_reported_properties({
        "serialNumber": "sn-1",
        "targetTemperature": {"value": 21.5, "ac": 200, "av": version, "ad": "done"},
        "thermostat1": {"__t": "c", "maxTemp": 30},
    })
    twin = digital_twins.get_digital_twin(device_id)
    assert twin["serialNumber"] == "sn-1" and twin["targetTemperature"] == 21.5
    metadata = twin["$metadata"]["targetTemperature"]
    assert metadata["desiredValue"] == 21.5 and metadata["desiredVersion"] == version
    assert (metadata["ackCode"], metadata["ackVersion"], metadata["ackDescription"]) == (200, version, "done")
    assert "lastUpdateTime" in metadata
    component = twin["thermostat1"]
    assert component["maxTemp"] == 30 and "lastUpdateTime" in component["$metadata"]["maxTemp"]
    assert component["$metadata"]["targetTemperature"] == {"desiredValue": 22, "desiredVersion": version}

    digital_twins.update_digital_twin(device_id, [{"op": "remove", "path": "/targetTemperature"}])
    assert pnp_device.patches.get(timeout=10)["targetTemperature"] is None
    assert "desiredValue" not in digital_twins.get_digital_twin(device_id)["$metadata"]["targetTemperature"]


def test_digital_twin_updates_answer_202_with_the_etag_and_honour_if_match(hub, pnp_device):
    path = f"digitaltwins/{pnp_device.device_id}"
    etag = rest(hub, "GET", path).headers["ETag"]
    body = [{"op": "replace", "path": "/fanSpeed", "value": 2}]
    stale = rest(hub, "PATCH", path, json=body, headers={"If-Match": '"stale"'})
    assert stale.status_code == 412, stale.text
    done = rest(hub, "PATCH", path, json=body, headers={"If-Match": etag})
    assert done.status_code == 202 and done.text == "", done.text
    assert done.headers["ETag"] != etag
    assert rest(hub, "GET", path).headers["ETag"] == done.headers["ETag"]


def test_a_bad_digital_twin_patch_is_refused_naming_the_path(hub, pnp_device):
    path = f"digitaltwins/{pnp_device.device_id}"
    bad = rest(hub, "PATCH", path, json=[{"op": "add", "path": "/$metadata/x", "value": 1}])
    assert bad.status_code == 400 and bad.headers["iothub-errorcode"] == "ArgumentInvalid"
    assert "/$metadata/x" in bad.json()["Message"]
    moved = rest(hub, "PATCH", path, json=[{"op": "move", "from": "/a", "path": "/b"}])
    assert moved.status_code == 400 and "move /b" in moved.json()["Message"]
    missing = rest(hub, "GET", "digitaltwins/no-such-device")
    assert missing.status_code == 404 and missing.headers["iothub-errorcode"] == "DeviceNotFound"


def _answer(device, status, payload):
    request = device.requests.get(timeout=10)
    device.client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))
    return request


def test_commands_reach_the_device_as_methods_named_as_the_convention_says(hub, pnp_device,
                                                                         digital_twins):
    device_id = pnp_device.device_id
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("root", _answer(pnp_device, 200, {"rebooting": True})))
    thread.start()
    assert digital_twins.invoke_command(device_id, "reboot", {"delay": 1}) == {"rebooting": True}
    thread.join(10)
    assert (result["root"].name, result["root"].payload) == ("reboot", {"delay": 1})

    thread = threading.Thread(target=lambda: result.setdefault("component", _answer(pnp_device, 201, "max")))
    thread.start()
    answer = rest(hub, "POST", f"digitaltwins/{device_id}/components/thermostat1/commands/getMaxMinReport",
                  json="since", params={"responseTimeoutInSeconds": "10"})
    thread.join(10)
    assert answer.status_code == 200, answer.text
    assert answer.json() == "max" and answer.headers["x-ms-command-statuscode"] == "201"
    assert answer.headers["x-ms-request-id"]
    assert result["component"].name == "thermostat1*getMaxMinReport"
    assert result["component"].payload == "since"

    offline = rest(hub, "POST", "digitaltwins/no-such-device/commands/reboot", json={})
    assert offline.status_code == 404
    pnp_device.client.disconnect()
    wait_until(lambda: rest(hub, "GET", f"twins/{device_id}").json()["connectionState"] == "Disconnected")
    gone = rest(hub, "POST", f"digitaltwins/{device_id}/commands/reboot", json={})
    assert gone.status_code == 404 and gone.headers["iothub-errorcode"] == "DeviceNotOnline"
