'use strict';
// Handles in messages (worker.send / process.send with a net.Server,
// net.Socket or dgram.Socket): the seed's example, Node's own cluster tests
// that send handles (ported), sticky sessions, UDP, fd counts, bad handles.

const test = require('node:test');
const assert = require('node:assert');
const net = require('net');
const dgram = require('dgram');
const path = require('path');
const { start, waitUntil, findRuntime, FIXTURES } = require('../fixtures/helpers');

const RUNTIMES = [
  { name: 'node', command: process.execPath, args: [] },
  { name: 'bun', command: findRuntime('bun'), args: [] },
  { name: 'deno', command: findRuntime('deno'), args: ['run', '-A'] },
];

/** Runs fixture `name` under `runtime`. */
function fixtureIn(runtime, name) {
  return start([...runtime.args, path.join(FIXTURES, name)], { command: runtime.command });
}

/**
 * The test under each runtime of `only` (default all), skipped where the
 * runtime is not installed. Bun hands its own socket objects to connection
 * handlers and builds none from an fd (lib/bun_socket.js), so there only
 * net.Server handles travel; Deno's dgram sockets have no fd to send.
 */
function eachRuntime(title, body, only = ['node', 'bun', 'deno']) {
  for (const runtime of RUNTIMES.filter((r) => only.includes(r.name))) {
    test(`${title} (${runtime.name})`, async (t) => {
      if (!runtime.command) {
        t.skip(`${runtime.name} is not installed (make test installs it into bindings/node/.runtimes)`);
        return;
      }
      await body(t, (name) => fixtureIn(runtime, name), runtime.name);
    });
  }
}

/** Awaits `predicate()` (an async one) until it is true, for at most `timeoutMs`. */
async function eventually(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Connects, writes `line` (if any), resolves with everything read until the server closes. */
function exchange(port, line) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      if (line !== undefined) socket.write(`${line}\n`);
    });
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (d) => (data += d));
    socket.on('end', () => resolve(data));
    socket.on('error', reject);
    socket.setTimeout(10000, () => socket.destroy(new Error(`no answer for ${line}`)));
  });
}

eachRuntime("the seed's example: the server handed to two children, the master's copy closed", async (t, fixture) => {
  const run = fixture('seed_send_server.js');
  t.after(run.cleanup);
  const { port, listening } = await run.waitFor((l) => l.ev === 'ready', 15000, 'the master to hand out the server');
  assert.strictEqual(listening, false, "the master's own copy is closed");
  const seen = new Set();
  await eventually(async () => {
    const answer = await exchange(port);
    assert.match(answer, /^handled by child [12]\n$/);
    seen.add(answer);
    return seen.size === 2;
  }, 20000, 'both children to handle a connection');
});

eachRuntime("Node's test-cluster-send-deadlock: handles both ways", async (t, fixture) => {
  const run = fixture('node_send_deadlock.js');
  t.after(run.cleanup);
  const exit = await run.waitFor((l) => l.ev === 'exit', 20000, 'the worker to exit');
  assert.deepStrictEqual([exit.code, exit.signal], [0, null]);
  assert.strictEqual(run.lines.filter((l) => l.ev === 'reply').length, 2, 'both sockets came back as sockets');
}, ['node', 'deno']);

eachRuntime("Node's test-cluster-send-handle-twice: the second send goes without the handle", async (t, fixture) => {
  const run = fixture('node_send_handle_twice.js');
  t.after(run.cleanup);
  const exit = await run.waitFor((l) => l.ev === 'exit', 20000, 'the worker to exit');
  assert.deepStrictEqual([exit.code, exit.signal], [0, null]);
  const messages = run.lines.filter((l) => l.ev === 'message');
  assert.deepStrictEqual(messages, [
    { ev: 'message', msg: 'send-handle-1', handle: 'Socket' },
    { ev: 'message', msg: 'send-handle-2', handle: null },
  ]);
}, ['node', 'deno']);

eachRuntime('sticky sessions, keepOpen, UDP, fd counts and bad handles', async (t, fixture, runtime) => {
  const run = fixture('handles.js');
  t.after(run.cleanup);
  const { port, udpPort, udpError, workers } = await run.waitFor((l) => l.ev === 'ready', 15000, 'the primary to be ready');
  const counts = async (n) => {
    run.tell('fds');
    await waitUntil(() => run.lines.filter((l) => l.ev === 'fds').length === n, 10000, 'fd counts');
    const { primary, workers: w } = run.lines.filter((l) => l.ev === 'fds')[n - 1];
    return [primary, w];
  };
  const sessions = async (from, to) => {
    for (let n = from; n < to; n++) {
      assert.strictEqual(await exchange(port, `session-${n}`), `worker ${workers[n % 2]} got session-${n}\n`);
    }
  };
  // A socket closes in its worker once the client's FIN is read there, just
  // after the client saw the answer: counts are taken once they settle.
  let asked = 0;
  const settled = async () => {
    let last = JSON.stringify(await counts(++asked));
    await eventually(async () => {
      const now = JSON.stringify(await counts(++asked));
      const same = now === last;
      last = now;
      return same;
    }, 10000, 'fd counts to settle');
    return JSON.parse(last);
  };
  const flat = ([primary, w]) => [primary, ...Object.values(w)];
  await sessions(0, 20);
  const before = flat(await settled());
  await sessions(20, 1020);
  // Deno opens a few fds of its own as it runs (2 per process in 1,000
  // sessions, not one per socket); Node's counts are exact.
  const slack = runtime === 'deno' ? 4 : 0;
  await eventually(
    async () => flat(await settled()).every((n, i) => n - before[i] <= slack),
    10000,
    `fd counts back to ${before} (+${slack})`,
  );

  const kept = await exchange(port, 'session-3 keep');
  assert.deepStrictEqual(kept.split('\n').filter(Boolean).sort(), ['primary kept it', `worker ${workers[1]} got session-3`]);

  if (runtime === 'deno') {
    assert.match(udpError, /does not expose the file descriptor behind a dgram\.Socket/);
  } else {
    const udp = dgram.createSocket('udp4');
    t.after(() => udp.close());
    const reply = new Promise((resolve) => udp.once('message', (m) => resolve(String(m))));
    udp.send('ping', udpPort, '127.0.0.1');
    assert.strictEqual(await reply, `worker ${workers[0]} ping`);
  }

  run.tell('bad');
  const bad = await run.waitFor((l) => l.ev === 'bad', 10000, 'the bad handles');
  assert.deepStrictEqual(bad, {
    ev: 'bad',
    object: 'TypeError ERR_INVALID_HANDLE_TYPE',
    number: 'TypeError ERR_INVALID_HANDLE_TYPE',
    notListening: 'true',
  });
}, ['node', 'deno']);
