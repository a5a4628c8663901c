"""Bulk registry operations (`POST /devices`) as IoT Hub has them, judged by azure-iot-hub 2.7's
`bulk_create_or_update_devices`: every import mode, IoT Hub's rule that a module's device must be
registered before the request, and per-item errors while the other items land."""

import pytest

from azure.iot.hub.models import ExportImportDevice, TwinProperties

from conftest import delete_devices, unique_id


@pytest.fixture
def bulk(registry_manager):
    created = []

    def _bulk(items):
        created.extend(i.id for i in items)
        return registry_manager.bulk_create_or_update_devices(items)

    yield _bulk
    delete_devices(registry_manager, set(created))


def _errors(result):
    return {(e.device_id, e.module_id): e.error_code for e in result.errors}


def test_a_device_and_its_module_in_one_request_fail_the_module_with_device_not_found(
        bulk, registry_manager):
    device_id = unique_id("bulk")
    result = bulk([ExportImportDevice(id=device_id, import_mode="create"),
                   ExportImportDevice(id=device_id, module_id="m1", import_mode="create")])
    assert result.is_successful is False
    assert _errors(result) == {(device_id, "m1"): "DeviceNotFound"}
    assert registry_manager.get_device(device_id).device_id == device_id
    # the next request may add the module, as `edgetwin provision` does
    again = bulk([ExportImportDevice(id=device_id, module_id="m1", import_mode="create")])
    assert again.is_successful is True, again.errors
    assert registry_manager.get_module(device_id, "m1").module_id == "m1"


def test_update_and_update_if_match_etag_change_status_only_with_the_right_etag(bulk, registry_manager):
    device_id = unique_id("bulk")
    bulk([ExportImportDevice(id=device_id, import_mode="create")])
    etag = registry_manager.get_device(device_id).etag
    stale = bulk([ExportImportDevice(id=device_id, import_mode="updateIfMatchETag", e_tag="bm90LWl0",
                                     status="disabled")])
    assert _errors(stale) == {(device_id, None): "PreconditionFailed"}
    assert registry_manager.get_device(device_id).status == "enabled"
    ok = bulk([ExportImportDevice(id=device_id, import_mode="updateIfMatchETag", e_tag=etag,
                                  status="disabled")])
    assert ok.is_successful is True, ok.errors
    assert registry_manager.get_device(device_id).status == "disabled"
    forced = bulk([ExportImportDevice(id=device_id, import_mode="update", status="enabled")])
    assert forced.is_successful is True, forced.errors
    assert registry_manager.get_device(device_id).status == "enabled"
    missing = bulk([ExportImportDevice(id=unique_id("nobody"), import_mode="update")])
    assert list(_errors(missing).values()) == ["DeviceNotFound"]


def test_create_or_update_and_delete_modes_with_per_item_errors_while_the_rest_lands(
        bulk, registry_manager):
    a, b = unique_id("bulk"), unique_id("bulk")
    bulk([ExportImportDevice(id=a, import_mode="create")])
    result = bulk([ExportImportDevice(id=a, import_mode="createOrUpdate", status="disabled"),
                   ExportImportDevice(id=b, import_mode="createOrUpdate")])
    assert result.is_successful is True, result.errors
    assert registry_manager.get_device(a).status == "disabled"
    assert registry_manager.get_device(b).device_id == b
    etag_b = registry_manager.get_device(b).etag
    result = bulk([ExportImportDevice(id=a, import_mode="delete"),
                   ExportImportDevice(id=b, import_mode="deleteIfMatchETag", e_tag="d3Jvbmc=")])
    assert _errors(result) == {(b, None): "PreconditionFailed"}
    ids = {d.device_id for d in registry_manager.get_devices()}
    assert a not in ids and b in ids
    result = bulk([ExportImportDevice(id=b, import_mode="deleteIfMatchETag", e_tag=etag_b)])
    assert result.is_successful is True, result.errors
    assert b not in {d.device_id for d in registry_manager.get_devices()}


def test_update_twin_modes_merge_tags_and_desired_and_check_the_twin_etag(bulk, registry_manager):
    device_id = unique_id("bulk")
    bulk([ExportImportDevice(id=device_id, import_mode="create", tags={"ring": "0"})])
    assert registry_manager.get_twin(device_id).tags == {"ring": "0"}
    result = bulk([ExportImportDevice(id=device_id, import_mode="updateTwin", tags={"site": "a"},
                                      properties=TwinProperties(desired={"telemetryInterval": 122}))])
    assert result.is_successful is True, result.errors
    twin = registry_manager.get_twin(device_id)
    assert twin.tags == {"ring": "0", "site": "a"}
    assert twin.properties.desired["telemetryInterval"] == 122
    stale = bulk([ExportImportDevice(id=device_id, import_mode="updateTwinIfMatchETag",
                                     twin_etag="AAAAAAAAAAE=", tags={"site": "b"})])
    assert list(_errors(stale).values()) == ["PreconditionFailed"]
    ok = bulk([ExportImportDevice(id=device_id, import_mode="updateTwinIfMatchETag",
                                  twin_etag=twin.etag, tags={"site": "c"})])
    assert ok.is_successful is True, ok.errors
    assert registry_manager.get_twin(device_id).tags["site"] == "c"


def test_an_unknown_import_mode_refuses_the_request_and_names_it(hub, registry_manager):
    import requests
    device_id = unique_id("bulk")
    r = requests.post(f"{hub.rest_url}/devices", params={"api-version": "2021-04-12"},
                      json=[{"id": device_id, "importMode": "upsert"}],
                      headers={"Authorization": hub.service_token()}, verify=hub.ca_path, timeout=10)
    assert r.status_code == 400, r.text
    assert "importMode 'upsert'" in r.json()["Message"]
    assert device_id not in {d.device_id for d in registry_manager.get_devices()}


def test_create_or_update_if_match_etag_creates_a_missing_device_without_an_etag(bulk, registry_manager):
    # the etag condition applies only to a device that exists (ImportMode.CreateOrUpdateIfMatchETag)
    device_id = unique_id("bulk")
    created = bulk([ExportImportDevice(id=device_id, import_mode="createOrUpdateIfMatchETag")])
    assert created.is_successful is True, created.errors
    stale = bulk([ExportImportDevice(id=device_id, import_mode="createOrUpdateIfMatchETag",
                                     e_tag="c3RhbGU=", status="disabled")])
    assert _errors(stale) == {(device_id, None): "PreconditionFailed"}
    assert registry_manager.get_device(device_id).status == "enabled"
