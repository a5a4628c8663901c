"""The service side, judged by azure-iot-hub 2.7 (IoTHubRegistryManager)."""

import base64

import pytest
import requests
from azure.iot.hub.models import CloudToDeviceMethod, ExportImportDevice, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from conftest import http_status, unique_id


def _is_generated_key(key):
    return isinstance(key, str) and len(key) == 44 and len(base64.b64decode(key)) == 32


def test_edge_device_gets_generated_keys_and_system_modules(registry_manager, make_device):
    dev = make_device(edge=True)
    assert _is_generated_key(dev.primary_key), dev.primary_key
    assert _is_generated_key(dev.secondary_key), dev.secondary_key
    assert dev.primary_key != dev.secondary_key

    got = registry_manager.get_device(dev.device_id)
    assert got.device_id == dev.device_id
    assert got.capabilities.iot_edge is True
    assert got.status == "enabled"
    assert got.authentication.symmetric_key.primary_key == dev.primary_key

    module_ids = {m.module_id for m in registry_manager.get_modules(dev.device_id)}
    assert {"$edgeAgent", "$edgeHub"} <= module_ids, module_ids


def test_plain_device_has_no_system_modules(registry_manager, make_device):
    dev = make_device(edge=False)
    module_ids = {m.module_id for m in registry_manager.get_modules(dev.device_id)}
    assert "$edgeAgent" not in module_ids and "$edgeHub" not in module_ids


def test_module_created_with_generated_keys_is_listed(registry_manager, make_module):
    mod = make_module()
    assert _is_generated_key(mod.primary_key)
    assert _is_generated_key(mod.secondary_key)
    got = registry_manager.get_module(mod.device_id, mod.module_id)
    assert got.module_id == mod.module_id and got.device_id == mod.device_id
    assert got.authentication.symmetric_key.primary_key == mod.primary_key
    assert got.generation_id
    assert mod.module_id in {m.module_id for m in registry_manager.get_modules(mod.device_id)}


def test_creating_a_device_twice_is_a_409_conflict(registry_manager, make_device):
    dev = make_device()
    with pytest.raises(HttpOperationError) as err:
        registry_manager.create_device_with_sas(dev.device_id, None, None, "enabled")
    assert http_status(err.value) == 409
    # the original keys survive the failed create
    assert registry_manager.get_device(dev.device_id).authentication.symmetric_key.primary_key == dev.primary_key


def test_creating_a_module_twice_is_a_409_conflict(registry_manager, make_module):
    mod = make_module()
    with pytest.raises(HttpOperationError) as err:
        registry_manager.create_module_with_sas(mod.device_id, mod.module_id, None, None, None)
    assert http_status(err.value) == 409


def test_module_on_unknown_device_is_404(registry_manager):
    with pytest.raises(HttpOperationError) as err:
        registry_manager.create_module_with_sas(unique_id("nodev"), "m", None, None, None)
    assert http_status(err.value) == 404


def test_desired_patch_on_module_twin_bumps_versions(registry_manager, make_module):
    mod = make_module()
    before = registry_manager.get_module_twin(mod.device_id, mod.module_id)
    assert before.module_id == mod.module_id
    v0 = before.properties.desired["$version"]
    assert isinstance(v0, int)
    assert "$version" in before.properties.reported

    patch = Twin(properties=TwinProperties(desired={"telemetryInterval": 122}))
    after = registry_manager.update_module_twin(mod.device_id, mod.module_id, patch)
    assert after.properties.desired["telemetryInterval"] == 122
    assert after.properties.desired["$version"] == v0 + 1
    assert after.version > before.version
    assert after.etag != before.etag

    again = registry_manager.get_module_twin(mod.device_id, mod.module_id)
    assert again.properties.desired["telemetryInterval"] == 122
    assert again.properties.desired["$version"] == v0 + 1
    assert again.etag == after.etag


def test_desired_patch_merges_and_null_deletes(registry_manager, make_module):
    mod = make_module()
    registry_manager.update_module_twin(
        mod.device_id, mod.module_id,
        Twin(properties=TwinProperties(desired={"a": 1, "obj": {"x": 1, "y": 2}})))
    t = registry_manager.update_module_twin(
        mod.device_id, mod.module_id,
        Twin(properties=TwinProperties(desired={"a": None, "b": 2, "obj": {"y": 3}})))
    d = t.properties.desired
    assert "a" not in d
    assert d["b"] == 2
    assert d["obj"] == {"x": 1, "y": 3}


def test_twin_update_with_current_etag_succeeds_and_stale_etag_is_412(registry_manager, make_module):
    mod = make_module()
    t0 = registry_manager.get_module_twin(mod.device_id, mod.module_id)
    t1 = registry_manager.update_module_twin(
        mod.device_id, mod.module_id, Twin(properties=TwinProperties(desired={"k": 1})), etag=t0.etag)
    assert t1.etag != t0.etag
    with pytest.raises(HttpOperationError) as err:
        registry_manager.update_module_twin(
            mod.device_id, mod.module_id, Twin(properties=TwinProperties(desired={"k": 2})), etag=t0.etag)
    assert http_status(err.value) == 412
    assert registry_manager.get_module_twin(mod.device_id, mod.module_id).properties.desired["k"] == 1


def test_an_unquoted_stale_etag_is_ignored_as_iot_hub_ignores_it(hub, make_module):
    # IoT Hub only honours RFC 7232 quoted etags; the SDKs quote since azure-iot-sdk-node #606 and
    # azure-iot-sdk-python #716 because unquoted ones silently did nothing.
    mod = make_module()
    url = f"{hub.rest_url}/twins/{mod.device_id}/modules/{mod.module_id}"
    auth = {"Authorization": hub.service_token()}
    api = {"api-version": "2021-04-12"}

    def patch(etag, value):
        return requests.patch(url, params=api, json={"properties": {"desired": {"k": value}}},
                              headers={**auth, "If-Match": etag}, verify=hub.ca_path, timeout=10)

    stale = requests.get(url, params=api, headers=auth, verify=hub.ca_path, timeout=10).json()["etag"]
    assert patch(f'"{stale}"', 1).status_code == 200
    assert patch(f'"{stale}"', 2).status_code == 412
    assert patch(stale, 3).status_code == 200
    assert patch("certainly-not-the-etag", 4).status_code == 200
    got = requests.get(url, params=api, headers=auth, verify=hub.ca_path, timeout=10).json()
    assert got["properties"]["desired"]["k"] == 4


def test_device_twin_tags_are_stored(registry_manager, make_device):
    dev = make_device()
    t = registry_manager.update_twin(dev.device_id, Twin(tags={"env": "prod", "site": {"bldg": "43"}}))
    assert t.tags == {"env": "prod", "site": {"bldg": "43"}}
    got = registry_manager.get_twin(dev.device_id)
    assert got.device_id == dev.device_id
    assert got.tags["env"] == "prod"
    assert got.tags["site"]["bldg"] == "43"


def test_patching_the_edge_agent_twin_is_401(registry_manager, make_device):
    dev = make_device(edge=True)
    before = registry_manager.get_module_twin(dev.device_id, "$edgeAgent")
    with pytest.raises(HttpOperationError) as err:
        registry_manager.update_module_twin(
            dev.device_id, "$edgeAgent", Twin(properties=TwinProperties(desired={"evil": 1})))
    assert http_status(err.value) == 401
    after = registry_manager.get_module_twin(dev.device_id, "$edgeAgent")
    assert "evil" not in after.properties.desired
    assert after.properties.desired["$version"] == before.properties.desired["$version"]


def test_deleted_device_and_its_modules_are_gone(registry_manager, make_module):
    mod = make_module()
    registry_manager.delete_device(mod.device_id)
    with pytest.raises(HttpOperationError) as err:
        registry_manager.get_device(mod.device_id)
    assert http_status(err.value) == 404
    with pytest.raises(HttpOperationError) as err:
        registry_manager.get_module_twin(mod.device_id, mod.module_id)
    assert http_status(err.value) == 404
    with pytest.raises(HttpOperationError) as err:
        registry_manager.delete_device(mod.device_id)
    assert http_status(err.value) == 404


def test_deleted_module_is_gone(registry_manager, make_module):
    mod = make_module()
    registry_manager.delete_module(mod.device_id, mod.module_id)
    with pytest.raises(HttpOperationError) as err:
        registry_manager.get_module(mod.device_id, mod.module_id)
    assert http_status(err.value) == 404


def test_listing_devices_includes_new_devices(registry_manager, make_device):
    a, b = make_device(), make_device(edge=True)
    ids = {d.device_id for d in registry_manager.get_devices()}
    assert {a.device_id, b.device_id} <= ids


def test_bulk_create_makes_every_device(registry_manager):
    ids = [unique_id("bulk") for _ in range(3)]
    try:
        result = registry_manager.bulk_create_or_update_devices(
            [ExportImportDevice(id=i, import_mode="create") for i in ids])
        assert result.is_successful is True, result.errors
        for i in ids:
            d = registry_manager.get_device(i)
            assert _is_generated_key(d.authentication.symmetric_key.primary_key)
    finally:
        for i in ids:
            try:
                registry_manager.delete_device(i)
            except HttpOperationError:
                pass


def test_bulk_create_of_an_existing_device_reports_the_error(registry_manager, make_device):
    dev = make_device()
    result = registry_manager.bulk_create_or_update_devices(
        [ExportImportDevice(id=dev.device_id, import_mode="create")])
    assert result.is_successful is False
    assert [e.device_id for e in result.errors] == [dev.device_id]
    assert result.errors[0].error_code == "DeviceAlreadyExists"


def test_method_on_offline_module_is_404(registry_manager, make_module):
    mod = make_module()
    with pytest.raises(HttpOperationError) as err:
        registry_manager.invoke_device_module_method(
            mod.device_id, mod.module_id,
            CloudToDeviceMethod(method_name="ping", payload={}, response_timeout_in_seconds=5))
    assert http_status(err.value) == 404


def test_method_on_unknown_device_is_404(registry_manager):
    with pytest.raises(HttpOperationError) as err:
        registry_manager.invoke_device_method(
            unique_id("ghost"), CloudToDeviceMethod(method_name="ping", response_timeout_in_seconds=5))
    assert http_status(err.value) == 404


def test_device_scope_is_immutable_on_edge_devices_and_names_a_parent_on_leaf_devices(
        hub, make_device):
    # IoT Hub's Device.deviceScope: "auto-generated and immutable for edge devices and modifiable
    # in leaf devices to create child/parent relationship"
    gateway, leaf = make_device(edge=True), make_device()
    api, auth = {"api-version": "2021-04-12"}, {"Authorization": hub.service_token(), "If-Match": "*"}

    def get(device_id):
        return requests.get(f"{hub.rest_url}/devices/{device_id}", params=api, headers=auth,
                            verify=hub.ca_path, timeout=10).json()

    def put(device, scope):
        body = dict(device, deviceScope=scope)
        return requests.put(f"{hub.rest_url}/devices/{device['deviceId']}", params=api, json=body,
                            headers=auth, verify=hub.ca_path, timeout=10)

    edge = get(gateway.device_id)
    scope = edge["deviceScope"]
    assert scope.startswith(f"ms-azure-iot-edge://{gateway.device_id}-")
    refused = put(edge, "ms-azure-iot-edge://other-1")
    assert refused.status_code == 400 and "cannot be changed" in refused.json()["Message"]
    assert get(gateway.device_id)["deviceScope"] == scope

    child = get(leaf.device_id)
    assert put(child, "ms-azure-iot-edge://nobody-123").status_code == 400
    ok = put(child, scope)
    assert ok.status_code == 200, ok.text
    assert get(leaf.device_id)["deviceScope"] == scope
    assert get(leaf.device_id)["parentScopes"] == [scope]
