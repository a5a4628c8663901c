// Scheduled jobs judged by azure-iothub's JobClient, unchanged (its promises resolve to
// `{ jobStatus, response }`): a twin update and a direct method
// scheduled over a query of device twins run and report their status; jobs for later are listed
// with createQuery and cancelled with cancelJob, then listed page by page; a bad request is
// refused.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const service = require('azure-iothub');
const { serviceConnectionString, uniqueId, waitFor, registryWithCleanup, identityConnectionString } = require('./hub');

const fixture = registryWithCleanup();
const { registry } = fixture;
const jobClient = service.JobClient.fromConnectionString(serviceConnectionString);
const serviceClient = service.Client.fromConnectionString(serviceConnectionString);
const opened = [];
after(async () => {
  for (const client of opened) {
    try { await client.close(); } catch (_) { /* closed */ }
  }
  await fixture.cleanup();
});

/** The job once it is over. */
function ended(jobId) {
  return waitFor(async () => {
    const { jobStatus } = await jobClient.getJob(jobId);
    return ['completed', 'failed', 'cancelled'].includes(jobStatus.status) && jobStatus;
  }, `job ${jobId} to end`);
}

const inList = (ids) => `deviceId IN [${ids.map((id) => `'${id}'`).join(', ')}]`;

test('scheduleTwinUpdate patches the twins its query selects', async () => {
  const devices = [await fixture.device('node-job'), await fixture.device('node-job')];
  const other = await fixture.device('node-job');
  const jobId = uniqueId('twinjob');
  const { jobStatus: created } = await jobClient.scheduleTwinUpdate(jobId, inList(devices.map((d) => d.deviceId)),
    { etag: '*', tags: { floor: 3 }, properties: { desired: { mode: 'eco' } } }, new Date(), 60);
  assert.equal(created.jobId, jobId);
  assert.equal(created.type, 'scheduleUpdateTwin');
  const job = await ended(jobId);
  assert.equal(job.status, 'completed');
  assert.deepEqual(job.deviceJobStatistics,
    { deviceCount: 2, failedCount: 0, succeededCount: 2, runningCount: 0, pendingCount: 0 });
  for (const { deviceId } of devices) {
    const { responseBody: twin } = await registry.getTwin(deviceId);
    assert.equal(twin.properties.desired.mode, 'eco');
    assert.equal(twin.tags.floor, 3);
  }
  const { responseBody: untouched } = await registry.getTwin(other.deviceId);
  assert.equal(untouched.properties.desired.mode, undefined);
});

test('scheduleDeviceMethod calls the method on a connected device, which answers', async () => {
  const device = await fixture.device('node-method');
  const client = Client.fromConnectionString(identityConnectionString(device), Mqtt);
  opened.push(client);
  await client.open();
  const calls = [];
  client.onDeviceMethod('reboot', (request, response) => {
    calls.push(request.payload);
    response.send(200, { rebooting: true }, () => {});
  });
  // the SDK subscribes in the background: a direct call answered means it listens
  await waitFor(async () => {
    const { result } = await serviceClient.invokeDeviceMethod(device.deviceId,
      { methodName: 'reboot', payload: { probe: true }, responseTimeoutInSeconds: 5 });
    return result.status === 200;
  }, 'the device to listen for methods');
  const jobId = uniqueId('methodjob');
  await jobClient.scheduleDeviceMethod(jobId, inList([device.deviceId]),
    { methodName: 'reboot', payload: { delay: 1 }, responseTimeoutInSeconds: 5 });
  const job = await ended(jobId);
  assert.equal(job.status, 'completed');
  assert.equal(job.deviceJobStatistics.succeededCount, 1);
  assert.deepEqual(calls.at(-1), { delay: 1 });
});

test('cancelJob cancels a job scheduled for later and createQuery pages through the jobs', async () => {
  // one job active at a time (the hub's default cap, IoT Hub S1's): each is cancelled before the next
  const device = await fixture.device('node-later');
  const later = new Date(Date.now() + 10 * 60 * 1000);
  const jobIds = [uniqueId('later'), uniqueId('later'), uniqueId('later')];
  for (const jobId of jobIds) {
    const { jobStatus } = await jobClient.scheduleTwinUpdate(jobId, inList([device.deviceId]),
      { etag: '*', tags: { late: true } }, later, 60);
    assert.equal(jobStatus.status, 'scheduled');
    const { result: scheduled } = await jobClient.createQuery('scheduleUpdateTwin', 'scheduled').next();
    assert.deepEqual(scheduled.map((j) => j.jobId), [jobId]);
    const { jobStatus: cancelled } = await jobClient.cancelJob(jobId);
    assert.equal(cancelled.status, 'cancelled');
    const { jobStatus: shown } = await jobClient.getJob(jobId);
    assert.equal(shown.status, 'cancelled');
  }
  const query = jobClient.createQuery('scheduleUpdateTwin', 'cancelled', 1);
  const listed = [];
  let pages = 0;
  while (query.hasMoreResults && pages < 100) {
    const { result } = await query.next(query.continuationToken);
    listed.push(...result.map((j) => j.jobId));
    pages += 1;
  }
  for (const jobId of jobIds) assert.ok(listed.includes(jobId), `${jobId} listed`);
  assert.equal(pages, listed.length, 'one job a page');
});

test('a twin job without etag "*" and an unknown job are refused', async () => {
  const device = await fixture.device('node-bad');
  await assert.rejects(
    jobClient.scheduleTwinUpdate(uniqueId('bad'), inList([device.deviceId]), { properties: { desired: { a: 1 } } }),
    (err) => err.response.statusCode === 400 && /updateTwin\.etag/.test(err.responseBody),
  );
  await assert.rejects(jobClient.getJob(uniqueId('nojob')), (err) => err.response.statusCode === 404);
});
