"""The Event Hub-compatible endpoint (AMQP on 5671, and over WebSockets on 443), judged by
Microsoft's `azure-eventhub` consumer with the connection string `edgetwin hub` prints (hub.json
`eventHubConnectionString`):
telemetry the device SDK sends arrives with the system properties and annotations IoT Hub sets,
in order in one partition per device, durably across a restart, from a checkpointed offset; bad
tokens, unknown consumer groups and partitions are refused as Event Hubs refuses them."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest
import requests
from azure.core.credentials import AzureSasCredential
from azure.eventhub import EventHubConsumerClient, TransportType
from azure.eventhub.exceptions import AuthenticationError
from azure.iot.device import Message

from conftest import API_VERSION, DEFAULT_BIN, parse_connection_string, sas_token, unique_id, wait_until


def consumer(hub, consumer_group="$Default", connection_string=None, **kw):
    return EventHubConsumerClient.from_connection_string(
        connection_string or hub.info["eventHubConnectionString"],
        consumer_group=consumer_group,
        connection_verify=hub.ca_path,
        retry_total=0,
        **kw,
    )


def start_receiving(client, enough, **kw):
    """Start receiving on `client` (all partitions unless `partition_id`) in a thread and leave
    it running; return (an Event set once `enough(events)` or an error, the events as
    (partition id, EventData), the errors, the thread)."""
    events, errors = [], []
    done = threading.Event()

    def on_event(context, event):
        if event is not None:
            events.append((context.partition_id, event))
            if enough(events):
                done.set()

    def on_error(context, error):
        errors.append(error)
        done.set()

    kw.setdefault("starting_position", "-1")
    worker = threading.Thread(
        target=client.receive, kwargs=dict(on_event=on_event, on_error=on_error, **kw), daemon=True
    )
    worker.start()
    return done, events, errors, worker


def receive(client, enough, timeout=20, **kw):
    """Receive on `client` (all partitions unless `partition_id`) until `enough(events)` or an
    error; return (events as (partition id, EventData), errors)."""
    done, events, errors, worker = start_receiving(client, enough, **kw)
    done.wait(timeout)
    client.close()
    worker.join(10)
    return events, errors


def partition_of(device_id):
    """The hub's partition of a device: FNV-1a (32 bits) of its id, modulo 4 (docs/hub.md)."""
    h = 0x811C9DC5
    for byte in device_id.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return str(h % 4)


def from_device(device_id):
    return lambda e: e[1].system_properties.get(b"iothub-connection-device-id") == device_id.encode()


def send(client, text, **properties):
    message = Message(text, message_id=properties.pop("message_id", None),
                      content_encoding="utf-8", content_type="application/json")
    message.correlation_id = properties.pop("correlation_id", None)
    message.custom_properties.update(properties)
    client.send_message(message)


def test_device_telemetry_arrives_with_the_properties_and_annotations_iot_hub_sets(hub, clients, make_device):
    device = make_device()
    client = clients.device(device)
    client.connect()
    send(client, '{"temperature": 21}', message_id="mid-1", correlation_id="cid-1", level="high")
    events, errors = receive(consumer(hub), lambda es: any(map(from_device(device.device_id), es)))
    assert not errors, errors
    [(_, event)] = [e for e in events if from_device(device.device_id)(e)]
    assert event.body_as_str() == '{"temperature": 21}'
    assert event.properties == {b"level": b"high"}
    system = event.system_properties
    assert system[b"message-id"] == b"mid-1"
    assert system[b"correlation-id"] == b"cid-1"
    assert system[b"content-type"] == b"application/json"
    assert system[b"content-encoding"] == b"utf-8"
    assert system[b"iothub-connection-device-id"] == device.device_id.encode()
    assert system[b"iothub-message-source"] == b"Telemetry"
    assert b'"scope":"device"' in system[b"iothub-connection-auth-method"]
    assert system[b"iothub-enqueuedtime"] == system[b"x-opt-enqueued-time"]
    assert abs(system[b"x-opt-enqueued-time"] / 1000 - time.time()) < 60
    assert event.sequence_number == system[b"x-opt-sequence-number"]
    assert event.offset == system[b"x-opt-offset"].decode()
    assert event.enqueued_time is not None


def test_a_consumer_over_websockets_on_443_reads_the_same_endpoint(hub, clients, make_device):
    # pyamqp dials wss://{host}/$servicebus/websocket (port 443) with subprotocol AMQPWSB10
    device = make_device()
    client = clients.device(device)
    client.connect()
    send(client, "over websockets", level="ws")
    over_ws = consumer(hub, transport_type=TransportType.AmqpOverWebsocket)
    assert over_ws.get_partition_ids() == ["0", "1", "2", "3"]
    events, errors = receive(over_ws, lambda es: any(map(from_device(device.device_id), es)),
                             partition_id=partition_of(device.device_id))
    assert not errors, errors
    [(_, event)] = [e for e in events if from_device(device.device_id)(e)]
    assert event.body_as_str() == "over websockets"
    assert event.properties == {b"level": b"ws"}
    assert event.system_properties[b"iothub-message-source"] == b"Telemetry"


def test_module_telemetry_names_the_module(hub, clients, make_module):
    module = make_module(edge=False)
    client = clients.module(module)
    client.connect()
    client.send_message(Message("from a module"))
    events, errors = receive(consumer(hub), lambda es: any(map(from_device(module.device_id), es)))
    assert not errors, errors
    [(_, event)] = [e for e in events if from_device(module.device_id)(e)]
    assert event.system_properties[b"iothub-connection-module-id"] == module.module_id.encode()
    assert b'"scope":"module"' in event.system_properties[b"iothub-connection-auth-method"]


def test_a_devices_messages_keep_their_order_in_one_partition_across_a_restart_and_resume_from_an_offset(
    hub, clients, make_device
):
    device = make_device()
    client = clients.device(device)
    client.connect()
    for n in range(3):
        send(client, f"m{n}")
    mine = from_device(device.device_id)
    events, errors = receive(consumer(hub), lambda es: len([e for e in es if mine(e)]) == 3)
    assert not errors, errors
    events = [e for e in events if mine(e)]
    assert [e.body_as_str() for _, e in events] == ["m0", "m1", "m2"]
    partitions = {p for p, _ in events}
    assert len(partitions) == 1, partitions
    partition = partitions.pop()
    sequences = [e.sequence_number for _, e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    checkpoint = events[0][1].offset
    client.shutdown()

    hub.restart(kill=True)
    client = clients.device(device)
    client.connect()
    send(client, "m3")
    properties = consumer(hub).get_partition_properties(partition)
    assert properties["last_enqueued_sequence_number"] == sequences[-1] + 1
    events, errors = receive(
        consumer(hub), lambda es: len(es) >= 3 and es[-1][1].body_as_str() == "m3",
        partition_id=partition, starting_position=checkpoint,
    )
    assert not errors, errors
    after = [e.body_as_str() for _, e in events if mine((partition, e))]
    assert after == ["m1", "m2", "m3"], "nothing lost, nothing repeated, in order"
    assert events[0][1].sequence_number == sequences[1]
    # the message log reads the same store: what was sent before the restart is still listed
    logged = hub.messages(device.device_id)
    assert [m["body"] for m in logged] == ["m0", "m1", "m2", "m3"]
    assert [m["sequence"] for m in logged] == sorted({m["sequence"] for m in logged})


def test_a_partition_keeps_its_newest_events_within_the_byte_bound_and_a_pruned_offset_reads_from_the_earliest_kept(
    hub, clients, make_device
):
    device = make_device()
    client = clients.device(device)
    client.connect()
    for n in range(40):
        send(client, f"r{n:02d}" + "x" * 200)
    client.shutdown()
    mine = from_device(device.device_id)
    # one partition: azure-eventhub's receive over all partitions takes one event per partition
    # per round, each round waiting on the empty ones (~0.6 s a round)
    partition = partition_of(device.device_id)
    events, errors = receive(consumer(hub), lambda es: len([e for e in es if mine(e)]) == 40,
                             partition_id=partition)
    assert not errors, errors
    first = next(e for p, e in events if mine((p, e)))
    original = list(hub.extra_args)
    hub.extra_args += ["--retention-bytes", "16K"]  # 4 KiB for each of the 4 partitions
    try:
        hub.restart(kill=False)  # the hub prunes at start (and every 5 s)
        begin = lambda: consumer(hub).get_partition_properties(partition)["beginning_sequence_number"]
        wait_until(lambda: begin() > first.sequence_number, timeout=10, message="pruning")
        events, errors = receive(
            consumer(hub), lambda es: any(e.body_as_str().startswith("r39") for _, e in es),
            partition_id=partition, starting_position=first.offset,
        )
        assert not errors, errors
        kept = [e.body_as_str()[:3] for p, e in events if mine((p, e))]
        assert 5 < len(kept) < 20, kept
        assert kept == [f"r{n:02d}" for n in range(40 - len(kept), 40)], "the newest, in order"
        assert events[0][1].sequence_number == begin(), "from the earliest event kept"
        logged = [m["body"][:3] for m in hub.messages(device.device_id)]
        assert logged == kept, "the message log lists what the endpoint keeps"
    finally:
        hub.extra_args = original
        hub.restart(kill=False)


def test_the_hub_answers_the_event_hubs_metadata(hub):
    client = consumer(hub)
    properties = client.get_eventhub_properties()
    client.close()
    assert properties["eventhub_name"] == parse_connection_string(
        hub.info["eventHubConnectionString"])["EntityPath"]
    assert properties["partition_ids"] == ["0", "1", "2", "3"]


def event_hub_token(hub, key, expiry):
    """A SAS token for the Event Hub as Event Hubs clients make it (the key's text is the HMAC key)."""
    name = parse_connection_string(hub.info["eventHubConnectionString"])["EntityPath"]
    resource = urllib.parse.quote_plus(f"sb://{hub.host}/{name}")
    signature = base64.b64encode(
        hmac.new(key.encode(), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    ).decode()
    return (f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote_plus(signature)}"
            f"&se={expiry}&skn=service")


@pytest.mark.parametrize("case", ["wrong key", "expired"])
def test_a_wrong_or_expired_token_is_refused_on_cbs(hub, case):
    key = hub.info["policies"]["service"]
    if case == "wrong key":
        token = event_hub_token(hub, base64.b64encode(b"x" * 32).decode(), int(time.time()) + 3600)
    else:
        token = event_hub_token(hub, key, int(time.time()) - 60)
    name = parse_connection_string(hub.info["eventHubConnectionString"])["EntityPath"]
    client = EventHubConsumerClient(
        fully_qualified_namespace=hub.host, eventhub_name=name, consumer_group="$Default",
        credential=AzureSasCredential(token), connection_verify=hub.ca_path, retry_total=0,
    )
    with pytest.raises(AuthenticationError, match="401"):
        client.get_partition_ids()
    client.close()


def test_a_consumer_renewing_its_token_keeps_receiving_past_the_first_tokens_expiry(hub, clients, make_device):
    # The hub closes a link once its token expires unrenewed (tests/amqp_token.rs); the SDK puts
    # a new token on $cbs when 10 % of its lifetime is left (pyamqp cbs.py `_refresh_window`),
    # from the credential, which here gets a fresh token only once the first event has arrived,
    # so that the link stays up on the renewal alone.
    key = hub.info["policies"]["service"]
    # 20 s: the SDK's window to renew in is then 2 s (at 10 s, 1 s proved too short on a busy machine)
    first_expiry = int(time.time()) + 20
    credential = AzureSasCredential(event_hub_token(hub, key, first_expiry))
    name = parse_connection_string(hub.info["eventHubConnectionString"])["EntityPath"]
    client = EventHubConsumerClient(
        fully_qualified_namespace=hub.host, eventhub_name=name, consumer_group="$Default",
        credential=credential, connection_verify=hub.ca_path, retry_total=0,
    )
    device = make_device()
    device_client = clients.device(device)
    device_client.connect()
    send(device_client, "before")

    def texts(events):
        return [e[1].body_as_str() for e in events if from_device(device.device_id)(e)]

    renewed = threading.Event()

    def enough(events):
        if "before" in texts(events) and not renewed.is_set():
            renewed.set()
            credential.update(event_hub_token(hub, key, int(time.time()) + 3600))
            threading.Thread(target=send_after_expiry, daemon=True).start()
        return "after" in texts(events)

    def send_after_expiry():
        time.sleep(max(0.0, first_expiry + 1.5 - time.time()))
        send(device_client, "after")

    events, errors = receive(client, enough, timeout=40, partition_id=partition_of(device.device_id))
    assert not errors, errors
    assert texts(events) == ["before", "after"]
    assert time.time() > first_expiry + 1


def test_a_policy_without_service_connect_may_not_read_events(hub):
    key = hub.info["policies"]["registryRead"]
    cs = parse_connection_string(hub.info["eventHubConnectionString"])
    connection_string = (f"Endpoint={cs['Endpoint']};SharedAccessKeyName=registryRead;"
                         f"SharedAccessKey={key};EntityPath={cs['EntityPath']}")
    events, errors = receive(consumer(hub, connection_string=connection_string), lambda es: True,
                             partition_id="0")
    assert events == []
    assert errors and isinstance(errors[0], AuthenticationError) and "401" in str(errors[0]), errors


def test_an_unknown_consumer_group_is_refused_as_not_found(hub):
    # (an unknown partition id never reaches the hub: the client checks it against the
    # partition ids the $management node reads out)
    group = unique_id("group")
    events, errors = receive(consumer(hub, consumer_group=group), lambda es: True,
                             partition_id="0")
    assert events == []
    assert errors and "amqp:not-found" in str(errors[0]), errors
    assert f"eventhub:localhost~32766|{group}' could not be found" in str(errors[0]), errors


def consumer_groups(hub, method="GET", name=None, policy="iothubowner"):
    """/edgetwin/consumerGroups[/name] of `hub` (a conftest Hub, or a hub.json's facts)."""
    info = hub if isinstance(hub, dict) else hub.info
    path = "consumerGroups" + (f"/{urllib.parse.quote(name, safe='')}" if name is not None else "")
    host = parse_connection_string(info["serviceConnectionString"])["HostName"]
    token = sas_token(urllib.parse.quote_plus(host), info["policies"][policy],
                      int(time.time()) + 600, policy)
    return requests.request(
        method, f"{info['restUrl'].rstrip('/')}/edgetwin/{path}", params={"api-version": API_VERSION},
        headers={"Authorization": token}, verify=info["caCertificate"], timeout=10,
    )


def test_created_consumer_groups_each_read_every_event_independently(hub, clients, make_device):
    group = unique_id("monitor")
    created = consumer_groups(hub, "PUT", group)
    assert created.status_code == 200, created.text
    assert consumer_groups(hub, "PUT", group.upper()).status_code == 200, "idempotent, as ARM's PUT"
    assert {"name": group} in consumer_groups(hub).json()
    device = make_device()
    client = clients.device(device)
    client.connect()
    for n in range(2):
        send(client, f"g{n}")
    mine = from_device(device.device_id)
    # one group's reader does not take events from the other's: both read both events
    for group_name in ("$Default", group):
        events, errors = receive(consumer(hub, consumer_group=group_name),
                                 lambda es: len([e for e in es if mine(e)]) == 2,
                                 partition_id=partition_of(device.device_id))
        assert not errors, (group_name, errors)
        assert [e.body_as_str() for p, e in events if mine((p, e))] == ["g0", "g1"], group_name
    assert consumer_groups(hub, "DELETE", group).status_code == 204
    events, errors = receive(consumer(hub, consumer_group=group), lambda es: True, partition_id="0")
    assert errors and "amqp:not-found" in str(errors[0]), errors


@pytest.fixture
def group_with_an_event(hub, clients, make_device):
    """A consumer group of its own (deleted afterwards) and a device's event "here" in the
    store: (group, the event's partition, a filter for the device's events)."""
    group = unique_id("group")
    assert consumer_groups(hub, "PUT", group).status_code == 200
    device = make_device()
    client = clients.device(device)
    client.connect()
    send(client, "here")
    yield group, partition_of(device.device_id), from_device(device.device_id)
    consumer_groups(hub, "DELETE", group)


def test_a_sixth_receiver_on_a_partition_of_a_consumer_group_is_refused_as_event_hubs_refuses_it(
        hub, group_with_an_event):
    # Event Hubs serves at most 5 receivers on one partition of one consumer group at once
    group, partition, mine = group_with_an_event
    readers = []
    try:
        for _ in range(5):
            reader = consumer(hub, consumer_group=group)
            done, _, errors, _ = start_receiving(reader, lambda es: any(mine(e) for e in es),
                                                 partition_id=partition)
            readers.append(reader)
            assert done.wait(20) and not errors, errors
        events, errors = receive(consumer(hub, consumer_group=group), lambda es: True,
                                 partition_id=partition)
        assert events == []
        assert errors and "amqp:resource-limit-exceeded" in str(errors[0]), errors
        assert ("Exceeded the maximum number of allowed receivers per partition in a consumer "
                "group which is 5. List of connected receivers - ") in str(errors[0]), errors
        # the other partitions, and the same partition of $Default, are counted apart
        other = str((int(partition) + 1) % 4)
        for group_name, partition_id in ((group, other), ("$Default", partition)):
            events, errors = receive(consumer(hub, consumer_group=group_name), lambda es: True,
                                     partition_id=partition_id, starting_position="@latest",
                                     timeout=2)
            assert not errors, (group_name, partition_id, errors)
        # one of the five goes: its place is free
        readers.pop().close()
        events, errors = receive(consumer(hub, consumer_group=group),
                                 lambda es: any(mine(e) for e in es), partition_id=partition)
        assert not errors, errors
        assert [e.body_as_str() for p, e in events if mine((p, e))] == ["here"]
    finally:
        for reader in readers:
            reader.close()


def test_an_epoch_receiver_takes_the_partition_and_holds_it_as_event_hubs_gives_it(
        hub, group_with_an_event):
    # owner_level is Event Hubs' epoch: the highest takes the partition of the group
    group, partition, mine = group_with_an_event
    first = consumer(hub, consumer_group=group)
    second = consumer(hub, consumer_group=group)
    try:
        done, _, first_errors, _ = start_receiving(first, lambda es: any(mine(e) for e in es),
                                             partition_id=partition, owner_level=1)
        assert done.wait(20) and not first_errors, first_errors
        # no epoch, or a lower one: refused while it holds the partition
        for owner_level, said in ((None, "created with epoch of '1', and so non-epoch receiver is "
                                         "not allowed"),
                                  (0, "with a higher epoch '1' already exists")):
            kw = {} if owner_level is None else {"owner_level": owner_level}
            events, errors = receive(consumer(hub, consumer_group=group), lambda es: True,
                                     partition_id=partition, **kw)
            assert events == []
            assert errors and "amqp:link:stolen" in str(errors[0]), errors
            assert said in str(errors[0]), errors
        # a higher one takes it: the first receiver is disconnected, saying why
        done, _, errors, _ = start_receiving(second, lambda es: any(mine(e) for e in es),
                                       partition_id=partition, owner_level=2)
        assert done.wait(20) and not errors, errors
        wait_until(lambda: first_errors, timeout=10, message="the first receiver disconnected")
        assert "amqp:link:stolen" in str(first_errors[0]), first_errors
        assert "with higher epoch of '2' is created hence current receiver" in str(first_errors[0])
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("name, why", [
    ("x" * 51, "1 to 50 characters"),
    ("with space", "letters, digits, '-', '.' and '_' only"),
])
def test_a_consumer_group_name_against_iot_hubs_rules_is_refused_saying_why(hub, name, why):
    refused = consumer_groups(hub, "PUT", name)
    assert refused.status_code == 400 and why in refused.json()["Message"], refused.text
    assert consumer_groups(hub, "PUT", "read-only", policy="registryRead").status_code == 401


def test_the_consumer_group_flag_creates_groups_at_start_and_refuses_a_bad_name():
    with tempfile.TemporaryDirectory() as tmp:
        bad = subprocess.run(
            [str(os.environ.get("EDGETWIN_BIN", DEFAULT_BIN)), "hub", "--data-dir", f"{tmp}/bad",
             "--consumer-group", "no/slash", "--mqtt-port", "0", "--https-port", "0",
             "--amqp-port", "0"],
            capture_output=True, text=True, timeout=30,
        )
        assert bad.returncode == 1
        assert "--consumer-group no/slash: consumer group name 'no/slash' has '/'" in bad.stderr, bad.stderr
        proc = subprocess.Popen(
            [str(os.environ.get("EDGETWIN_BIN", DEFAULT_BIN)), "hub", "--data-dir", f"{tmp}/good",
             "--consumer-group", "asa", "--consumer-group", "functions", "--mqtt-port", "0",
             "--https-port", "0", "--amqp-port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            hub_json = f"{tmp}/good/hub.json"

            def written():
                try:
                    return json.load(open(hub_json))
                except (OSError, ValueError):
                    return None
            wait_until(written, timeout=20, message="hub.json")
            names = [g["name"] for g in consumer_groups(written()).json()]
            assert names == ["$Default", "asa", "functions"]
        finally:
            proc.terminate()
            proc.wait(10)
