// Cloud-to-device messages judged by the Node SDKs, unchanged: azure-iothub's Client.send (AMQP,
// /messages/devicebound) sends, azure-iot-device over MQTT and MQTT over WebSockets receives with the message id, ack and
// application properties, and completes it; azure-iot-device-http receives over HTTPS and
// abandons, rejects and completes (lock tokens as ETag), and azure-iothub's feedback receiver
// (/messages/serviceBound/feedback) reports each fate; the 51st pending message is refused as
// IoT Hub refuses it (amqp:resource-limit-exceeded, which azure-iothub turns into
// DeviceMaximumQueueDepthExceededError).
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client: ServiceClient } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Http } = require('azure-iot-device-http');
const { Message } = require('azure-iot-common');
const { serviceConnectionString, waitFor, registryWithCleanup, identityConnectionString, completingClient } = require('./hub');

const fixture = registryWithCleanup();
after(() => fixture.cleanup());

for (const transport of [Mqtt, MqttWs]) {
  test(`a message sent with Client.send reaches a ${transport.name} device with its properties, once`, async () => {
    const device = await fixture.device(`node-c2d-${transport.name.toLowerCase()}`);
    const service = ServiceClient.fromConnectionString(serviceConnectionString);
    await service.open();
    const message = new Message('hello node device');
    message.messageId = 'node-c2d-1';
    message.ack = 'full';
    message.properties.add('color', 'dark blue');
    await service.send(device.deviceId, message);
    await service.close();

    const { client, received } = completingClient(device, transport);
    await client.open();
    try {
      await waitFor(() => received.length > 0, 'the cloud-to-device message', 10000);
      const [got] = received;
      assert.equal(got.data.toString(), 'hello node device');
      assert.equal(got.messageId, 'node-c2d-1');
      assert.equal(got.properties.getValue('color'), 'dark blue');
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(received.length, 1, 'delivered once');
    } finally {
      await client.close();
    }
  });
}

test('the 51st pending message is refused with DeviceMaximumQueueDepthExceededError', async () => {
  const device = await fixture.device('node-c2d-full');
  const service = ServiceClient.fromConnectionString(serviceConnectionString);
  await service.open();
  try {
    for (let n = 0; n < 50; n++) {
      await service.send(device.deviceId, new Message(`m${n}`));
    }
    await assert.rejects(service.send(device.deviceId, new Message('one too many')),
      (err) => err.constructor.name === 'DeviceMaximumQueueDepthExceededError');
  } finally {
    await service.close();
  }
});

/** The service's feedback receiver, with every record it got for `deviceId` (each batch completed). */
async function feedbackFor(service, deviceId) {
  const receiver = await new Promise((resolve, reject) => {
    service.getFeedbackReceiver((err, r) => (err ? reject(err) : resolve(r)));
  });
  const records = [];
  receiver.on('message', (msg) => {
    for (const record of JSON.parse(msg.data.toString())) {
      if (record.deviceId === deviceId) records.push(record);
    }
    receiver.complete(msg, () => {});
  });
  return records;
}

test('an HTTPS device abandons, rejects and completes; the feedback receiver reports each fate', async () => {
  const device = await fixture.device('node-c2d-http');
  const service = ServiceClient.fromConnectionString(serviceConnectionString);
  await service.open();
  const feedback = await feedbackFor(service, device.deviceId);
  for (const name of ['keep', 'drop']) {
    const message = new Message(`to ${name}`);
    message.messageId = `${device.deviceId}-${name}`;
    message.ack = 'full';
    message.properties.add('color', 'blue');
    await service.send(device.deviceId, message);
  }

  const client = Client.fromConnectionString(identityConnectionString(device), Http);
  const seen = [];
  const settled = [];
  client.on('message', (msg) => {
    seen.push(msg);
    const deliveries = seen.filter((m) => m.messageId === msg.messageId).length;
    const action = msg.messageId.endsWith('drop') ? 'reject' : deliveries === 1 ? 'abandon' : 'complete';
    client[action](msg, (err) => settled.push([action, err]));
  });
  await client.open();
  try {
    await waitFor(() => feedback.length >= 2, 'feedback for both messages', 15000);
    const fates = Object.fromEntries(feedback.map((r) => [r.originalMessageId, r.statusCode]));
    assert.deepEqual(fates, { [`${device.deviceId}-keep`]: 'Success', [`${device.deviceId}-drop`]: 'Rejected' });
    assert.deepEqual(settled.map(([action]) => action).sort(), ['abandon', 'complete', 'reject']);
    assert.deepEqual(settled.map(([, err]) => err), [null, null, null]);
    const [first] = seen;
    assert.equal(first.data.toString(), 'to keep');
    assert.equal(first.properties.getValue('iothub-app-color'), 'blue');
    assert.equal(seen.filter((m) => m.messageId.endsWith('keep')).length, 2, 'delivered again after the abandon');
    assert.notEqual(seen[0].lockToken, seen[2].lockToken);
    // the first lock was given back: settling with it is refused (412, DeviceMessageLockLost)
    const stale = await new Promise((resolve) => client.complete(first, resolve));
    assert.equal(stale && stale.response && stale.response.statusCode, 412);
  } finally {
    await client.close();
    await service.close();
  }
});

test('a message that expires unread is dead-lettered to feedback as Expired, its device never connecting', async () => {
  const device = await fixture.device('node-c2d-expired');
  const service = ServiceClient.fromConnectionString(serviceConnectionString);
  await service.open();
  try {
    const feedback = await feedbackFor(service, device.deviceId);
    const message = new Message('too late');
    message.messageId = `${device.deviceId}-expired`;
    message.ack = 'negative';
    message.expiryTimeUtc = Date.now() + 1000;
    await service.send(device.deviceId, message);
    await waitFor(() => feedback.length > 0, 'the Expired feedback record', 10000);
    assert.equal(feedback[0].originalMessageId, message.messageId);
    assert.equal(feedback[0].statusCode, 'Expired');
    assert.ok(Date.parse(feedback[0].enqueuedTimeUtc) >= message.expiryTimeUtc - 1000);
  } finally {
    await service.close();
  }
});
