'use strict';
// Any net.Server, http.Server or https.Server listening in a worker takes
// its connections from the primary, with the server's options honoured.

const test = require('node:test');
const assert = require('node:assert');
const net = require('net');
const http = require('http');
const https = require('https');
const fs = require('fs');
const path = require('path');
const { fixture, FIXTURES } = require('../fixtures/helpers');

test('net.Server, two port-0 servers on one host, https.Server and http.Server timeouts, through the primary', async (t) => {
  const run = fixture('servers.js');
  t.after(run.cleanup);
  const ports = await run.waitFor((l) => l.ev === 'ready', 15000, 'the four servers');

  // net.Server: a real net.Socket on the 'connection' path, both directions.
  const echoed = await new Promise((resolve, reject) => {
    const socket = net.connect(ports.net, '127.0.0.1', () => socket.write('ping\n'));
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (d) => {
      data += d;
      if (data.includes('ping\n')) {
        socket.end();
        resolve(data);
      }
    });
    socket.on('error', reject);
  });
  assert.strictEqual(echoed, 'hello 127.0.0.1 function\nping\n');

  // https.Server: TLS on top of the handed-over connection.
  const ca = fs.readFileSync(path.join(FIXTURES, 'tls-cert.pem'));
  const body = await new Promise((resolve, reject) => {
    https
      .get({ host: '127.0.0.2', port: ports.https, ca, agent: false, servername: 'localhost', checkServerIdentity: () => undefined }, (res) => {
        let b = '';
        res.on('data', (d) => (b += d));
        res.on('end', () => resolve(b));
      })
      .on('error', reject);
  });
  assert.strictEqual(body, 'secure worker 1');

  // http.Server's socket timeout applies to handed-over connections.
  const started = Date.now();
  await new Promise((resolve, reject) => {
    const idle = net.connect(ports.timeout, '127.0.0.3');
    idle.on('close', resolve);
    idle.on('error', reject);
    idle.resume();
  });
  const waited = Date.now() - started;
  assert.ok(waited >= 250 && waited < 5000, `idle connection closed by the server's timeout after ${waited} ms`);
  await run.waitFor((l) => l.ev === 'timeout', 2000, "the server's 'timeout' callback");

  // A second server on port 0 at the same host: its own port, its own connections.
  assert.notStrictEqual(ports.second, ports.net, 'two port-0 servers on one host in a worker share a port');
  const second = await new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: ports.second, agent: false }, (res) => {
        let b = '';
        res.on('data', (d) => (b += d));
        res.on('end', () => resolve(b));
      })
      .on('error', reject);
  });
  assert.strictEqual(second, 'second worker 1');
});
