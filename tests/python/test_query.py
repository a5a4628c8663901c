"""Twin queries, judged by azure-iot-hub 2.7 (IoTHubRegistryManager.query_iot_hub, unchanged) with
reported properties sent by azure-iot-device 2.14: the examples of "Queries for IoT Hub device and
module twins" over a fleet shaped like the page's sample twin, paging through continuation tokens,
and the errors."""

import pytest
from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from conftest import delete_devices, http_status, unique_id, wait_until

# (region, reported telemetryConfig status, sendFrequencyInSecs, connectivity) per device, as in
# the page: three report Success, two Pending, one Error; four are in the US.
FLEET = [
    ("US", "Success", 300, "wired"),
    ("US", "Success", 30, "wifi"),
    ("EU", "Success", 300, "cellular"),
    ("US", "Pending", 60, "wired"),
    ("EU", "Pending", 300, "cellular"),
    ("US", "Error", 10, "wifi"),
]


@pytest.fixture(scope="module")
def fleet(hub, registry_manager):
    """Six devices tagged with one run id and the page's location, each reporting its telemetry
    configuration and connectivity over MQTT; one edge device with two reporting modules."""
    from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient

    run = unique_id("q")
    ids = []
    for n, (region, status, frequency, connectivity) in enumerate(FLEET):
        device_id = f"{run}-d{n}"
        dev = registry_manager.create_device_with_sas(device_id, None, None, "enabled")
        ids.append(device_id)
        registry_manager.update_twin(
            device_id,
            Twin(tags={"run": run, "location": {"region": region, "plant": "Redmond43"}}),
            "*",
        )
        cs = f"HostName={hub.host};DeviceId={device_id};SharedAccessKey={dev.authentication.symmetric_key.primary_key}"
        client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=hub.ca_pem)
        client.connect()
        client.patch_twin_reported_properties({
            "connectivity": connectivity,
            "telemetryConfig": {"sendFrequencyInSecs": frequency, "status": status},
        })
        client.shutdown()
    edge_id = f"{run}-edge"
    registry_manager.create_device_with_sas(edge_id, None, None, "enabled", iot_edge=True)
    ids.append(edge_id)
    for module_id, status in [("scanner", "scanning"), ("idler", "idle")]:
        mod = registry_manager.create_module_with_sas(edge_id, module_id, None, None, None)
        cs = (f"HostName={hub.host};DeviceId={edge_id};ModuleId={module_id};"
              f"SharedAccessKey={mod.authentication.symmetric_key.primary_key}")
        client = IoTHubModuleClient.create_from_connection_string(cs, server_verification_cert=hub.ca_pem)
        client.connect()
        client.patch_twin_reported_properties({"status": status})
        client.shutdown()
    yield run, ids
    delete_devices(registry_manager, ids)


def query(registry_manager, text, continuation_token=None, max_item_count=None):
    return registry_manager.query_iot_hub(QuerySpecification(query=text), continuation_token, max_item_count)


def device_ids(result):
    return [twin.device_id for twin in result.items]


def test_select_star_returns_whole_twins_of_item_type_twin(registry_manager, fleet):
    run, ids = fleet
    result = query(registry_manager, f"SELECT * FROM devices WHERE tags.run = '{run}'")
    assert result.type == "twin"
    assert result.continuation_token is None
    assert device_ids(result) == ids[:6]
    twin = result.items[0]
    assert isinstance(twin, Twin)
    assert twin.etag and twin.version and twin.status == "enabled"
    assert twin.connection_state == "Disconnected" and twin.authentication_type == "sas"
    assert twin.tags["location"]["region"] == "US"
    assert isinstance(twin.properties, TwinProperties)
    assert twin.properties.reported["connectivity"] == "wired"
    assert isinstance(twin.properties.reported["$version"], int)
    assert "$metadata" in twin.properties.desired


def test_the_documented_where_clauses_select_what_the_page_says(registry_manager, fleet):
    run, ids = fleet
    scoped = f"AND tags.run = '{run}'"
    cases = [
        ("SELECT * FROM devices WHERE tags.location.region = 'US'", [0, 1, 3, 5]),
        ("SELECT * FROM devices WHERE tags.location.region = 'US' "
         "AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60", [0, 3]),
        ("SELECT * FROM devices WHERE properties.reported.connectivity IN ['wired', 'wifi']", [0, 1, 3, 5]),
        ("SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)", [0, 1, 2, 3, 4, 5]),
        ("SELECT * FROM devices WHERE properties.reported.connectivity NIN ['wired', 'wifi']", [2, 4]),
        ("SELECT * FROM devices WHERE IS_STRING(properties.reported.connectivity) "
         "AND ENDSWITH(properties.reported.connectivity, 'ed')", [0, 3]),
    ]
    for text, expected in cases:
        result = query(registry_manager, f"{text} {scoped}")
        assert device_ids(result) == [ids[i] for i in expected], text


def test_count_and_group_by_return_raw_rows(registry_manager, fleet):
    run, _ = fleet
    result = query(registry_manager, f"SELECT COUNT() as totalNumberOfDevices FROM devices WHERE tags.run = '{run}'")
    assert result.type == "raw"
    # The SDK deserializes every row as a Twin; a raw row's keys land in additional_properties.
    assert [row.additional_properties for row in result.items] == [{"totalNumberOfDevices": 6}]
    result = query(registry_manager, f"select count() from devices where tags.run = '{run}'")
    assert [row.additional_properties for row in result.items] == [{"$1": 6}]

    result = query(
        registry_manager,
        "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices "
        f"FROM devices WHERE tags.run = '{run}' GROUP BY properties.reported.telemetryConfig.status",
    )
    assert result.type == "raw"
    # `status` is a Twin attribute, so the SDK puts it there rather than in additional_properties.
    rows = [(row.status, row.additional_properties) for row in result.items]
    assert rows == [
        ("Success", {"numberOfDevices": 3}),
        ("Pending", {"numberOfDevices": 2}),
        ("Error", {"numberOfDevices": 1}),
    ]


def test_a_projection_keeps_the_twins_own_property_names(registry_manager, fleet):
    run, ids = fleet
    result = query(
        registry_manager,
        "SELECT DeviceId, LastActivityTime FROM devices "
        f"WHERE status = 'enabled' AND connectionState = 'Disconnected' AND tags.run = '{run}'",
    )
    assert result.type == "raw"
    assert [t.device_id for t in result.items] == ids[:6]
    assert all(t.last_activity_time is not None for t in result.items)
    assert all(t.tags is None and t.properties is None for t in result.items)


def test_connection_state_follows_the_device_client(hub, registry_manager, fleet):
    from azure.iot.device import IoTHubDeviceClient

    run, ids = fleet
    text = f"SELECT * FROM devices WHERE connectionState = 'Connected' AND tags.run = '{run}'"
    assert device_ids(query(registry_manager, text)) == []
    key = registry_manager.get_device(ids[2]).authentication.symmetric_key.primary_key
    cs = f"HostName={hub.host};DeviceId={ids[2]};SharedAccessKey={key}"
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=hub.ca_pem)
    client.connect()
    try:
        assert device_ids(query(registry_manager, text)) == [ids[2]]
    finally:
        client.shutdown()
    wait_until(lambda: device_ids(query(registry_manager, text)) == [], message="disconnected")


def test_module_twin_queries_read_devices_modules(registry_manager, fleet):
    _, ids = fleet
    edge = ids[-1]
    result = query(registry_manager, f"SELECT * FROM devices.modules WHERE deviceId IN ['{edge}']")
    assert result.type == "twin"
    assert {t.module_id for t in result.items} == {"$edgeAgent", "$edgeHub", "scanner", "idler"}
    result = query(
        registry_manager,
        "Select * from devices.modules where properties.reported.status = 'scanning' "
        f"and deviceId IN ['{edge}', 'device2']",
    )
    assert [(t.device_id, t.module_id) for t in result.items] == [(edge, "scanner")]


def test_max_item_count_pages_and_the_continuation_token_leads_to_the_rest(registry_manager, fleet):
    run, ids = fleet
    text = f"SELECT * FROM devices WHERE tags.run = '{run}'"
    seen, token, pages = [], None, 0
    while True:
        result = query(registry_manager, text, token, 4)
        assert len(result.items) <= 4
        seen += device_ids(result)
        pages += 1
        token = result.continuation_token
        if token is None:
            break
    assert seen == ids[:6] and pages == 2


def test_an_invalid_query_or_continuation_token_is_a_400(registry_manager, fleet):
    run, _ = fleet
    for text in [
        "SELECT * FROM devices WHERE tags.location.region = ",
        "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'a')",
        "SELECT * FORM devices",
    ]:
        with pytest.raises(HttpOperationError) as err:
            query(registry_manager, text)
        assert http_status(err.value) == 400, text
        assert "The query is invalid" in err.value.response.text, text
    with pytest.raises(HttpOperationError) as err:
        query(registry_manager, "")
    assert http_status(err.value) == 400
    assert err.value.response.headers["iothub-errorcode"] == "ArgumentNull"
    with pytest.raises(HttpOperationError) as err:
        query(registry_manager, f"SELECT * FROM devices WHERE tags.run = '{run}'", "bm90IGEgdG9rZW4=")
    assert http_status(err.value) == 400
    assert "x-ms-continuation" in err.value.response.text
