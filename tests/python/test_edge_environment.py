"""Edge modules: the edgeEnvironment endpoint, the workload API socket, and
IoTHubModuleClient.create_from_edge_environment() run in a separate process."""

import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.parse

from conftest import sas_token

EDGE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from azure.iot.device import IoTHubModuleClient
    client = IoTHubModuleClient.create_from_edge_environment(connection_retry=False)
    try:
        client.connect()
        twin = client.get_twin()
        client.patch_twin_reported_properties({"fromEdgeEnv": {"ok": True, "pid": %d}})
        after = client.get_twin()
        print(json.dumps({"twin": twin, "after": after}))
    finally:
        client.shutdown()
    """
)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def workload(sock_path, method, path, body=None, headers=None):
    conn = UnixHTTPConnection(sock_path)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def expected_env(hub, mod):
    name = hashlib.sha256(mod.device_id.encode()).hexdigest()[:32]
    sock = os.path.join(hub.info["workloadDir"], f"{name}.sock")
    return {
        "IOTEDGE_IOTHUBHOSTNAME": "localhost",
        "IOTEDGE_DEVICEID": mod.device_id,
        "IOTEDGE_MODULEID": mod.module_id,
        "IOTEDGE_GATEWAYHOSTNAME": "localhost",
        "IOTEDGE_MODULEGENERATIONID": mod.generation_id,
        "IOTEDGE_WORKLOADURI": f"unix://{sock}",
        "IOTEDGE_APIVERSION": "2022-08-03",
        "IOTEDGE_AUTHSCHEME": "sasToken",
    }


def test_edge_environment_endpoint_returns_the_module_environment(hub, registry_manager, make_module):
    mod = make_module(edge=True)
    generation = registry_manager.get_module(mod.device_id, mod.module_id).generation_id
    assert generation
    r = hub.edge_environment(mod.device_id, mod.module_id)
    assert r.status_code == 200, r.text
    env = r.json()
    want = expected_env(hub, mod)
    want["IOTEDGE_MODULEGENERATIONID"] = generation
    for k, v in want.items():
        assert env.get(k) == v, f"{k}: {env.get(k)!r} != {v!r}"
    assert os.path.isabs(env["IOTEDGE_WORKLOADURI"][len("unix://"):])


def test_edge_environment_endpoint_requires_a_valid_service_token(hub, make_module):
    mod = make_module(edge=True)
    did, mid = mod.device_id, urllib.parse.quote(mod.module_id, safe="")
    r = hub.edgetwin_get(f"devices/{did}/modules/{mid}/edgeEnvironment", token="")
    assert r.status_code == 401
    wrong_key = base64.b64encode(b"\x01" * 32).decode()
    bad = sas_token(urllib.parse.quote_plus(hub.service_host), wrong_key, 4102444800, "iothubowner")
    r = hub.edgetwin_get(f"devices/{did}/modules/{mid}/edgeEnvironment", token=bad)
    assert r.status_code == 401


def test_edge_environment_of_unknown_module_is_404(hub, make_device):
    dev = make_device(edge=True)
    r = hub.edge_environment(dev.device_id, "nosuchmodule")
    assert r.status_code == 404, r.text


def test_workload_socket_serves_trust_bundle_and_signs_with_the_module_key(hub, make_module):
    mod = make_module(edge=True)
    env = hub.edge_environment(mod.device_id, mod.module_id).json()
    sock = env["IOTEDGE_WORKLOADURI"][len("unix://"):]
    api = env["IOTEDGE_APIVERSION"]

    status, body = workload(sock, "GET", f"/trust-bundle?api-version={api}")
    assert status == 200, body
    bundle = json.loads(body)["certificate"]
    assert "BEGIN CERTIFICATE" in bundle
    ca_body = hub.ca_pem.strip().splitlines()
    assert all(line in bundle for line in ca_body if line and "CERTIFICATE" not in line), \
        "trust bundle must contain the hub CA"

    data = b"localhost%2Fdevices%2Fx\n12345"
    req = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(data).decode()})
    # the Python SDK sends no Content-Type header
    mid = urllib.parse.quote(mod.module_id, safe="")
    gen = env["IOTEDGE_MODULEGENERATIONID"]
    status, body = workload(sock, "POST", f"/modules/{mid}/genid/{gen}/sign?api-version={api}", body=req)
    assert status == 200, body
    digest = json.loads(body)["digest"]
    want = base64.b64encode(
        hmac.new(base64.b64decode(mod.primary_key), data, hashlib.sha256).digest()).decode()
    assert digest == want


def test_workload_socket_rejects_requests_without_api_version(hub, make_module):
    mod = make_module(edge=True)
    env = hub.edge_environment(mod.device_id, mod.module_id).json()
    sock = env["IOTEDGE_WORKLOADURI"][len("unix://"):]
    status, _ = workload(sock, "GET", "/trust-bundle")
    assert status == 400


def test_module_created_from_edge_environment_connects_and_reports(hub, registry_manager, make_module):
    mod = make_module(edge=True)
    r = hub.edge_environment(mod.device_id, mod.module_id)
    assert r.status_code == 200, r.text
    edge_env = r.json()

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IOTEDGE_") and k not in ("EdgeHubConnectionString", "EdgeModuleCACertificateFile")}
    env.pop("REQUESTS_CA_BUNDLE", None)  # trust must come from the workload trust bundle
    env.update(edge_env)
    proc = subprocess.run(
        [sys.executable, "-c", EDGE_SCRIPT % os.getpid()],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(out["twin"]["desired"]["$version"], int)
    assert out["after"]["reported"]["fromEdgeEnv"] == {"ok": True, "pid": os.getpid()}

    rest = registry_manager.get_module_twin(mod.device_id, mod.module_id)
    assert rest.properties.reported["fromEdgeEnv"] == {"ok": True, "pid": os.getpid()}

