"""Fixtures for the IoT Edge runtime suite (scripts/edge-check runs it).

Real parts only: a hub started as a plain IoT Hub (`--no-workload-api`), a container engine
(Podman's Docker-compatible service, started by scripts/edge-check, socket in
EDGETWIN_ENGINE_SOCKET), a registry holding the module image the image check built
(EDGETWIN_EDGE_IMAGE), and `edgetwin edge run` as a process. azure-iot-hub, unchanged, is the
judge of what the runtime reports.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

# The Python suite's hub and helpers, loaded under their own name (this file is `conftest` too).
_SPEC = importlib.util.spec_from_file_location(
    "edgetwin_hub_suite", pathlib.Path(__file__).resolve().parents[1] / "python" / "conftest.py")
suite = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(suite)


def engine(method, path, body=None, timeout=60):
    """One Docker Engine API call on the engine's unix socket: (status, JSON or text)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(os.environ["EDGETWIN_ENGINE_SOCKET"])
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} /v1.41{path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data)
    raw = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    sock.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split()[1])
    if b"transfer-encoding: chunked" in header.lower():
        decoded, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2:]
        payload = decoded
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


def containers():
    """The engine's containers by name (all states)."""
    _, listed = engine("GET", "/containers/json?all=true")
    out = {}
    for c in listed:
        _, inspect = engine("GET", f"/containers/{c['Id']}/json")
        out[inspect["Name"].lstrip("/")] = inspect
    return out


def remove_all_containers():
    for name, inspect in containers().items():
        engine("DELETE", f"/containers/{inspect['Id']}?force=true")


class Runtime:
    """`edgetwin edge run` as a process, on the config.toml `edgetwin provision --edge-config`
    wrote, with the engine's socket and the host network given as flags."""

    def __init__(self, binary, workdir, config):
        self.binary = binary
        self.workdir = pathlib.Path(workdir)
        self.config = pathlib.Path(config)
        self.data_dir = self.workdir / "edge-data"
        self.log_path = self.workdir / "edge.log"
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        env = dict(os.environ, RUST_LOG="info,edgetwin_edge=debug")
        self.proc = subprocess.Popen(
            [self.binary, *(["run"] if os.path.basename(self.binary) == "edgetwin-edge" else ["edge", "run"]),
             "--config", str(self.config), "--data-dir", str(self.data_dir),
             "--moby-uri", f"unix://{os.environ['EDGETWIN_ENGINE_SOCKET']}", "--network", "host",
             "--reconcile-secs", "1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n=60):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no runtime log)"


def provision_edge_device(binary, hub, device_id, workdir, extra=()):
    """`edgetwin provision --device … --edge-config …`: the device and its config.toml."""
    config = os.path.join(workdir, "config.toml")
    subprocess.run(
        [binary, "provision", "--connection-string", hub.service_connection_string, "--ca-file", hub.ca_path,
         "--device", device_id, "--edge-config", config, *extra], check=True, capture_output=True)
    return config


_STATE = {}


@pytest.fixture(scope="session")
def edge_env():
    for name in ("EDGETWIN_ENGINE_SOCKET", "EDGETWIN_EDGE_IMAGE"):
        if not os.environ.get(name):
            pytest.fail(f"{name} is not set: run this suite through scripts/edge-check")
    binary = os.environ.get("EDGETWIN_BIN", str(suite.DEFAULT_BIN))
    if suite._tcp_open("127.0.0.1", suite.MQTT_PORT):
        pytest.fail("port 8883 is already in use; another hub is running")
    tmp = tempfile.mkdtemp(prefix="edgetwin-edge-")
    data_dir = os.path.join(tmp, "hub")
    os.makedirs(data_dir)
    hub = suite.Hub(binary, data_dir, os.path.join(tmp, "hub.log"), extra_args=["--no-workload-api"])
    _STATE["hub"] = hub
    hub.start()
    os.environ["REQUESTS_CA_BUNDLE"] = hub.ca_path
    remove_all_containers()
    yield {"binary": binary, "tmp": tmp, "hub": hub,
           "registry_manager": suite.make_registry_manager(hub.service_connection_string)}
    runtime = _STATE.get("runtime")
    if runtime:
        runtime.stop()
    remove_all_containers()
    hub.stop()
    if os.environ.get("EDGETWIN_KEEP_TMP") is None:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        if _STATE.get("runtime"):
            rep.sections.append(("edgetwin edge log", _STATE["runtime"].log_tail()))
        if _STATE.get("hub"):
            rep.sections.append(("edgetwin hub log", _STATE["hub"].log_tail(30)))
