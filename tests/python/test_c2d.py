"""Cloud-to-device messages, judged by Microsoft's SDKs: Python `azure-iot-hub`
`IoTHubRegistryManager.send_c2d_message` (AMQP, `/messages/devicebound`) sends, Python
`azure-iot-device` (MQTT, `devices/{id}/messages/devicebound/#`) receives with the properties
IoT Hub puts in the topic; a device's queue keeps its messages across a restart until the device
takes them, and refuses the 51st (IoT Hub: 50 per device), an unknown device and a body over
64 KB."""

import pytest

from conftest import C2D_QUEUE_LIMIT, fill_c2d_queue

# receive_message is what the issue names as the judge; the SDK marks it deprecated
pytestmark = pytest.mark.filterwarnings("ignore:receive_message is deprecated")


def test_a_message_sent_by_the_service_sdk_reaches_the_device_sdk_with_its_properties(
        c2d_sender, make_device, clients):
    device = make_device()
    c2d_sender.send_c2d_message(device.device_id, "hello device", {
        "messageId": "m-1", "correlationId": "c-1", "contentType": "application/json",
        "iothub-ack": "full", "color": "dark blue"})
    client = clients.device(device)
    client.connect()
    message = client.receive_message(timeout=10)
    assert message is not None, "no cloud-to-device message"
    assert message.data == b"hello device"
    assert (message.message_id, message.correlation_id) == ("m-1", "c-1")
    assert message.content_type == "application/json"
    assert message.ack == "full"
    assert message.custom_properties == {"color": "dark blue"}
    # completed on PUBACK: not delivered again
    assert client.receive_message(timeout=1) is None


def test_the_queue_survives_a_restart_and_refuses_the_51st_message_an_unknown_device_and_64_kb(
        hub, c2d_sender, make_device, clients):
    device = make_device()
    fill_c2d_queue(c2d_sender, device.device_id)
    with pytest.raises(Exception, match="send failure"):
        c2d_sender.send_c2d_message(device.device_id, "one too many")
    with pytest.raises(Exception, match="send failure"):
        c2d_sender.send_c2d_message("nobody-" + device.device_id, "to no one")
    other = make_device()
    with pytest.raises(Exception, match="send failure"):
        c2d_sender.send_c2d_message(other.device_id, "x" * (64 * 1024 + 1))
    hub.restart()
    client = clients.device(device)
    client.connect()
    bodies = [client.receive_message(timeout=10).data for _ in range(C2D_QUEUE_LIMIT)]
    assert bodies == [f"m{n}".encode() for n in range(C2D_QUEUE_LIMIT)]
