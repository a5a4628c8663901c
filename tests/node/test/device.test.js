// The device side judged by azure-iot-device with azure-iot-device-mqtt and azure-iot-device-http,
// unchanged: Client over MQTT, MQTT over WebSockets and HTTPS (device-to-cloud messages), ModuleClient from a connection string and from the IoT Edge
// environment (workload API), twins, desired patches, direct methods invoked through
// azure-iothub's Client, and module outputs.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const https = require('node:https');
const { Client, ModuleClient } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Http } = require('azure-iot-device-http');
const { Message } = require('azure-iot-common');
const service = require('azure-iothub');
const { info, serviceConnectionString, uniqueId, waitFor, registryWithCleanup, identityConnectionString } = require('./hub');

const fixture = registryWithCleanup();
const { registry } = fixture;
const serviceClient = service.Client.fromConnectionString(serviceConnectionString);
const opened = [];
after(async () => {
  for (const client of opened) {
    try { await client.close(); } catch (_) { /* closed */ }
  }
  await fixture.cleanup();
});

async function open(client) {
  opened.push(client);
  await client.open();
  return client;
}

/** GET on the hub's REST API with the iothubowner key (the edgetwin routes the SDKs lack). */
function hubGet(path) {
  const { SharedAccessSignature } = require('azure-iothub');
  const sas = SharedAccessSignature.create('localhost', 'iothubowner', info.policies.iothubowner,
    Math.floor(Date.now() / 1000) + 600).toString();
  return new Promise((resolve, reject) => {
    https.get({ host: 'localhost', port: 443, path, headers: { Authorization: sas } }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`${res.statusCode} ${body}`))));
    }).on('error', reject);
  });
}

for (const [name, Transport] of [['Mqtt', Mqtt], ['MqttWs', MqttWs]]) {
  test(`a device Client over ${name} gets its twin, reports, receives a desired patch and answers a method`, async () => {
    const device = await fixture.device(`node-${name.toLowerCase()}`);
    const client = await open(Client.fromConnectionString(identityConnectionString(device), Transport));
    const twin = await client.getTwin();
    assert.equal(typeof twin.properties.desired.$version, 'number');
    await new Promise((resolve, reject) => twin.properties.reported.update({ transport: name }, (e) => (e ? reject(e) : resolve())));
    const { responseBody: serviceTwin } = await registry.getTwin(device.deviceId);
    assert.equal(serviceTwin.properties.reported.transport, name);

    const patches = [];
    twin.on('properties.desired', (patch) => patches.push(patch));
    // the listener subscribes in the background; a twin GET sent after it is answered after the
    // hub has the subscription (one connection, in order), so the patch below cannot be missed
    await twin.get();
    await registry.updateTwin(device.deviceId, { properties: { desired: { telemetryInterval: 122 } } }, '*');
    await waitFor(() => patches.find((p) => p.telemetryInterval === 122), 'the desired patch');

    client.onDeviceMethod('ping', (request, response) => {
      response.send(200, { pong: request.payload.n }, () => {});
    });
    await waitFor(async () => {
      const { result } = await serviceClient.invokeDeviceMethod(device.deviceId,
        { methodName: 'ping', payload: { n: 7 }, responseTimeoutInSeconds: 5 });
      return result.status === 200 && result.payload.pong === 7;
    }, 'the method answer');
  });
}

test('a ModuleClient sends to an output and answers a module method invoked by the service', async () => {
  const device = await fixture.device('node-edge', true);
  const moduleId = uniqueId('m');
  const { responseBody: module } = await registry.addModule({ deviceId: device.deviceId, moduleId });
  const client = await open(ModuleClient.fromConnectionString(identityConnectionString(module), Mqtt));
  const message = new Message(JSON.stringify({ seq: 1 }));
  message.properties.add('kind', 'node-test');
  await client.sendOutputEvent('telemetry', message);
  const log = await waitFor(async () => {
    const messages = await hubGet(`/edgetwin/messages?api-version=2021-04-12&deviceId=${device.deviceId}&moduleId=${moduleId}&output=telemetry`);
    return messages.length ? messages : null;
  }, 'the output in the hub message log');
  assert.equal(JSON.parse(log[0].body).seq, 1);
  assert.equal(log[0].properties.kind, 'node-test');

  client.onMethod('getConfig', (request, response) => response.send(200, { moduleId, asked: request.payload }, () => {}));
  await waitFor(async () => {
    const { result } = await serviceClient.invokeDeviceMethod(device.deviceId, moduleId,
      { methodName: 'getConfig', payload: { verbose: true }, responseTimeoutInSeconds: 5 });
    assert.equal(result.status, 200, JSON.stringify(result));
    assert.deepEqual(result.payload.asked, { verbose: true });
    return result.payload.moduleId === moduleId;
  }, 'the module method answer');
  // A null payload reaches the device as an empty body, as IoT Hub sends it (the Python device
  // SDK reads it as null since Azure/azure-iot-sdk-python#761); this Node SDK cannot parse an
  // empty body and answers 400 itself, before the handler runs.
  const { result: nullPayload } = await serviceClient.invokeDeviceMethod(device.deviceId, moduleId,
    { methodName: 'getConfig', payload: null, responseTimeoutInSeconds: 5 });
  assert.equal(nullPayload.status, 400, JSON.stringify(nullPayload));
  assert.match(nullPayload.payload, /^Invalid request format/);
});

test('ModuleClient.fromEnvironment signs through the workload API and reports to its twin', async () => {
  const device = await fixture.device('node-env', true);
  const moduleId = uniqueId('m');
  await registry.addModule({ deviceId: device.deviceId, moduleId });
  const environment = await hubGet(`/edgetwin/devices/${device.deviceId}/modules/${moduleId}/edgeEnvironment?api-version=2021-04-12`);
  const saved = { ...process.env };
  Object.assign(process.env, environment);
  delete process.env.EdgeHubConnectionString;
  delete process.env.IotHubConnectionString;
  let client;
  try {
    client = await ModuleClient.fromEnvironment(Mqtt);
  } finally {
    process.env = saved;
  }
  await open(client);
  const twin = await client.getTwin();
  await new Promise((resolve, reject) => twin.properties.reported.update({ fromEnvironment: true }, (e) => (e ? reject(e) : resolve())));
  const { responseBody: serviceTwin } = await registry.getModuleTwin(device.deviceId, moduleId);
  assert.equal(serviceTwin.properties.reported.fromEnvironment, true);
});

test('a device Client over HTTPS sends events with their properties, and finds no cloud-to-device message', async () => {
  const device = await fixture.device('node-http');
  const client = await open(Client.fromConnectionString(identityConnectionString(device), Http));
  const message = new Message(JSON.stringify({ temperature: 21 }));
  message.messageId = 'http-1';
  message.properties.add('level', 'info');
  await client.sendEvent(message);
  await client.sendEventBatch([new Message('a'), new Message('b')]);
  const logged = await waitFor(async () => {
    const got = await hubGet(`/edgetwin/messages?api-version=2021-04-12&deviceId=${device.deviceId}`);
    return got.length >= 3 && got;
  }, 'the three HTTPS messages in the hub log');
  assert.equal(logged[0].body, '{"temperature":21}');
  assert.equal(logged[0].properties.level, 'info');
  assert.equal(logged[0].properties['$.mid'], 'http-1');
  assert.deepEqual(logged.slice(1).map((m) => m.body), ['a', 'b']);
});
