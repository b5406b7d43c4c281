'use strict';
// Test helpers: start a real primary process running a fixture, read the
// JSON lines it prints, make real HTTP requests, and clean up every process
// by pid. Every wait is bounded.

const { spawn } = require('child_process');
const http = require('http');
const net = require('net');
const path = require('path');
const fs = require('fs');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const FIXTURES = path.join(__dirname, 'fixtures');

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

async function waitUntil(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Starts `command args` (default: node FIXTURE) and collects its stdout as
 * JSON lines (other lines are kept as { line }). Lines with a `pid` or
 * `pids` field register processes to clean up.
 */
function start(args, options = {}) {
  const command = options.command || process.execPath;
  const child = spawn(command, args, {
    cwd: options.cwd || ROOT,
    env: { ...process.env, ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const run = {
    child,
    lines: [],
    stderr: '',
    pids: new Set([child.pid]),
    exited: null,
  };
  let buffer = '';
  child.stdout.on('data', (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const text = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      let line;
      try {
        line = JSON.parse(text);
      } catch (e) {
        line = { line: text };
      }
      if (line && typeof line.pid === 'number') run.pids.add(line.pid);
      run.lines.push(line);
    }
  });
  child.stderr.on('data', (chunk) => {
    run.stderr += chunk;
  });
  child.on('exit', (code, signal) => {
    run.exited = { code, signal };
  });
  /** Writes a line to the primary's stdin. */
  run.tell = (text) => child.stdin.write(`${text}\n`);
  run.find = (predicate) => run.lines.find(predicate);
  run.waitFor = (predicate, timeoutMs = 10000, what = 'a line') =>
    waitUntil(() => run.lines.find(predicate), timeoutMs, `${what}; stdout so far: ${JSON.stringify(run.lines)}; stderr: ${run.stderr}`);
  run.waitExit = (timeoutMs = 10000) =>
    waitUntil(() => run.exited, timeoutMs, `the primary to exit; stderr: ${run.stderr}`);
  /** Kills whatever is still running, primary first. */
  run.cleanup = async () => {
    child.stdin.destroy();
    for (const pid of run.pids) {
      if (alive(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch (e) {
          // gone
        }
      }
    }
    if (!run.exited) await run.waitExit(5000).catch(() => {});
  };
  return run;
}

function fixture(name, args = [], options = {}) {
  return start([path.join(FIXTURES, name), ...args], options);
}

/** One HTTP GET on a new connection; resolves { status, body, headers }. */
function get(port, options = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: options.host || '127.0.0.1', port, path: options.path || '/', agent: options.agent || false, headers: options.headers },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body, headers: res.headers }));
      },
    );
    req.setTimeout(options.timeoutMs || 5000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
  });
}

/** Opens a raw TCP connection, sends one keep-alive request, resolves with the socket and the body. */
function holdOpen(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write('GET / HTTP/1.1\r\nHost: t\r\n\r\n');
    });
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (d) => {
      data += d;
      const end = data.indexOf('\r\n\r\n');
      if (end >= 0) {
        const m = /content-length: (\d+)/i.exec(data);
        const length = m ? Number(m[1]) : 0;
        if (data.length >= end + 4 + length) resolve({ socket, body: data.slice(end + 4, end + 4 + length) });
      }
    });
    socket.on('error', reject);
    socket.setTimeout(5000, () => socket.destroy(new Error('held connection timed out')));
  });
}

/** Where a runtime's binary is: $RCLUSTER_<NAME>, PATH, or bindings/node/.runtimes (make test installs them there). */
function findRuntime(name) {
  const fromEnv = process.env[`RCLUSTER_${name.toUpperCase()}`];
  if (fromEnv && fs.existsSync(fromEnv)) return fromEnv;
  const local = {
    bun: path.join(__dirname, '..', '.runtimes', 'node_modules', '@oven', 'bun-linux-x64', 'bin', 'bun'),
    deno: path.join(__dirname, '..', '.runtimes', 'node_modules', '@deno', 'linux-x64-glibc', 'deno'),
  }[name];
  if (local && fs.existsSync(local)) return local;
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const candidate = path.join(dir, name);
    if (dir && fs.existsSync(candidate)) return candidate;
  }
  return null;
}

module.exports = { ROOT, FIXTURES, start, fixture, get, holdOpen, alive, waitUntil, findRuntime };
