// The service side judged by azure-iothub (Registry), unchanged, with the connection string the
// hub prints: identities, bulk add/update/remove, twins and module twins with etags,
// configurations and applyConfigurationContentOnDevice.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { serviceConnectionString, uniqueId, registryWithCleanup } = require('./hub');

const fixture = registryWithCleanup();
const { registry } = fixture;
after(() => fixture.cleanup());

test('the printed connection string names no port, so the SDK dials 443 itself', () => {
  assert.match(serviceConnectionString, /^HostName=localhost;SharedAccessKeyName=iothubowner;/);
});

test('create, get, update and delete a device; a duplicate create is DeviceAlreadyExistsError', async () => {
  const device = await fixture.device('node-dev');
  assert.equal(device.status, 'enabled');
  assert.equal(device.authentication.symmetricKey.primaryKey.length, 44);
  const { responseBody: got } = await registry.get(device.deviceId);
  assert.equal(got.deviceId, device.deviceId);
  await assert.rejects(registry.create({ deviceId: device.deviceId }), { name: 'DeviceAlreadyExistsError' });
  const { responseBody: updated } = await registry.update({ ...got, status: 'disabled' });
  assert.equal(updated.status, 'disabled');
  await registry.delete(device.deviceId);
  await assert.rejects(registry.get(device.deviceId), { name: 'DeviceNotFoundError' });
});

test('addDevices, updateDevices and removeDevices go through bulk import modes', async () => {
  const ids = [uniqueId('node-bulk'), uniqueId('node-bulk')];
  ids.forEach((id) => fixture.track(id));
  const added = await registry.addDevices(ids.map((deviceId) => ({ deviceId })));
  assert.equal(added.responseBody.isSuccessful, true, JSON.stringify(added.responseBody));
  // forceUpdate=true sends importMode 'Update'
  const updated = await registry.updateDevices(ids.map((deviceId) => ({ deviceId, status: 'disabled' })), true);
  assert.equal(updated.responseBody.isSuccessful, true, JSON.stringify(updated.responseBody));
  for (const id of ids) {
    assert.equal((await registry.get(id)).responseBody.status, 'disabled');
  }
  // forceUpdate=false sends 'UpdateIfMatchETag': a stale etag is that item's PreconditionFailed
  const [first] = ids;
  const stale = await registry.updateDevices([{ deviceId: first, status: 'enabled', eTag: 'c3RhbGU=' }], false)
    .then((r) => r.responseBody, (e) => JSON.parse(e.responseBody));
  assert.equal(stale.isSuccessful, false);
  assert.equal(stale.errors[0].errorCode, 'PreconditionFailed');
  const removed = await registry.removeDevices(ids.map((deviceId) => ({ deviceId })), true);
  assert.equal(removed.responseBody.isSuccessful, true, JSON.stringify(removed.responseBody));
  for (const id of ids) {
    await assert.rejects(registry.get(id), { name: 'DeviceNotFoundError' });
  }
});

test('twins update with the current etag, a stale quoted etag is InvalidEtagError', async () => {
  const device = await fixture.device('node-twin');
  const { responseBody: twin } = await registry.getTwin(device.deviceId);
  const { responseBody: changed } = await registry.updateTwin(device.deviceId,
    { tags: { ring: 'canary' }, properties: { desired: { telemetryInterval: 122 } } }, twin.etag);
  assert.equal(changed.tags.ring, 'canary');
  assert.equal(changed.properties.desired.telemetryInterval, 122);
  assert.notEqual(changed.etag, twin.etag);
  await assert.rejects(
    registry.updateTwin(device.deviceId, { tags: { ring: 'late' } }, twin.etag),
    { name: 'InvalidEtagError' },
  );
});

test('module identities and module twins', async () => {
  const device = await fixture.device('node-mod', true);
  const moduleId = uniqueId('m');
  await registry.addModule({ deviceId: device.deviceId, moduleId });
  const { responseBody: modules } = await registry.getModulesOnDevice(device.deviceId);
  assert.deepEqual(modules.map((m) => m.moduleId).sort(), ['$edgeAgent', '$edgeHub', moduleId].sort());
  const { responseBody: twin } = await registry.getModuleTwin(device.deviceId, moduleId);
  assert.equal(twin.moduleId, moduleId);
  const { responseBody: changed } = await registry.updateModuleTwin(device.deviceId, moduleId,
    { properties: { desired: { telemetryInterval: 122 } } }, twin.etag);
  assert.equal(changed.properties.desired.telemetryInterval, 122);
  await assert.rejects(
    registry.updateModuleTwin(device.deviceId, moduleId, { properties: { desired: { x: 1 } } }, twin.etag),
    { name: 'InvalidEtagError' },
  );
});

test('configurations target edge devices by tags and applyConfigurationContentOnDevice sets module twins', async () => {
  const device = await fixture.device('node-cfg', true);
  const ring = uniqueId('ring');
  await registry.updateTwin(device.deviceId, { tags: { ring } }, '*');
  const modulesContent = {
    $edgeAgent: { 'properties.desired': { schemaVersion: '1.1', runtime: { type: 'docker', settings: {} },
      systemModules: {}, modules: {} } },
    $edgeHub: { 'properties.desired': { schemaVersion: '1.1', routes: {}, storeAndForwardConfiguration: { timeToLiveSecs: 7200 } } },
  };
  const id = uniqueId('cfg');
  await registry.addConfiguration({ id, content: { modulesContent }, targetCondition: `tags.ring='${ring}'`, priority: 5 });
  const { responseBody: cfg } = await registry.getConfiguration(id);
  assert.equal(cfg.id, id);
  assert.equal(cfg.priority, 5);
  // IoT Hub's system metrics of an edge deployment: the counts, and the queries behind them
  // (the status is on $edgeAgent's twin; nothing has reported yet)
  assert.deepEqual(cfg.systemMetrics.results,
    { targetedCount: 1, appliedCount: 1, reportedSuccessfulCount: 0, reportedFailedCount: 0 });
  assert.equal(cfg.systemMetrics.queries.appliedCount, "select deviceId from devices.modules where "
    + `moduleId = '$edgeAgent' and configurations.[[${id}]].status = 'Applied'`);
  const { responseBody: agentTwin } = await registry.getModuleTwin(device.deviceId, '$edgeAgent');
  assert.equal(agentTwin.configurations[id].status, 'Applied');
  const { responseBody: all } = await registry.getConfigurations();
  assert.ok(all.some((c) => c.id === id));
  const { responseBody: edgeHubTwin } = await registry.getModuleTwin(device.deviceId, '$edgeHub');
  assert.equal(edgeHubTwin.properties.desired.storeAndForwardConfiguration.timeToLiveSecs, 7200);
  await registry.removeConfiguration(id);
  await assert.rejects(registry.getConfiguration(id));

  const other = await fixture.device('node-apply', true);
  const direct = JSON.parse(JSON.stringify(modulesContent));
  direct.$edgeHub['properties.desired'].storeAndForwardConfiguration.timeToLiveSecs = 60;
  await registry.applyConfigurationContentOnDevice(other.deviceId, { modulesContent: direct });
  const { responseBody: applied } = await registry.getModuleTwin(other.deviceId, '$edgeHub');
  assert.equal(applied.properties.desired.storeAndForwardConfiguration.timeToLiveSecs, 60);
});
