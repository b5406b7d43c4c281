'use strict';
// Handles in messages: `send(message, sendHandle[, options][, callback])`
// with a net.Server, net.Socket or dgram.Socket, as in Node. The handle
// travels as the file descriptor behind it, attached to the message (the
// core sends a duplicate: the sender's own stays open); the receiver builds
// a working server or socket around the fd it got, which it owns.
//
// On the wire the message is Node's own envelope, `{ cmd: 'NODE_HANDLE',
// type, msg }` (and `dgramType` for UDP): messages whose `cmd` starts with
// NODE_ are Node's internal ones, never a user's. As in Node:
// - a net.Socket is closed in the sender once sent, unless `keepOpen`;
// - a handle with nothing behind it any more (a socket already sent or
//   destroyed, a server not listening) sends the message alone;
// - anything else as a handle is a TypeError (ERR_INVALID_HANDLE_TYPE).

const net = require('net');
const dgram = require('dgram');
const native = require('./native');
const runtime = require('./runtime');
const { SharedDgram, kServed } = require('./native_dgram');

const HANDLE_CMD = 'NODE_HANDLE';

function invalidHandleType() {
  const e = new TypeError('This handle type cannot be sent');
  e.code = 'ERR_INVALID_HANDLE_TYPE';
  return e;
}

function noFdInThisRuntime(type) {
  const e = new Error(`rcluster: this runtime does not expose the file descriptor behind a ${type}, so it cannot be sent`);
  e.code = 'ERR_INVALID_HANDLE_TYPE';
  return e;
}

/**
 * The fd behind a runtime handle: `{ fd, owned }`, fd -1 when the handle is
 * gone (closed, or already sent). Node's and Bun's handles have an `fd`;
 * Deno's give a duplicate from `fdForIpc()`, which is ours to close
 * (`owned`). `type` names the handle for the error when neither exists.
 */
function fdOf(handle, type) {
  if (!handle) return { fd: -1, owned: false };
  if (typeof handle.fd === 'number') return { fd: handle.fd, owned: false };
  if (typeof handle.fdForIpc === 'function') return { fd: handle.fdForIpc(), owned: true };
  throw noFdInThisRuntime(type);
}

function dgramHandle(socket) {
  if (socket[kServed]) return socket[kServed].ipcHandle(); // Deno: served by the addon
  const state = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  if (state === undefined) throw noFdInThisRuntime('dgram.Socket');
  return socket[state] && socket[state].handle;
}

/** The envelope type of `handle`; throws for what cannot be sent. */
function typeOf(handle) {
  if (handle instanceof net.Server) return 'net.Server';
  if (handle instanceof net.Socket) return 'net.Socket';
  if (handle instanceof dgram.Socket) return 'dgram.Socket';
  throw invalidHandleType();
}

/** The runtime handle behind `handle` of `type` (null once it is gone). */
function runtimeHandle(handle, type) {
  return type === 'dgram.Socket' ? dgramHandle(handle) : handle._handle;
}

/** The fd to send for `handle` of `type`: `{ fd, owned }` (see fdOf). */
function fdToSend(handle, type) {
  return fdOf(runtimeHandle(handle, type), type);
}

/** Throws now, not at the send, if this runtime has no fd behind such a handle. */
function checkSendable(handle, type) {
  const inner = runtimeHandle(handle, type);
  if (inner && typeof inner.fd !== 'number' && typeof inner.fdForIpc !== 'function') throw noFdInThisRuntime(type);
}

/**
 * Prepares `send(message, handle, options)`. Returns `deliver(send)`, which
 * calls `send(text, fds)` (fds null: the message alone) and then does what
 * follows a send. `handle` undefined or null: the message alone.
 */
function prepare(message, handle, options) {
  const alone = (send) => send(JSON.stringify(message), null);
  if (handle === undefined || handle === null) return alone;
  if (options !== undefined && (options === null || typeof options !== 'object')) {
    const e = new TypeError('The "options" argument must be of type object.');
    e.code = 'ERR_INVALID_ARG_TYPE';
    throw e;
  }
  const type = typeOf(handle);
  checkSendable(handle, type);
  const envelope = { cmd: HANDLE_CMD, type, msg: message };
  if (type === 'dgram.Socket') envelope.dgramType = handle.type;
  const keepOpen = Boolean(options && options.keepOpen);
  return (send) => {
    // Taken only now: a send that does not happen must not hold a duplicate.
    const { fd, owned } = fdToSend(handle, type);
    if (fd < 0) return alone(send);
    try {
      send(JSON.stringify(envelope), [fd]);
    } finally {
      if (owned) closeFds([fd]); // the core sent a duplicate of its own
    }
    // The receiver has its own copy now: the sender's socket goes, as in Node.
    if (type === 'net.Socket' && !keepOpen) handle.destroy();
  };
}

/** Closes fds nobody will use (a message that was not expecting them, a sent duplicate). */
function closeFds(fds) {
  for (const fd of fds || []) native.closeFd(fd);
}

/**
 * Delivers a decoded message that came with `fds` (maybe none) through
 * `emit(message, handle)`: a handle envelope becomes its message and a
 * working server or socket; fds that no envelope asked for are closed.
 */
function receive(decoded, fds, emit) {
  const isEnvelope = decoded !== null && typeof decoded === 'object' && decoded.cmd === HANDLE_CMD;
  if (!isEnvelope) {
    if (fds && fds.length) {
      closeFds(fds);
      process.emitWarning(`rcluster: a message came with ${fds.length} file descriptor(s) but no handle; they were closed`);
    }
    emit(decoded, undefined);
    return;
  }
  const [fd, ...extra] = fds || [];
  closeFds(extra);
  if (fd === undefined) {
    // The kernel dropped it (this process is at its fd limit).
    process.emitWarning(`rcluster: a ${decoded.type} sent with a message did not arrive (out of file descriptors)`);
    emit(decoded.msg, undefined);
    return;
  }
  let built;
  try {
    built = build(decoded, fd, (handle) => emit(decoded.msg, handle));
  } catch (e) {
    closeFds([fd]);
    throw e;
  }
  if (!built) {
    closeFds([fd]);
    process.emitWarning(`rcluster: a message came with a handle of unknown type ${JSON.stringify(decoded.type)}; it was closed`);
    emit(decoded.msg, undefined);
  }
}

/** Builds the handle of `decoded.type` around `fd` and emits it; false for an unknown type. */
function build(decoded, fd, emitHandle) {
  switch (decoded.type) {
    case 'net.Server': {
      const server = new net.Server();
      server.listen({ fd }, () => emitHandle(server));
      return true;
    }
    case 'net.Socket': {
      emitHandle(new net.Socket({ fd, readable: true, writable: true }));
      return true;
    }
    case 'dgram.Socket': {
      const socket = dgram.createSocket(decoded.dgramType === 'udp6' ? 'udp6' : 'udp4');
      if (runtime.isDeno) {
        // Deno's dgram does not adopt an fd: the addon serves it.
        socket.once('listening', () => emitHandle(socket));
        new SharedDgram(socket).serve(fd);
        return true;
      }
      socket.bind({ fd }, () => emitHandle(socket));
      return true;
    }
    default:
      return false;
  }
}

module.exports = { prepare, receive, closeFds };
