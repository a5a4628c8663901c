"""The edgetwin module's job done with Microsoft's Python module client (azure-iot-device,
sync IoTHubModuleClient): the baseline `benches/module.rs` runs side by side with
`edgetwin-module` against the same local hub.

Not a test (pytest does not collect it: the name does not start with test_). The bench starts it
as a process; by hand:

    EDGETWIN_CONNECTION_STRING='HostName=localhost;DeviceId=gw;ModuleId=py;SharedAccessKey=...' \\
    EDGETWIN_CA_FILE=.edgetwin/hub/certs/ca.pem .venv/bin/python tests/python/bench_module.py

The SDK dials port 8883 only. The job, as edgetwin-module does it:
- connect with the module connection string, report the start-up state (version, startTime,
  identitySource, health);
- get the twin and acknowledge the writable properties in it; acknowledge every desired patch
  with IoT Plug and Play's {value, ac, av, ad} for each writable property it touches;
- every `telemetryInterval` seconds (default 1) read load, memory and uptime from /proc, send
  them to output `telemetry` and report `lastTelemetryTime`.

Prints one JSON line to stdout when the first reported patch is acknowledged:
{"event": "firstAck", "time": <unix seconds, float>}. Runs until SIGTERM/SIGINT.
"""

import datetime
import json
import os
import signal
import threading

from azure.iot.device import IoTHubModuleClient, Message

WRITABLE = ("telemetryInterval", "metrics", "thresholds")
stop = threading.Event()
interval = [1.0]


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def sample():
    with open("/proc/loadavg") as f:
        load = [float(x) for x in f.read().split()[:3]]
    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, rest = line.split(":", 1)
            meminfo[name] = int(rest.split()[0])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    total, avail = meminfo["MemTotal"], meminfo["MemAvailable"]
    st = os.statvfs("/")
    return {
        "timestamp": now_iso(),
        "load": {"1m": load[0], "5m": load[1], "15m": load[2]},
        "memory": {"totalKiB": total, "availableKiB": avail,
                   "usedPercent": round(100.0 * (total - avail) / total, 2)},
        "disk": {"totalBytes": st.f_blocks * st.f_frsize, "availableBytes": st.f_bavail * st.f_frsize},
        "uptime": uptime,
    }


def acks(desired, patch, version):
    out = {}
    for name in WRITABLE:
        if name in patch:
            value = desired.get(name)
            if name == "telemetryInterval":
                if isinstance(value, int) and 1 <= value <= 86400:
                    interval[0] = float(value)
                else:
                    out[name] = {"value": int(interval[0]), "ac": 400, "av": version,
                                 "ad": "telemetryInterval must be an integer in 1..=86400"}
                    continue
            out[name] = {"value": value, "ac": 200, "av": version, "ad": "applied"}
    return out


def main():
    client = IoTHubModuleClient.create_from_connection_string(
        os.environ["EDGETWIN_CONNECTION_STRING"],
        server_verification_cert=open(os.environ["EDGETWIN_CA_FILE"]).read(),
    )
    desired = {}
    lock = threading.Lock()

    def on_patch(patch):
        with lock:
            version = patch.get("$version")
            for k, v in patch.items():
                if not k.startswith("$"):
                    if v is None:
                        desired.pop(k, None)
                    else:
                        desired[k] = v
            reported = acks(desired, patch, version)
        if reported:
            client.patch_twin_reported_properties(reported)

    client.on_twin_desired_properties_patch_received = on_patch
    client.connect()
    client.patch_twin_reported_properties({
        "version": "bench", "startTime": now_iso(), "identitySource": "connectionString",
        "health": {"status": "ok", "crossed": []},
    })
    print(json.dumps({"event": "firstAck", "time": datetime.datetime.now().timestamp()}), flush=True)
    twin = client.get_twin()
    with lock:
        full = twin.get("desired", {})
        desired.update({k: v for k, v in full.items() if not k.startswith("$")})
        reported = acks(desired, desired, full.get("$version"))
    if reported:
        client.patch_twin_reported_properties(reported)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(interval[0]):
        body = sample()
        msg = Message(json.dumps(body), content_encoding="utf-8", content_type="application/json")
        client.send_message_to_output(msg, "telemetry")
        client.patch_twin_reported_properties({"lastTelemetryTime": body["timestamp"]})
    client.shutdown()


if __name__ == "__main__":
    main()
