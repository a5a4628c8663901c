// X.509 attestation of the local Device Provisioning Service judged by Microsoft's Node.js SDKs,
// unchanged: an individual enrollment made with azure-iot-provisioning-service
// (`x509.clientCertificates`), a device that registers with azure-iot-security-x509's
// `X509Security` over azure-iot-provisioning-device-mqtt and -http, then connects with
// azure-iot-device (`x509=true`) and reads its initial twin; another certificate of the same name
// is refused over both.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt: ProvisioningMqtt } = require('azure-iot-provisioning-device-mqtt');
const { Http: ProvisioningHttp } = require('azure-iot-provisioning-device-http');
const { X509Security } = require('azure-iot-security-x509');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { info, uniqueId, registryWithCleanup } = require('./hub');
const { certificate } = require('./certs');

const service = ProvisioningServiceClient.fromConnectionString(info.dps.connectionString);
const fixture = registryWithCleanup();
after(() => fixture.cleanup());

function register(registrationId, { cert, key }, Transport) {
  const security = new X509Security(registrationId, { cert, key });
  const client = ProvisioningDeviceClient.create(info.dps.globalEndpoint, info.dps.idScope, new Transport(), security);
  return client.register();
}

for (const [name, Transport] of [['MQTT', ProvisioningMqtt], ['HTTP', ProvisioningHttp]]) {
  test(`an individual X.509 enrollment registers over ${name}; the certificate then connects and reads the initial twin`, async () => {
    const registrationId = uniqueId('node-x509dps');
    const device = certificate(registrationId);
    const { responseBody: created } = await service.createOrUpdateIndividualEnrollment({
      registrationId,
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: device.cert } } } },
      initialTwin: { properties: { desired: { interval: 9 } } },
    });
    assert.equal(created.attestation.x509.clientCertificates.primary.info.sha256Thumbprint, device.thumbprint);
    fixture.track(registrationId);

    await assert.rejects(register(registrationId, certificate(registrationId), Transport));
    const result = await register(registrationId, device, Transport);
    assert.equal(result.assignedHub, info.hostName);
    assert.equal(result.deviceId, registrationId);

    const client = Client.fromConnectionString(`HostName=${result.assignedHub};DeviceId=${result.deviceId};x509=true`, Mqtt);
    client.setOptions({ cert: device.cert, key: device.key });
    try {
      await client.open();
      const twin = await client.getTwin();
      assert.equal(twin.properties.desired.interval, 9);
    } finally {
      await client.close();
    }
    await service.deleteIndividualEnrollment(registrationId);
  });
}
