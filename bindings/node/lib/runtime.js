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
  return new net.Socket({
    fd,
    readable: true,
    writable: true,
    allowHalfOpen: Boolean(server && server.allowHalfOpen),
    pauseOnCreate: Boolean(server && server.pauseOnConnect),
  });
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

module.exports = { isBun, isDeno, name, workerArgv, socketFromFd, KeepAlive };
