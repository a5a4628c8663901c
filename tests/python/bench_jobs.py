"""A twin update over a fleet: one scheduled job (IoTHubJobManager.create_scheduled_job, then
get_scheduled_job until it is over) against what a back end does without jobs, one
IoTHubRegistryManager.update_twin per device, one after the other.

Not a test (pytest does not collect it: the name does not start with test_). Run against any hub:

    IOTHUB_CONNECTION_STRING='HostName=localhost:8443;SharedAccessKeyName=iothubowner;...' \\
    REQUESTS_CA_BUNDLE=.edgetwin/hub/certs/ca.pem \\
    .venv/bin/python tests/python/bench_jobs.py --count 1000

It provisions `--count` devices in bulk (100 a request) tagged with a fresh fleet id, runs both
ways over them (each sets a different desired value), checks every twin got it, deletes the
devices and prints one JSON line: {"devices", "job_seconds", "update_twin_seconds"}.
"""

import argparse
import datetime
import json
import os
import time
import uuid

from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import ExportImportDevice, JobRequest, Twin, TwinProperties

BULK = 100


def bulk(registry, devices, mode):
    for start in range(0, len(devices), BULK):
        items = [ExportImportDevice(id=d, import_mode=mode, status="enabled")
                 for d in devices[start:start + BULK]]
        registry.bulk_create_or_update_devices(items)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    connection_string = os.environ["IOTHUB_CONNECTION_STRING"]
    registry = IoTHubRegistryManager.from_connection_string(connection_string)
    jobs = IoTHubJobManager.from_connection_string(connection_string)
    fleet = uuid.uuid4().hex[:8]
    devices = [f"bench-{fleet}-{i:05}" for i in range(args.count)]
    bulk(registry, devices, "create")
    try:
        # the fleet id is in the device ids: a query condition over them selects the fleet
        condition = f"STARTSWITH(deviceId, 'bench-{fleet}-')"
        request = JobRequest(job_id=f"bench-{fleet}", type="scheduleUpdateTwin",
                             query_condition=condition,
                             start_time=datetime.datetime.utcnow().isoformat(),
                             update_twin=Twin(etag="*", properties=TwinProperties(desired={"via": "job"})))
        started = time.perf_counter()
        jobs.create_scheduled_job(request.job_id, request)
        while jobs.get_scheduled_job(request.job_id).status not in ("completed", "failed", "cancelled"):
            time.sleep(0.05)
        job_seconds = time.perf_counter() - started
        stats = jobs.get_scheduled_job(request.job_id).device_job_statistics
        assert stats.succeeded_count == args.count, stats

        started = time.perf_counter()
        for device_id in devices:
            registry.update_twin(device_id, Twin(properties=TwinProperties(desired={"via": "loop"})), "*")
        loop_seconds = time.perf_counter() - started
        assert registry.get_twin(devices[-1]).properties.desired["via"] == "loop"
    finally:
        bulk(registry, devices, "delete")
    print(json.dumps({"devices": args.count, "job_seconds": round(job_seconds, 2),
                      "update_twin_seconds": round(loop_seconds, 2)}))


if __name__ == "__main__":
    main()
