"""Deployments, judged by azure-iot-hub 2.7 (IoTHubConfigurationManager): a manifest applied to one
edge device, at-scale deployments chosen by target condition and priority, and their status as
IoT Hub keeps it (on the `$edgeAgent` module twin, with `systemMetrics` queries and counts moved by
what `$edgeAgent`, an azure-iot-device IoTHubModuleClient here, reports); automatic device
management configurations (`deviceContent`) applied to the device twins they target, with their
status on the device twin; custom metrics counted."""

import base64
import os

import pytest
import requests
from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.models import (
    Configuration, ConfigurationContent, QuerySpecification, Twin, TwinProperties)
from msrest.exceptions import HttpOperationError

from conftest import Identity, http_status, unique_id


def _manifest(interval, image="localhost:5000/edgetwin:0.1.0-amd64"):
    return {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {}},
            "systemModules": {},
            "modules": {"edgetwin": {"type": "docker", "status": "running", "restartPolicy": "always",
                                     "settings": {"image": image}}},
        }},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.2", "routes": {},
                                             "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
        "edgetwin": {"properties.desired": {"telemetryInterval": interval}},
    }


@pytest.fixture
def configurations(hub):
    manager = IoTHubConfigurationManager.from_connection_string(hub.service_connection_string)
    created = []
    yield manager, created
    for config_id in created:
        try:
            manager.delete_configuration(config_id)
        except Exception:
            pass


def _edge_device_with_module(registry_manager, make_device, tags=None):
    device = make_device(edge=True, prefix="gw")
    registry_manager.create_module_with_sas(device.device_id, "edgetwin", None, None, None)
    if tags:
        registry_manager.update_twin(device.device_id, Twin(tags=tags), "*")
    return device


def _create(configurations, prefix, condition, priority, modules_content):
    """Creates a configuration (deleted after the test) and returns its id."""
    manager, created = configurations
    config_id = unique_id(prefix).lower()
    manager.create_configuration(Configuration(
        id=config_id, target_condition=condition, priority=priority,
        content=ConfigurationContent(modules_content=modules_content)))
    created.append(config_id)
    return config_id


def _raw_twin(hub, device_id, module_id=None):
    """The twin document as the REST API answers it (the SDK's Twin model drops fields)."""
    path = f"/twins/{device_id}" + (f"/modules/{module_id}" if module_id else "")
    raw = requests.get(hub.rest_url + path, params={"api-version": "2021-04-12"},
                       headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=10)
    raw.raise_for_status()
    return raw.json()


def _desired(registry_manager, device_id, module_id):
    return registry_manager.get_module_twin(device_id, module_id).properties.desired


def test_a_manifest_applied_to_one_device_replaces_the_desired_properties_of_its_modules(
        registry_manager, configurations, make_device):
    manager, _ = configurations
    device = _edge_device_with_module(registry_manager, make_device)
    registry_manager.update_module_twin(
        device.device_id, "edgetwin", Twin(properties={"desired": {"stale": True}}), "*")
    manager.apply_configuration_on_edge_device(
        device.device_id, ConfigurationContent(modules_content=_manifest(122)))
    desired = _desired(registry_manager, device.device_id, "edgetwin")
    assert desired["telemetryInterval"] == 122
    assert "stale" not in desired, "apply replaces the whole desired section"
    agent = _desired(registry_manager, device.device_id, "$edgeAgent")
    assert agent["modules"]["edgetwin"]["settings"]["image"].endswith("0.1.0-amd64")


def test_a_module_created_after_the_manifest_was_applied_gets_its_desired_properties_from_it(
        registry_manager, configurations, make_device):
    # On IoT Hub the edge runtime creates module identities only after it received the
    # deployment, and the modules still start with the desired properties the manifest gives them.
    manager, _ = configurations
    device = make_device(edge=True, prefix="gw")
    manager.apply_configuration_on_edge_device(
        device.device_id, ConfigurationContent(modules_content=_manifest(122)))
    registry_manager.create_module_with_sas(device.device_id, "edgetwin", None, None, None)
    registry_manager.create_module_with_sas(device.device_id, "unnamed", None, None, None)
    twin = registry_manager.get_module_twin(device.device_id, "edgetwin")
    assert twin.properties.desired["telemetryInterval"] == 122
    assert twin.properties.desired["$version"] == 2
    unnamed = _desired(registry_manager, device.device_id, "unnamed")
    assert {k for k in unnamed if not k.startswith("$")} == set(), unnamed


def test_applying_to_a_device_that_is_not_an_edge_device_is_refused(
        registry_manager, configurations, make_device):
    manager, _ = configurations
    device = make_device(edge=False)
    with pytest.raises(HttpOperationError) as err:
        manager.apply_configuration_on_edge_device(
            device.device_id, ConfigurationContent(modules_content=_manifest(5)))
    assert http_status(err.value) == 400


def test_an_at_scale_deployment_reaches_matching_devices_only_and_priority_decides(
        hub, registry_manager, configurations, make_device):
    manager, created = configurations
    ring = unique_id("ring").lower()
    canary = _edge_device_with_module(registry_manager, make_device, {"ring": ring, "canary": True})
    regular = _edge_device_with_module(registry_manager, make_device, {"ring": ring})
    outsider = _edge_device_with_module(registry_manager, make_device, {"ring": "other"})

    base_id, canary_id = unique_id("base").lower(), unique_id("canary").lower()
    for config_id, condition, priority, interval in [
            (base_id, f"tags.ring='{ring}'", 10, 60),
            (canary_id, f"tags.ring='{ring}' AND tags.canary=true", 20, 5)]:
        manager.create_configuration(Configuration(
            id=config_id, target_condition=condition, priority=priority,
            content=ConfigurationContent(modules_content=_manifest(interval))))
        created.append(config_id)

    assert _desired(registry_manager, canary.device_id, "edgetwin")["telemetryInterval"] == 5
    assert _desired(registry_manager, regular.device_id, "edgetwin")["telemetryInterval"] == 60
    assert "telemetryInterval" not in _desired(registry_manager, outsider.device_id, "edgetwin")

    # IoT Hub keeps the statuses on the `$edgeAgent` module twin; the SDK's Twin model drops
    # `configurations`, so read the raw twins
    statuses = _raw_twin(hub, canary.device_id, "$edgeAgent")["configurations"]
    assert statuses[canary_id]["status"] == "Applied"
    assert statuses[base_id]["status"] == "Targeted"
    assert "configurations" not in _raw_twin(hub, canary.device_id)

    config = manager.get_configuration(base_id)
    assert config.system_metrics.results["targetedCount"] == 2
    assert config.system_metrics.results["appliedCount"] == 1


def _deployment_on_a_ring(configurations, prefix, interval):
    """A deployment targeting `tags.ring` = a new ring; returns (ring, configuration id)."""
    manager, created = configurations
    ring = unique_id(prefix).lower()
    config_id = unique_id("dep").lower()
    manager.create_configuration(Configuration(
        id=config_id, target_condition=f"tags.ring='{ring}'", priority=1,
        content=ConfigurationContent(modules_content=_manifest(interval))))
    created.append(config_id)
    return ring, config_id


def test_a_device_whose_tags_start_matching_gets_the_deployment(
        registry_manager, configurations, make_device):
    ring, _ = _deployment_on_a_ring(configurations, "late", 33)
    device = _edge_device_with_module(registry_manager, make_device)
    assert "telemetryInterval" not in _desired(registry_manager, device.device_id, "edgetwin")
    registry_manager.update_twin(device.device_id, Twin(tags={"ring": ring}), "*")
    assert _desired(registry_manager, device.device_id, "edgetwin")["telemetryInterval"] == 33


def test_the_counts_follow_devices_that_join_leave_or_are_deleted_without_a_configuration_change(
        registry_manager, configurations, make_device):
    manager, _ = configurations
    ring, config_id = _deployment_on_a_ring(configurations, "count", 8)

    def counts():
        results = manager.get_configuration(config_id).system_metrics.results
        return results["targetedCount"], results["appliedCount"]

    assert counts() == (0, 0)
    first = _edge_device_with_module(registry_manager, make_device, {"ring": ring})
    second = _edge_device_with_module(registry_manager, make_device, {"ring": ring})
    assert counts() == (2, 2)
    registry_manager.update_twin(first.device_id, Twin(tags={"ring": "elsewhere"}), "*")
    assert counts() == (1, 1)
    registry_manager.delete_device(second.device_id)
    assert counts() == (0, 0)


def test_configurations_are_listed_and_duplicates_and_bad_conditions_refused(configurations):
    manager, created = configurations
    config_id = unique_id("cfg").lower()
    manager.create_configuration(Configuration(
        id=config_id, target_condition="tags.x='y'", priority=0,
        content=ConfigurationContent(modules_content=_manifest(1))))
    created.append(config_id)
    assert config_id in {c.id for c in manager.get_configurations(100)}
    with pytest.raises(HttpOperationError) as err:
        manager.create_configuration(Configuration(
            id=config_id, target_condition="tags.x='y'",
            content=ConfigurationContent(modules_content=_manifest(1))))
    assert http_status(err.value) == 409
    with pytest.raises(HttpOperationError) as err:
        manager.create_configuration(Configuration(
            id=unique_id("bad").lower(), target_condition="tags.x = ",
            content=ConfigurationContent(modules_content=_manifest(1))))
    assert http_status(err.value) == 400
    manager.delete_configuration(config_id)
    created.remove(config_id)
    with pytest.raises(HttpOperationError) as err:
        manager.get_configuration(config_id)
    assert http_status(err.value) == 404


def test_layered_deployments_merge_over_the_base_by_priority_and_need_a_base(
        hub, registry_manager, configurations, make_device):
    manager, _ = configurations
    ring = unique_id("ring").lower()
    device = _edge_device_with_module(registry_manager, make_device, {"ring": ring})
    lonely = _edge_device_with_module(registry_manager, make_device, {"ring": ring + "-nobase"})

    base_id = _create(configurations, "base", f"tags.ring='{ring}'", 10, _manifest(60))
    low_id = _create(configurations, "low", f"tags.ring='{ring}' OR tags.ring='{ring}-nobase'", 20, {
        "$edgeHub": {"properties.desired.routes.low": "FROM /messages/* INTO $upstream"},
        "edgetwin": {"properties.desired.telemetryInterval": 30, "properties.desired.metrics.load": True},
    })
    high_id = _create(configurations, "high", f"tags.ring='{ring}'", 30, {
        "edgetwin": {"properties.desired.telemetryInterval": 122},
    })

    desired = _desired(registry_manager, device.device_id, "edgetwin")
    assert desired["telemetryInterval"] == 122  # the highest priority layer wins
    assert desired["metrics"] == {"load": True}  # the lower layer still adds its paths
    edge_hub = _desired(registry_manager, device.device_id, "$edgeHub")
    assert edge_hub["routes"] == {"low": "FROM /messages/* INTO $upstream"}
    assert edge_hub["storeAndForwardConfiguration"] == {"timeToLiveSecs": 7200}  # from the base

    statuses = _raw_twin(hub, device.device_id, "$edgeAgent")["configurations"]
    assert {k: statuses[k]["status"] for k in (base_id, low_id, high_id)} == {
        base_id: "Applied", low_id: "Applied", high_id: "Applied"}
    # without a base deployment a layer is only targeted
    assert "telemetryInterval" not in _desired(registry_manager, lonely.device_id, "edgetwin")
    assert _raw_twin(hub, lonely.device_id, "$edgeAgent")["configurations"] == {
        low_id: {"status": "Targeted"}}
    assert manager.get_configuration(low_id).system_metrics.results == {
        "targetedCount": 2, "appliedCount": 1, "reportedSuccessfulCount": 0,
        "reportedFailedCount": 0}


def test_a_configuration_without_schema_version_gets_1_0_as_the_sdks_send_it(configurations):
    manager, _ = configurations
    config_id = _create(configurations, "schema", "tags.x='y'", 1, _manifest(1))
    assert manager.get_configuration(config_id).schema_version == "1.0"


def test_a_deployment_that_mixes_base_and_layered_entries_is_refused(configurations):
    manager, created = configurations
    config_id = unique_id("mixed").lower()
    with pytest.raises(HttpOperationError) as err:
        manager.create_configuration(Configuration(
            id=config_id, target_condition="tags.x='y'", priority=1,
            content=ConfigurationContent(modules_content={
                "$edgeHub": {"properties.desired": {"routes": {}}},
                "edgetwin": {"properties.desired.telemetryInterval": 1}})))
    created.append(config_id)
    assert http_status(err.value) == 400


def _give_edge_agent_keys(hub, device):
    """Sets `$edgeAgent`'s SAS keys as the device's IoT Edge runtime does: aziot-identityd's
    update_module_identity, `PUT` with `If-Match: *` at api-version 2017-11-08-preview, signed
    with the device's own key (no `skn`); returns `$edgeAgent`'s identity."""
    keys = [base64.b64encode(os.urandom(32)).decode("ascii") for _ in range(2)]
    url = f"{hub.rest_url}/devices/{device.device_id}/modules/$edgeAgent"
    body = {"moduleId": "$edgeAgent", "deviceId": device.device_id, "authentication": {
        "type": "sas", "symmetricKey": {"primaryKey": keys[0], "secondaryKey": keys[1]}}}
    answer = requests.put(url, params={"api-version": "2017-11-08-preview"}, json=body,
                          headers={"Authorization": device.sas(), "If-Match": "*"},
                          verify=hub.ca_path, timeout=10)
    assert answer.status_code == 200, answer.text
    return Identity(hub, device.device_id, "$edgeAgent", keys[0], keys[1])


def test_edge_agent_reports_move_the_reported_counts_and_iot_hubs_own_metric_queries_agree(
        hub, registry_manager, configurations, make_device, clients):
    manager, _ = configurations
    ring, config_id = _deployment_on_a_ring(configurations, "status", 21)
    device = _edge_device_with_module(registry_manager, make_device, {"ring": ring})
    agent = clients.module(_give_edge_agent_keys(hub, device))
    agent.connect()

    def metrics():
        system = manager.get_configuration(config_id).system_metrics
        return system.results, system.queries

    def agent_reports(code):
        version = agent.get_twin()["desired"]["$version"]
        agent.patch_twin_reported_properties(
            {"lastDesiredVersion": version, "lastDesiredStatus": {"code": code}})
        results, queries = metrics()
        # `az iot edge deployment show-metric --mt system` runs these through the query API
        for name, query in queries.items():
            rows = registry_manager.query_iot_hub(QuerySpecification(query=query)).items
            assert len(rows) == results[name], f"{name}: {query} -> {rows}"
        return results

    statuses = _raw_twin(hub, device.device_id, "$edgeAgent")["configurations"]
    assert statuses == {config_id: {"status": "Applied"}}
    results, queries = metrics()
    assert set(queries) == {"targetedCount", "appliedCount", "reportedSuccessfulCount",
                            "reportedFailedCount"}
    assert queries["appliedCount"] == (
        "select deviceId from devices.modules where moduleId = '$edgeAgent' and "
        f"configurations.[[{config_id}]].status = 'Applied'")
    assert (results["appliedCount"], results["reportedSuccessfulCount"]) == (1, 0)

    results = agent_reports(200)
    assert (results["appliedCount"], results["reportedSuccessfulCount"],
            results["reportedFailedCount"]) == (1, 1, 0)
    results = agent_reports(400)
    assert (results["reportedSuccessfulCount"], results["reportedFailedCount"]) == (0, 1)


def _device_configuration(configurations, condition, priority, device_content, metrics=None):
    """Creates an automatic device management configuration (deleted after the test)."""
    manager, created = configurations
    config_id = unique_id("adm").lower()
    manager.create_configuration(Configuration(
        id=config_id, target_condition=condition, priority=priority, metrics=metrics,
        content=ConfigurationContent(device_content=device_content)))
    created.append(config_id)
    return config_id


def test_a_device_configuration_sets_the_desired_properties_of_the_device_twins_it_targets(
        hub, registry_manager, configurations, make_device):
    manager, created = configurations
    ring = unique_id("ring").lower()
    inside, outside = make_device(prefix="adm"), make_device(prefix="adm")
    registry_manager.update_twin(inside.device_id, Twin(
        tags={"ring": ring}, properties=TwinProperties(desired={"kept": 1})), "*")
    low = _device_configuration(configurations, f"tags.ring='{ring}'", 1, {
        "properties.desired.fw": {"version": "1.0", "url": "u"}, "properties.desired.interval": 5})
    high = _device_configuration(configurations, f"tags.ring='{ring}'", 2, {
        "properties.desired.fw.version": "2.0"})
    # merged into the desired properties; the higher priority wins the path both set
    assert registry_manager.get_twin(inside.device_id).properties.desired["fw"] == {"version": "2.0", "url": "u"}
    desired = registry_manager.get_twin(inside.device_id).properties.desired
    assert (desired["interval"], desired["kept"]) == (5, 1)
    assert "fw" not in registry_manager.get_twin(outside.device_id).properties.desired
    # the status is on the device twin itself
    statuses = _raw_twin(hub, inside.device_id)["configurations"]
    assert statuses == {low: {"status": "Applied"}, high: {"status": "Applied"}}
    assert "configurations" not in _raw_twin(hub, outside.device_id)
    # system metrics, and IoT Hub's own queries select the same devices
    metrics = manager.get_configuration(high).system_metrics
    assert (metrics.results["targetedCount"], metrics.results["appliedCount"]) == (1, 1)
    for name in ("targetedCount", "appliedCount"):
        rows = registry_manager.query_iot_hub(QuerySpecification(query=metrics.queries[name])).items
        assert [row.device_id for row in rows] == [inside.device_id], name
    # a device whose tags start matching gets it too
    late = make_device(prefix="adm")
    registry_manager.update_twin(late.device_id, Twin(tags={"ring": ring}), "*")
    assert registry_manager.get_twin(late.device_id).properties.desired["fw"]["version"] == "2.0"
    # deleted, the twins "take on their next highest priority configuration"; the last one's
    # settings stay
    manager.delete_configuration(high)
    created.remove(high)
    assert registry_manager.get_twin(inside.device_id).properties.desired["fw"] == {"version": "1.0", "url": "u"}
    assert _raw_twin(hub, inside.device_id)["configurations"] == {low: {"status": "Applied"}}
    manager.delete_configuration(low)
    created.remove(low)
    assert registry_manager.get_twin(inside.device_id).properties.desired["interval"] == 5
    assert "configurations" not in _raw_twin(hub, inside.device_id)


def test_custom_metrics_count_the_rows_of_their_queries(registry_manager, configurations, make_device):
    manager, _ = configurations
    ring = unique_id("ring").lower()
    for _ in range(2):
        device = make_device(prefix="adm")
        registry_manager.update_twin(device.device_id, Twin(tags={"ring": ring}), "*")
    config_id = _device_configuration(configurations, f"tags.ring='{ring}'", 1, {
        "properties.desired.interval": 7}, metrics={"queries": {
            "ringed": f"SELECT deviceId FROM devices WHERE tags.ring = '{ring}'",
            "seven": f"SELECT deviceId FROM devices WHERE tags.ring = '{ring}' AND properties.desired.interval = 7",
            "none": "SELECT deviceId FROM devices WHERE tags.ring = 'no such ring'"}})
    got = manager.get_configuration(config_id).metrics
    assert got.results == {"ringed": 2, "seven": 2, "none": 0}
    # an IoT Edge deployment's too, over module twins
    deployment = _create(configurations, "dep", f"tags.ring='{ring}'", 1, _manifest(9))
    manager.update_configuration(Configuration(
        id=deployment, target_condition=f"tags.ring='{ring}'", priority=1, metrics={"queries": {
            "agents": "SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent'"}}), "*")
    edge_count = len(registry_manager.query_iot_hub(QuerySpecification(
        query="SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent'")).items)
    assert manager.get_configuration(deployment).metrics.results == {"agents": edge_count}
    listed = [c for c in manager.get_configurations(100) if c.id == config_id]
    assert listed[0].metrics.results == {"ringed": 2, "seven": 2, "none": 0}
