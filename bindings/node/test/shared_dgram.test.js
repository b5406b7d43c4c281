'use strict';
// A dgram socket bound in a worker and shared through the primary, used as
// a program uses one: the same report under Node, Bun and Deno (under Deno
// the binding serves it with a socket of its own, lib/native_dgram.js over
// src/dgram.rs, since Deno's dgram does not adopt an fd); such a socket
// sent in a message; and the native socket refuses what is not a UDP
// socket with a clear error.

const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { start, findRuntime, FIXTURES } = require('../fixtures/helpers');
const native = require('../lib/native');

const RUNTIMES = [
  { name: 'node', command: process.execPath, args: [] },
  { name: 'bun', command: findRuntime('bun'), args: [] },
  { name: 'deno', command: findRuntime('deno'), args: ['run', '-A'] },
];

/** What fixtures/shared_dgram.js reports, the same on every runtime (Node's dgram is the reference). */
const EXPECTED = {
  client: [
    { text: 'list', from: true, size: 4 },
    { text: 'named', from: true, size: 5 },
    { text: 'offset', from: true, size: 6 },
    { text: 'string', from: true, size: 6 },
    { text: 'typed', from: true, size: 5 },
  ],
  worker: {
    message: { text: 'forms', address: '127.0.0.1', family: 'IPv4', size: 5 },
    sent: [
      ['offset', 6],
      ['list', 4],
      ['typed', 5],
      ['named', 5],
    ],
    closedWhileBinding: true,
    early: { from: true, size: 5 },
    earlySent: 5,
    notConnected: 'ERR_SOCKET_DGRAM_NOT_CONNECTED',
    disconnectUnconnected: 'ERR_SOCKET_DGRAM_NOT_CONNECTED',
    remote: true,
    connectedWithPort: 'ERR_SOCKET_DGRAM_IS_CONNECTED',
    connectTwice: 'ERR_SOCKET_DGRAM_IS_CONNECTED',
    selfSent: 4,
    self: { text: 'self', from: true },
    afterDisconnect: 'ERR_SOCKET_DGRAM_NOT_CONNECTED',
    ttl: 32,
    multicastTTL: 2,
    loopback: true,
    recvBufferSize: true,
    refs: true,
    badInterface: 'EINVAL',
    badGroup: 'EINVAL',
    notMember: 'EADDRNOTAVAIL',
    badPort: 'ERR_SOCKET_BAD_PORT',
    oversized: 'EMSGSIZE',
    closeCallback: true,
    afterClose: {
      send: 'ERR_SOCKET_DGRAM_NOT_RUNNING',
      address: 'ERR_SOCKET_DGRAM_NOT_RUNNING',
      close: 'ERR_SOCKET_DGRAM_NOT_RUNNING',
    },
  },
};

for (const runtime of RUNTIMES) {
  test(`a shared dgram socket sends, receives and closes as Node's does (${runtime.name})`, async (t) => {
    if (!runtime.command) {
      t.skip(`${runtime.name} is not installed (make test-node installs it into bindings/node/.runtimes)`);
      return;
    }
    const run = start([...runtime.args, path.join(FIXTURES, 'shared_dgram.js')], { command: runtime.command });
    try {
      const line = await run.waitFor((l) => l.worker, 15000, 'the report');
      assert.deepStrictEqual({ client: line.client, worker: line.worker }, EXPECTED);
      await run.waitFor((l) => 'exit' in l, 10000, "the worker's exit");
      assert.strictEqual(run.find((l) => 'exit' in l).exit, 0, run.stderr);
      assert.deepStrictEqual(await run.waitExit(10000), { code: 0, signal: null }, run.stderr);
    } finally {
      await run.cleanup();
    }
  });
}

for (const runtime of RUNTIMES) {
  test(`a shared dgram socket sent in a message serves in the receiver (${runtime.name})`, async (t) => {
    if (!runtime.command) {
      t.skip(`${runtime.name} is not installed (make test-node installs it into bindings/node/.runtimes)`);
      return;
    }
    const run = start([...runtime.args, path.join(FIXTURES, 'shared_dgram_sent.js')], { command: runtime.command });
    try {
      const line = await run.waitFor((l) => 'got' in l || 'error' in l, 15000, 'the datagram');
      assert.deepStrictEqual(line, { got: 'to the primary', samePort: true }, run.stderr);
      await run.waitFor((l) => 'exit' in l, 10000, "the worker's exit");
      assert.strictEqual(run.find((l) => 'exit' in l).exit, 0, run.stderr);
      assert.deepStrictEqual(await run.waitExit(10000), { code: 0, signal: null }, run.stderr);
    } finally {
      await run.cleanup();
    }
  });
}

test('the native dgram socket refuses an fd that is not an open UDP socket', () => {
  const file = path.join(os.tmpdir(), `rcluster-dgram-${process.pid}`);
  const fd = fs.openSync(file, 'w');
  try {
    assert.throws(() => new native.NativeDgram(fd), /is not an open datagram socket/);
    // Refused, so still the caller's: it is open.
    assert.ok(fs.fstatSync(fd).isFile());
  } finally {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
  assert.throws(() => new native.NativeDgram(fd), /is not an open datagram socket/); // closed now
  assert.throws(() => new native.NativeDgram(-1), /is not an open datagram socket/);
});
