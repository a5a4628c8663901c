"""`edgetwin edge run` end to end: the module image the image check built, pulled from a real
registry by a real container engine, deployed from the manifest `edgetwin manifest gen` writes,
on a hub that serves no workload API of its own. azure-iot-hub 2.7, unchanged, reads what the
runtime reports. The tests run in order on one device, each starting from where the last left it.
"""

import copy
import json
import os
import shutil
import subprocess

import pytest
import requests
from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.models import CloudToDeviceMethod, Configuration, ConfigurationContent

from conftest import Runtime, _STATE, containers, provision_edge_device, suite

DEVICE = "e2e-pi"
DEPLOYMENT_ID = "e2e-mission"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_until(predicate, timeout=60.0, message="condition"):
    return suite.wait_until(predicate, timeout=timeout, interval=0.25, message=message)


@pytest.fixture(scope="module")
def edge(edge_env):
    hub, registry_manager, tmp = edge_env["hub"], edge_env["registry_manager"], edge_env["tmp"]
    solution = os.path.join(tmp, "solution")
    os.makedirs(solution)
    shutil.copy(os.path.join(REPO, "deployment.template.json"), solution)
    shutil.copytree(os.path.join(REPO, "modules"), os.path.join(solution, "modules"))
    subprocess.run([edge_env["binary"], "manifest", "gen", "-C", solution, "-P", "amd64",
                    "--fail-on-validation-error"], check=True, capture_output=True)
    with open(os.path.join(solution, "config", "deployment.amd64.json")) as f:
        manifest = json.load(f)["modulesContent"]
    # The registry scripts/edge-check runs asks for these: the runtime pulls with them.
    manifest["$edgeAgent"]["properties.desired"]["runtime"]["settings"]["registryCredentials"] = {
        "local": {"address": "localhost:5000", "username": os.environ["EDGETWIN_REGISTRY_USERNAME"],
                  "password": os.environ["EDGETWIN_REGISTRY_PASSWORD"]}}
    config = provision_edge_device(edge_env["binary"], hub, DEVICE, tmp, extra=["--tags", '{"e2e": "edge"}'])
    runtime = Runtime(edge_env["binary"], tmp, config)
    _STATE["runtime"] = runtime
    runtime.start()
    state = {"hub": hub, "rm": registry_manager, "runtime": runtime, "manifest": manifest,
             "configurations": IoTHubConfigurationManager.from_connection_string(hub.service_connection_string)}
    yield state


def agent_twin(edge):
    return edge["rm"].get_module_twin(DEVICE, "$edgeAgent")


def agent_reported(edge):
    return agent_twin(edge).properties.reported or {}


def settled(edge, code=200):
    """$edgeAgent has acted on the desired $version it has now, with `code`."""
    twin = agent_twin(edge)
    reported = twin.properties.reported or {}
    if reported.get("lastDesiredVersion") != twin.properties.desired["$version"]:
        return None
    return reported if reported.get("lastDesiredStatus", {}).get("code") == code else None


def module_status(reported, module, status):
    entry = reported.get("modules", {}).get(module, {})
    return entry if entry.get("runtimeStatus") == status else None


def apply(edge, modules_content):
    edge["configurations"].apply_configuration_on_edge_device(
        DEVICE, ConfigurationContent(modules_content=modules_content))


def agent_desired(edge):
    return copy.deepcopy(edge["manifest"]["$edgeAgent"]["properties.desired"])


def with_agent(edge, desired):
    content = copy.deepcopy(edge["manifest"])
    content["$edgeAgent"]["properties.desired"] = desired
    return content


def test_the_generated_manifest_deployed_at_scale_runs_the_module_which_acks_122_and_the_deployment_counts_it(edge):
    image = edge["manifest"]["$edgeAgent"]["properties.desired"]["modules"]["edgetwin"]["settings"]["image"]
    assert image == os.environ["EDGETWIN_EDGE_IMAGE"]
    edge["configurations"].create_configuration(Configuration(
        id=DEPLOYMENT_ID, target_condition="tags.e2e='edge'", priority=10,
        content=ConfigurationContent(modules_content=edge["manifest"])))
    reported = wait_until(lambda: (r := settled(edge)) and module_status(r, "edgetwin", "running") and r,
                          timeout=90, message="$edgeAgent to report edgetwin running with code 200")
    assert reported["modules"]["edgetwin"]["settings"]["image"] == image
    assert reported["modules"]["edgetwin"]["settings"]["imageHash"].startswith("sha256:")
    assert reported["systemModules"]["edgeHub"]["runtimeStatus"] == "running"
    assert reported["systemModules"]["edgeAgent"]["runtimeStatus"] == "running"
    ack = wait_until(
        lambda: (edge["rm"].get_module_twin(DEVICE, "edgetwin").properties.reported or {}).get("telemetryInterval"),
        timeout=60, message="the module to acknowledge telemetryInterval")
    assert ack["value"] == 122 and ack["ac"] == 200
    module = edge["rm"].get_module(DEVICE, "edgetwin")
    assert module.managed_by == "IotEdge"
    container = containers()["edgetwin"]
    # Docker answers the bind as given; podman adds its mount options (":rprivate,rbind").
    assert any(b.split(":")[1] == "/var/run/iotedge" for b in container["HostConfig"]["Binds"]), container["HostConfig"]
    assert "IOTEDGE_WORKLOADURI=unix:///var/run/iotedge/workload.sock" in container["Config"]["Env"]
    # The hub serves no workload API: the module's token was signed by the runtime's socket.
    assert container["Config"]["Labels"]["net.azure-devices.edge.owner"] == "Microsoft.Azure.Devices.Edge.Agent"

    def counted():
        metrics = edge["configurations"].get_configuration(DEPLOYMENT_ID).system_metrics
        return metrics.results.get("reportedSuccessfulCount") == 1 and metrics
    metrics = wait_until(counted, timeout=30, message="reportedSuccessfulCount 1")
    assert metrics.results["appliedCount"] == 1 and metrics.results["targetedCount"] == 1
    rest = requests.get(f"{edge['hub'].rest_url}/configurations/{DEPLOYMENT_ID}", params={"api-version": "2021-04-12"},
                        headers={"Authorization": edge["hub"].service_token()}, verify=edge["hub"].ca_path, timeout=10)
    assert rest.json()["systemMetrics"]["results"]["reportedSuccessfulCount"] == 1
    node = subprocess.run(
        ["node", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configuration_metrics.js"), DEPLOYMENT_ID],
        env=dict(os.environ, IOTHUB_CONNECTION_STRING=edge["hub"].service_connection_string,
                 NODE_EXTRA_CA_CERTS=edge["hub"].ca_path),
        capture_output=True, text=True, timeout=60)
    assert node.returncode == 0, node.stderr
    assert json.loads(node.stdout)["reportedSuccessfulCount"] == 1, node.stdout
    edge["configurations"].delete_configuration(DEPLOYMENT_ID)


def test_a_new_image_tag_and_then_a_changed_env_recreate_the_container_and_it_runs_again(edge):
    before = containers()["edgetwin"]["Id"]
    desired = agent_desired(edge)
    updated = desired["modules"]["edgetwin"]["settings"]["image"] + "-update"
    desired["modules"]["edgetwin"]["settings"]["image"] = updated
    apply(edge, with_agent(edge, desired))
    wait_until(lambda: (r := settled(edge)) and module_status(r, "edgetwin", "running")
               and r["modules"]["edgetwin"]["settings"]["image"] == updated,
               message="the new image tag reported running")
    after = containers()["edgetwin"]
    assert after["Id"] != before and after["Config"]["Image"] == updated
    desired = agent_desired(edge)
    desired["modules"]["edgetwin"]["env"]["EDGETWIN_E2E"] = {"value": "2"}
    apply(edge, with_agent(edge, desired))
    reported = wait_until(lambda: (r := settled(edge)) and module_status(r, "edgetwin", "running")
                          and "EDGETWIN_E2E" in r["modules"]["edgetwin"]["env"] and r,
                          message="the new env reported running")
    final = containers()["edgetwin"]
    assert final["Id"] != after["Id"]
    assert "EDGETWIN_E2E=2" in final["Config"]["Env"]
    assert reported["modules"]["edgetwin"]["env"]["EDGETWIN_E2E"] == {"value": "2"}
    assert "password" not in json.dumps(reported["runtime"]), "registry passwords are never reported"


def test_a_malformed_deployment_is_refused_with_400_naming_the_field_and_nothing_changes(edge):
    before = containers()["edgetwin"]
    desired = agent_desired(edge)
    desired["modules"]["edgetwin"]["env"]["EDGETWIN_E2E"] = {"value": "2"}
    desired["modules"]["edgetwin"]["settings"]["createOptions"] = "{not json"
    apply(edge, with_agent(edge, desired))
    reported = wait_until(lambda: settled(edge, code=400), message="lastDesiredStatus 400")
    assert reported["lastDesiredStatus"]["description"].startswith("modules.edgetwin.settings.createOptions")
    desired["schemaVersion"] = "2.0"
    desired["modules"]["edgetwin"]["settings"]["createOptions"] = "{}"
    apply(edge, with_agent(edge, desired))
    reported = wait_until(lambda: settled(edge, code=412), message="lastDesiredStatus 412")
    assert "2.0" in reported["lastDesiredStatus"]["description"]
    after = containers()["edgetwin"]
    assert (after["Id"], after["State"]["StartedAt"], after["State"]["Running"]) == \
        (before["Id"], before["State"]["StartedAt"], True)


def test_a_missing_image_backs_off_naming_it_and_a_crashing_module_restarts_while_the_others_run(edge):
    running = containers()["edgetwin"]["Id"]
    desired = agent_desired(edge)
    desired["modules"]["edgetwin"]["env"]["EDGETWIN_E2E"] = {"value": "2"}
    image = desired["modules"]["edgetwin"]["settings"]["image"]
    missing = image.rsplit("/", 1)[0] + "/edgetwin-missing:1"
    desired["modules"]["ghost"] = {"type": "docker", "status": "running", "restartPolicy": "always",
                                   "settings": {"image": missing, "createOptions": "{}"}}
    desired["modules"]["crasher"] = {"type": "docker", "status": "running", "restartPolicy": "always",
                                     "env": {"EDGETWIN_CONFIG": {"value": "/nonexistent.toml"}},
                                     "settings": {"image": image, "createOptions": "{}"}}
    apply(edge, with_agent(edge, desired))
    reported = wait_until(lambda: (r := settled(edge, code=500)) and module_status(r, "ghost", "backoff") and r,
                          message="ghost in backoff, code 500")
    ghost = reported["modules"]["ghost"]["statusDescription"]
    assert missing in ghost and "cannot pull image" in ghost, ghost
    assert missing in reported["lastDesiredStatus"]["description"]
    crasher = wait_until(
        lambda: (r := agent_reported(edge)["modules"].get("crasher", {})).get("restartCount", 0) >= 1 and r,
        timeout=60, message="the crashing module to be restarted after its cool-off")
    assert crasher["exitCode"] == 1
    assert containers()["edgetwin"]["Id"] == running and containers()["edgetwin"]["State"]["Running"]
    assert module_status(agent_reported(edge), "edgetwin", "running")


def call(edge, method, payload):
    return edge["rm"].invoke_device_module_method(DEVICE, "$edgeAgent", CloudToDeviceMethod(
        method_name=method, payload=payload, response_timeout_in_seconds=30))


def test_edge_agents_methods_ping_get_module_logs_and_restart_module(edge):
    assert call(edge, "ping", None).status == 200
    logs = call(edge, "GetModuleLogs", {"schemaVersion": "1.0", "encoding": "none", "contentType": "text",
                                        "items": [{"id": "crasher", "filter": {"tail": 5}}]})
    assert logs.status == 200
    assert logs.payload[0]["id"] == "crasher"
    assert "nonexistent.toml" in logs.payload[0]["payload"]
    started = containers()["edgetwin"]["State"]["StartedAt"]
    restart = call(edge, "RestartModule", {"schemaVersion": "1.0", "id": "edgetwin"})
    assert restart.status == 200
    wait_until(lambda: containers()["edgetwin"]["State"]["StartedAt"] != started, message="edgetwin restarted")
    assert call(edge, "RestartModule", {"schemaVersion": "1.0", "id": "nobody"}).status == 404


def test_a_runtime_killed_with_sigkill_adopts_its_containers_without_restarting_them(edge):
    desired = agent_desired(edge)
    desired["modules"]["edgetwin"]["env"]["EDGETWIN_E2E"] = {"value": "2"}
    apply(edge, with_agent(edge, desired))
    wait_until(lambda: (r := settled(edge)) and module_status(r, "edgetwin", "running"), message="back to one module")
    before = containers()["edgetwin"]
    assert set(containers()) == {"edgetwin"}
    edge["runtime"].kill()
    edge["runtime"].start()
    started = agent_reported(edge)["systemModules"]["edgeAgent"]["lastStartTimeUtc"]
    wait_until(lambda: agent_reported(edge)["systemModules"]["edgeAgent"]["lastStartTimeUtc"] != started,
               message="the new runtime to report")
    after = containers()["edgetwin"]
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert settled(edge) and module_status(agent_reported(edge), "edgetwin", "running")


def test_a_runtime_stopped_with_sigterm_reports_406_and_leaves_its_modules_running(edge):
    before = containers()["edgetwin"]
    edge["runtime"].stop()
    assert edge["runtime"].proc.returncode == 0
    assert agent_reported(edge)["lastDesiredStatus"]["code"] == 406
    after = containers()["edgetwin"]
    assert after["State"]["Running"] and after["State"]["StartedAt"] == before["State"]["StartedAt"]
    edge["runtime"].start()
    wait_until(lambda: settled(edge), message="the restarted runtime to report 200 again")


def test_stopped_stops_the_module_and_a_deployment_without_it_removes_container_and_identity(edge):
    desired = agent_desired(edge)
    desired["modules"]["edgetwin"]["status"] = "stopped"
    apply(edge, with_agent(edge, desired))
    wait_until(lambda: (r := settled(edge)) and module_status(r, "edgetwin", "stopped"), message="edgetwin stopped")
    assert not containers()["edgetwin"]["State"]["Running"]
    del desired["modules"]["edgetwin"]
    apply(edge, with_agent(edge, desired))
    wait_until(lambda: (r := settled(edge)) and "edgetwin" not in r.get("modules", {}), message="edgetwin gone")
    wait_until(lambda: "edgetwin" not in containers(), message="the container removed")

    def identity_deleted():
        try:
            edge["rm"].get_module(DEVICE, "edgetwin")
            return False
        except Exception as exc:  # the SDK raises HttpOperationError
            return suite.http_status(exc) == 404
    wait_until(identity_deleted, message="the module identity deleted")
