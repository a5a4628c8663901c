"""edgetwin-module's telemetry, read where IoT Hub users read it: the real `edgetwin-module`
process (a module connection string and the hub's CA, no workload API) sends on its `telemetry`
output, and azure-eventhub's `EventHubConsumerClient` reads it from the Event Hub-compatible
endpoint with the annotations IoT Hub sets for a module's message."""

import json
import os
import pathlib
import subprocess

from conftest import DEFAULT_BIN
from test_event_hub import consumer, from_device, receive


def test_edgetwin_module_telemetry_is_read_by_an_event_hubs_consumer(hub, make_module, tmp_path):
    module = make_module(edge=False)
    binary = pathlib.Path(os.environ.get("EDGETWIN_BIN", DEFAULT_BIN)).parent / "edgetwin-module"
    log = open(tmp_path / "module.log", "w")
    env = dict(os.environ, EDGETWIN_CONNECTION_STRING=module.connection_string,
               EDGETWIN_CA_FILE=hub.ca_path, EDGETWIN_TELEMETRY_INTERVAL="1",
               EDGETWIN_METRICS_PORT="0", RUST_LOG="info")
    process = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        mine = from_device(module.device_id)
        events, errors = receive(consumer(hub), lambda es: len(list(filter(mine, es))) >= 2, timeout=30)
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert not errors, errors
    ours = [event for _, event in filter(mine, events)]
    assert len(ours) >= 2, (tmp_path / "module.log").read_text()
    for event in ours:
        assert "timestamp" in json.loads(event.body_as_str())
        system = event.system_properties
        assert system[b"iothub-connection-module-id"] == module.module_id.encode()
        assert system[b"content-type"] == b"application/json"
        assert system[b"content-encoding"] == b"utf-8"
        assert system[b"iothub-message-source"] == b"Telemetry"
    assert process.returncode == 0, "SIGTERM ends edgetwin-module with 0"
