"""The Azure CLI, unchanged, against the hub: `az iot hub` / `az iot edge` / `az iot device` as an
operator types them, with `--login` set to the connection string the hub prints and the hub's CA
trusted through `REQUESTS_CA_BUNDLE` (REST) and `SSL_CERT_FILE` (the CLI's MQTT device
simulation): no other setting, no shim. Each command's exit code and output are checked and its
effect is read back through another client (the Python service SDK, a raw MQTT device).

The CLI comes from `scripts/az-install` (azure-cli 2.77.0 and the IoT extension 0.25.0 vendored in
tests/tools); `EDGETWIN_AZ` names its `az`, default `target/az/venv/bin/az`.
"""

import base64
import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import REPO_ROOT, unique_id, wait_until

AZ_DIR = REPO_ROOT / "target" / "az"


@pytest.fixture(scope="session")
def az(hub):
    """Runs `az <args> --login <the hub's connection string>`; returns (exit code, stdout, stderr)."""
    binary = pathlib.Path(os.environ.get("EDGETWIN_AZ", AZ_DIR / "venv" / "bin" / "az"))
    if not binary.exists():
        pytest.fail(f"the Azure CLI is not installed at {binary}: run scripts/az-install (or set EDGETWIN_AZ)")
    install = binary.parents[2]
    config = tempfile.mkdtemp(prefix="edgetwin-az-config-")
    env = dict(
        os.environ,
        AZURE_EXTENSION_DIR=str(install / "extensions"),
        AZURE_CONFIG_DIR=config,
        AZURE_CORE_COLLECT_TELEMETRY="no",
        AZURE_CORE_NO_COLOR="yes",
        REQUESTS_CA_BUNDLE=hub.ca_path,
        SSL_CERT_FILE=hub.ca_path,
    )

    def run(*args, login=None, timeout=120):
        cmd = [str(binary), *args, "--login", login or hub.service_connection_string]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    def start(*args, login=None):
        cmd = [str(binary), *args, "--login", login or hub.service_connection_string]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    run.start = start
    return run


def ok(result):
    """The JSON an `az` command printed, after checking it exited 0."""
    code, out, err = result
    assert code == 0, f"az exited {code}\nstdout: {out}\nstderr: {err}"
    return json.loads(out) if out.strip() else None


def test_device_identities_round_trip_through_the_cli(az, registry_manager):
    device_id = unique_id("az")
    created = ok(az("iot", "hub", "device-identity", "create", "-d", device_id))
    assert created["deviceId"] == device_id
    assert created["authentication"]["type"] == "sas"
    key = created["authentication"]["symmetricKey"]["primaryKey"]
    assert registry_manager.get_device(device_id).authentication.symmetric_key.primary_key == key

    shown = ok(az("iot", "hub", "device-identity", "connection-string", "show", "-d", device_id))
    assert shown["connectionString"].endswith(f";DeviceId={device_id};SharedAccessKey={key}")

    ok(az("iot", "hub", "device-identity", "update", "-d", device_id, "--status", "disabled"))
    assert registry_manager.get_device(device_id).status == "disabled"
    listed = ok(az("iot", "hub", "device-identity", "list", "--query", "[].deviceId"))
    assert device_id in listed

    ok(az("iot", "hub", "device-identity", "delete", "-d", device_id))
    code, _, err = az("iot", "hub", "device-identity", "show", "-d", device_id)
    assert code != 0 and "DeviceNotFound" in err, err


def test_twin_updates_from_the_cli_reach_the_twins(az, registry_manager, make_module):
    module = make_module()
    ok(az("iot", "hub", "device-twin", "update", "-d", module.device_id,
          "--desired", '{"telemetryInterval": 122}', "--tags", '{"site": "az"}'))
    twin = registry_manager.get_twin(module.device_id)
    assert twin.properties.desired["telemetryInterval"] == 122
    assert twin.tags == {"site": "az"}

    shown = ok(az("iot", "hub", "module-twin", "update", "-d", module.device_id, "-m", module.module_id,
                  "--desired", '{"telemetryInterval": 7}'))
    assert shown["properties"]["desired"]["telemetryInterval"] == 7
    module_twin = registry_manager.get_module_twin(module.device_id, module.module_id)
    assert module_twin.properties.desired["telemetryInterval"] == 7

    # per-property metadata, as IoT Hub keeps it: $lastUpdatedVersion in desired properties only
    ok(az("iot", "hub", "device-twin", "update", "-d", module.device_id, "--desired", '{"mode": "eco"}'))
    desired = ok(az("iot", "hub", "device-twin", "show", "-d", module.device_id))["properties"]["desired"]
    metadata = desired["$metadata"]
    assert metadata["telemetryInterval"]["$lastUpdatedVersion"] == desired["$version"] - 1
    assert metadata["mode"]["$lastUpdatedVersion"] == desired["$version"]
    assert metadata["$lastUpdatedVersion"] == desired["$version"]
    assert metadata["mode"]["$lastUpdated"] == metadata["$lastUpdated"]
    assert metadata["telemetryInterval"]["$lastUpdated"] < metadata["mode"]["$lastUpdated"]

    found = ok(az("iot", "hub", "query", "-q",
                  f"SELECT deviceId FROM devices WHERE tags.site = 'az' AND deviceId = '{module.device_id}'"))
    assert found == [{"deviceId": module.device_id}]


def test_reported_properties_carry_when_each_changed(az, make_device, raw_mqtt):
    device = make_device()
    client = raw_mqtt(device)
    assert client.connect() == 0
    client.subscribe("$iothub/twin/res/#")
    client.publish("$iothub/twin/PATCH/properties/reported/?$rid=1", b'{"battery": {"level": 80}}')
    client.wait_message(lambda t, p: t.startswith("$iothub/twin/res/204/?$rid=1"))
    reported = ok(az("iot", "hub", "device-twin", "show", "-d", device.device_id))["properties"]["reported"]
    level = reported["$metadata"]["battery"]["level"]
    assert set(level) == {"$lastUpdated"}
    assert reported["$metadata"]["battery"]["$lastUpdated"] == level["$lastUpdated"]


def _answer_one_method(client, status, body):
    """Waits for the method request on a raw MQTT client and answers it; returns the request."""
    topic, payload = client.wait_message(lambda t, p: t.startswith("$iothub/methods/POST/"), timeout=30)
    rid = topic.split("$rid=")[1]
    client.publish(f"$iothub/methods/res/{status}/?$rid={rid}", body)
    return topic, payload


def test_methods_invoked_without_a_timeout_reach_the_device_and_answer(az, make_device, make_module,
                                                                        raw_mqtt):
    # Without --timeout the CLI sends "responseTimeoutInSeconds": "30", a string; IoT Hub takes it.
    device = make_device()
    client = raw_mqtt(device)
    assert client.connect() == 0
    client.subscribe("$iothub/methods/POST/#")
    running = az.start("iot", "hub", "invoke-device-method", "-d", device.device_id,
                       "--mn", "reboot", "--mp", '{"delay": 5}')
    topic, payload = _answer_one_method(client, 200, b'{"rebooting": true}')
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert topic.startswith("$iothub/methods/POST/reboot/")
    assert json.loads(payload) == {"delay": 5}
    assert json.loads(out) == {"status": 200, "payload": {"rebooting": True}}

    module = make_module()
    module_client = raw_mqtt(module)
    assert module_client.connect() == 0
    module_client.subscribe("$iothub/methods/POST/#")
    running = az.start("iot", "hub", "invoke-module-method", "-d", module.device_id, "-m", module.module_id,
                       "--mn", "ping")
    _answer_one_method(module_client, 201, b'"pong"')
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert json.loads(out) == {"status": 201, "payload": "pong"}


def test_an_edge_device_created_with_a_parent_has_it_in_its_parent_scopes(az, registry_manager):
    parent, child, leaf = unique_id("azp"), unique_id("azc"), unique_id("azl")
    ok(az("iot", "edge", "devices", "create", "--device", f"id={parent}", "--device",
          f"id={child}", f"parent={parent}"))
    parent_scope = registry_manager.get_device(parent).device_scope
    assert parent_scope.startswith(f"ms-azure-iot-edge://{parent}-")
    child_device = registry_manager.get_device(child)
    assert child_device.capabilities.iot_edge
    assert child_device.parent_scopes == [parent_scope]

    ok(az("iot", "hub", "device-identity", "create", "-d", leaf))
    ok(az("iot", "hub", "device-identity", "parent", "set", "-d", leaf, "--pd", parent))
    leaf_device = registry_manager.get_device(leaf)
    assert leaf_device.device_scope == parent_scope
    assert leaf_device.parent_scopes == [parent_scope]
    assert ok(az("iot", "hub", "device-identity", "parent", "show", "-d", child))["deviceId"] == parent

    children = ok(az("iot", "hub", "device-identity", "children", "list", "-d", parent))
    assert sorted(children) == sorted([child, leaf])

    ok(az("iot", "hub", "device-identity", "children", "remove", "-d", parent, "--child-list", leaf))
    assert registry_manager.get_device(leaf).parent_scopes == []
    assert ok(az("iot", "hub", "device-identity", "children", "list", "-d", parent)) == [child]


def _write_manifest(tmp_path, modules=None):
    manifest = {
        "modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {}},
                "systemModules": {
                    "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5"}},
                    "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                                "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5"}},
                },
                "modules": {},
            }},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {},
                                                "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
        }
    }
    for module_id, desired in (modules or {}).items():
        agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
        agent["modules"][module_id] = {"type": "docker", "status": "running", "restartPolicy": "always",
                                       "settings": {"image": "localhost:5000/edgetwin:0.1.0-amd64"}}
        manifest["modulesContent"][module_id] = {"properties.desired": desired}
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(manifest))
    return path


def test_a_deployment_without_labels_can_be_updated(az, tmp_path):
    # IoT Hub returns "labels" on every configuration; the CLI's update reads it unguarded.
    deployment_id = unique_id("azdep")
    created = ok(az("iot", "edge", "deployment", "create", "-d", deployment_id,
                    "--content", str(_write_manifest(tmp_path)), "--target-condition", "tags.site='nowhere'",
                    "--priority", "3"))
    assert created["labels"] is None
    updated = ok(az("iot", "edge", "deployment", "update", "-d", deployment_id, "--set", "priority=9"))
    assert updated["priority"] == 9
    assert ok(az("iot", "edge", "deployment", "show", "-d", deployment_id))["priority"] == 9
    ok(az("iot", "edge", "deployment", "delete", "-d", deployment_id))


def test_a_method_invoked_with_a_null_payload_reaches_the_device_with_an_empty_body(az, make_device,
                                                                                   raw_mqtt):
    # `--mp null` sends no payload; IoT Hub then sends the device an empty body, not `null`
    # (Azure/azure-iot-sdk-c#2097, Azure/azure-iot-sdk-python#761).
    device = make_device()
    client = raw_mqtt(device)
    assert client.connect() == 0
    client.subscribe("$iothub/methods/POST/#")
    running = az.start("iot", "hub", "invoke-device-method", "-d", device.device_id, "--mn", "stop",
                       "--mp", "null")
    _, payload = _answer_one_method(client, 200, b"")
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert payload == b""
    assert json.loads(out)["status"] == 200


def test_set_modules_before_the_module_exists_gives_the_module_its_desired_properties(az, registry_manager,
                                                                                    tmp_path):
    # The edge runtime creates module identities after it received the deployment, so IoT Hub
    # keeps a module's twin content for it until then.
    device_id, module_id = unique_id("azedge"), "edgetwin"
    ok(az("iot", "hub", "device-identity", "create", "-d", device_id, "--ee"))
    manifest = _write_manifest(tmp_path, {module_id: {"telemetryInterval": 122}})
    applied = ok(az("iot", "edge", "set-modules", "-d", device_id, "-k", str(manifest)))
    assert sorted(m["moduleId"] for m in applied) == ["$edgeAgent", "$edgeHub"]
    ok(az("iot", "hub", "module-identity", "create", "-d", device_id, "-m", module_id))
    twin = registry_manager.get_module_twin(device_id, module_id)
    assert twin.properties.desired["telemetryInterval"] == 122
    shown = ok(az("iot", "hub", "module-twin", "show", "-d", device_id, "-m", module_id))
    assert shown["properties"]["desired"]["telemetryInterval"] == 122


def test_a_device_configuration_from_the_cli_reaches_the_targeted_twins_and_its_metrics_count_them(
        az, registry_manager, make_device):
    from azure.iot.hub.models import Twin
    ring = unique_id("ring").lower()
    inside, outside = make_device(prefix="adm"), make_device(prefix="adm")
    registry_manager.update_twin(inside.device_id, Twin(tags={"ring": ring}), "*")
    config_id = unique_id("adm").lower()
    content = {"deviceContent": {"properties.desired.fw": {"version": "1.2"}}}
    metrics = {"queries": {"current": f"SELECT deviceId FROM devices WHERE tags.ring = '{ring}'"}}
    created = ok(az("iot", "hub", "configuration", "create", "-c", config_id,
                    "--content", json.dumps(content), "--metrics", json.dumps(metrics),
                    "--target-condition", f"tags.ring='{ring}'", "--priority", "1"))
    try:
        assert created["content"]["deviceContent"] == content["deviceContent"]
        assert registry_manager.get_twin(inside.device_id).properties.desired["fw"] == {"version": "1.2"}
        assert "fw" not in registry_manager.get_twin(outside.device_id).properties.desired
        shown = ok(az("iot", "hub", "configuration", "show", "-c", config_id))
        assert shown["systemMetrics"]["results"] == {"targetedCount": 1, "appliedCount": 1}
        assert shown["metrics"]["results"] == {"current": 1}
        for name in ("targetedCount", "appliedCount"):
            metric = ok(az("iot", "hub", "configuration", "show-metric", "-c", config_id,
                           "-m", name, "--mt", "system"))
            assert [row["deviceId"] for row in metric["result"]] == [inside.device_id], metric
        custom = ok(az("iot", "hub", "configuration", "show-metric", "-c", config_id, "-m", "current"))
        assert [row["deviceId"] for row in custom["result"]] == [inside.device_id]
        listed = ok(az("iot", "hub", "configuration", "list"))
        assert config_id in [c["id"] for c in listed]
    finally:
        ok(az("iot", "hub", "configuration", "delete", "-c", config_id))
    # a deleted configuration's settings stay
    assert registry_manager.get_twin(inside.device_id).properties.desired["fw"] == {"version": "1.2"}


def test_a_module_configuration_from_the_cli_reaches_the_targeted_module_twins(
        az, hub, registry_manager, make_device, make_module):
    from azure.iot.hub.models import Twin
    ring = unique_id("ring").lower()
    device = make_device(prefix="admm")
    inside = make_module(device=device, prefix="admm")
    outside = make_module(device=device, prefix="admm")
    registry_manager.update_module_twin(inside.device_id, inside.module_id, Twin(tags={"ring": ring}), "*")
    config_id = unique_id("admm").lower()
    content = {"moduleContent": {"properties.desired.sampling": {"rate": 5}}}
    # IoT Hub's module conditions name their collection (the CLI refuses one that does not)
    condition = f"from devices.modules where tags.ring='{ring}'"
    ok(az("iot", "hub", "configuration", "create", "-c", config_id, "--content", json.dumps(content),
          "--target-condition", condition, "--priority", "2"))
    try:
        twin = registry_manager.get_module_twin(inside.device_id, inside.module_id)
        assert twin.properties.desired["sampling"] == {"rate": 5}
        shown = ok(az("iot", "hub", "module-twin", "show", "-d", inside.device_id, "-m", inside.module_id))
        assert shown["configurations"] == {config_id: {"status": "Applied"}}
        assert "sampling" not in registry_manager.get_module_twin(
            outside.device_id, outside.module_id).properties.desired
        assert "sampling" not in registry_manager.get_twin(inside.device_id).properties.desired
        shown = ok(az("iot", "hub", "configuration", "show", "-c", config_id))
        assert shown["systemMetrics"]["results"] == {"targetedCount": 1, "appliedCount": 1}
        for name in ("targetedCount", "appliedCount"):
            metric = ok(az("iot", "hub", "configuration", "show-metric", "-c", config_id,
                           "-m", name, "--mt", "system"))
            assert [(r["deviceId"], r["moduleId"]) for r in metric["result"]] == [
                (inside.device_id, inside.module_id)], metric

        # a module that comes into scope gets the settings; one that leaves has them removed
        registry_manager.update_module_twin(outside.device_id, outside.module_id, Twin(tags={"ring": ring}), "*")
        assert registry_manager.get_module_twin(
            outside.device_id, outside.module_id).properties.desired["sampling"] == {"rate": 5}
        registry_manager.update_module_twin(inside.device_id, inside.module_id, Twin(tags={"ring": None}), "*")
        left = ok(az("iot", "hub", "module-twin", "show", "-d", inside.device_id, "-m", inside.module_id))
        assert "sampling" not in left["properties"]["desired"] and not left.get("configurations")
        # the metrics follow: the other module is the one targeted now
        shown = ok(az("iot", "hub", "configuration", "show", "-c", config_id))
        assert shown["systemMetrics"]["results"] == {"targetedCount": 1, "appliedCount": 1}
    finally:
        ok(az("iot", "hub", "configuration", "delete", "-c", config_id))

    # the hub refuses a module configuration whose condition does not name devices.modules
    bad = requests.put(f"{hub.rest_url}/configurations/{config_id}-bad", params={"api-version": "2021-04-12"},
                       json={"id": f"{config_id}-bad", "content": content, "targetCondition": f"tags.ring='{ring}'"},
                       headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=10)
    assert bad.status_code == 400, bad.text
    assert "FROM devices.modules WHERE" in bad.text
    assert bad.headers["iothub-errorcode"] == "InvalidConfigurationTargetCondition", bad.text


def test_device_to_cloud_messages_from_the_cli_reach_the_hub(az, hub, make_device):
    # The CLI's device side runs Microsoft's Python device SDK over MQTT, trusting SSL_CERT_FILE.
    device = make_device()
    ok(az("iot", "device", "send-d2c-message", "-d", device.device_id, "--data", "hello from az",
          "--props", "level=info;origin=cli"))
    messages = wait_until(lambda: hub.messages(device.device_id), message="the CLI's message in the log")
    assert messages[0]["body"] == "hello from az"
    assert messages[0]["properties"]["level"] == "info"
    assert messages[0]["properties"]["origin"] == "cli"


def test_device_to_cloud_messages_over_https_from_the_cli_and_from_the_device_reach_the_hub(
        az, hub, make_device):
    # `az iot device simulate --protocol http` posts to /devices/{id}/messages/events with the
    # policy it logged in with (DeviceConnect); a device posts there with its own token.
    device = make_device()
    ok(az("iot", "device", "simulate", "-d", device.device_id, "--protocol", "http", "--mc", "2",
          "--mi", "1", "--data", "over https", "--properties", "unit=C"))
    messages = wait_until(lambda: len(hub.messages(device.device_id)) >= 2 and hub.messages(device.device_id),
                          message="the CLI's two messages in the log")
    assert sorted(json.loads(m["body"])["data"] for m in messages) == ["over https #1", "over https #2"]
    # The CLI sends its properties over HTTPS as bare headers (`unit: C`); IoT Hub takes
    # application properties only as `iothub-app-{name}` (the Java SDK's HttpsMessage
    # HTTPS_APP_PROPERTY_PREFIX, the C# SDK's kHttpAppPropertyPrefix), so they are not kept.
    assert all("unit" not in m["properties"] for m in messages)

    url = f"{hub.rest_url}/devices/{device.device_id}/messages/events"
    own = requests.post(url, params={"api-version": "2021-04-12"}, data=b"from the device",
                        headers={"Authorization": device.sas(), "iothub-app-kind": "own",
                                 "iothub-messageid": "m-7"},
                        verify=hub.ca_path, timeout=10)
    assert own.status_code == 204, own.text
    last = hub.messages(device.device_id)[-1]
    assert last["body"] == "from the device"
    assert last["properties"] == {"kind": "own", "$.mid": "m-7"}

    other = make_device()
    refused = requests.post(f"{hub.rest_url}/devices/{other.device_id}/messages/events",
                            params={"api-version": "2021-04-12"}, data=b"x",
                            headers={"Authorization": device.sas()}, verify=hub.ca_path, timeout=10)
    assert refused.status_code == 401, refused.text
    assert not hub.messages(other.device_id)

    # over HTTPS, IoT Hub takes application properties of token characters only
    spaced = requests.post(url, params={"api-version": "2021-04-12"}, data=b"spaced",
                           headers={"Authorization": device.sas(), "iothub-app-note": "two words"},
                           verify=hub.ca_path, timeout=10)
    assert spaced.status_code == 400 and "iothub-app-note" in spaced.text, spaced.text
    assert hub.messages(device.device_id)[-1]["body"] == "from the device"  # nothing stored


def test_digital_twins_from_the_cli_show_update_and_command_a_plug_and_play_device(az, hub, make_device,
                                                                                  raw_mqtt):
    device = make_device(prefix="azpnp")
    model = "dtmi:com:example:Thermostat;1"
    client = raw_mqtt(device, username=f"{hub.host}/{device.device_id}/?api-version=2021-04-12&model-id={model}")
    assert client.connect() == 0
    client.subscribe("$iothub/methods/POST/#")
    client.subscribe("$iothub/twin/PATCH/properties/desired/#")
    shown = ok(az("iot", "hub", "digital-twin", "show", "-d", device.device_id))
    assert shown == {"$dtId": device.device_id, "$metadata": {"$model": model}}

    patch = '[{"op": "add", "path": "/targetTemperature", "value": 25}]'
    updated = ok(az("iot", "hub", "digital-twin", "update", "-d", device.device_id, "--json-patch", patch))
    assert updated["$metadata"]["targetTemperature"]["desiredValue"] == 25
    _, desired = client.wait_message(lambda t, p: t.startswith("$iothub/twin/PATCH/properties/desired/"))
    assert json.loads(desired)["targetTemperature"] == 25

    running = az.start("iot", "hub", "digital-twin", "invoke-command", "-d", device.device_id,
                       "--cn", "getMaxMinReport", "--component-path", "thermostat1", "--payload", '{"since": 1}')
    topic, payload = _answer_one_method(client, 200, b'{"max": 30}')
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert topic.startswith("$iothub/methods/POST/thermostat1*getMaxMinReport/")
    assert json.loads(payload) == {"since": 1}
    # The CLI prints the x-ms-command-statuscode header as it reads it: a string.
    assert json.loads(out) == {"payload": {"max": 30}, "status": "200"}


def test_monitor_events_from_the_cli_shows_a_devices_telemetry_with_its_properties(
        az, hub, make_device, clients):
    # monitor-events follows the hub's amqp:link:redirect from messages/events to the Event
    # Hub-compatible endpoint, reads its partitions through $management and receives on each
    from azure.iot.device import Message

    device = make_device()
    monitor = az.start("iot", "hub", "monitor-events", "-n", hub.host, "-d", device.device_id,
                       "--timeout", "60", "-y", "-p", "all")
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(monitor.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Starting event monitor" in line for line in lines) or monitor.poll() is not None,
                   timeout=30, message="the monitor to start")
        assert monitor.poll() is None, f"az monitor-events exited: {monitor.stderr.read()}"
        time.sleep(2)  # its receivers attach after it says so
        client = clients.device(device)
        client.connect()
        message = Message('{"t": 5}', message_id="az-mid")
        message.custom_properties["k"] = "v"
        client.send_message(message)
        wait_until(lambda: any(line.startswith("}") for line in lines), timeout=30,
                   message="the monitor to print the event")
    finally:
        monitor.terminate()
        monitor.wait(10)
    text = "".join(lines)
    event = json.loads(text[text.index("{"):text.rindex("}") + 1])["event"]
    assert event["origin"] == device.device_id
    assert event["payload"] == '{"t": 5}'
    assert event["properties"]["system"]["message_id"] == "az-mid"
    assert event["properties"]["application"] == {"k": "v"}
    assert event["annotations"]["iothub-connection-device-id"] == device.device_id
    assert event["annotations"]["iothub-message-source"] == "Telemetry"


def test_a_twin_job_from_the_cli_runs_over_its_query_and_reports_its_status(az, registry_manager, make_device):
    selected, other = make_device(), make_device()
    job_id = unique_id("azjob")
    job = ok(az("iot", "hub", "job", "create", "--job-id", job_id, "--job-type", "scheduleUpdateTwin",
                "-q", f"deviceId = '{selected.device_id}'",
                "--twin-patch", '{"tags": {"floor": 3}, "properties": {"desired": {"mode": "eco"}}}',
                "--ttl", "60", "--wait", "--poll-interval", "1"))
    assert (job["jobId"], job["type"], job["status"]) == (job_id, "scheduleUpdateTwin", "completed")
    assert job["deviceJobStatistics"]["succeededCount"] == 1
    assert job["maxExecutionTimeInSeconds"] == 60
    twin = registry_manager.get_twin(selected.device_id)
    assert (twin.tags["floor"], twin.properties.desired["mode"]) == (3, "eco")
    assert "mode" not in registry_manager.get_twin(other.device_id).properties.desired
    assert job["endTime"] >= job["startTime"] >= job["createdTime"][:19]


def test_a_method_job_from_the_cli_is_answered_by_the_device(az, make_device, raw_mqtt):
    device = make_device()
    client = raw_mqtt(device)
    assert client.connect() == 0
    client.subscribe("$iothub/methods/POST/#")
    running = az.start("iot", "hub", "job", "create", "--job-id", unique_id("azmethod"),
                       "--job-type", "scheduleDeviceMethod", "-q", f"deviceId = '{device.device_id}'",
                       "--method-name", "reboot", "--method-payload", '{"delay": 5}',
                       "--wait", "--poll-interval", "1")
    topic, payload = _answer_one_method(client, 200, b'{"rebooting": true}')
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert topic.startswith("$iothub/methods/POST/reboot/")
    assert json.loads(payload) == {"delay": 5}
    job = json.loads(out)
    assert job["status"] == "completed"
    assert job["cloudToDeviceMethod"]["methodName"] == "reboot"
    assert job["deviceJobStatistics"]["succeededCount"] == 1


def test_a_job_scheduled_from_the_cli_is_listed_and_can_be_cancelled(az, make_device):
    device = make_device()
    job_id = unique_id("azlater")
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    job = ok(az("iot", "hub", "job", "create", "--job-id", job_id, "--job-type", "scheduleUpdateTwin",
                "-q", f"deviceId = '{device.device_id}'", "--twin-patch", '{"tags": {"late": true}}',
                "--start", later))
    assert job["status"] == "scheduled"
    assert job["startTime"].startswith(later[:19])
    scheduled = ok(az("iot", "hub", "job", "list", "--job-type", "scheduleUpdateTwin",
                      "--job-status", "scheduled"))
    assert job_id in [j["jobId"] for j in scheduled]
    # without a type the CLI also lists the import and export jobs (GET /jobs): there are none
    assert job_id in [j["jobId"] for j in ok(az("iot", "hub", "job", "list"))]
    assert ok(az("iot", "hub", "job", "cancel", "--job-id", job_id))["status"] == "cancelled"
    assert ok(az("iot", "hub", "job", "show", "--job-id", job_id))["status"] == "cancelled"


def test_a_bad_job_from_the_cli_fails_naming_the_field(az):
    code, _, err = az("iot", "hub", "job", "create", "--job-id", unique_id("azbad"),
                      "--job-type", "scheduleUpdateTwin", "-q", "tags.floor =",
                      "--twin-patch", '{"tags": {"a": 1}}')
    assert code != 0
    assert "queryCondition" in err
    code, _, err = az("iot", "hub", "job", "show", "--job-id", unique_id("nojob"))
    assert code != 0
    assert "JobNotFound" in err


def test_dps_enrollments_and_groups_round_trip_through_the_cli_with_the_dps_connection_string(az, hub):
    # `--login` with the DPS connection string `edgetwin hub` prints (docs/dps.md); GET hides the
    # keys, so `--show-keys` reads them from the attestation mechanism, as on DPS
    login = hub.info["dps"]["connectionString"]
    enrollment_id = unique_id("azdps")
    created = ok(az("iot", "dps", "enrollment", "create", "--enrollment-id", enrollment_id,
                    "--attestation-type", "symmetrickey", "--edge-enabled",
                    "--initial-twin-tags", '{"site": "az"}', login=login))
    assert created["registrationId"] == enrollment_id
    assert created["capabilities"]["iotEdge"] is True
    key = created["attestation"]["symmetricKey"]["primaryKey"]
    shown = ok(az("iot", "dps", "enrollment", "show", "--enrollment-id", enrollment_id, login=login))
    assert shown["initialTwin"]["tags"] == {"site": "az"}
    assert not shown["attestation"]["symmetricKey"].get("primaryKey")
    with_keys = ok(az("iot", "dps", "enrollment", "show", "--enrollment-id", enrollment_id, "--show-keys",
                      login=login))
    assert with_keys["attestation"]["symmetricKey"]["primaryKey"] == key
    listed = ok(az("iot", "dps", "enrollment", "list", login=login))
    assert enrollment_id in [e["registrationId"] for e in listed]
    ok(az("iot", "dps", "enrollment", "delete", "--enrollment-id", enrollment_id, login=login))
    code, _, err = az("iot", "dps", "enrollment", "show", "--enrollment-id", enrollment_id, login=login)
    assert code != 0 and "404" in err, err

    group_id = unique_id("azgrp")
    group = ok(az("iot", "dps", "enrollment-group", "create", "--enrollment-id", group_id, login=login))
    group_key = group["attestation"]["symmetricKey"]["primaryKey"]
    derived = ok(az("iot", "dps", "compute-device-key", "--enrollment-id", group_id, "--registration-id",
                    "az-device-1", "--dps-name", "local", login=login))
    expected = hmac.new(base64.b64decode(group_key), b"az-device-1", hashlib.sha256).digest()
    assert derived == base64.b64encode(expected).decode()


def test_c2d_message_send_from_the_cli_reaches_the_device_and_purge_empties_its_queue(
        az, hub, make_device, clients):
    # the CLI sends over AMQP (uamqp) on /messages/devicebound, as IoT Hub's service SDKs do
    device = make_device()
    sender = az.start("iot", "device", "c2d-message", "send", "-n", hub.host, "-d", device.device_id,
                      "--data", "from az", "--props", "k=v", "--mid", "az-c2d", "-y")
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, f"stdout: {out}\nstderr: {err}"
    client = clients.device(device)
    client.connect()
    message = client.receive_message(timeout=10)
    assert message is not None and message.data == b"from az"
    assert message.message_id == "az-c2d"
    assert message.custom_properties == {"k": "v"}
    client.disconnect()
    # what the device has not taken yet, purge empties (DELETE /devices/{id}/commands)
    again = az.start("iot", "device", "c2d-message", "send", "-n", hub.host, "-d", device.device_id,
                     "--data", "never read", "-y")
    assert again.wait(120) == 0, again.stderr.read()
    purged = ok(az("iot", "device", "c2d-message", "purge", "-d", device.device_id))
    assert (purged["totalMessagesPurged"], purged["deviceId"]) == (1, device.device_id)
    assert ok(az("iot", "device", "c2d-message", "purge", "-d", device.device_id))["totalMessagesPurged"] == 0


def test_c2d_message_receive_abandon_complete_and_reject_from_the_cli_and_send_waits_for_feedback(
        az, hub, make_device):
    # receive / abandon / complete / reject are the device's HTTPS API
    # (GET, POST …/abandon, DELETE [?reject] /devices/{id}/messages/deviceBound[/{etag}]);
    # `send --ack full --wait` waits on /messages/servicebound/feedback for its message's record
    device = make_device()
    sender = az.start("iot", "device", "c2d-message", "send", "-n", hub.host, "-d", device.device_id,
                      "--data", "keep me", "--mid", "az-keep", "--props", "k=v", "--ack", "full",
                      "--wait", "-y")

    def receive(*settle):
        return ok(az("iot", "device", "c2d-message", "receive", "-d", device.device_id, *settle))

    first = wait_until(receive, timeout=60, interval=0.5, message="the message in the device's queue")
    assert first["data"] == "keep me"
    assert first["properties"]["app"] == {"k": "v"}
    system = first["properties"]["system"]
    assert (system["iothub-messageid"], system["iothub-ack"]) == ("az-keep", "full")
    assert system["iothub-to"] == f"/devices/{device.device_id}/messages/deviceBound"
    assert system["iothub-deliverycount"] == "0"
    ok(az("iot", "device", "c2d-message", "abandon", "-d", device.device_id, "--etag", first["etag"]))
    again = receive()
    assert again["properties"]["system"]["iothub-deliverycount"] == "1"
    assert again["etag"] != first["etag"]
    ok(az("iot", "device", "c2d-message", "complete", "-d", device.device_id, "--etag", again["etag"]))
    out, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, f"stdout: {out}\nstderr: {err}"
    assert "originalMessageId: az-keep" in out and "statusCode: Success" in out, out

    ok(az("iot", "device", "c2d-message", "send", "-n", hub.host, "-d", device.device_id,
          "--data", "drop me", "-y"))
    rejected = receive("--reject")
    assert (rejected["data"], rejected["ack"]) == ("drop me", "reject")
