// Certificates for the X.509 tests (x509.test.js, dps_x509.test.js), made with the openssl CLI in
// a temporary directory removed at exit: P-256 keys, self-signed or signed by the hub's own CA
// (its key is beside ca.pem in the hub's data directory).
'use strict';

const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { info, uniqueId } = require('./hub');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetwin-node-certs-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));

/** A P-256 certificate for `cn` and its key (PEM), self-signed or signed by the hub's CA, with
 * its SHA-256 thumbprint (upper-case hex). */
function certificate(cn, signedByHubCa = false) {
  const stem = path.join(dir, uniqueId('cert'));
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${stem}.key`];
  if (signedByHubCa) {
    const caDir = path.dirname(info.caCertificate);
    execFileSync('openssl', ['req', '-new', ...key, '-subj', `/CN=${cn}`, '-out', `${stem}.csr`], { stdio: 'ignore' });
    // an X.509 v3 certificate (with an extension): webpki, like most TLS stacks today, takes no v1
    fs.writeFileSync(`${stem}.ext`, 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n');
    execFileSync('openssl', ['x509', '-req', '-in', `${stem}.csr`, '-CA', info.caCertificate,
      '-CAkey', path.join(caDir, 'ca.key.pem'), '-set_serial', '1', '-days', '1', '-extfile', `${stem}.ext`,
      '-out', `${stem}.pem`], { stdio: 'ignore' });
  } else {
    execFileSync('openssl', ['req', '-x509', ...key, '-subj', `/CN=${cn}`, '-days', '1', '-out', `${stem}.pem`], { stdio: 'ignore' });
  }
  const cert = fs.readFileSync(`${stem}.pem`, 'utf8');
  const thumbprint = new crypto.X509Certificate(cert).fingerprint256.replace(/:/g, '');
  return { cert, key: fs.readFileSync(`${stem}.key`, 'utf8'), thumbprint };
}

module.exports = { certificate };
