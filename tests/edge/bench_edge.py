"""The edge runtime's figures (run by `EDGETWIN_EDGE_BENCH=1 scripts/edge-check`, not in CI's
timed tests; EDGETWIN_EDGE_RUNTIME names the runtime binary to measure, e.g. the `module`
profile's target/module/edgetwin-edge): steady resident memory of `edgetwin edge run` and of the module it runs, and the
time from a deployment applied to the module acknowledging its desired property, with the image
already on the device. Prints one JSON document.

Everything is real: the hub (no workload API of its own), podman's Docker-compatible service, the
image check's amd64 image from a local registry, azure-iot-hub to apply the deployment and read
the acknowledgement.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: E402  (this suite's engine helpers and Runtime)
from azure.iot.hub import IoTHubConfigurationManager  # noqa: E402
from azure.iot.hub.models import ConfigurationContent  # noqa: E402

suite = conftest.suite
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICE = "bench-pi"
STEADY_SECS = 30


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def main():
    binary = os.environ.get("EDGETWIN_BIN", str(suite.DEFAULT_BIN))
    tmp = tempfile.mkdtemp(prefix="edgetwin-edge-bench-")
    hub = suite.Hub(binary, os.path.join(tmp, "hub"), os.path.join(tmp, "hub.log"), extra_args=["--no-workload-api"])
    os.makedirs(hub.data_dir)
    hub.start()
    os.environ["REQUESTS_CA_BUNDLE"] = hub.ca_path
    conftest.remove_all_containers()
    runtime = None
    try:
        solution = os.path.join(tmp, "solution")
        os.makedirs(solution)
        shutil.copy(os.path.join(REPO, "deployment.template.json"), solution)
        shutil.copytree(os.path.join(REPO, "modules"), os.path.join(solution, "modules"))
        subprocess.run([binary, "manifest", "gen", "-C", solution, "-P", "amd64"], check=True, capture_output=True)
        with open(os.path.join(solution, "config", "deployment.amd64.json")) as f:
            manifest = json.load(f)["modulesContent"]
        manifest["$edgeAgent"]["properties.desired"]["runtime"]["settings"]["registryCredentials"] = {
            "local": {"address": "localhost:5000", "username": os.environ["EDGETWIN_REGISTRY_USERNAME"],
                      "password": os.environ["EDGETWIN_REGISTRY_PASSWORD"]}}
        config = conftest.provision_edge_device(binary, hub, DEVICE, tmp)
        # The runtime as shipped (EDGETWIN_EDGE_RUNTIME: the stripped edgetwin-edge), else the CLI.
        runtime = conftest.Runtime(os.environ.get("EDGETWIN_EDGE_RUNTIME", binary), tmp, config).start()
        registry = suite.make_registry_manager(hub.service_connection_string)
        configurations = IoTHubConfigurationManager.from_connection_string(hub.service_connection_string)

        def acked(value):
            reported = registry.get_module_twin(DEVICE, "edgetwin").properties.reported or {}
            return reported.get("telemetryInterval", {}).get("value") == value

        # First deployment: pulls the image. Then none, then the timed one with the image present.
        configurations.apply_configuration_on_edge_device(DEVICE, ConfigurationContent(modules_content=manifest))
        suite.wait_until(lambda: acked(122), timeout=120, message="the first deployment acknowledged")
        empty = copy.deepcopy(manifest)
        empty["$edgeAgent"]["properties.desired"]["modules"] = {}
        configurations.apply_configuration_on_edge_device(DEVICE, ConfigurationContent(modules_content=empty))
        suite.wait_until(lambda: "edgetwin" not in conftest.containers(), timeout=60, message="the module removed")
        timed = copy.deepcopy(manifest)
        timed["edgetwin"]["properties.desired"]["telemetryInterval"] = 123
        started = time.monotonic()
        configurations.apply_configuration_on_edge_device(DEVICE, ConfigurationContent(modules_content=timed))
        suite.wait_until(lambda: acked(123), timeout=120, interval=0.02, message="the timed deployment acknowledged")
        applied_to_ack = time.monotonic() - started

        time.sleep(STEADY_SECS)
        module_pid = conftest.containers()["edgetwin"]["State"]["Pid"]
        result = {
            "deployment_applied_to_module_ack_s": round(applied_to_ack, 3),
            "runtime_rss_mib": round(rss_kib(runtime.proc.pid) / 1024, 1),
            "module_rss_mib": round(rss_kib(module_pid) / 1024, 1),
            "steady_after_s": STEADY_SECS,
        }
        print(json.dumps(result, indent=2))
    finally:
        if runtime:
            runtime.stop()
        conftest.remove_all_containers()
        hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
