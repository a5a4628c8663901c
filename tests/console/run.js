// The web console in a real browser: starts `edgetwin hub` (ports 0) on a scratch directory,
// drives Debian's Chromium headless with playwright-core, and walks every "Done when" of issue 11:
// sign in (link, and a connection string whose policy's permissions are enforced), a device
// created through the REST API appears, `edgetwin-module` acknowledges a desired
// `telemetryInterval` edited in the console, its telemetry arrives live, `ping` is invoked, and
// dropping its connection shows the state change. Screenshots of every page at 1280 and 360 px
// go to target/console-screenshots/.
//
//   node tests/console/run.js        (scripts/console-check installs Chromium and npm ci first)
'use strict';

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const assert = require('node:assert/strict');
const { test } = require('node:test');
const { chromium } = require('playwright-core');

const root = path.resolve(__dirname, '../..');
const bin = process.env.EDGETWIN_BIN || path.join(root, 'target/debug/edgetwin');
const moduleBin = process.env.EDGETWIN_MODULE_BIN || path.join(path.dirname(bin), 'edgetwin-module');
const shots = process.env.CONSOLE_SCREENSHOTS || path.join(root, 'target/console-screenshots');
const WIDTHS = [1280, 360];
const DEVICE = 'console-gw';
const MODULE = 'watcher';
// A device whose id is as long as real ones get: its column may break it, but not a letter a line.
const LONG_DEVICE = 'line-7-packaging-station-temperature-and-humidity-sensor-0042';
const WAIT = 20000;

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetwin-console-'));
const children = [];

function start(command, args, env, log) {
  const out = fs.openSync(path.join(scratch, log), 'a');
  const child = spawn(command, args, { stdio: ['ignore', out, out], env: { ...process.env, ...env } });
  children.push(child);
  return child;
}

function tail(log) {
  const file = path.join(scratch, log);
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').slice(-40).join('\n') : '';
}

async function until(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The hub's REST API as iothubowner, signed with a SAS token as the service SDKs sign it.
// Calls the hub over HTTPS with a SAS token for `resource` signed by `key` (as `keyName`, if any)
// at `apiVersion`; resolves to the JSON answer, rejects on a status of 300 or more.
function signedCall(info, { key, keyName, resource, apiVersion }) {
  const ca = fs.readFileSync(info.caCertificate);
  const url = new URL(info.restUrl);
  return (method, pathname, body) => new Promise((resolve, reject) => {
    const expiry = Math.floor(Date.now() / 1000) + 3600;
    const sr = encodeURIComponent(resource);
    const sig = crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(sr + '\n' + expiry).digest('base64');
    const token = `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${expiry}` + (keyName ? `&skn=${keyName}` : '');
    const data = body === undefined ? undefined : JSON.stringify(body);
    const request = https.request({
      host: url.hostname, port: url.port, method, ca,
      path: pathname + (pathname.includes('?') ? '&' : '?') + 'api-version=' + apiVersion,
      headers: { authorization: token, 'content-type': 'application/json', ...(data ? { 'content-length': Buffer.byteLength(data) } : {}) },
    }, (response) => {
      let text = '';
      response.on('data', (chunk) => { text += chunk; });
      response.on('end', () => {
        if (response.statusCode >= 300) reject(new Error(`${method} ${pathname}: ${response.statusCode} ${text}`));
        else resolve(text ? JSON.parse(text) : null);
      });
    });
    request.on('error', reject);
    request.end(data);
  });
}

// The service REST API as iothubowner.
function rest(info) {
  return signedCall(info, { key: info.policies.iothubowner, keyName: 'iothubowner', resource: info.hostName, apiVersion: '2021-04-12' });
}

// The DPS service API as provisioningserviceowner (the DPS connection string's key).
function dpsService(info) {
  const key = /SharedAccessKey=([^;]+)/.exec(info.dps.connectionString)[1];
  return signedCall(info, { key, keyName: 'provisioningserviceowner', resource: info.hostName, apiVersion: '2021-10-01' });
}

// Registers `registrationId` through DPS over HTTPS with the key derived from `groupKey`.
function dpsRegister(info, groupKey, registrationId) {
  const key = crypto.createHmac('sha256', Buffer.from(groupKey, 'base64')).update(registrationId).digest('base64');
  const resource = `${info.dps.idScope}/registrations/${registrationId}`;
  const call = signedCall(info, { key, keyName: 'registration', resource, apiVersion: '2019-03-31' });
  return call('PUT', `/${resource}/register`, { registrationId });
}

// Every form control has a label and every button and link a name, on the page as it is now.
async function checkLabels(page, name) {
  const unnamed = await page.evaluate(() => [
    ...[...document.querySelectorAll('input, textarea, select')].filter((el) => el.labels.length === 0)
      .map((el) => el.outerHTML.slice(0, 80)),
    ...[...document.querySelectorAll('button, a')].filter((el) => !(el.getAttribute('aria-label') || el.textContent.trim()))
      .map((el) => el.outerHTML.slice(0, 80)),
  ]);
  assert.deepEqual(unnamed, [], `${name}: controls without a label or name`);
}

// What is wrong with the page's layout as the browser laid it out at the current width: every
// table's rows sit directly in its row groups, each row has as many cells (counting colspan) as
// the header, and each cell's left and right edges are those of its column's header cell (±1 px);
// and no word of 4 characters or more is broken into lines of fewer than 8 characters on average
// (a column squeezed to a letter or two a line). Returns one line per problem.
function layoutProblems(page) {
  return page.evaluate(() => {
    const problems = [];
    const near = (a, b) => Math.abs(a - b) <= 1;
    for (const [t, table] of [...document.querySelectorAll('table')].entries()) {
      const what = 'table ' + (table.caption ? JSON.stringify(table.caption.textContent) : t);
      const heads = [...table.querySelectorAll('thead > tr > th')].map((th) => th.getBoundingClientRect());
      for (const row of table.querySelectorAll('tr')) {
        if (row.parentElement.parentElement !== table) {
          problems.push(`${what}: a row inside <${row.parentElement.parentElement.localName}> in <${row.parentElement.localName}>`);
          continue;
        }
        const cells = [...row.cells];
        const columns = cells.reduce((sum, cell) => sum + cell.colSpan, 0);
        if (columns !== heads.length) {
          problems.push(`${what}: a row of ${columns} columns under ${heads.length} headers: ${row.textContent}`);
          continue;
        }
        let column = 0;
        for (const cell of cells) {
          const box = cell.getBoundingClientRect();
          const [first, last] = [heads[column], heads[column + cell.colSpan - 1]];
          if (!near(box.left, first.left) || !near(box.right, last.right)) {
            problems.push(`${what}: "${cell.textContent}" spans ${box.left.toFixed(1)}–${box.right.toFixed(1)} px, `
              + `its header ${first.left.toFixed(1)}–${last.right.toFixed(1)} px`);
          }
          column += cell.colSpan;
        }
      }
    }
    const texts = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = texts.nextNode(); node; node = texts.nextNode()) {
      for (const word of node.data.matchAll(/\S{4,}/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top))).size;
        if (lines > 1 && word[0].length / lines < 8) {
          problems.push(`"${word[0]}" in <${node.parentElement.localName}> is broken over ${lines} lines`);
        }
      }
    }
    return problems;
  });
}

async function shoot(page, name) {
  await checkLabels(page, name);
  fs.mkdirSync(shots, { recursive: true });
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: width === 360 ? 740 : 800 });
    await page.waitForTimeout(150);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${name} at ${width} px is ${overflow} px wider than the window`);
    assert.deepEqual(await layoutProblems(page), [], `${name} at ${width} px: columns line up and words are whole`);
    await page.screenshot({ path: path.join(shots, `${name}-${width}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

test('the web console, in Chromium, against edgetwin hub and edgetwin-module', async (t) => {
  const dataDir = path.join(scratch, 'hub');
  const hub = start(bin, ['hub', '--data-dir', dataDir, '--mqtt-port', '0', '--https-port', '0', '--amqp-port', '0'], { NO_COLOR: '1' }, 'hub.log');
  const info = await until('hub.json', () => {
    if (hub.exitCode !== null) throw new Error('the hub exited: ' + tail('hub.log'));
    try { return JSON.parse(fs.readFileSync(path.join(dataDir, 'hub.json'), 'utf8')); } catch (_) { return null; }
  });
  const call = rest(info);
  const origin = info.restUrl;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  // The hub's certificate is issued by its own CA, which this throwaway profile does not trust.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const offsite = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(origin)) offsite.push(request.url());
  });
  const problems = [];
  page.on('console', (message) => { if (message.type() === 'error') problems.push(message.text()); });
  page.on('pageerror', (error) => problems.push(String(error)));
  const refusals = [];
  page.on('response', (response) => {
    if (response.status() >= 400) refusals.push(response.status() + ' ' + response.request().method() + ' ' + response.url());
  });

  t.after(async () => {
    await browser.close();
    for (const child of children) child.kill('SIGTERM');
  });

  await t.test('a browser without a session gets the sign-in page, and a wrong key is refused in place', async () => {
    await page.goto(origin + '/console/');
    await page.getByLabel('Service connection string').waitFor();
    await shoot(page, 'signin');
    const wrong = `HostName=${info.hostName};SharedAccessKeyName=iothubowner;SharedAccessKey=${Buffer.from('wrong').toString('base64')}`;
    await page.keyboard.press('Tab');
    await page.keyboard.type(wrong);
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter');
    const error = page.locator('#signin-error');
    await error.waitFor({ state: 'visible' });
    assert.match(await error.textContent(), /policy or its key is not right/);
    assert.ok(!(await error.textContent()).includes(Buffer.from('wrong').toString('base64')));
    const csp = (await page.request.get(origin + '/console/')).headers()['content-security-policy'];
    assert.match(csp, /default-src 'none'/);
  });

  await t.test('a registryRead connection string signs in with only that policy\'s permissions', async () => {
    await page.getByLabel('Service connection string').fill(
      `HostName=${info.hostName};SharedAccessKeyName=registryRead;SharedAccessKey=${info.policies.registryRead}`);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#who').filter({ hasText: 'registryRead' }).waitFor();
    const cookie = (await context.cookies()).find((c) => c.name === 'edgetwin_console');
    assert.ok(cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict', JSON.stringify(cookie));
    const refused = await page.evaluate(async () => {
      const session = await (await fetch('/console/session')).json();
      const response = await fetch('/console/api/devices/intruder?api-version=2021-04-12', {
        method: 'PUT', headers: { 'content-type': 'application/json', 'x-console-csrf': session.csrfToken },
        body: JSON.stringify({ deviceId: 'intruder' }),
      });
      return { status: response.status, body: await response.text() };
    });
    assert.equal(refused.status, 401);
    assert.match(refused.body, /does not grant RegistryWrite/);
    const forged = await page.evaluate(async () => {
      const response = await fetch('/console/api/devices/intruder?api-version=2021-04-12', {
        method: 'DELETE', headers: { 'if-match': '*' } });
      return { status: response.status, body: await response.text() };
    });
    assert.equal(forged.status, 401, 'a mutating request without the CSRF header is refused');
    // refused for the missing header, before the session's permissions are even asked
    assert.match(forged.body, /x-console-csrf/i);
    await page.goto(origin + '/console/#/faults');
    assert.ok(await page.getByRole('button', { name: 'Drop every connection' }).isDisabled());
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Service connection string').waitFor();
  });

  await t.test('the printed link signs in as iothubowner and a device created through REST appears', async () => {
    await page.goto(info.consoleUrl);
    assert.equal(new URL(page.url()).search, '', 'the token is not left in the address bar');
    await page.locator('#who').filter({ hasText: 'iothubowner' }).waitFor();
    await call('PUT', `/devices/${DEVICE}`, { deviceId: DEVICE, capabilities: { iotEdge: true } });
    await call('PUT', `/devices/${DEVICE}/modules/${MODULE}`, { deviceId: DEVICE, moduleId: MODULE });
    await call('PUT', `/devices/${LONG_DEVICE}`, { deviceId: LONG_DEVICE });
    await page.getByRole('link', { name: DEVICE }).waitFor({ timeout: WAIT });
    await page.getByRole('link', { name: LONG_DEVICE }).waitFor({ timeout: WAIT });
    const row = page.getByRole('row', { name: new RegExp(DEVICE) });
    assert.match(await row.textContent(), /yes/, 'shown as an IoT Edge device');
  });

  await t.test('edgetwin-module connects and the device page shows it connected', async () => {
    const environment = await call('GET', `/edgetwin/devices/${DEVICE}/modules/${MODULE}/edgeEnvironment`);
    start(moduleBin, [], {
      ...environment, EDGETWIN_MQTT_PORT: String(info.mqttPort), EDGETWIN_METRICS_PORT: '0',
      EDGETWIN_BACKOFF_BASE_MS: '100', EDGETWIN_BACKOFF_MAX_SECS: '1', RuntimeLogLevel: 'info',
    }, 'module.log');
    await page.getByRole('link', { name: DEVICE }).click();
    const state = page.locator(`[data-client-id="${DEVICE}/${MODULE}"]`);
    await until('the module to show as connected: ' + tail('module.log'),
      async () => (await state.textContent()) === 'Connected');
    // The edge device's own identity never connects; its modules do ($edgeAgent, $edgeHub and
    // watcher are its module identities), and the device reads as connected through them.
    const device = page.locator(`[data-device-id="${DEVICE}"]`);
    const throughModule = 'device: disconnected\u00a0· 1 of 3 modules connected';
    await until('the device to read ' + throughModule, async () => (await device.textContent()) === throughModule, 5000);
    assert.equal(await device.getAttribute('class'), 'state-Connected');
    const drop = page.getByRole('button', { name: `Drop the connection of ${DEVICE} / ${MODULE}` });
    await drop.focus();
    // a module added meanwhile changes the table the next poll redraws: the focus must come back
    await call('PUT', `/devices/${DEVICE}/modules/focus-probe`, { deviceId: DEVICE, moduleId: 'focus-probe' });
    await page.getByRole('rowheader', { name: 'focus-probe' }).waitFor({ timeout: WAIT });
    assert.ok(await drop.evaluate((button) => button === document.activeElement),
      'the keyboard focus survives the page\'s polling');
    await call('DELETE', `/devices/${DEVICE}/modules/focus-probe`);
    await page.getByRole('rowheader', { name: 'focus-probe' }).waitFor({ state: 'detached', timeout: WAIT });
    await shoot(page, 'device');
    await page.getByRole('link', { name: 'Devices' }).click();
    const listed = page.locator(`[data-device-id="${DEVICE}"]`);
    await until('the devices page to read ' + throughModule, async () => (await listed.textContent()) === throughModule, 5000);
    assert.equal(await listed.getAttribute('class'), 'state-Connected');
    const alone = page.locator(`[data-device-id="${LONG_DEVICE}"]`);
    assert.equal(await alone.textContent(), 'Disconnected', 'a device without modules says only its own state');
    assert.equal(await alone.getAttribute('class'), 'state-Disconnected');
    await shoot(page, 'devices');
  });

  await t.test('a desired telemetryInterval edited in the console is acknowledged in reported properties', async () => {
    await page.goto(origin + `/console/#/twin/${DEVICE}/${MODULE}`);
    const editor = page.getByLabel('Desired properties (JSON)');
    await editor.waitFor();
    await editor.fill('{"bad key": 1}');
    await page.getByRole('button', { name: 'Save' }).click();
    const error = page.locator('#twin-error');
    await error.waitFor({ state: 'visible' });
    assert.match(await error.textContent(), /bad key/, 'IoT Hub\'s refusal shown in place');
    assert.equal(await editor.getAttribute('aria-invalid'), 'true');
    await editor.fill('{"telemetryInterval": 2}');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('status').filter({ hasText: 'Saved' }).waitFor();
    const reported = page.locator('#twin-reported');
    await until('the acknowledgement in reported: ' + tail('module.log'), async () => {
      const text = await reported.textContent();
      if (!text) return false;
      const ack = JSON.parse(text).telemetryInterval;
      return ack && ack.value === 2 && ack.ac === 200;
    });
    await page.locator('#twin-diff').filter({ hasText: 'reported.telemetryInterval' }).waitFor({ timeout: WAIT });
    await shoot(page, 'twin');
  });

  await t.test('the module\'s telemetry arrives live, charted, and pauses', async () => {
    await page.goto(origin + `/console/#/telemetry/${DEVICE}/${MODULE}`);
    const entries = page.locator('#telemetry-log li');
    await until('two telemetry messages', async () => (await entries.count()) >= 2, 15000);
    assert.match(await entries.first().textContent(), /telemetry/, 'the output name is shown');
    assert.ok((await page.locator('svg.chart polyline').count()) >= 1, 'numeric fields are charted');
    // One axis per unit (or per field): the module's memory in KiB (millions) is not drawn
    // against its load averages (units), and every chart's axis fits its own series.
    const charts = await page.locator('figure.chart-box').evaluateAll((figures) => figures.map((figure) => ({
      axis: [Number(figure.querySelector('svg').dataset.axisMin), Number(figure.querySelector('svg').dataset.axisMax)],
      label: figure.querySelector('text.axis-max').textContent,
      series: [...figure.querySelectorAll('li[data-field]')].map((li) => ({
        field: li.dataset.field, min: Number(li.dataset.min), max: Number(li.dataset.max) })),
    })));
    const chartOf = (field) => charts.find((c) => c.series.some((s) => s.field === field));
    const [memory, load] = [chartOf('memory.totalKiB'), chartOf('load.1m')];
    assert.ok(memory && load && memory !== load, 'memory and load on separate axes: ' + JSON.stringify(charts));
    assert.match(memory.label, / KiB$/, 'the memory axis names its unit');
    for (const { axis: [low, high], label, series } of charts) {
      const what = label + ': ' + JSON.stringify(series);
      const sizes = series.map((s) => Math.max(Math.abs(s.min), Math.abs(s.max)));
      assert.ok(series.every((s) => s.min >= low && s.max <= high), 'the axis holds every series: ' + what);
      const largest = Math.max(...sizes);
      assert.ok(largest === 0 || high - low <= 5 * largest, 'the axis is not far larger than its series: ' + what);
      const nonzero = sizes.filter((size) => size > 0);
      assert.ok(!nonzero.length || Math.max(...nonzero) / Math.min(...nonzero) <= 100,
        'no series is flattened by another 100 times its size on one axis: ' + what);
    }
    const pause = page.getByRole('button', { name: 'Pause' });
    await pause.click();
    assert.equal(await page.getByRole('button', { name: 'Resume' }).getAttribute('aria-pressed'), 'true');
    const frozen = await entries.count();
    await page.getByRole('status').filter({ hasText: /Paused: \d+ waiting/ }).waitFor({ timeout: 10000 });
    assert.equal(await entries.count(), frozen, 'nothing is added while paused');
    await page.getByRole('button', { name: 'Resume' }).click();
    await until('held messages shown after resume', async () => (await entries.count()) > frozen);
    await shoot(page, 'telemetry');
  });

  await t.test('ping is invoked from the keyboard and its status and payload are shown', async () => {
    await page.goto(origin + `/console/#/methods/${DEVICE}/${MODULE}`);
    await page.getByLabel('Method name').focus();
    await page.keyboard.press('Enter');
    const result = page.locator('#method-result');
    await result.filter({ hasText: 'status 200' }).waitFor({ timeout: WAIT });
    await shoot(page, 'methods');
  });

  await t.test('dropping the module\'s connection shows it disconnected, then back', async () => {
    await page.goto(origin + '/console/#/faults');
    await page.getByLabel('Refuse CONNECT for (seconds)').fill('8');
    await page.getByRole('button', { name: 'Refuse connects' }).click();
    await page.locator('#faults-report').filter({ hasText: 'refuseConnectsSeconds' }).waitFor();
    await shoot(page, 'faults');
    await page.goto(origin + `/console/#/device/${DEVICE}`);
    const state = page.locator(`[data-client-id="${DEVICE}/${MODULE}"]`);
    await state.filter({ hasText: 'Connected' }).waitFor();
    await page.getByRole('button', { name: `Drop the connection of ${DEVICE} / ${MODULE}` }).click();
    // The module's cell and the device's, read at one instant (the module reconnects at once).
    const [, deviceText, deviceClass] = await until('the state to read Disconnected', async () => {
      const cells = await page.evaluate((ids) => ids.map((id) => document.querySelector(id))
        .flatMap((cell) => [cell.textContent, cell.className]), [`[data-client-id="${DEVICE}/${MODULE}"]`, `[data-device-id="${DEVICE}"]`]);
      return cells[0] === 'Disconnected' && cells.slice(1);
    }, 5000);
    assert.equal(deviceText, 'device: disconnected\u00a0· 0 of 3 modules connected');
    assert.equal(deviceClass, 'state-Disconnected');
    await until('the module to reconnect: ' + tail('module.log'), async () => (await state.textContent()) === 'Connected');
  });

  await t.test('a deployment shows its targeted and applied counts', async () => {
    await call('PUT', `/twins/${DEVICE}`, { tags: { environment: 'lab' } });
    await call('PUT', '/configurations/lab-watchers', {
      id: 'lab-watchers', priority: 10, targetCondition: "tags.environment='lab'",
      content: { modulesContent: {
        $edgeAgent: { 'properties.desired': { schemaVersion: '1.1', runtime: { type: 'docker', settings: {} }, systemModules: {}, modules: {} } },
        $edgeHub: { 'properties.desired': { schemaVersion: '1.1', routes: {}, storeAndForwardConfiguration: { timeToLiveSecs: 7200 } } },
        [MODULE]: { 'properties.desired': { telemetryInterval: 2 } },
      } },
    });
    await page.goto(origin + '/console/#/deployments');
    const row = page.getByRole('row', { name: /lab-watchers/ });
    await row.waitFor({ timeout: WAIT });
    const cells = await row.locator('td').allTextContents();
    assert.equal(cells[2], '1', 'targeted: ' + cells.join(' | '));
    await shoot(page, 'deployments');
  });

  await t.test('the provisioning page shows an enrollment group and where its device registered', async () => {
    const groupKey = crypto.randomBytes(32).toString('base64');
    await dpsService(info)('PUT', '/enrollmentGroups/console-fleet', {
      enrollmentGroupId: 'console-fleet',
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: crypto.randomBytes(32).toString('base64') } },
    });
    await dpsRegister(info, groupKey, 'console-pi-1');
    await page.goto(origin + '/console/#/provisioning');
    const group = page.getByRole('row', { name: /console-fleet/ });
    await group.waitFor({ timeout: WAIT });
    assert.deepEqual(await group.locator('td').allTextContents(), ['symmetricKey', 'hashed', 'enabled']);
    const registration = page.getByRole('row', { name: /console-pi-1 assigned/ });
    await registration.waitFor({ timeout: WAIT });
    assert.deepEqual((await registration.locator('td').allTextContents()).slice(1), [info.hostName]);
    assert.ok(!(await page.content()).includes(groupKey), 'no key on the page');
    await shoot(page, 'provisioning');
  });

  await t.test('nothing was fetched from anywhere but the hub and no script failed', async () => {
    assert.deepEqual(offsite, []);
    // The refusals the steps above provoke on purpose, and nothing else.
    const expected = [/^401 POST .*\/console\/signin$/, /^401 PUT .*\/console\/api\/devices\/intruder\?/,
      /^401 DELETE .*\/console\/api\/devices\/intruder\?/, /^401 GET .*\/console\/api\/edgetwin\/faults\?/,
      /^400 PATCH .*\/console\/api\/twins\//];
    assert.deepEqual(refusals.filter((r) => !expected.some((e) => e.test(r))), []);
    assert.deepEqual(problems.filter((p) => !/Failed to load resource/.test(p)), []);
  });
});
