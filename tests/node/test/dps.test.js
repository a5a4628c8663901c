// The local Device Provisioning Service judged by Microsoft's Node.js SDKs, unchanged:
// azure-iot-provisioning-service with the DPS connection string the hub prints (individual
// enrollments, groups, query paging, bulk, registration states, attestation mechanisms), and
// azure-iot-provisioning-device over MQTT and HTTP with azure-iot-security-symmetric-key, whose
// registered device then connects with azure-iot-device and reads its initial twin.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt: ProvisioningMqtt } = require('azure-iot-provisioning-device-mqtt');
const { Http: ProvisioningHttp } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { info, uniqueId, registryWithCleanup } = require('./hub');

const service = ProvisioningServiceClient.fromConnectionString(info.dps.connectionString);
const fixture = registryWithCleanup();
after(() => fixture.cleanup());

/** A device key derived from its group's key, as Microsoft documents it. */
function derive(groupKey, registrationId) {
  return crypto.createHmac('sha256', Buffer.from(groupKey, 'base64')).update(registrationId).digest('base64');
}

/** `runBulkEnrollmentOperation` with a callback: azure-iot-provisioning-service 1.11.2 never
 * settles the promise it returns without one (it calls back only `if (callback)`). */
function bulk(operation) {
  return new Promise((resolve, reject) => {
    service.runBulkEnrollmentOperation(operation, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

async function register(registrationId, key, Transport) {
  const security = new SymmetricKeySecurityClient(registrationId, key);
  const client = ProvisioningDeviceClient.create(info.dps.globalEndpoint, info.dps.idScope, new Transport(), security);
  return client.register();
}

test('the DPS connection string names the provisioningserviceowner policy on the hub host', () => {
  assert.match(info.dps.connectionString, /^HostName=localhost;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=/);
  assert.match(info.dps.idScope, /^0ne[0-9A-F]{8}$/);
});

test('an individual enrollment: create with generated keys, get, update with its etag, stale etag refused, delete', async () => {
  const registrationId = uniqueId('node-enr');
  const { responseBody: created } = await service.createOrUpdateIndividualEnrollment({
    registrationId, attestation: { type: 'symmetricKey' }, initialTwin: { tags: { site: 'node' } },
  });
  assert.equal(created.provisioningStatus, 'enabled');
  assert.equal(created.attestation.symmetricKey.primaryKey.length, 44);
  const { responseBody: got } = await service.getIndividualEnrollment(registrationId);
  assert.deepEqual(got.initialTwin, { tags: { site: 'node' } });
  const { responseBody: updated } = await service.createOrUpdateIndividualEnrollment({ ...got, provisioningStatus: 'disabled' });
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.equal(updated.createdDateTimeUtc, created.createdDateTimeUtc);
  assert.notEqual(updated.etag, got.etag);
  await assert.rejects(service.createOrUpdateIndividualEnrollment({ ...got }), (err) => err.response.statusCode === 412);
  const { responseBody: attestation } = await service.getIndividualEnrollmentAttestationMechanism(registrationId);
  assert.equal(attestation.symmetricKey.primaryKey, created.attestation.symmetricKey.primaryKey);
  await service.deleteIndividualEnrollment(registrationId, updated.etag);
  await assert.rejects(service.getIndividualEnrollment(registrationId), (err) => err.response.statusCode === 404);
});

test('bulk create, a duplicate create failing alone, a paged query and bulk delete', async () => {
  const enrollments = [0, 1, 2].map(() => ({ registrationId: uniqueId('node-bulk'), attestation: { type: 'symmetricKey' } }));
  const created = await bulk({ mode: 'create', enrollments });
  assert.equal(created.isSuccessful, true, JSON.stringify(created));
  const again = await bulk({ mode: 'create', enrollments: enrollments.slice(0, 1) });
  assert.equal(again.isSuccessful, false);
  assert.equal(again.errors[0].registrationId, enrollments[0].registrationId);

  const query = service.createIndividualEnrollmentQuery({ query: '*' }, 2);
  const seen = [];
  // next() without an argument would start over: the SDK takes its argument as the token
  while (query.hasMoreResults) {
    const { responseBody: result } = await query.next(query.continuationToken);
    assert.ok(result.length <= 2);
    seen.push(...result.map((e) => e.registrationId));
  }
  for (const { registrationId } of enrollments) assert.ok(seen.includes(registrationId), registrationId);

  const deleted = await bulk({ mode: 'delete', enrollments });
  assert.equal(deleted.isSuccessful, true, JSON.stringify(deleted));
});

for (const [name, Transport] of [['MQTT', ProvisioningMqtt], ['HTTP', ProvisioningHttp]]) {
  test(`a group-derived key registers over ${name}; the device connects and its twin holds the initial twin`, async () => {
    const enrollmentGroupId = uniqueId('node-grp');
    const { responseBody: group } = await service.createOrUpdateEnrollmentGroup({
      enrollmentGroupId, attestation: { type: 'symmetricKey' },
      initialTwin: { properties: { desired: { interval: 7 } } },
    });
    const registrationId = uniqueId('node-dps');
    fixture.track(registrationId);
    const key = derive(group.attestation.symmetricKey.primaryKey, registrationId);
    const result = await register(registrationId, key, Transport);
    assert.equal(result.assignedHub, info.hostName);
    assert.equal(result.deviceId, registrationId);

    const client = Client.fromConnectionString(`HostName=${result.assignedHub};DeviceId=${result.deviceId};SharedAccessKey=${key}`, Mqtt);
    try {
      await client.open();
      const twin = await client.getTwin();
      assert.equal(twin.properties.desired.interval, 7);
    } finally {
      await client.close();
    }
    const { responseBody: state } = await service.getDeviceRegistrationState(registrationId);
    assert.equal(state.status, 'assigned');
    const { responseBody: attestation } = await service.getEnrollmentGroupAttestationMechanism(enrollmentGroupId);
    assert.equal(attestation.symmetricKey.primaryKey, group.attestation.symmetricKey.primaryKey);
    await service.deleteDeviceRegistrationState(registrationId);
    await assert.rejects(service.getDeviceRegistrationState(registrationId), (err) => err.response.statusCode === 404);
    await service.deleteEnrollmentGroup(enrollmentGroupId);
  });
}

test('a wrong key is refused over MQTT and HTTP', async () => {
  const registrationId = uniqueId('node-wrong');
  const key = crypto.randomBytes(32).toString('base64');
  for (const Transport of [ProvisioningMqtt, ProvisioningHttp]) {
    await assert.rejects(register(registrationId, key, Transport));
  }
});
