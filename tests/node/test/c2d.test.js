// Cloud-to-device messages judged by the Node SDKs, unchanged: azure-iothub's Client.send (AMQP,
// /messages/devicebound) sends, azure-iot-device over MQTT receives with the message id, ack and
// application properties, and completes it; the 51st pending message is refused as IoT Hub
// refuses it (amqp:resource-limit-exceeded, which azure-iothub turns into
// DeviceMaximumQueueDepthExceededError).
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client: ServiceClient } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Message } = require('azure-iot-common');
const { serviceConnectionString, waitFor, registryWithCleanup, identityConnectionString } = require('./hub');

const fixture = registryWithCleanup();
after(() => fixture.cleanup());

test('a message sent with Client.send reaches an MQTT device with its properties, once', async () => {
  const device = await fixture.device('node-c2d');
  const service = ServiceClient.fromConnectionString(serviceConnectionString);
  await service.open();
  const message = new Message('hello node device');
  message.messageId = 'node-c2d-1';
  message.ack = 'full';
  message.properties.add('color', 'dark blue');
  await service.send(device.deviceId, message);
  await service.close();

  const client = Client.fromConnectionString(identityConnectionString(device), Mqtt);
  const received = [];
  client.on('message', (msg) => {
    received.push(msg);
    client.complete(msg, () => {});
  });
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
