'use strict';
// What differs between Node, Bun and Deno, in one place: how a worker is
// started, and how an accepted connection's fd becomes a socket.

const net = require('net');

const isBun = typeof process.versions.bun === 'string';
const isDeno = typeof process.versions.deno === 'string';
const name = isBun ? 'bun' : isDeno ? 'deno' : 'node';

/** The argv that starts a worker running `settings.exec`. */
function workerArgv(settings) {
  let execArgv = settings.execArgv || [];
  if (isDeno && execArgv.length === 0) {
    // Deno's process.execArgv is empty; a worker needs `run` and the
    // permissions the binding uses (ffi for the addon, net, env, read).
    execArgv = ['run', '-A'];
  }
  return [process.execPath, ...execArgv, settings.exec, ...(settings.args || [])];
}

/**
 * A socket over an accepted connection's fd (the fd is now the socket's).
 * Node and Deno adopt an fd with `new net.Socket({ fd })`. Bun's
 * net.Socket does not adopt a connected fd (it stays inert), so Bun gets a
 * Duplex over `Bun.connect({ fd })`, which its http.Server serves.
 */
function socketFromFd(fd, server) {
  if (isBun) {
    const { BunFdSocket } = require('./bun_socket');
    return new BunFdSocket(fd, { allowHalfOpen: Boolean(server && server.allowHalfOpen) });
  }
  const options = {
    readable: true,
    writable: true,
    allowHalfOpen: Boolean(server && server.allowHalfOpen),
    pauseOnCreate: Boolean(server && server.pauseOnConnect),
  };
  const TCP = tcpHandleClass();
  if (TCP !== null) {
    const handle = new TCP(TCP_SOCKET);
    if (handle.open(fd) === 0) return new net.Socket({ handle, ...options });
    handle.close();
  }
  return new net.Socket({ fd, ...options });
}

/**
 * Node's own TCP handle class, the one its servers wrap accepted
 * connections in. `new net.Socket({ fd })` would work too, but first asks
 * the kernel what the fd is (fstat, getsockopt, getsockname: three system
 * calls per connection, measured). Every fd here is a connected TCP socket,
 * so the handle is made directly, as Node's server does. The class comes
 * from process.binding('tcp_wrap') (deprecated in the docs only; a runtime
 * warning only under --pending-deprecation or NODE_PENDING_DEPRECATION=1,
 * where we do not use it); when
 * it is missing (Deno, a future Node), `{ fd }` it is.
 */
let tcpClass;
let TCP_SOCKET = 0;
function tcpHandleClass() {
  if (tcpClass !== undefined) return tcpClass;
  tcpClass = null;
  const flag = /--pending[-_]deprecation/;
  const pending = process.execArgv.some((a) => flag.test(a)) || flag.test(process.env.NODE_OPTIONS || '') ||
    process.env.NODE_PENDING_DEPRECATION === '1';
  if (name !== 'node' || pending || typeof process.binding !== 'function') return tcpClass;
  try {
    const binding = process.binding('tcp_wrap');
    if (typeof binding.TCP === 'function' && binding.constants && typeof binding.constants.SOCKET === 'number') {
      tcpClass = binding.TCP;
      TCP_SOCKET = binding.constants.SOCKET;
    }
  } catch (e) {
    tcpClass = null;
  }
  return tcpClass;
}

/**
 * A stream over one end of a worker's stdio pipe (the fd is now the
 * stream's), as child_process gives `subprocess.stdout`. Node and Deno wrap
 * it in their pipe handle (`net.Socket({ fd })`; Deno's fs streams take
 * only its own resource ids); Bun's net.Socket leaves an adopted fd inert,
 * so Bun reads and writes it through fs streams.
 */
function pipeStream(fd, direction) {
  const fs = require('fs');
  if (name !== 'bun') {
    return new net.Socket({ fd, readable: direction === 'read', writable: direction === 'write' });
  }
  return direction === 'read' ? fs.createReadStream(null, { fd }) : fs.createWriteStream(null, { fd });
}

/** A ref-counted keep-alive: the process stays up while anything holds a ref. */
class KeepAlive {
  constructor() {
    this.refs = 0;
    this.timer = null;
  }
  ref() {
    if (++this.refs === 1) this.timer = setInterval(() => {}, 0x7fffffff);
  }
  unref() {
    if (this.refs === 0) return;
    if (--this.refs === 0) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}

/**
 * Bun's servers are not Node's net.Server: one the binding serves gets
 * `listening`, `address()`, `close()`, `ref()` and `unref()` on the
 * instance, answered from `state` (its `closed`, `active`, `close()` and
 * `emitClose()`); `address` gives what address() returns while open.
 */
function replaceBunServerMethods(server, state, address) {
  state.usesHandle = false;
  Object.defineProperty(server, 'listening', { configurable: true, get: () => !state.closed });
  server.address = () => (state.closed ? null : address());
  server.close = function close(cb) {
    if (typeof cb === 'function') this.once('close', cb);
    state.close();
    if (state.active === 0) state.emitClose();
    return this;
  };
  server.ref = function ref() {
    return this;
  };
  server.unref = function unref() {
    return this;
  };
}

module.exports = { isBun, isDeno, name, workerArgv, socketFromFd, pipeStream, KeepAlive, replaceBunServerMethods };
