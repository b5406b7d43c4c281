#!/usr/bin/env node
'use strict';
// Builds the addon with plain cargo (no node-gyp, no header download:
// napi-rs resolves Node-API symbols from the host process at load time) and
// copies the library to rcluster.node. Run by `npm install`.

const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const here = __dirname;
const targetDir = process.env.CARGO_TARGET_DIR || path.join(here, 'target');
const profile = process.env.RCLUSTER_NODE_PROFILE === 'debug' ? 'debug' : 'release';
const args = ['build', '--manifest-path', path.join(here, 'Cargo.toml')];
if (profile === 'release') args.push('--release');

const cargo = process.env.CARGO || 'cargo';
const result = spawnSync(cargo, args, {
  stdio: 'inherit',
  env: { ...process.env, CARGO_TARGET_DIR: targetDir },
});
if (result.error) {
  console.error(`rcluster: could not run ${cargo}: ${result.error.message} (install Rust from rustup.rs)`);
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status || 1);

const built = path.join(targetDir, profile, 'librcluster_node.so');
const dest = path.join(here, 'rcluster.node');
// Copy to a temp name and rename, so a process holding the old one mapped keeps it intact.
const tmp = `${dest}.tmp-${process.pid}`;
fs.copyFileSync(built, tmp);
fs.renameSync(tmp, dest);
console.log(`rcluster: built ${path.relative(process.cwd(), dest) || dest}`);
