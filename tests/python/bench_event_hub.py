"""Telemetry throughput through the hub: MQTT in (paho, QoS 1, several devices publishing as fast
as the hub acknowledges), the Event Hub-compatible endpoint out (azure-eventhub, all partitions).
Prints one JSON line: messages, seconds, messages/s in and out, latency from publish to receipt
(p50, p99), the hub's RSS at the end.

Not a test (pytest does not collect it). Starts its own hub (8883, 443, 5671: run it in a network
namespace of its own):

    unshare -n sh -c 'ip link set lo up; EDGETWIN_BIN=target/release/edgetwin \\
        .venv/bin/python tests/python/bench_event_hub.py --messages 20000 --devices 8'
"""

import argparse
import json
import os
import pathlib
import ssl
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import paho.mqtt.client as mqtt  # noqa: E402
from azure.eventhub import EventHubConsumerClient  # noqa: E402
from azure.iot.hub import IoTHubRegistryManager  # noqa: E402

from conftest import API_VERSION, DEFAULT_BIN, Hub, device_sas  # noqa: E402


def publisher(hub, device_id, key, count, sent):
    client = mqtt.Client(client_id=device_id, clean_session=True, protocol=mqtt.MQTTv311)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=hub.ca_path)
    client.tls_set_context(context)
    client.username_pw_set(f"{hub.host}/{device_id}/?api-version={API_VERSION}",
                           device_sas(hub.host, device_id, key))
    client.max_inflight_messages_set(100)
    client.connect("localhost", 8883)
    client.loop_start()
    topic = f"devices/{device_id}/messages/events/"
    published = []
    for n in range(count):
        sent[(device_id, n)] = time.time()
        published.append(client.publish(topic, f"{device_id} {n}", qos=1))
    for info in published:
        info.wait_for_publish()
    client.disconnect()
    client.loop_stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="edgetwin-bench-eh-")
    hub = Hub(os.environ.get("EDGETWIN_BIN", DEFAULT_BIN), os.path.join(tmp, "data"),
              os.path.join(tmp, "hub.log"))
    os.makedirs(hub.data_dir)
    hub.start()
    os.environ["REQUESTS_CA_BUNDLE"] = hub.ca_path
    try:
        registry = IoTHubRegistryManager.from_connection_string(hub.service_connection_string)
        devices = []
        for i in range(args.devices):
            device = registry.create_device_with_sas(f"bench-{i}", None, None, "enabled")
            devices.append((device.device_id, device.authentication.symmetric_key.primary_key))
        each = args.messages // args.devices
        total = each * args.devices
        sent, latencies = {}, []
        done = threading.Event()
        consumer = EventHubConsumerClient.from_connection_string(
            hub.info["eventHubConnectionString"], consumer_group="$Default",
            connection_verify=hub.ca_path)

        def on_event_batch(context, events):
            now = time.time()
            for event in events:
                device_id, n = event.body_as_str().split()
                latencies.append(now - sent[(device_id, int(n))])
            if len(latencies) >= total:
                done.set()

        receiver = threading.Thread(target=lambda: consumer.receive_batch(
            on_event_batch=on_event_batch, starting_position="@latest", max_batch_size=300),
            daemon=True)
        receiver.start()
        time.sleep(3)  # the consumer claims its partitions
        started = time.time()
        publishers = [threading.Thread(target=publisher, args=(hub, d, k, each, sent))
                      for d, k in devices]
        for p in publishers:
            p.start()
        for p in publishers:
            p.join()
        published = time.time() - started
        done.wait(600)
        received = time.time() - started
        consumer.close()
        latencies.sort()
        rss_kib = int(next(line.split()[1] for line in
                           open(f"/proc/{hub.proc.pid}/status") if line.startswith("VmRSS")))
        print(json.dumps({
            "messages": total, "received": len(latencies), "devices": args.devices,
            "in_per_s": round(total / published), "out_per_s": round(len(latencies) / received),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
            "hub_rss_mib": round(rss_kib / 1024, 1),
        }))
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
