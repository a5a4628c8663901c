// Prints the systemMetrics.results of one configuration as Microsoft's Node.js service SDK
// (azure-iothub, from tests/node's lockfile) reads them: the Node judge of the edge runtime suite.
// Usage: IOTHUB_CONNECTION_STRING=... NODE_EXTRA_CA_CERTS=ca.pem node configuration_metrics.js <id>
'use strict';
const path = require('node:path');
const { Registry } = require(path.join(__dirname, '..', 'node', 'node_modules', 'azure-iothub'));

const registry = Registry.fromConnectionString(process.env.IOTHUB_CONNECTION_STRING);
registry.getConfiguration(process.argv[2]).then(
  ({ responseBody }) => console.log(JSON.stringify(responseBody.systemMetrics.results)),
  (error) => {
    console.error(`getConfiguration failed: ${error.message}`);
    process.exit(1);
  });
