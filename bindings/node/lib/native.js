'use strict';
// Loads the native addon (built by `npm install` / `make node` with plain
// cargo; see build.js). The error says what to do when it is missing.

const path = require('path');
const fs = require('fs');

const candidates = [
  process.env.RCLUSTER_NODE_ADDON,
  path.join(__dirname, '..', 'rcluster.node'),
].filter(Boolean);

let native = null;
let lastError = null;
for (const file of candidates) {
  if (!fs.existsSync(file)) continue;
  try {
    native = require(file);
    break;
  } catch (e) {
    lastError = e;
  }
}
if (native === null) {
  const why = lastError ? `: ${lastError.message}` : ' (not built)';
  throw new Error(
    `rcluster: the native addon could not be loaded from ${candidates.join(' or ')}${why}. ` +
      'Build it with `npm install ./bindings/node` or `make node` (needs cargo).',
  );
}

module.exports = native;
