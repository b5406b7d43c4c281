'use strict';
// Loads the native addon. The npm package ships it prebuilt for the
// platforms in package.json's `napi.targets` (linux-x64-gnu), named as
// napi-rs names them (`rcluster.<platform>-<arch>-<abi>.node`); other
// platforms build it from a clone of the repository (`npm run build` here,
// which needs cargo). RCLUSTER_NODE_ADDON names a file to load instead.

const path = require('path');
const fs = require('fs');

const root = path.join(__dirname, '..');
const triple = `${process.platform}-${process.arch}`;
const candidates = [
  process.env.RCLUSTER_NODE_ADDON,
  path.join(root, `rcluster.${triple}-gnu.node`),
  path.join(root, `rcluster.${triple}-musl.node`),
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
  const why = lastError ? `: ${lastError.message}` : ` (no prebuilt addon for ${triple})`;
  throw new Error(
    `rcluster: the native addon could not be loaded from ${candidates.join(' or ')}${why}. ` +
      'Prebuilt: linux-x64 (glibc). Elsewhere build it from a clone: `cd bindings/node && npm install && npm run build` (needs cargo).',
  );
}

module.exports = native;
