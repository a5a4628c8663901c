"""Whatever the hub acknowledged must survive SIGKILL + restart on the same data dir."""

import queue
import threading
import time

from azure.iot.hub.models import Twin, TwinProperties

from conftest import make_registry_manager, run_with_timeout, wait_until

MIN_ACKS_BEFORE_KILL = 50


def test_acknowledged_reported_patches_survive_sigkill(hub, clients, make_module):
    mod = make_module()
    client = clients.module(mod, connection_retry=False)
    client.connect()

    acked = []  # keys whose patch call returned (= the hub sent 204)
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def stream():
        i = 0
        try:
            while not stop.is_set():
                client.patch_twin_reported_properties({f"p{i}": i})
                with lock:
                    acked.append(i)
                i += 1
        except Exception as exc:  # expected once the hub dies
            errors.append(exc)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    wait_until(lambda: len(acked) >= MIN_ACKS_BEFORE_KILL or not t.is_alive(), timeout=30,
               message=f"{MIN_ACKS_BEFORE_KILL} acknowledged reported patches")
    assert len(acked) >= MIN_ACKS_BEFORE_KILL, f"streaming stopped early: {errors!r}"

    hub.kill()  # mid-stream: the client is still sending
    with lock:
        survived_must = list(acked)
    stop.set()
    assert survived_must, "nothing was acknowledged"

    hub.restart(kill=False)  # already dead; start again on the same dir/ports
    rm = make_registry_manager(hub.service_connection_string)
    reported = rm.get_module_twin(mod.device_id, mod.module_id).properties.reported
    missing = [i for i in survived_must if reported.get(f"p{i}") != i]
    assert not missing, f"{len(missing)} acknowledged patches lost, e.g. {missing[:10]}"
    assert reported["$version"] >= len(survived_must)

    run_with_timeout(client.shutdown, timeout=5)


def test_registry_and_twins_survive_a_restart(hub, clients, make_module, registry_manager):
    mod = make_module()
    registry_manager.update_module_twin(
        mod.device_id, mod.module_id, Twin(properties=TwinProperties(desired={"kept": "yes"})))
    before = registry_manager.get_module_twin(mod.device_id, mod.module_id)
    ca_before = hub.ca_pem
    keys_before = dict(hub.info["policies"])

    hub.restart(kill=True)

    assert hub.ca_pem == ca_before, "CA must survive a restart"
    assert hub.info["policies"] == keys_before, "policy keys must survive a restart"
    rm = make_registry_manager(hub.service_connection_string)
    after = rm.get_module_twin(mod.device_id, mod.module_id)
    assert after.properties.desired["kept"] == "yes"
    assert after.properties.desired["$version"] == before.properties.desired["$version"]
    assert rm.get_module(mod.device_id, mod.module_id).authentication.symmetric_key.primary_key == mod.primary_key

    # the same module key still connects over MQTT
    c = clients.module(mod)
    c.connect()
    assert c.get_twin()["desired"]["kept"] == "yes"


def test_clients_reconnect_after_a_restart(hub, clients, make_module):
    mod = make_module()
    c = clients.module(mod, connection_retry_interval=1)
    c.connect()
    c.patch_twin_reported_properties({"before": 1})
    hub.restart(kill=True)
    # auto-connect + retry: the next call succeeds once the hub is back
    result = {}

    def call():
        c.patch_twin_reported_properties({"after": 2})
        result["twin"] = c.get_twin()

    assert run_with_timeout(call, timeout=30), "client did not get through after the restart"
    assert result["twin"]["reported"]["before"] == 1
    assert result["twin"]["reported"]["after"] == 2


def test_subscriptions_survive_a_hub_restart_so_the_sdk_still_gets_desired_patches(
        hub, clients, make_module, registry_manager):
    """The Python SDK subscribes once per client lifetime and never again: only a session kept
    in the hub's database lets desired patches reach it after the hub was killed."""
    mod = make_module()
    c = clients.module(mod, connection_retry_interval=1)
    patches = queue.Queue()
    c.on_twin_desired_properties_patch_received = patches.put
    c.connect()
    hub.restart(kill=True)
    assert run_with_timeout(c.get_twin, timeout=30), "client did not get back"

    def patch_and_wait(key):
        registry_manager.update_module_twin(
            mod.device_id, mod.module_id, Twin(properties=TwinProperties(desired={key: 1})), "*")
        deadline = time.monotonic() + 10
        while True:
            patch = patches.get(timeout=max(0.1, deadline - time.monotonic()))
            if key in patch:
                return patch

    patch_and_wait("first")
    # The SDK's own twin GET after reconnecting could carry the first change; the second can only
    # arrive through the subscription the hub restored from its database.
    assert patch_and_wait("second")["second"] == 1
