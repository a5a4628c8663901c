"""Provision a fleet of IoT Edge devices, each with a module identity, with Microsoft's Python
service SDK (azure-iot-hub 2.7, IoTHubRegistryManager): the baseline `benches/provision.rs`
compares `edgetwin provision --count N --module M --rate 0` with.

Not a test (pytest does not collect it: the name does not start with test_). Run against any hub:

    IOTHUB_CONNECTION_STRING='HostName=localhost:8443;SharedAccessKeyName=iothubowner;...' \\
    REQUESTS_CA_BUNDLE=.edgetwin/hub/certs/ca.pem \\
    .venv/bin/python tests/python/bench_provision.py --mode straightforward --count 1000

Modes:
  straightforward  create_device_with_sas(iot_edge=True) then create_module_with_sas, one device
                   after the other (2 requests per device), as the SDK samples do.
  bulk             bulk_create_or_update_devices with ExportImportDevice items, 100 per request:
                   100 devices in one request, then their 100 modules in the next (as edgetwin
                   does: IoT Hub adds a module in bulk only to a device registered before the
                   request; a device and its module in one request fail with DeviceNotFound).

Keys are generated client-side (32 random bytes, base64) in both modes, as edgetwin does, so the
connection strings are known without reading identities back. Prints one JSON line:
{"mode", "devices", "modules", "requests", "seconds"} where seconds covers the provisioning
only (after imports and client construction).
"""

import argparse
import base64
import json
import os
import sys
import time

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import (
    AuthenticationMechanism,
    DeviceCapabilities,
    ExportImportDevice,
    SymmetricKey,
)

MAX_BULK_ITEMS = 100


def new_key():
    return base64.b64encode(os.urandom(32)).decode()


def sas():
    return AuthenticationMechanism(
        type="sas", symmetric_key=SymmetricKey(primary_key=new_key(), secondary_key=new_key())
    )


def straightforward(manager, ids, module_id):
    requests = 0
    for device_id in ids:
        manager.create_device_with_sas(device_id, new_key(), new_key(), "enabled", iot_edge=True)
        requests += 1
        if module_id:
            manager.create_module_with_sas(device_id, module_id, None, new_key(), new_key())
            requests += 1
    return requests


def bulk(manager, ids, module_id):
    requests = 0

    def send(items):
        nonlocal requests
        result = manager.bulk_create_or_update_devices(items)
        requests += 1
        if not result.is_successful:
            errors = [(e.device_id, e.module_id, e.error_code) for e in result.errors[:5]]
            raise SystemExit(f"bulk request {requests} failed: {errors}")

    for start in range(0, len(ids), MAX_BULK_ITEMS):
        chunk = ids[start:start + MAX_BULK_ITEMS]
        send([
            ExportImportDevice(
                id=device_id,
                import_mode="create",
                status="enabled",
                authentication=sas(),
                capabilities=DeviceCapabilities(iot_edge=True),
            )
            for device_id in chunk
        ])
        if module_id:
            send([
                ExportImportDevice(
                    id=device_id, module_id=module_id, import_mode="create", authentication=sas())
                for device_id in chunk
            ])
    return requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["straightforward", "bulk"], required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--prefix", default="bench-")
    parser.add_argument("--module", default="edgetwin", help="module id ('' for none)")
    args = parser.parse_args()
    connection_string = os.environ.get("IOTHUB_CONNECTION_STRING")
    if not connection_string:
        sys.exit("set IOTHUB_CONNECTION_STRING (and REQUESTS_CA_BUNDLE for a local hub)")
    manager = IoTHubRegistryManager.from_connection_string(connection_string)
    ids = [f"{args.prefix}{i}" for i in range(1, args.count + 1)]
    run = straightforward if args.mode == "straightforward" else bulk
    started = time.perf_counter()
    requests = run(manager, ids, args.module or None)
    seconds = time.perf_counter() - started
    # Spot check, outside the timing: the last device's module exists.
    if args.module:
        manager.get_module(ids[-1], args.module)
    print(json.dumps({
        "mode": args.mode,
        "devices": len(ids),
        "modules": len(ids) if args.module else 0,
        "requests": requests,
        "seconds": round(seconds, 3),
    }))


if __name__ == "__main__":
    main()
