// Runs the Node.js conformance suite: starts `edgetwin hub` (REST and MQTT over WebSockets on
// 443, MQTT on 8883, AMQP on 5671, as IoT Hub), then `node --test` on test/*.test.js with the hub's CA as
// NODE_EXTRA_CA_CERTS, the only setting Microsoft's SDKs get; stops the hub afterwards.
//
//   EDGETWIN_BIN=target/debug/edgetwin node tests/node/run.js
'use strict';

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const bin = process.env.EDGETWIN_BIN || path.resolve(__dirname, '../../target/debug/edgetwin');
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetwin-node-'));
const logPath = path.join(dataDir, 'hub.log');
const log = fs.openSync(logPath, 'a');
const hub = spawn(bin, ['hub', '--data-dir', path.join(dataDir, 'hub'), '--host-name', 'localhost',
  '--mqtt-port', '8883', '--https-port', '443'], { stdio: ['ignore', log, log], env: { ...process.env, NO_COLOR: '1' } });

function stop(code) {
  hub.kill('SIGTERM');
  if (code !== 0) {
    process.stderr.write(`----- hub log (${logPath}) -----\n` + fs.readFileSync(logPath, 'utf8').split('\n').slice(-60).join('\n') + '\n');
  } else {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  process.exit(code);
}

const hubJson = path.join(dataDir, 'hub', 'hub.json');
const deadline = Date.now() + 30000;
(function waitForHub() {
  if (hub.exitCode !== null) {
    process.stderr.write(`the hub exited with ${hub.exitCode} before writing hub.json\n`);
    return stop(1);
  }
  let info;
  try {
    info = JSON.parse(fs.readFileSync(hubJson, 'utf8'));
  } catch (_) {
    if (Date.now() > deadline) {
      process.stderr.write('the hub did not write hub.json in time\n');
      return stop(1);
    }
    return setTimeout(waitForHub, 50);
  }
  const tests = fs.readdirSync(path.join(__dirname, 'test')).filter((f) => f.endsWith('.test.js'))
    .map((f) => path.join(__dirname, 'test', f));
  const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...tests], {
    stdio: 'inherit',
    env: { ...process.env, NODE_EXTRA_CA_CERTS: info.caCertificate, EDGETWIN_HUB_JSON: hubJson },
  });
  stop(result.status === 0 ? 0 : 1);
})();
