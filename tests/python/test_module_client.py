"""Device side, judged by azure-iot-device 2.14 (sync IoTHubModuleClient / IoTHubDeviceClient)."""

import queue

from azure.iot.device import Message, MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

from conftest import wait_until


def test_module_client_connects_and_gets_its_twin(clients, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    twin = client.get_twin()
    assert set(twin) >= {"desired", "reported"}, twin
    assert isinstance(twin["desired"]["$version"], int)
    assert isinstance(twin["reported"]["$version"], int)
    # the device view carries no tags/identity fields
    assert "tags" not in twin and "deviceId" not in twin


def test_module_sees_desired_properties_set_before_it_connected(clients, registry_manager, make_module):
    mod = make_module()
    rest = registry_manager.update_module_twin(
        mod.device_id, mod.module_id, Twin(properties=TwinProperties(desired={"telemetryInterval": 122})))
    client = clients.module(mod)
    client.connect()
    twin = client.get_twin()
    assert twin["desired"]["telemetryInterval"] == 122
    assert twin["desired"]["$version"] == rest.properties.desired["$version"]


def test_reported_patch_from_the_module_is_visible_through_rest(clients, registry_manager, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    v0 = client.get_twin()["reported"]["$version"]
    client.patch_twin_reported_properties({"firmware": "1.2.3", "status": {"ok": True, "temp": 21.5}})
    rest = registry_manager.get_module_twin(mod.device_id, mod.module_id)
    reported = rest.properties.reported
    assert reported["firmware"] == "1.2.3"
    assert reported["status"] == {"ok": True, "temp": 21.5}
    assert reported["$version"] == v0 + 1
    # and the module reads back its own reported properties
    assert client.get_twin()["reported"]["firmware"] == "1.2.3"


def test_reported_null_deletes_a_property(clients, registry_manager, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    client.patch_twin_reported_properties({"keep": 1, "drop": 2})
    client.patch_twin_reported_properties({"drop": None})
    reported = registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.reported
    assert reported["keep"] == 1
    assert "drop" not in reported


def test_desired_patch_made_through_rest_reaches_the_module(clients, registry_manager, make_module):
    mod = make_module()
    client = clients.module(mod)
    patches = queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put
    client.connect()

    rest = registry_manager.update_module_twin(
        mod.device_id, mod.module_id, Twin(properties=TwinProperties(desired={"telemetryInterval": 122})))
    expected_version = rest.properties.desired["$version"]

    def got_it():
        while True:
            p = patches.get(timeout=10)  # raises queue.Empty -> test fails
            if p.get("telemetryInterval") == 122:
                return p

    patch = got_it()
    assert patch["$version"] == expected_version


def test_method_invoked_through_rest_is_answered_by_the_module(clients, registry_manager, make_module):
    mod = make_module()
    client = clients.module(mod)
    seen = []

    def on_method(request):
        seen.append((request.name, request.payload))
        client.send_method_response(
            MethodResponse.create_from_method_request(request, 201, {"echo": request.payload, "n": 7}))

    client.on_method_request_received = on_method
    client.connect()

    result = registry_manager.invoke_device_module_method(
        mod.device_id, mod.module_id,
        CloudToDeviceMethod(method_name="reboot", payload={"delay": 3}, response_timeout_in_seconds=15))
    assert result.status == 201
    assert result.payload == {"echo": {"delay": 3}, "n": 7}
    assert seen == [("reboot", {"delay": 3})]


def test_module_output_message_is_logged_with_its_output_name(hub, clients, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    msg = Message('{"temperature": 21}')
    msg.custom_properties["alert"] = "no"
    client.send_message_to_output(msg, "telemetry")

    def find():
        return [m for m in hub.messages(mod.device_id, mod.module_id) if m["body"] == '{"temperature": 21}']

    found = wait_until(find, timeout=10, message="output message in /edgetwin/messages")
    m = found[0]
    assert m["deviceId"] == mod.device_id
    assert m["moduleId"] == mod.module_id
    assert m["output"] == "telemetry"
    assert m["properties"].get("alert") == "no"
    assert isinstance(m["sequence"], int)
    assert m["enqueuedTimeUtc"]


def test_message_log_is_filtered_by_module(hub, clients, make_module, make_device):
    edge = make_device(edge=True)
    a = make_module(device=edge)
    b = make_module(device=edge)
    ca = clients.module(a)
    ca.connect()
    ca.send_message_to_output("from-a", "out1")
    wait_until(lambda: any(m["body"] == "from-a" for m in hub.messages(a.device_id, a.module_id)),
               timeout=10, message="message from module a")
    assert not any(m["body"] == "from-a" for m in hub.messages(b.device_id, b.module_id))


def test_device_client_telemetry_and_twin_work(hub, clients, registry_manager, make_device):
    dev = make_device(edge=False)
    client = clients.device(dev)
    client.connect()
    twin = client.get_twin()
    assert isinstance(twin["desired"]["$version"], int)
    client.patch_twin_reported_properties({"kind": "leaf"})
    assert registry_manager.get_twin(dev.device_id).properties.reported["kind"] == "leaf"

    client.send_message("hello from a device")
    found = wait_until(
        lambda: [m for m in hub.messages(dev.device_id) if m["body"] == "hello from a device"],
        timeout=10, message="device telemetry in /edgetwin/messages")
    assert found[0]["deviceId"] == dev.device_id
    assert found[0]["moduleId"] is None
    assert found[0]["output"] is None


def test_device_client_answers_a_device_method(clients, registry_manager, make_device):
    dev = make_device(edge=False)
    client = clients.device(dev)

    def on_method(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, request.payload))

    client.on_method_request_received = on_method
    client.connect()
    result = registry_manager.invoke_device_method(
        dev.device_id, CloudToDeviceMethod(method_name="echo", payload="text", response_timeout_in_seconds=15))
    assert result.status == 200
    assert result.payload == "text"


def test_message_sequence_numbers_increase(hub, clients, make_module):
    mod = make_module()
    client = clients.module(mod)
    client.connect()
    for i in range(3):
        client.send_message_to_output(f"seq-{i}", "o")
    msgs = wait_until(
        lambda: (lambda ms: ms if len(ms) >= 3 else None)(
            [m for m in hub.messages(mod.device_id, mod.module_id) if m["body"].startswith("seq-")]),
        timeout=10, message="three messages")
    bodies = [m["body"] for m in sorted(msgs, key=lambda m: m["sequence"])]
    assert bodies == ["seq-0", "seq-1", "seq-2"]
    seqs = [m["sequence"] for m in msgs]
    assert len(set(seqs)) == 3


def test_new_connection_for_same_module_replaces_the_old_one(clients, make_module):
    mod = make_module()
    first = clients.module(mod, connection_retry=False)
    first.connect()
    second = clients.module(mod)
    second.connect()
    wait_until(lambda: not first.connected, timeout=10, message="first client to be disconnected")
    assert isinstance(second.get_twin()["desired"]["$version"], int)
    assert second.connected
