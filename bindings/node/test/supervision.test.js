'use strict';
// rcluster's extras beyond Node's cluster: restart options, reload(),
// scale(n), stats(). Node's default (no restart) is kept unless asked.

const test = require('node:test');
const assert = require('node:assert');
const { fixture, get, waitUntil } = require('../fixtures/helpers');

const count = (run, ev) => run.lines.filter((l) => l.ev === ev).length;

test("by default a crashed worker is not restarted (Node's semantics)", async (t) => {
  const run = fixture('supervision.js', ['{}', '2']);
  t.after(run.cleanup);
  await waitUntil(() => count(run, 'listening') === 2, 15000, 'two workers to listen');
  run.tell('crash 1');
  const exit = await run.waitFor((l) => l.ev === 'exit', 10000, 'the worker to exit');
  assert.deepStrictEqual([exit.code, exit.signal, exit.exitedAfterDisconnect], [3, null, false]);
  await new Promise((r) => setTimeout(r, 500));
  assert.strictEqual(count(run, 'fork'), 2, 'no new worker');
});

test('restart: true replaces a crashed worker, and the new one is a cluster.workers member', async (t) => {
  const run = fixture('supervision.js', [JSON.stringify({ restart: true, restartDelay: 50 }), '2']);
  t.after(run.cleanup);
  await waitUntil(() => count(run, 'listening') === 2, 15000, 'two workers to listen');
  run.tell('crash 1');
  const fresh = await run.waitFor((l) => l.ev === 'fork' && l.id === 3, 10000, 'a replacement');
  assert.strictEqual(fresh.inWorkers, true);
  await run.waitFor((l) => l.ev === 'listening' && l.id === 3, 10000, 'the replacement to listen');
  const { port } = run.find((l) => l.ev === 'listening');
  const bodies = new Set();
  for (let i = 0; i < 6; i++) bodies.add((await get(port)).body);
  assert.deepStrictEqual([...bodies].sort(), ['worker 2', 'worker 3']);
});

test('reload() replaces every worker and resolves with the new generation; no request fails', async (t) => {
  const run = fixture('supervision.js', ['{}', '2']);
  t.after(run.cleanup);
  await waitUntil(() => count(run, 'listening') === 2, 15000, 'two workers to listen');
  const { port } = run.find((l) => l.ev === 'listening');
  let failures = 0;
  let loading = true;
  const load = (async () => {
    while (loading) await get(port).catch(() => failures++);
  })();
  run.tell('reload');
  const done = await run.waitFor((l) => l.ev === 'reloaded', 20000, 'the reload to finish');
  loading = false;
  await load;
  assert.strictEqual(failures, 0);
  assert.ok(done.generation >= 1);
  assert.ok(run.find((l) => l.ev === 'reload-event' && l.generation === done.generation), "a 'reload_done' event too");
  assert.ok(run.find((l) => l.ev === 'reload-alias' && l.generation === done.generation), "and 0.1's 'reload', deprecated");
  assert.ok(done.workers.includes(3) && done.workers.includes(4), `the new workers serve: ${done.workers}`);
  await waitUntil(() => run.find((l) => l.ev === 'exit' && l.id === 1) && run.find((l) => l.ev === 'exit' && l.id === 2), 15000, 'the old workers to leave');
  run.tell('stats');
  const { stats } = await run.waitFor((l) => l.ev === 'stats', 5000, 'stats');
  assert.deepStrictEqual(stats.map((s) => s.id).sort(), [3, 4], 'both old workers replaced');
  for (const id of [1, 2]) {
    const exit = run.find((l) => l.ev === 'exit' && l.id === id);
    assert.strictEqual(exit.exitedAfterDisconnect, true);
  }
  const forks = run.lines.filter((l) => l.ev === 'fork' && l.id > 2);
  assert.ok(forks.every((f) => f.generation === done.generation && f.inWorkers));
});

test('scale(n) and stats()', async (t) => {
  const run = fixture('supervision.js', ['{}', '1']);
  t.after(run.cleanup);
  await waitUntil(() => count(run, 'listening') === 1, 15000, 'one worker to listen');
  run.tell('scale 3');
  await waitUntil(() => count(run, 'listening') === 3, 15000, 'three workers to listen');
  run.tell('stats');
  const { stats } = await run.waitFor((l) => l.ev === 'stats', 5000, 'stats');
  assert.strictEqual(stats.length, 3);
  for (const s of stats) {
    assert.strictEqual(s.state, 'listening');
    assert.ok(s.pid > 0 && s.uptimeMs >= 0 && s.restarts === 0);
    assert.ok(s.rssBytes > 1e6 && s.cpuMs >= 0 && s.messagesIn >= 0 && s.messagesOut >= 0, JSON.stringify(s));
    for (const key of ['id', 'slot', 'generation', 'dispatched', 'inFlight', 'active']) assert.ok(key in s, key);
  }
  const { port } = run.find((l) => l.ev === 'listening');
  for (let i = 0; i < 6; i++) await get(port);
  run.tell('stats');
  await waitUntil(() => count(run, 'stats') === 2, 5000, 'stats again');
  const after = run.lines.filter((l) => l.ev === 'stats')[1].stats;
  assert.strictEqual(after.reduce((n, s) => n + s.dispatched, 0), 6, 'every connection counted');
  run.tell('scale 1');
  await waitUntil(() => count(run, 'exit') === 2, 15000, 'two workers to leave');
  assert.ok(run.lines.filter((l) => l.ev === 'exit').every((e) => e.exitedAfterDisconnect && e.code === 0));
});

test('least: workers report closed connections, so the primary counts them finished', async (t) => {
  // The worker skips the report when the policy does not want it; under
  // `least` a missing report would leave every finished connection counted
  // active for good (and the policy blind).
  const run = fixture('supervision.js', ['{}', '2'], { env: { RCLUSTER_SCHED_POLICY: 'least' } });
  t.after(run.cleanup);
  await waitUntil(() => count(run, 'listening') === 2, 15000, 'two workers to listen');
  const { port } = run.find((l) => l.ev === 'listening');
  for (let i = 0; i < 6; i++) await get(port);
  let stats = [];
  const deadline = Date.now() + 10000;
  for (;;) {
    const seen = count(run, 'stats');
    run.tell('stats');
    await waitUntil(() => count(run, 'stats') > seen, 5000, 'stats');
    stats = run.lines.filter((l) => l.ev === 'stats').pop().stats;
    if (stats.reduce((n, s) => n + s.active, 0) === 0) break;
    assert.ok(Date.now() < deadline, `finished connections still counted active: ${JSON.stringify(stats)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.strictEqual(stats.reduce((n, s) => n + s.dispatched, 0), 6, 'every connection counted');
});

test('metricsAddress serves Prometheus metrics and /healthz', async (t) => {
  const port = await new Promise((resolve) => {
    const probe = require('net').createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = probe.address();
      probe.close(() => resolve(p));
    });
  });
  const run = fixture('supervision.js', [JSON.stringify({ metricsAddress: `127.0.0.1:${port}` }), '2']);
  t.after(run.cleanup);
  await waitUntil(() => count(run, 'listening') === 2, 15000, 'two workers to listen');
  const health = await get(port, { path: '/healthz' });
  assert.strictEqual(health.status, 200, health.body);
  const metrics = await get(port, { path: '/metrics' });
  assert.strictEqual(metrics.status, 200);
  assert.match(metrics.body, /^rcluster_workers\{state="listening"\} 2$/m);
  assert.match(metrics.body, /^rcluster_worker_resident_memory_bytes\{worker="1",/m);
});
