"""Shared fixtures for the edgetwin hub conformance suite.

One hub process serves the whole session: the Python device SDK can only dial
port 8883, so every test talks to the same hub and tests run sequentially.
Microsoft's SDKs (azure-iot-device, azure-iot-hub) are the judges; the helpers
here only start the hub, create identities and build SAS tokens.
"""

import base64
import hashlib
import hmac
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest
import requests

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "edgetwin"
API_VERSION = "2021-04-12"
MQTT_PORT = 8883
# IoT Hub's HTTPS port: the REST API and MQTT over WebSockets, implicit in connection strings
HTTPS_PORT = 443
# IoT Hub's AMQP port: the Event Hub-compatible endpoint, which the Event Hubs SDKs dial
AMQP_PORT = 5671
START_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# small generic helpers


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Poll `predicate` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling, report the last error
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def unique_id(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def parse_connection_string(cs):
    out = {}
    for part in cs.split(";"):
        if part:
            k, _, v = part.partition("=")
            out[k] = v
    return out


def sas_token(resource_encoded, key_b64, expiry, policy=None):
    """Build a SAS token. `resource_encoded` is the already-encoded `sr` text."""
    to_sign = f"{resource_encoded}\n{expiry}".encode("utf-8")
    sig = base64.b64encode(
        hmac.new(base64.b64decode(key_b64), to_sign, hashlib.sha256).digest()
    ).decode("ascii")
    token = (
        f"SharedAccessSignature sr={resource_encoded}"
        f"&sig={urllib.parse.quote(sig, safe='')}&se={expiry}"
    )
    if policy:
        token += f"&skn={policy}"
    return token


def device_sas(host, device_id, key, module_id=None, ttl=3600, expiry=None):
    """Device/module SAS per protocol spec §2.3 (sr = quote(uri, safe=''))."""
    uri = f"{host}/devices/{device_id}"
    if module_id:
        uri += f"/modules/{module_id}"
    se = expiry if expiry is not None else int(time.time()) + ttl
    return sas_token(urllib.parse.quote(uri, safe=""), key, se)


def run_with_timeout(fn, timeout=10.0):
    """Run fn in a daemon thread; give up waiting after timeout (used for cleanup)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive()


# ---------------------------------------------------------------------------
# the hub process


class Hub:
    def __init__(self, binary, data_dir, log_path, extra_args=(), address="127.0.0.1"):
        self.binary = str(binary)
        self.extra_args = list(extra_args)
        # another loopback address serves a second hub on the same ports, named by that address
        self.address = address
        self.data_dir = pathlib.Path(data_dir)
        self.log_path = pathlib.Path(log_path)
        self.proc = None
        self.info = None

    # -- lifecycle ----------------------------------------------------------
    def start(self):
        hub_json = self.data_dir / "hub.json"
        if hub_json.exists():
            hub_json.unlink()
        cmd = [
            self.binary, "hub",
            "--data-dir", str(self.data_dir),
            "--host-name", "localhost" if self.address == "127.0.0.1" else self.address,
            "--bind", self.address,
            "--mqtt-port", str(MQTT_PORT),
            # as IoT Hub: REST and MQTT over WebSockets on 443, which the SDKs dial and which
            # connection strings leave implicit (needs root or CAP_NET_BIND_SERVICE)
            "--https-port", str(HTTPS_PORT),
        ] + self.extra_args
        log = open(self.log_path, "ab")
        log.write(f"\n===== starting: {' '.join(cmd)} at {time.ctime()} =====\n".encode())
        log.flush()
        env = dict(os.environ, NO_COLOR="1")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"hub exited with code {self.proc.returncode} before writing hub.json\n"
                    + self.log_tail()
                )
            if hub_json.exists():
                try:
                    self.info = json.loads(hub_json.read_text())
                    break
                except ValueError:
                    pass  # partially written; poll again
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("hub did not write hub.json in time\n" + self.log_tail())
            time.sleep(0.05)
        assert self.info["httpsPort"] == HTTPS_PORT
        # hub.json means ready; still make sure the listeners accept TCP.
        for port in (MQTT_PORT, HTTPS_PORT, AMQP_PORT):
            wait_until(lambda p=port: _tcp_open(self.address, p), timeout=10,
                       message=f"port {port} to accept connections")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self):
        """SIGKILL: no chance to flush anything that was not already durable."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, kill=True):
        """SIGKILL (or SIGTERM) and restart on the same data dir and ports."""
        old = self.info
        if kill:
            self.kill()
        else:
            self.stop()
        # the ports must be free again before the new process binds them.
        for port in (MQTT_PORT, HTTPS_PORT, AMQP_PORT):
            wait_until(lambda p=port: not _tcp_open(self.address, p), timeout=10,
                       message=f"old hub's port {port} to close")
        self.start()
        assert self.info["serviceConnectionString"] == old["serviceConnectionString"], \
            "restart must keep the keys and the connection string"
        return self

    def log_tail(self, n=60):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no hub log)"
        text = "\n".join(lines[-n:])
        return "----- hub log (tail) -----\n" + re.sub(r"\x1b\[[0-9;]*m", "", text)

    # -- facts from hub.json ------------------------------------------------
    @property
    def host(self):  # host name devices use (no port)
        return self.info["hostName"]

    @property
    def ca_path(self):
        return self.info["caCertificate"]

    @property
    def ca_pem(self):
        return pathlib.Path(self.ca_path).read_text()

    @property
    def rest_url(self):
        return self.info["restUrl"].rstrip("/")

    @property
    def service_connection_string(self):
        return self.info["serviceConnectionString"]

    @property
    def service_host(self):  # HostName of the service connection string (no port on 443)
        return parse_connection_string(self.service_connection_string)["HostName"]

    def policy_connection_string(self, policy):
        key = self.info["policies"][policy]
        return f"HostName={self.service_host};SharedAccessKeyName={policy};SharedAccessKey={key}"

    def service_token(self, policy="iothubowner", ttl=3600):
        key = self.info["policies"][policy]
        sr = urllib.parse.quote_plus(self.service_host)
        return sas_token(sr, key, int(time.time()) + ttl, policy)

    # -- the hub's own /edgetwin endpoints ------------------------------------
    def edgetwin_get(self, path, params=None, policy="iothubowner", token=None):
        q = {"api-version": API_VERSION}
        q.update(params or {})
        return requests.get(
            f"{self.rest_url}/edgetwin/{path.lstrip('/')}",
            params=q,
            headers={"Authorization": token if token is not None else self.service_token(policy)},
            verify=self.ca_path,
            timeout=10,
        )

    def messages(self, device_id, module_id=None):
        params = {"deviceId": device_id}
        if module_id is not None:
            params["moduleId"] = module_id
        r = self.edgetwin_get("messages", params)
        assert r.status_code == 200, f"/edgetwin/messages -> {r.status_code} {r.text}"
        return r.json()

    def edge_environment(self, device_id, module_id):
        mid = urllib.parse.quote(module_id, safe="")
        did = urllib.parse.quote(device_id, safe="")
        return self.edgetwin_get(f"devices/{did}/modules/{mid}/edgeEnvironment")


def _tcp_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# pytest wiring

_CURRENT_HUB = None


def pytest_configure(config):
    # azure-iot-device 2.14 builds SSLContext(PROTOCOL_TLSv1_2) on purpose (TLS 1.2 only).
    config.addinivalue_line("filterwarnings", "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


@pytest.fixture(scope="session")
def hub():
    global _CURRENT_HUB
    binary = os.environ.get("EDGETWIN_BIN", str(DEFAULT_BIN))
    if not os.path.exists(binary):
        pytest.fail(f"edgetwin binary not found: {binary} (set EDGETWIN_BIN)")
    if _tcp_open("127.0.0.1", MQTT_PORT):
        pytest.fail("port 8883 is already in use; another hub is running")
    tmp = tempfile.mkdtemp(prefix="edgetwin-pytest-")
    data_dir = os.path.join(tmp, "data")
    os.makedirs(data_dir)
    h = Hub(binary, data_dir, os.path.join(tmp, "hub.log"))
    _CURRENT_HUB = h
    try:
        h.start()
    except RuntimeError as exc:
        h.stop()
        pytest.fail(str(exc))
    # The registry manager (requests) trusts the hub through REQUESTS_CA_BUNDLE.
    old_bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = h.ca_path
    yield h
    h.stop()
    if old_bundle is None:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = old_bundle
    if os.environ.get("EDGETWIN_KEEP_TMP") is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"hub data kept in {tmp}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _CURRENT_HUB is not None:
        rep.sections.append(("edgetwin hub log", _CURRENT_HUB.log_tail()))


def make_registry_manager(connection_string):
    from azure.iot.hub import IoTHubRegistryManager

    return IoTHubRegistryManager.from_connection_string(connection_string)


@pytest.fixture
def c2d_sender(hub, monkeypatch):
    """An `IoTHubRegistryManager` for `send_c2d_message`, whose AMQP client (uamqp, OpenSSL)
    trusts the hub through `SSL_CERT_FILE`, as a user (and the Azure CLI) sets it."""
    monkeypatch.setenv("SSL_CERT_FILE", hub.ca_path)
    return make_registry_manager(hub.service_connection_string)


# IoT Hub's limit of cloud-to-device messages pending per device.
C2D_QUEUE_LIMIT = 50


def fill_c2d_queue(sender, device_id):
    """Sends `device_id` as many messages as IoT Hub keeps pending for one device: `m0`, `m1`, ..."""
    for n in range(C2D_QUEUE_LIMIT):
        sender.send_c2d_message(device_id, f"m{n}")


@pytest.fixture(scope="session")
def registry_manager(hub):
    return make_registry_manager(hub.service_connection_string)


@pytest.fixture
def fresh_registry_manager(hub):
    """A registry manager built now (new HTTP session, new SAS)."""
    return make_registry_manager(hub.service_connection_string)


def http_status(exc):
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


# ---------------------------------------------------------------------------
# identities


class Identity:
    def __init__(self, hub, device_id, module_id, primary_key, secondary_key, generation_id=None):
        self.hub = hub
        self.device_id = device_id
        self.module_id = module_id
        self.primary_key = primary_key
        self.secondary_key = secondary_key
        self.generation_id = generation_id

    @property
    def connection_string(self):
        cs = f"HostName={self.hub.host};DeviceId={self.device_id}"
        if self.module_id:
            cs += f";ModuleId={self.module_id}"
        return cs + f";SharedAccessKey={self.primary_key}"

    def sas(self, **kw):
        return device_sas(self.hub.host, self.device_id, self.primary_key, self.module_id, **kw)


@pytest.fixture
def make_device(hub, registry_manager):
    created = []

    def _make(edge=False, prefix="dev", status="enabled"):
        device_id = unique_id(prefix)
        dev = registry_manager.create_device_with_sas(device_id, None, None, status, iot_edge=edge)
        created.append(device_id)
        sk = dev.authentication.symmetric_key
        return Identity(hub, device_id, None, sk.primary_key, sk.secondary_key, dev.generation_id)

    yield _make
    delete_devices(registry_manager, created)


def delete_devices(registry_manager, device_ids):
    """Deletes the devices a test made; one already gone is no error."""
    for device_id in device_ids:
        try:
            registry_manager.delete_device(device_id)
        except Exception:
            pass


@pytest.fixture
def make_module(hub, registry_manager, make_device):
    def _make(edge=True, device=None, prefix="mod"):
        if device is None:
            device = make_device(edge=edge, prefix="edge" if edge else "dev")
        module_id = unique_id(prefix)
        mod = registry_manager.create_module_with_sas(device.device_id, module_id, None, None, None)
        sk = mod.authentication.symmetric_key
        return Identity(hub, device.device_id, module_id, sk.primary_key, sk.secondary_key,
                        mod.generation_id)

    return _make


@pytest.fixture
def clients(hub):
    """Factory for SDK clients that are shut down after the test."""
    made = []

    class Factory:
        def module(self, identity, **kw):
            from azure.iot.device import IoTHubModuleClient

            kw.setdefault("server_verification_cert", hub.ca_pem)
            c = IoTHubModuleClient.create_from_connection_string(identity.connection_string, **kw)
            made.append(c)
            return c

        def device(self, identity, **kw):
            from azure.iot.device import IoTHubDeviceClient

            kw.setdefault("server_verification_cert", hub.ca_pem)
            c = IoTHubDeviceClient.create_from_connection_string(identity.connection_string, **kw)
            made.append(c)
            return c

        def track(self, c):
            made.append(c)
            return c

    yield Factory()
    for c in made:
        run_with_timeout(lambda c=c: _quiet_shutdown(c), timeout=10)


def _quiet_shutdown(client):
    try:
        client.shutdown()
    except Exception:
        pass  # already disconnected / refused clients may complain


# ---------------------------------------------------------------------------
# a raw MQTT client (paho 1.6.1) for things the SDK will not send


class RawMqtt:
    def __init__(self, hub, identity, password=None, client_id=None, username=None,
                 clean_session=False, client_cert=None):
        import paho.mqtt.client as mqtt

        self.hub = hub
        self.identity = identity
        cid = client_id or (
            f"{identity.device_id}/{identity.module_id}" if identity.module_id else identity.device_id
        )
        self.client = mqtt.Client(client_id=cid, clean_session=clean_session, protocol=mqtt.MQTTv311)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # like the SDK: TLS 1.2, verify CA + host
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=hub.ca_path)
        if client_cert is not None:  # (certificate file, key file), for X.509
            ctx.load_cert_chain(*client_cert)
        self.client.tls_set_context(ctx)
        if username is None:
            path = f"{identity.device_id}/{identity.module_id}" if identity.module_id else identity.device_id
            username = f"{hub.host}/{path}/?api-version={API_VERSION}"
        self.client.username_pw_set(username, password if password is not None else identity.sas())
        self.connack = queue.Queue()
        self.disconnects = queue.Queue()
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.pubacks = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc: self.connack.put(rc)
        self.client.on_disconnect = lambda c, u, rc: self.disconnects.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.on_subscribe = lambda c, u, mid, granted: self.subacks.put((mid, granted))
        self.client.on_publish = lambda c, u, mid: self.pubacks.put(mid)

    def connect(self, timeout=10):
        """Return the CONNACK return code (or None if the hub closed without CONNACK)."""
        self.client.connect_async("localhost", MQTT_PORT, keepalive=60)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.connack.get(timeout=0.1)
            except queue.Empty:
                if not self.disconnects.empty():
                    return None
        raise AssertionError("no CONNACK and no disconnect within timeout")

    def subscribe(self, topic, qos=1, timeout=10):
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == 0
        got_mid, granted = self.subacks.get(timeout=timeout)
        return granted

    def publish(self, topic, payload, qos=1):
        return self.client.publish(topic, payload, qos=qos)

    def wait_message(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("expected MQTT message did not arrive")
            try:
                topic, payload = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(topic, payload):
                return topic, payload

    def wait_disconnect(self, timeout=10):
        return self.disconnects.get(timeout=timeout)

    def close(self):
        try:
            self.client.disconnect()
        except Exception:
            pass
        run_with_timeout(self.client.loop_stop, timeout=5)


@pytest.fixture
def raw_mqtt(hub):
    made = []

    def _make(identity, **kw):
        c = RawMqtt(hub, identity, **kw)
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()


def tls_socket(hub, timeout=5.0):
    """A TLS connection to the MQTT port, verified against the hub CA."""
    ctx = ssl.create_default_context(cafile=hub.ca_path)
    raw = socket.create_connection(("127.0.0.1", MQTT_PORT), timeout=timeout)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.settimeout(timeout)
    return s


def read_until_closed(sock, timeout=5.0):
    """Read until EOF. Returns (closed, data); closed=False means the hub kept it open."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data
