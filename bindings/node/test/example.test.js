'use strict';
// examples/node/hello_server.js keeps examples/README.md, in Node, Bun
// and Deno: workers share a port through the rcluster primary in each.

const test = require('node:test');
const assert = require('node:assert');
const http = require('http');
const path = require('path');
const { start, get, alive, waitUntil, findRuntime, ROOT } = require('../fixtures/helpers');

const EXAMPLE = path.join(ROOT, 'examples', 'node', 'hello_server.js');
const BODY = /^worker (\d+) pid (\d+)\n$/;

const RUNTIMES = [
  { name: 'node', command: process.execPath, args: [] },
  { name: 'bun', command: findRuntime('bun'), args: [] },
  { name: 'deno', command: findRuntime('deno'), args: ['run', '-A'] },
];

function startExample(runtime, extra = []) {
  return start([...runtime.args, EXAMPLE, '--port', '0', ...extra], { command: runtime.command });
}

async function ready(run, workers, policy = 'rr') {
  const line = await run.waitFor((l) => l.line && l.line.startsWith('ready '), 20000, 'the ready line');
  const m = /^ready http:\/\/127\.0\.0\.1:(\d+) workers=(\d+) policy=(\S+)$/.exec(line.line);
  assert.ok(m, `ready line as the contract says: ${line.line}`);
  assert.strictEqual(Number(m[2]), workers);
  assert.strictEqual(m[3], policy);
  return Number(m[1]);
}

function pidsOf(bodies) {
  return [...new Set(bodies.map((b) => Number(BODY.exec(b)[2])))];
}

for (const runtime of RUNTIMES) {
  test(`hello example under ${runtime.name}: workers share the port through the primary`, async (t) => {
    if (!runtime.command) {
      const message = `${runtime.name} is not installed (make test installs it into bindings/node/.runtimes; or set RCLUSTER_${runtime.name.toUpperCase()})`;
      t.diagnostic(message);
      process.stdout.write(`# SKIPPED: ${message}\n`);
      t.skip(message);
      return;
    }
    const run = startExample(runtime, ['--workers', '2']);
    t.after(run.cleanup);
    const port = await ready(run, 2);

    const bodies = [];
    for (let i = 0; i < 20; i++) {
      const res = await get(port);
      assert.strictEqual(res.status, 200);
      assert.match(res.body, BODY);
      bodies.push(res.body);
    }
    const pids = pidsOf(bodies);
    assert.strictEqual(pids.length, 2, `both workers served: ${[...new Set(bodies)]}`);
    for (const pid of pids) run.pids.add(pid);

    // Keep-alive: several requests on one connection.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const kept = [];
    for (let i = 0; i < 5; i++) kept.push((await get(port, { agent })).body);
    agent.destroy();
    assert.strictEqual(new Set(kept).size, 1, 'one connection, one worker');

    // Connection: close is honoured.
    const closed = await get(port, { headers: { Connection: 'close' } });
    assert.strictEqual(closed.status, 200);
    assert.strictEqual(closed.headers.connection, 'close');

    // SIGTERM: graceful shutdown, exit 0, no worker left behind.
    run.child.kill('SIGTERM');
    const exit = await run.waitExit(20000);
    assert.deepStrictEqual(exit, { code: 0, signal: null }, `${runtime.name} primary exits 0; stderr: ${run.stderr}`);
    await waitUntil(() => pids.every((pid) => !alive(pid)), 5000, 'the workers to be gone');
  });
}

test('hello example: SIGHUP reloads every worker with no failed request', async (t) => {
  const run = startExample(RUNTIMES[0], ['--workers', '2']);
  t.after(run.cleanup);
  const port = await ready(run, 2);
  const before = pidsOf([(await get(port)).body, (await get(port)).body]);
  for (const pid of before) run.pids.add(pid);
  let failures = 0;
  let served = 0;
  const seen = new Set();
  let loading = true;
  const load = (async () => {
    while (loading) {
      try {
        const { body } = await get(port);
        served++;
        seen.add(Number(BODY.exec(body)[2]));
      } catch (e) {
        failures++;
      }
    }
  })();
  await new Promise((r) => setTimeout(r, 200));
  run.child.kill('SIGHUP');
  await waitUntil(() => before.every((pid) => !alive(pid)), 20000, 'the old workers to be replaced');
  await new Promise((r) => setTimeout(r, 300));
  loading = false;
  await load;
  assert.strictEqual(failures, 0, `no request fails during the reload (${served} served)`);
  const after = [...seen].filter((pid) => !before.includes(pid));
  for (const pid of after) run.pids.add(pid);
  assert.ok(after.length >= 2, `new workers serve after the reload: ${after}`);
  run.child.kill('SIGTERM');
  assert.strictEqual((await run.waitExit(20000)).code, 0);
});

test('hello example: a worker killed from outside is replaced', async (t) => {
  const run = startExample(RUNTIMES[0], ['--workers', '2']);
  t.after(run.cleanup);
  const port = await ready(run, 2);
  const victim = Number(BODY.exec((await get(port)).body)[2]);
  process.kill(victim, 'SIGKILL');
  const fresh = new Set();
  await waitUntil(async () => {
    const pid = Number(BODY.exec((await get(port)).body)[2]);
    assert.notStrictEqual(pid, victim);
    fresh.add(pid);
    return fresh.size === 2;
  }, 10000, 'two live workers again');
  for (const pid of fresh) run.pids.add(pid);
  run.child.kill('SIGTERM');
  assert.strictEqual((await run.waitExit(20000)).code, 0);
});

for (const policy of ['shared', 'least', 'reuseport', 'hybrid']) {
  test(`hello example: --policy ${policy} serves`, async (t) => {
    const run = startExample(RUNTIMES[0], ['--workers', '2', '--policy', policy]);
    t.after(run.cleanup);
    const port = await ready(run, 2, policy);
    for (let i = 0; i < 10; i++) assert.match((await get(port)).body, BODY);
    run.child.kill('SIGINT');
    assert.strictEqual((await run.waitExit(20000)).code, 0);
  });
}

test('hello example: bad arguments: one line on stderr, exit 2', async () => {
  for (const args of [['--workers', 'x'], ['--policy', 'nope'], ['--bogus'], ['--port']]) {
    const run = start([EXAMPLE, ...args]);
    const exit = await run.waitExit(10000);
    assert.strictEqual(exit.code, 2, `${args}: exit 2`);
    assert.strictEqual(run.stderr.trim().split('\n').length, 1, `${args}: one line: ${run.stderr}`);
    assert.strictEqual(run.lines.length, 0);
  }
});
