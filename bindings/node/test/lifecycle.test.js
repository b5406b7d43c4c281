'use strict';
// A worker's life seen from the primary: Node's event order and states,
// messages both ways, env, disconnect() and kill().

const test = require('node:test');
const assert = require('node:assert');
const { fixture } = require('../fixtures/helpers');

function events(run) {
  return run.lines.filter((l) => l.ev).map((l) => l.ev);
}

test('fork -> online -> listening -> disconnect -> exit, with state transitions, messages and env', async (t) => {
  const run = fixture('lifecycle.js', ['disconnect']);
  t.after(run.cleanup);
  await run.waitFor((l) => l.ev === 'primary-exit', 15000, 'the primary to finish');
  const order = events(run).filter((e) => e.startsWith('cluster:') && e !== 'cluster:message');
  assert.deepStrictEqual(order, ['cluster:fork', 'cluster:online', 'cluster:listening', 'cluster:disconnect', 'cluster:exit']);
  const perWorker = events(run).filter((e) => e.startsWith('worker:'));
  assert.deepStrictEqual(perWorker, ['worker:online', 'worker:listening', 'worker:disconnect', 'worker:exit']);

  const forked = run.find((l) => l.ev === 'forked');
  assert.strictEqual(forked.id, 1);
  assert.strictEqual(forked.state, 'none');
  assert.ok(forked.inWorkers, 'cluster.workers holds the worker as soon as fork() returns');
  assert.ok(forked.pid > 0);
  assert.ok(run.find((l) => l.ev === 'setup'), "'setup' is emitted");

  const state = (ev) => run.find((l) => l.ev === ev).state;
  assert.strictEqual(state('cluster:fork'), 'none');
  assert.strictEqual(state('cluster:online'), 'online');
  assert.strictEqual(state('cluster:listening'), 'listening');
  assert.strictEqual(state('cluster:disconnect'), 'disconnected');
  assert.strictEqual(state('cluster:exit'), 'dead');

  const listening = run.find((l) => l.ev === 'cluster:listening').rest[0];
  assert.strictEqual(listening.addressType, 4);
  assert.strictEqual(listening.address, '127.0.0.1');
  assert.ok(listening.port > 0);

  const message = run.find((l) => l.ev === 'cluster:message').message;
  assert.deepStrictEqual(message.pong, { ping: 1, nested: { list: [1, 'two'] } }, 'primary -> worker message arrives intact');
  assert.strictEqual(message.env, 'from-the-primary', 'fork(env) reaches the worker');
  assert.strictEqual(message.id, 1);
  assert.strictEqual(message.isWorker, true);
  assert.strictEqual(message.listening, true);
  assert.strictEqual(message.childEnv, 'unset unset', "a worker's children are not workers");
  assert.deepStrictEqual(message.address, { address: '127.0.0.1', family: 'IPv4', port: listening.port });

  const asked = run.find((l) => l.ev === 'asked');
  assert.strictEqual(asked.exitedAfterDisconnect, true, 'disconnect() sets exitedAfterDisconnect at once');
  assert.strictEqual(asked.inWorkers, false, 'disconnect() removes the worker from cluster.workers, as in Node');

  const exit = run.find((l) => l.ev === 'worker:exit');
  assert.strictEqual(exit.code, 0);
  assert.strictEqual(exit.signal, null);
  assert.strictEqual(exit.exitedAfterDisconnect, true);
  assert.strictEqual(exit.isDead, true);
  assert.strictEqual(exit.isConnected, false);
  assert.deepStrictEqual(run.find((l) => l.ev === 'cluster:exit').rest, [0, null]);

  assert.deepStrictEqual((await run.waitExit()).code, 0, 'the primary exits by itself once its workers are gone');
});

for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`kill('${signal}') closes the channel, signals at once, and reports the signal`, async (t) => {
    const run = fixture('lifecycle.js', ['kill', signal]);
    t.after(run.cleanup);
    // The primary's last line: every event line before it has been read
    // (waiting for 'worker:exit' alone could look before 'cluster:exit' arrived).
    await run.waitFor((l) => l.ev === 'primary-exit', 15000, 'the primary to finish');
    const exit = run.find((l) => l.ev === 'worker:exit');
    assert.strictEqual(exit.code, null);
    assert.strictEqual(exit.signal, signal);
    assert.strictEqual(exit.exitedAfterDisconnect, false, "kill() is not a disconnect the worker was asked for (Node's flag)");
    assert.ok(events(run).indexOf('worker:disconnect') < events(run).indexOf('worker:exit'), 'disconnect comes first, as in Node');
    assert.deepStrictEqual(run.find((l) => l.ev === 'cluster:exit').rest, [null, signal]);
    assert.strictEqual((await run.waitExit()).code, 0);
  });
}
