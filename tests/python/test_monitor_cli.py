"""`edgetwin monitor` and `edgetwin c2d send`, real CLI processes against the session's hub:
telemetry sent by the Python device SDK (a device and a module) is printed by `monitor --json`
as `az iot hub monitor-events` shapes it, filtered by --device/--module, with the properties;
a message sent by `c2d send` reaches `IoTHubDeviceClient.receive_message` with its properties;
an unknown device, a full queue and bad credentials are refused with clear messages."""

import json
import os
import subprocess
import threading

import pytest
from azure.iot.device import Message

from conftest import DEFAULT_BIN, fill_c2d_queue, parse_connection_string, unique_id, wait_until
from test_event_hub import consumer_groups

BIN = os.environ.get("EDGETWIN_BIN", str(DEFAULT_BIN))

# receive_message is the judge the issue names; the SDK marks it deprecated
pytestmark = pytest.mark.filterwarnings("ignore:receive_message is deprecated")


def cli_env(hub):
    """The environment of a CLI process: the hub's CA through the variable the Python SDK users
    set, no connection string from the environment unless a test passes one."""
    env = {k: v for k, v in os.environ.items() if k not in ("IOTHUB_CONNECTION_STRING", "EDGETWIN_CA_FILE")}
    env["REQUESTS_CA_BUNDLE"] = hub.ca_path
    return env


def run_cli(hub, *args, connection_string=None, timeout=30):
    cs = connection_string if connection_string is not None else hub.service_connection_string
    return subprocess.run([BIN, *args, "--connection-string", cs], env=cli_env(hub),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Monitor:
    """`edgetwin monitor --json` in the background; its stdout lines, parsed, once it ends."""

    def __init__(self, hub, *args):
        self.proc = subprocess.Popen(
            [BIN, "monitor", "--json", "--timeout", "20", "--connection-string",
             hub.service_connection_string, *args],
            env=cli_env(hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL)
        self.stderr = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        # from @latest: telemetry counts from the moment every partition is attached
        wait_until(lambda: any("monitoring" in line for line in self.stderr) or self.proc.poll() is not None,
                   timeout=20, message="monitor to attach its partitions")
        assert self.proc.poll() is None, "".join(self.stderr)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def events(self, timeout=30):
        out = self.proc.stdout.read()  # until it exits: --count, or --timeout at worst
        self.proc.wait(timeout)
        self._reader.join(5)
        assert self.proc.returncode == 0, "".join(self.stderr)
        return [json.loads(line)["event"] for line in out.splitlines()]


def test_monitor_prints_device_and_module_telemetry_filtered_with_its_properties(
        hub, clients, make_device, make_module):
    owner = make_device()
    module = make_module(device=owner)
    other = make_device()
    everything = Monitor(hub, "--device", module.device_id, "--properties", "--count", "2")
    module_only = Monitor(hub, "--device", module.device_id, "--module", module.module_id,
                          "--properties", "app", "--count", "1")
    noise = clients.device(other)
    noise.send_message(Message("not for these monitors"))
    device = clients.device(owner)
    message = Message('{"temperature": 21.5}', message_id="m-1", content_encoding="utf-8",
                      content_type="application/json")
    message.custom_properties["level"] = "high"
    device.send_message(message)
    clients.module(module).send_message(Message("from the module"))

    first, second = everything.events()
    assert first["origin"] == module.device_id and first["module"] == ""
    assert first["payload"] == {"temperature": 21.5}
    assert first["properties"]["application"] == {"level": "high"}
    system = first["properties"]["system"]
    assert (system["message_id"], system["content_type"]) == ("m-1", "application/json")
    assert first["annotations"]["iothub-connection-device-id"] == module.device_id
    assert first["enqueuedTime"].endswith("Z")
    assert (second["module"], second["payload"]) == (module.module_id, "from the module")

    (only,) = module_only.events()
    assert (only["origin"], only["module"], only["payload"]) == (
        module.device_id, module.module_id, "from the module")
    assert only["properties"] == {"application": {}}


def test_c2d_send_reaches_the_device_sdk_with_its_properties(hub, clients, make_device):
    device = make_device()
    sent = run_cli(hub, "c2d", "send", "--device", device.device_id, "--data", "hello device",
                   "--message-id", "m-1", "--correlation-id", "c-1", "--ack", "full",
                   "--property", "color=dark blue", "--content-type", "application/json",
                   "--expiry", "600")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"sent message m-1 to {device.device_id}"
    client = clients.device(device)
    client.connect()
    message = client.receive_message(timeout=10)
    assert message is not None, "no cloud-to-device message"
    assert message.data == b"hello device"
    assert (message.message_id, message.correlation_id) == ("m-1", "c-1")
    assert (message.content_type, message.ack) == ("application/json", "full")
    assert message.custom_properties == {"color": "dark blue"}


def test_c2d_send_names_iot_hubs_error_for_an_unknown_device_and_a_full_queue(
        hub, make_device, c2d_sender):
    unknown = run_cli(hub, "c2d", "send", "--device", unique_id("nobody"), "--data", "x")
    assert unknown.returncode == 1
    assert "DeviceNotFound (404001)" in unknown.stderr, unknown.stderr

    device = make_device()
    fill_c2d_queue(c2d_sender, device.device_id)
    full = run_cli(hub, "c2d", "send", "--device", device.device_id, "--data", "one too many")
    assert full.returncode == 1
    assert "DeviceMaximumQueueDepthExceeded (403004)" in full.stderr, full.stderr


@pytest.mark.parametrize("command", [["monitor"], ["c2d", "send", "--device", "d", "--data", "x"]])
def test_bad_credentials_are_refused_at_once_naming_the_flag(hub, command):
    cs = parse_connection_string(hub.service_connection_string)
    wrong_key = (f"HostName={cs['HostName']};SharedAccessKeyName={cs['SharedAccessKeyName']};"
                 f"SharedAccessKey=d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nMTI=")
    refused = run_cli(hub, *command, connection_string=wrong_key, timeout=20)
    assert refused.returncode == 1
    assert "refused the credentials of the connection string from --connection-string" in refused.stderr, \
        refused.stderr
    assert cs["SharedAccessKey"] not in refused.stderr
    malformed = run_cli(hub, *command, connection_string="HostName=localhost;nonsense", timeout=20)
    assert malformed.returncode == 1
    assert "--connection-string" in malformed.stderr, malformed.stderr


def test_monitor_reconnects_across_a_hub_restart_without_losing_or_repeating_events(
        hub, clients, make_device):
    device = make_device()
    monitor = Monitor(hub, "--device", device.device_id, "--count", "2")
    clients.device(device).send_message(Message("before"))
    hub.restart()
    clients.device(device).send_message(Message("after"))
    assert [e["payload"] for e in monitor.events()] == ["before", "after"]
    assert any("reconnected" in line for line in monitor.stderr), "".join(monitor.stderr)


def test_monitor_reads_a_created_consumer_group_from_the_start(hub, clients, make_device):
    group = unique_id("monitor")
    assert consumer_groups(hub, "PUT", group).status_code == 200
    device = make_device()
    clients.device(device).send_message(Message("kept"))
    read = run_cli(hub, "monitor", "--consumer-group", group, "--from-start", "--device",
                   device.device_id, "--count", "1", "--timeout", "20", "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["event"]["payload"] == "kept"


def test_monitor_names_an_unknown_consumer_group_and_stops(hub):
    refused = run_cli(hub, "monitor", "--consumer-group", "nobody-reads-here", "--timeout", "20")
    assert refused.returncode == 1
    assert "amqp:not-found" in refused.stderr and "nobody-reads-here" in refused.stderr, refused.stderr
