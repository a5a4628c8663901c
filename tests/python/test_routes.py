"""Routes between modules, judged by azure-iot-device: a module's output reaches another module's
input through the $edgeHub routes of an applied manifest, as edgeHub delivers it; only what a
route sends to $upstream reaches IoT Hub's Event Hub-compatible endpoint (read by
azure-eventhub)."""

import queue

from azure.iot.device import Message
from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.models import ConfigurationContent

from conftest import Identity
from test_event_hub import consumer, from_device, receive


def _apply_routes(hub, device_id, routes):
    manager = IoTHubConfigurationManager.from_connection_string(hub.service_connection_string)
    manager.apply_configuration_on_edge_device(device_id, ConfigurationContent(modules_content={
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "runtime": {"type": "docker"},
                                              "systemModules": {}, "modules": {}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.2", "routes": routes,
                                             "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
    }))


def _module(hub, registry_manager, device_id, module_id):
    mod = registry_manager.create_module_with_sas(device_id, module_id, None, None, None)
    sk = mod.authentication.symmetric_key
    return Identity(hub, device_id, module_id, sk.primary_key, sk.secondary_key)


def _sensor_and_filter(hub, registry_manager, make_device, clients, routes):
    """An edge device with modules `sensor` and `filter` under `routes`, both connected: (device,
    the sensor's client, the filter's client, the queue of what reaches the filter's inputs)."""
    device = make_device(edge=True, prefix="gw")
    sensor = _module(hub, registry_manager, device.device_id, "sensor")
    filt = _module(hub, registry_manager, device.device_id, "filter")
    _apply_routes(hub, device.device_id, routes)
    received = queue.Queue()
    receiver = clients.module(filt)
    receiver.on_message_received = received.put
    receiver.connect()
    sender = clients.module(sensor)
    sender.connect()
    return device, sender, receiver, received


def test_a_module_output_reaches_another_module_input_through_the_manifest_routes(
        hub, registry_manager, make_device, clients):
    device, sender, _, received = _sensor_and_filter(hub, registry_manager, make_device, clients, {
        "sensorToFilter": 'FROM /messages/modules/sensor/outputs/temperature INTO BrokeredEndpoint("/modules/filter/inputs/input1")',
        "hot": {"route": "FROM /messages/modules/sensor/outputs/* WHERE level = 'hot' INTO BrokeredEndpoint(\"/modules/filter/inputs/hot\")", "priority": 0},
        "upstream": "FROM /messages/modules/filter/outputs/* INTO $upstream",
    })

    message = Message('{"t": 21.5}', content_type="application/json", content_encoding="utf-8")
    message.custom_properties["level"] = "normal"
    sender.send_message_to_output(message, "temperature")
    got = received.get(timeout=10)
    assert got.input_name == "input1"
    assert got.data == b'{"t": 21.5}'
    assert got.custom_properties["level"] == "normal"
    assert got.content_type == "application/json"

    hot = Message("{}")
    hot.custom_properties["level"] = "hot"
    sender.send_message_to_output(hot, "humidity")
    got = received.get(timeout=10)
    assert got.input_name == "hot", "only the WHERE route matches an output other than temperature"

    sender.send_message_to_output(Message("{}"), "unrouted")
    try:
        unexpected = received.get(timeout=1.0)
    except queue.Empty:
        unexpected = None
    assert unexpected is None, f"a message no route takes was delivered to {unexpected.input_name}"
    # the message log reads the endpoint's store: nothing here went upstream
    assert hub.messages(device.device_id, "sensor") == []


def test_only_what_a_route_sends_upstream_reaches_the_event_hub_endpoint(
        hub, registry_manager, make_device, clients):
    device, sender, receiver, received = _sensor_and_filter(hub, registry_manager, make_device, clients, {
        "sensorToFilter": 'FROM /messages/modules/sensor/outputs/temperature INTO BrokeredEndpoint("/modules/filter/inputs/input1")',
        "upstream": "FROM /messages/modules/filter/outputs/* INTO $upstream",
    })
    sender.send_message_to_output(Message("to the filter"), "temperature")
    assert received.get(timeout=10).data == b"to the filter"
    sender.send_message_to_output(Message("no route"), "unrouted")
    receiver.send_message_to_output(Message("upstream"), "alerts")

    # one device, one partition, in order: the first two would come before the third
    events, errors = receive(consumer(hub), lambda es: any(
        e.body_as_str() == "upstream" for _, e in filter(from_device(device.device_id), es)))
    assert not errors, errors
    bodies = [e.body_as_str() for _, e in filter(from_device(device.device_id), events)]
    assert bodies == ["upstream"]
    [(_, event)] = filter(from_device(device.device_id), events)
    assert event.system_properties[b"iothub-connection-module-id"] == b"filter"
    # the message log reads the same store: what went upstream only
    assert [(m["moduleId"], m["output"], m["body"]) for m in hub.messages(device.device_id)] == [
        ("filter", "alerts", "upstream")]
