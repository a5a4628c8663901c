"""MQTT over WebSockets (`websockets=True`), judged by azure-iot-device: the SDK dials
wss://host:443/$iothub/websocket with subprotocol mqtt, the port that, as on IoT Hub, also serves
the REST API."""

import queue
import ssl

import requests

from conftest import HTTPS_PORT


def test_a_module_client_over_websockets_gets_its_twin_reports_and_receives_desired_patches(
        hub, make_module, clients, registry_manager):
    module = make_module()
    client = clients.module(module, websockets=True)
    patches = queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put
    client.connect()
    twin = client.get_twin()
    assert "$version" in twin["desired"]
    client.patch_twin_reported_properties({"transport": "websockets"})
    reported = registry_manager.get_module_twin(module.device_id, module.module_id).properties.reported
    assert reported["transport"] == "websockets"
    requests.patch(f"{hub.rest_url}/twins/{module.device_id}/modules/{module.module_id}",
                   params={"api-version": "2021-04-12"}, json={"properties": {"desired": {"viaWs": 1}}},
                   headers={"Authorization": hub.service_token(), "If-Match": "*"}, verify=hub.ca_path,
                   timeout=10).raise_for_status()
    # the SDK may first hand over the whole desired section it fetched on connect
    patch = patches.get(timeout=10)
    while "viaWs" not in patch:
        patch = patches.get(timeout=10)
    assert patch["viaWs"] == 1


def test_the_printed_connection_string_names_no_port_since_rest_and_websockets_share_443(hub):
    assert hub.service_host == "localhost", hub.service_connection_string
    r = requests.get("https://localhost/statistics/devices", params={"api-version": "2021-04-12"},
                     headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=10)
    assert r.status_code == 200, r.text


def test_a_websocket_upgrade_on_another_path_is_refused(hub):
    import socket
    ctx = ssl.create_default_context(cafile=hub.ca_path)
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /other HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            status_line = tls.recv(1024).split(b"\r\n", 1)[0]
    assert b" 101 " not in status_line and b" 4" in status_line, status_line
