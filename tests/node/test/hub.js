// What the tests share: the hub's facts from hub.json (the connection string exactly as the hub
// prints it), unique ids, polling, and identity cleanup. Nothing here talks to the SDKs' insides.
'use strict';

const fs = require('node:fs');
const crypto = require('node:crypto');
const { Registry } = require('azure-iothub');

const info = JSON.parse(fs.readFileSync(process.env.EDGETWIN_HUB_JSON, 'utf8'));

/** The iothubowner connection string the hub printed. */
const serviceConnectionString = info.serviceConnectionString;

/** A fresh id with a readable prefix. */
function uniqueId(prefix) {
  return `${prefix}-${crypto.randomBytes(5).toString('hex')}`;
}

/** Polls `fn` until it returns something truthy or `timeoutMs` passes. */
async function waitFor(fn, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A registry and the devices a test made, deleted by `cleanup()`. */
function registryWithCleanup() {
  const registry = Registry.fromConnectionString(serviceConnectionString);
  const made = [];
  return {
    registry,
    async device(prefix, edge = false) {
      const deviceId = uniqueId(prefix);
      const { responseBody } = await registry.create({ deviceId, capabilities: { iotEdge: edge } });
      made.push(deviceId);
      return responseBody;
    },
    track(deviceId) {
      made.push(deviceId);
    },
    async cleanup() {
      for (const id of made) {
        try { await registry.delete(id); } catch (_) { /* already gone */ }
      }
    },
  };
}

/** `HostName=…;DeviceId=…[;ModuleId=…];SharedAccessKey=…` for an identity the registry returned. */
function identityConnectionString(identity) {
  const host = serviceConnectionString.match(/HostName=([^;]+)/)[1];
  const module = identity.moduleId ? `;ModuleId=${identity.moduleId}` : '';
  return `HostName=${host};DeviceId=${identity.deviceId}${module};SharedAccessKey=${identity.authentication.symmetricKey.primaryKey}`;
}

/** An azure-iot-device client of `device` over `transport` that completes every cloud-to-device
 * message it gets; they collect in `received`. */
function completingClient(device, transport) {
  const { Client } = require('azure-iot-device');
  const client = Client.fromConnectionString(identityConnectionString(device), transport);
  const received = [];
  client.on('message', (msg) => {
    received.push(msg);
    client.complete(msg, () => {});
  });
  return { client, received };
}

module.exports = { info, serviceConnectionString, uniqueId, waitFor, registryWithCleanup, identityConnectionString, completingClient };
