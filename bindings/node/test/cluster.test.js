'use strict';
// Whole clusters: cluster.disconnect(cb) with 8 workers and two servers
// each, maxConnections, a primary killed, a busy primary, fair rr, policy
// selection from the environment.

const test = require('node:test');
const assert = require('node:assert');
const path = require('path');
const { fixture, start, get, holdOpen, alive, waitUntil, ROOT } = require('../fixtures/helpers');

const EXAMPLE = path.join(ROOT, 'examples', 'node', 'hello_server.js');

test('cluster.disconnect(cb) with 8 workers and two servers each', async (t) => {
  const run = fixture('disconnect_all.js', ['8']);
  t.after(run.cleanup);
  const ready = await run.waitFor((l) => l.ev === 'ready', 30000, 'all 16 servers to listen');
  assert.deepStrictEqual(Object.keys(ready.ports).sort(), ['127.0.0.1', '127.0.0.2']);
  for (const [host, port] of Object.entries(ready.ports)) {
    const res = await get(port, { host });
    assert.match(res.body, new RegExp(`^worker \\d+ ${host.replace(/\./g, '\\.')}\n$`));
  }
  run.tell('go');
  const callback = await run.waitFor((l) => l.ev === 'disconnect-callback', 20000, 'the disconnect callback');
  assert.strictEqual(callback.remaining, 0, 'the callback runs once every worker has disconnected');
  await waitUntil(() => run.lines.filter((l) => l.ev === 'exit').length === 8, 20000, 'all 8 workers to exit');
  for (const exit of run.lines.filter((l) => l.ev === 'exit')) {
    assert.strictEqual(exit.code, 0, `worker ${exit.id} exits 0`);
    assert.strictEqual(exit.signal, null);
    assert.strictEqual(exit.exitedAfterDisconnect, true);
  }
  const closes = run.lines.filter((l) => l.ev === 'server-close');
  assert.strictEqual(closes.length, 16, 'every server of every worker closed');
  for (const pid of run.pids) if (pid !== run.child.pid) assert.ok(!alive(pid), `worker ${pid} is gone`);
});

test('a worker at maxConnections refuses; the connection is served by another', async (t) => {
  const run = fixture('max_connections.js');
  t.after(run.cleanup);
  const { port } = await run.waitFor((l) => l.ev === 'ready', 15000, 'both workers to listen');
  const held = [];
  t.after(() => held.forEach((h) => h.socket.destroy()));
  for (let i = 0; i < 6; i++) held.push(await holdOpen(port));
  const count = {};
  for (const h of held) count[h.body] = (count[h.body] || 0) + 1;
  assert.deepStrictEqual(count, { 'worker 1': 1, 'worker 2': 5 }, 'worker 1 (maxConnections = 1) holds one connection');
  // Paused at its limit, worker 1's server keeps its place among the
  // worker's port-0 servers: a new port-0 server there gets a port of its own.
  run.tell('second');
  const second = await run.waitFor((l) => l.ev === 'second', 15000, 'worker 1 to start a second server');
  assert.notStrictEqual(second.port, port, 'the second port-0 server took the paused server\'s port');
  assert.strictEqual((await get(second.port)).body, 'second server');
  // Below its limit again, worker 1 takes connections again.
  held.forEach((h) => h.socket.destroy());
  const seen = new Set();
  await waitUntil(async () => {
    seen.add((await get(port)).body);
    return seen.has('worker 1');
  }, 5000, 'worker 1 to serve again');
  const again = new Set();
  for (let i = 0; i < 10; i++) again.add((await get(port)).body);
  assert.ok(again.has('worker 1') && again.has('worker 2'), `both serve again: ${[...again]}`);
  assert.ok(again.size === 2, `only the first servers answer on its port: ${[...again]}`);
});

for (const mode of ['poll', 'thread']) {
  test(`Node workers take connections ${mode === 'poll' ? 'on the JS thread' : 'through the accept thread (RCLUSTER_NODE_ACCEPT=thread)'}`, async (t) => {
    const env = mode === 'thread' ? { RCLUSTER_NODE_ACCEPT: 'thread' } : {};
    const run = fixture('threads.js', [], { env });
    t.after(run.cleanup);
    const { port } = await run.waitFor((l) => l.ev === 'ready', 15000, 'the worker to listen');
    // A burst, so that connections queue up and are taken in batches.
    const answers = await Promise.all(Array.from({ length: 40 }, () => get(port)));
    const threads = JSON.parse(answers[answers.length - 1].body);
    const helpers = threads.filter((name) => name.startsWith('rcluster-node'));
    if (mode === 'poll') assert.deepStrictEqual(helpers, [], `no helper thread in ${threads}`);
    else assert.ok(helpers.includes('rcluster-node-a'), `the accept thread runs: ${threads}`);
  });
}

test('a throwing connection listener does not lose the rest of a batch', async (t) => {
  const run = fixture('throw_once.js');
  t.after(run.cleanup);
  const { port } = await run.waitFor((l) => l.ev === 'ready', 15000, 'the worker to listen');
  await run.waitFor((l) => l.ev === 'worker' && l.blocking, 5000, 'the worker to block');
  // These queue up while the worker's JS is busy, and are taken together.
  const answers = await Promise.all(Array.from({ length: 12 }, () => get(port, { timeoutMs: 8000 })));
  assert.strictEqual(answers.length, 12);
  for (const a of answers) assert.match(a.body, /^served \d+$/);
  const caught = await run.waitFor((l) => l.ev === 'worker' && l.caught, 5000, 'the uncaught exception');
  assert.strictEqual(caught.caught, 'first connection handler throws');
});

test('a primary killed -> its workers exit', async (t) => {
  const run = fixture('primary_death.js');
  t.after(run.cleanup);
  const { port, pids } = await run.waitFor((l) => l.ev === 'ready', 15000, 'the workers to listen');
  assert.strictEqual((await get(port)).status, 200);
  for (const pid of pids) assert.ok(alive(pid));
  run.child.kill('SIGKILL');
  await waitUntil(() => pids.every((pid) => !alive(pid)), 5000, `workers ${pids} to exit after the primary died`);
});

test("a primary whose JS is busy keeps dispatching (dispatch is on rcluster's thread)", async (t) => {
  const run = fixture('busy_primary.js', ['1500']);
  t.after(run.cleanup);
  const { port } = await run.waitFor((l) => l.ev === 'ready', 15000, 'the workers to listen');
  run.tell('busy');
  await run.waitFor((l) => l.ev === 'busy-start', 5000, 'the primary to get busy');
  const served = [];
  const started = Date.now();
  for (let i = 0; i < 20; i++) {
    served.push((await get(port)).body);
    assert.ok(!run.find((l) => l.ev === 'busy-end'), `request ${i} was served while the primary's JS was busy`);
  }
  assert.ok(Date.now() - started < 1500);
  assert.deepStrictEqual(new Set(served), new Set(['worker 1', 'worker 2']));
  await run.waitFor((l) => l.ev === 'busy-end', 5000, 'the busy loop to end');
});

test('rr distributes fairly with a real HTTP client, one connection per request', async (t) => {
  const run = start([EXAMPLE, '--workers', '4', '--port', '0', '--policy', 'rr']);
  t.after(run.cleanup);
  const ready = await run.waitFor((l) => l.line && l.line.startsWith('ready '), 15000, 'the ready line');
  const port = Number(/:(\d+) /.exec(ready.line)[1]);
  const count = {};
  for (let i = 0; i < 400; i++) {
    const { body } = await get(port);
    const id = /^worker (\d+) pid (\d+)\n$/.exec(body)[1];
    count[id] = (count[id] || 0) + 1;
  }
  assert.deepStrictEqual(Object.keys(count).sort(), ['1', '2', '3', '4']);
  for (const [id, n] of Object.entries(count)) assert.ok(n >= 90 && n <= 110, `worker ${id} served ${n} of 400: ${JSON.stringify(count)}`);
  run.child.kill('SIGTERM');
  assert.strictEqual((await run.waitExit(15000)).code, 0);
});

for (const [value, expected] of [
  ['none', 'SCHED_NONE'],
  ['rr', 'SCHED_RR'],
]) {
  test(`NODE_CLUSTER_SCHED_POLICY=${value} selects ${expected}, and the cluster serves`, async (t) => {
    const run = fixture('policy.js', [], { env: { NODE_CLUSTER_SCHED_POLICY: value } });
    t.after(run.cleanup);
    const policy = await run.waitFor((l) => l.ev === 'policy', 10000, 'the policy line');
    assert.strictEqual(policy.policy, policy[expected]);
    const { port } = await run.waitFor((l) => l.ev === 'ready', 15000, 'the workers to listen');
    for (let i = 0; i < 10; i++) assert.match((await get(port)).body, /^worker [12]$/);
  });
}
