'use strict';
// Ports of Node's own cluster tests (test/parallel/test-cluster-*.js that use
// only documented API), in fixtures/node-cluster/ (not under test/, where
// `node --test` would run each port as a test file of its own). Each runs as its own primary:
// against Node's cluster module on Node (the reference: the port is
// faithful), and against rcluster on Node, Bun and Deno. A port passes when
// its primary exits 0 (its mustCall checks run at exit) within the time.
// Exceptions are fixtures/node-cluster/expectations.js, which README.md shows.

const test = require('node:test');
const assert = require('node:assert');
const { spawn } = require('child_process');
const fs = require('fs');
const path = require('path');
const { findRuntime } = require('../fixtures/helpers');
const expectations = require('../fixtures/node-cluster/expectations');

const DIR = path.join(__dirname, '..', 'fixtures', 'node-cluster');
const PORTS = fs.readdirSync(DIR).filter((f) => /^test-cluster-.*\.js$/.test(f)).sort();
/** Each port is short; this bounds one that hangs (a worker left behind, a lost event). */
const TIMEOUT_MS = 20000;

const RUNTIMES = [
  { name: 'node', command: process.execPath, args: [] },
  { name: 'bun', command: findRuntime('bun'), args: [] },
  { name: 'deno', command: findRuntime('deno'), args: ['run', '-A'] },
];

/** Runs one port; resolves { code, signal, output }. Its whole process group goes at the end. */
function runPort(file, runtime, moduleName) {
  return new Promise((resolve) => {
    const child = spawn(runtime.command, [...runtime.args, file], {
      cwd: DIR,
      env: { ...process.env, RCLUSTER_PORT_MODULE: moduleName },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group: the workers go with it
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const killGroup = () => {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch (e) {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      output += `\n[timed out after ${TIMEOUT_MS} ms]`;
      killGroup();
    }, TIMEOUT_MS);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      killGroup(); // a worker the port left behind
      resolve({ code, signal, output });
    });
  });
}

const cases = [];
for (const file of PORTS) {
  const known = expectations[file] || { runtimes: [] };
  cases.push({ file, runtime: RUNTIMES[0], moduleName: 'cluster', skip: known.reference === false && known.why });
  for (const runtime of RUNTIMES) {
    const skip = !runtime.command
      ? `${runtime.name} is not installed (make test-node installs it into bindings/node/.runtimes)`
      : known.runtimes.includes(runtime.name) && known.why;
    cases.push({ file, runtime, moduleName: 'rcluster', skip });
  }
}

// Two cores: a few ports at a time keep the whole suite to a minute or two.
test('Node cluster test ports', { concurrency: 4 }, async (t) => {
  const running = [];
  for (const c of cases) {
    running.push(t.test(`${c.file} — ${c.moduleName === 'cluster' ? "Node's cluster (reference)" : `rcluster on ${c.runtime.name}`}`, { skip: c.skip || false }, async () => {
      const result = await runPort(c.file, c.runtime, c.moduleName);
      assert.deepStrictEqual({ code: result.code, signal: result.signal }, { code: 0, signal: null }, result.output);
    }));
  }
  await Promise.all(running);
});

test("README's compatibility table matches fixtures/node-cluster/expectations.js", () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  for (const file of PORTS) {
    const name = file.replace(/\.js$/, '');
    const row = readme.split('\n').find((line) => line.startsWith(`| ${name} |`));
    assert.ok(row, `README.md has a row for ${name}`);
    const cells = row.split('|').slice(2, 6).map((c) => c.trim());
    const known = expectations[file] || { runtimes: [] };
    const expected = [
      known.reference === false ? '—' : 'pass',
      ...['node', 'bun', 'deno'].map((r) => (known.runtimes.includes(r) ? 'no' : 'pass')),
    ];
    assert.deepStrictEqual(cells, expected, `README row for ${name}`);
  }
});
