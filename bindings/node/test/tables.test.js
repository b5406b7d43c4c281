'use strict';
// The Node layer's names come from the core's one table (src/tables): the
// addon's event kinds and error codes are compared with the generated C
// header, not with a list copied here; errors carry `code` and `errno`.

const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const net = require('net');
const path = require('path');
const { fixture, ROOT } = require('../fixtures/helpers');
const native = require('../lib/native');
const { DEPRECATED_EVENT_NAMES } = require('../lib/primary');

/** `#define PREFIX<NAME> <value>` constants of the committed header, by name. */
function headerConstants(prefix) {
  const header = fs.readFileSync(path.join(ROOT, 'include', 'rcluster.h'), 'utf8');
  const found = new Map();
  for (const m of header.matchAll(/^#define (RCLUSTER_\w+) (-?\d+)$/gm)) {
    if (m[1].startsWith(prefix)) found.set(m[1], Number(m[2]));
  }
  return found;
}

test('event kinds are the core table, named as in C and Python', () => {
  const fromHeader = [...headerConstants('RCLUSTER_EVENT_').entries()]
    .filter(([, value]) => value !== 0)
    .sort((a, b) => a[1] - b[1])
    .map(([name]) => name.slice('RCLUSTER_EVENT_'.length).toLowerCase());
  assert.deepStrictEqual(native.eventKinds(), fromHeader);
  // Every kind the JS layer switches on is one of them (a renamed kind
  // left behind in lib/ would never fire).
  for (const file of ['primary.js', 'child.js']) {
    const source = fs.readFileSync(path.join(__dirname, '..', 'lib', file), 'utf8');
    for (const m of source.matchAll(/^\s+case '([a-z_]+)':/gm)) {
      assert.ok(fromHeader.includes(m[1]), `${file} handles '${m[1]}', which is not an event kind`);
    }
  }
  for (const name of Object.keys(DEPRECATED_EVENT_NAMES)) {
    assert.ok(fromHeader.includes(name), `the deprecated alias of '${name}' names a kind`);
  }
});

test('error codes are the core table', () => {
  assert.deepStrictEqual(native.errorCodes().sort(), [...headerConstants('RCLUSTER_E_').keys()].sort());
});

test("a failed listen's error has Node's code and a numeric errno", async (t) => {
  const busy = net.createServer();
  await new Promise((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.after(() => busy.close());
  const run = fixture('listen_error.js', [String(busy.address().port)]);
  t.after(run.cleanup);
  const { error } = await run.waitFor((l) => l.ev === 'worker' && l.error, 20000, 'the listen error');
  assert.strictEqual(error.code, 'EADDRINUSE');
  assert.strictEqual(error.errno, -98, 'negative, as libuv gives errno');
  assert.strictEqual(error.syscall, 'listen');
  assert.strictEqual(error.port, busy.address().port);
  assert.match(error.message, /^listen EADDRINUSE: /);
});

test('a worker asked to leave is told so by the code RCLUSTER_E_LEAVING', async (t) => {
  const run = fixture('leaving.js');
  t.after(run.cleanup);
  const leaving = await run.waitFor((l) => l.ev === 'leaving', 20000, "the worker's second listen");
  assert.strictEqual(leaving.code, 'RCLUSTER_E_LEAVING', JSON.stringify(leaving));
  assert.strictEqual(leaving.errno, 0);
  const exit = await run.waitFor((l) => l.ev === 'exit', 20000, 'the worker to exit');
  assert.strictEqual(exit.code, 0);
});

test('a native error carries code and errno as properties', () => {
  // In the primary: the addon refuses a listen on a malformed address.
  const primary = new native.NativePrimary({ argv: [process.execPath, '-e', ''] });
  assert.throws(
    () => primary.listen('not an address', 1),
    (e) => e instanceof Error && e.code === 'RCLUSTER_E_ADDR' && typeof e.errno === 'number' && !/\[/.test(e.message),
  );
  assert.throws(
    () => new native.NativePrimary({ argv: ['x'], policy: 'nope' }),
    (e) => e.code === 'RCLUSTER_E_INVAL' && e.errno === 0 && /unknown policy "nope"/.test(e.message),
  );
  primary.shutdown(0);
});
