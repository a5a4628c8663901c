// IoT Plug and Play judged by the Node SDKs, unchanged: a device Client given a modelId
// (`client.setOptions({ modelId })`; azure-iot-device-mqtt puts it in the username as
// `&model-id=`, SRS_NODE_DEVICE_MQTT_41_014) shows it in its twin, and azure-iothub's
// DigitalTwinClient reads its digital twin, updates it and invokes a component command.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { DigitalTwinClient, IoTHubTokenCredentials } = require('azure-iothub');
const { serviceConnectionString, waitFor, registryWithCleanup, identityConnectionString } = require('./hub');

const fixture = registryWithCleanup();
const { registry } = fixture;
const opened = [];
after(async () => {
  for (const client of opened) {
    try { await client.close(); } catch (_) { /* closed */ }
  }
  await fixture.cleanup();
});

const MODEL = 'dtmi:com:example:Thermostat;1';

test('a device announcing its model id has it in its twin and its digital twin, which the service updates and commands', async () => {
  const device = await fixture.device('node-pnp');
  const client = Client.fromConnectionString(identityConnectionString(device), Mqtt);
  opened.push(client);
  await client.setOptions({ modelId: MODEL });
  await client.open();
  const { responseBody: twin } = await registry.getTwin(device.deviceId);
  assert.equal(twin.modelId, MODEL);

  const digitalTwins = new DigitalTwinClient(new IoTHubTokenCredentials(serviceConnectionString));
  const digitalTwin = await digitalTwins.getDigitalTwin(device.deviceId);
  assert.equal(digitalTwin.$dtId, device.deviceId);
  assert.equal(digitalTwin.$metadata.$model, MODEL);

  const deviceTwin = await client.getTwin();
  const patched = new Promise((resolve) => deviceTwin.on('properties.desired', (patch) => {
    if (patch.targetTemperature !== undefined) resolve(patch);
  }));
  await digitalTwins.updateDigitalTwin(device.deviceId, [{ op: 'add', path: '/targetTemperature', value: 18 }]);
  assert.equal((await patched).targetTemperature, 18);

  client.onDeviceMethod('thermostat1*getMaxMinReport', (request, response) => {
    response.send(200, { since: request.payload.since, max: 30 }, () => {});
  });
  // The SDK subscribes to methods in the background: until it has, the command is refused
  // (404 DeviceNotOnline).
  const answer = await waitFor(() => digitalTwins.invokeComponentCommand(device.deviceId, 'thermostat1',
    'getMaxMinReport', { since: 5 }, { responseTimeoutInSeconds: 10 }), 'the command answer');
  // The device's payload is the body, its status the x-ms-command-statuscode header.
  assert.deepEqual(answer.body, { since: 5, max: 30 });
  assert.equal(answer.xMsCommandStatuscode, 200);
  assert.ok(answer.xMsRequestId);
});
