// X.509 devices judged by azure-iot-device with azure-iot-device-mqtt, unchanged: a connection
// string with `x509=true` and `setOptions({ cert, key })`, over MQTT and MQTT over WebSockets.
// The certificates are made with the openssl CLI (certs.js); CA-signed ones are signed with the
// hub's own CA.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Message, NoRetry } = require('azure-iot-common');
const { info, uniqueId, registryWithCleanup } = require('./hub');
const { certificate } = require('./certs');

const fixture = registryWithCleanup();
const { registry } = fixture;
const opened = [];
after(async () => {
  for (const client of opened) {
    try { await client.close(); } catch (_) { /* closed or refused */ }
  }
  await fixture.cleanup();
});

async function x509Device(authentication) {
  const deviceId = uniqueId('node-x509');
  await registry.create({ deviceId, authentication });
  fixture.track(deviceId);
  return deviceId;
}

function x509Client(deviceId, { cert, key }, Transport = Mqtt) {
  const client = Client.fromConnectionString(`HostName=${info.hostName};DeviceId=${deviceId};x509=true`, Transport);
  client.setOptions({ cert, key });
  client.setRetryPolicy(new NoRetry());
  opened.push(client);
  return client;
}

async function assertConnects(client) {
  await client.open();
  const twin = await client.getTwin();
  assert.equal(typeof twin.properties.desired.$version, 'number');
  await client.sendEvent(new Message('hello over x509'));
}

for (const [name, Transport] of [['Mqtt', Mqtt], ['MqttWs', MqttWs]]) {
  test(`a self-signed device over ${name} connects with its certificate, gets its twin and sends`, async () => {
    const cert = certificate('node-device');
    const deviceId = await x509Device({ type: 'selfSigned', x509Thumbprint: { primaryThumbprint: cert.thumbprint } });
    await assertConnects(x509Client(deviceId, cert, Transport));
  });

  test(`a device signed by the hub's CA over ${name} connects`, async () => {
    const deviceId = await x509Device({ type: 'certificateAuthority' });
    await assertConnects(x509Client(deviceId, certificate(deviceId, true), Transport));
  });
}

test('a wrong certificate is refused', async () => {
  const registered = certificate('node-device');
  const selfSigned = await x509Device({ type: 'selfSigned', x509Thumbprint: { primaryThumbprint: registered.thumbprint } });
  await assert.rejects(x509Client(selfSigned, certificate('node-device')).open());
  const ca = await x509Device({ type: 'certificateAuthority' });
  await assert.rejects(x509Client(ca, certificate(ca)).open());
  await assert.rejects(x509Client(ca, certificate('someone-else', true)).open());
});
