// The Event Hub-compatible endpoint judged by @azure/event-hubs, unchanged: an
// EventHubConsumerClient built from the Event Hub-compatible connection string the hub prints
// (hub.json `eventHubConnectionString`) reads a device's telemetry with IoT Hub's system
// properties; the hub's CA comes from NODE_EXTRA_CA_CERTS, as for the IoT SDKs. AMQP over
// WebSockets on 443 too: @azure/event-hubs with `webSocketOptions` (`/$servicebus/websocket`) and
// azure-iothub's AmqpWs transport (`/$iothub/websocket`, subprotocol AMQPWSB10) sending
// cloud-to-device. An unknown partition or consumer group gets the SDK's errors for Event Hubs'.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Http } = require('azure-iot-device-http');
const { Message } = require('azure-iot-common');
const { Client: ServiceClient, AmqpWs } = require('azure-iothub');
const WebSocket = require('ws');
const { info, serviceConnectionString, waitFor, registryWithCleanup, identityConnectionString, completingClient } = require('./hub');

const fixture = registryWithCleanup();
after(() => fixture.cleanup());

test('EventHubConsumerClient reads a device\'s telemetry (MQTT, then HTTPS) with IoT Hub\'s system properties', async () => {
  const device = await fixture.device('node-eh');
  const client = Client.fromConnectionString(identityConnectionString(device), Mqtt);
  await client.open();
  const message = new Message('{"temperature": 22}');
  message.messageId = 'node-mid-1';
  message.correlationId = 'node-cid-1';
  message.contentType = 'application/json';
  message.contentEncoding = 'utf-8';
  message.properties.add('level', 'high');
  await client.sendEvent(message);
  await client.close();
  const overHttps = Client.fromConnectionString(identityConnectionString(device), Http);
  await overHttps.open();
  await overHttps.sendEvent(new Message('over https'));
  await overHttps.close();

  const consumer = new EventHubConsumerClient('$Default', info.eventHubConnectionString);
  try {
    const ids = await consumer.getPartitionIds();
    assert.deepEqual(ids, ['0', '1', '2', '3']);
    const received = [];
    const subscription = consumer.subscribe({
      processEvents: async (events) => {
        received.push(...events.filter((e) => e.systemProperties['iothub-connection-device-id'] === device.deviceId));
      },
      processError: async (err) => { received.error = err; },
    }, { startPosition: earliestEventPosition, maxWaitTimeInSeconds: 1 });
    await waitFor(() => received.length > 1 || received.error, 'the device\'s events', 20000);
    await subscription.close();
    assert.equal(received.error, undefined);
    const [event, second] = received;
    assert.equal(second.body.toString(), 'over https', 'HTTPS messages reach the endpoint too, in order');
    assert.deepEqual(event.body, { temperature: 22 });
    assert.equal(event.messageId, 'node-mid-1');
    assert.equal(event.correlationId, 'node-cid-1');
    assert.equal(event.contentType, 'application/json');
    assert.deepEqual(event.properties, { level: 'high' });
    assert.equal(event.systemProperties['iothub-message-source'], 'Telemetry');
    assert.equal(event.systemProperties['iothub-connection-device-id'], device.deviceId);
    assert.equal(typeof event.sequenceNumber, 'number');
    assert.ok(event.enqueuedTimeUtc instanceof Date);
    assert.equal(new Date(event.systemProperties['iothub-enqueuedtime']).getTime(), event.enqueuedTimeUtc.getTime());
  } finally {
    await consumer.close();
  }
});

test('over WebSockets on 443: EventHubConsumerClient reads telemetry, azure-iothub AmqpWs sends cloud-to-device', async () => {
  const device = await fixture.device('node-ws');
  const { client, received } = completingClient(device, Mqtt);
  await client.open();
  try {
    await client.sendEvent(new Message('over websockets'));
    const service = ServiceClient.fromConnectionString(serviceConnectionString, AmqpWs);
    await service.open();
    await service.send(device.deviceId, new Message('c2d over websockets'));
    await service.close();
    await waitFor(() => received.length > 0, 'the cloud-to-device message sent over AmqpWs', 10000);
    assert.equal(received[0].data.toString(), 'c2d over websockets');
  } finally {
    await client.close();
  }

  const consumer = new EventHubConsumerClient('$Default', info.eventHubConnectionString, {
    webSocketOptions: { webSocket: WebSocket },
  });
  try {
    assert.deepEqual(await consumer.getPartitionIds(), ['0', '1', '2', '3']);
    const events = [];
    const subscription = consumer.subscribe({
      processEvents: async (batch) => {
        events.push(...batch.filter((e) => e.systemProperties['iothub-connection-device-id'] === device.deviceId));
      },
      processError: async (err) => { events.error = err; },
    }, { startPosition: earliestEventPosition, maxWaitTimeInSeconds: 1 });
    await waitFor(() => events.length > 0 || events.error, 'the device\'s event over WebSockets', 20000);
    await subscription.close();
    assert.equal(events.error, undefined);
    assert.equal(events[0].body.toString(), 'over websockets');
  } finally {
    await consumer.close();
  }
});

test('an unknown partition or consumer group is refused as Event Hubs refuses it', async () => {
  const refusal = async (group, partition) => {
    const consumer = new EventHubConsumerClient(group, info.eventHubConnectionString);
    const errors = [];
    const subscription = consumer.subscribe(partition, {
      processEvents: async () => {},
      processError: async (err) => { errors.push(err); },
    }, { maxWaitTimeInSeconds: 1 });
    try {
      await waitFor(() => errors.length > 0, `the refusal of ${group}/${partition}`, 10000);
      return errors[0];
    } finally {
      await subscription.close();
      await consumer.close();
    }
  };
  const partition = await refusal('$Default', '7');
  assert.equal(partition.code, 'ArgumentOutOfRangeError');
  assert.match(partition.message, /It should be between 0 and 3/);
  const group = await refusal('no-such-group', '0');
  assert.equal(group.code, 'MessagingEntityNotFoundError');
  assert.match(group.message, /eventhub:localhost~32766\|no-such-group' could not be found/);
});
