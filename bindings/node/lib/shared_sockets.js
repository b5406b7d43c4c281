'use strict';
// In a worker: Unix-socket (pipe) servers and dgram sockets shared through
// the primary, as Node's cluster shares them. The primary binds each path
// (or UDP address and port) once and hands the same socket to every worker
// asking for it (`channel.share`); the worker then serves it itself, as
// Node's workers serve the handle their primary sends. Listens with
// `exclusive: true`, an fd or a handle stay the worker's own, as in Node.
// Where the runtime cannot adopt the socket, the binding serves it: a pipe
// server's connections under Deno and Bun (SharedPipe), a dgram socket
// under Deno (native_dgram.js).

const dgram = require('dgram');
const net = require('net');
const os = require('os');
const paths = require('path');
const runtime = require('./runtime');
const { SharedDgram } = require('./native_dgram');

const errnoNames = new Map(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));

/** A share error as Node reports a bind/listen error: code, errno, syscall, address, port. */
function shareError(e, syscall, address, port) {
  // The addon's errors carry the OS errno (js_error in src/lib.rs); the
  // message form is what older builds gave.
  const m = /\(errno (\d+)\)/.exec(e.message);
  const errno = typeof e.errno === 'number' && e.errno > 0 ? e.errno : m ? Number(m[1]) : 0;
  const code = errnoNames.get(errno) || 'RCLUSTER_SHARE';
  const error = new Error(`${syscall} ${code}: ${e.message.replace(/^\[[A-Z_]+\] /, '')}`);
  error.code = code;
  error.errno = -errno;
  error.syscall = syscall;
  error.address = address;
  if (port !== undefined) error.port = port;
  return error;
}

/**
 * `ctx`: { channel, servers (the worker's Set of things to close on
 * disconnect), canListen() (false once the worker is leaving),
 * announce(info) (the primary's 'listening' event) }.
 */
function setupSharedSockets(ctx) {
  /** Tracks a pipe server or dgram socket: closed (and waited for) when the worker leaves. */
  function track(target, close) {
    const entry = {
      server: target,
      draining: false,
      drainThenClose: close,
    };
    ctx.servers.add(entry);
    target.once('close', () => ctx.servers.delete(entry));
  }

  // net.Server's own listen, before child.js patches it.
  const netListen = net.Server.prototype.listen;

  /** server.listen(path) through the primary; `original` is the listen child.js patched. */
  function listenPipe(server, path, callback, original) {
    if (typeof callback === 'function') server.once('listening', callback);
    process.nextTick(() => {
      if (!ctx.canListen()) return;
      // Resolved in this worker's cwd (the primary's may differ), as Node's workers do.
      const absolute = paths.resolve(path);
      let shared;
      try {
        shared = ctx.channel.share('unix', absolute, 0, 0);
      } catch (e) {
        server.emit('error', shareError(e, 'listen', path));
        return;
      }
      server.once('listening', () => ctx.announce({ addressType: -1, address: absolute, port: undefined }));
      track(server, () => server.close());
      if (runtime.isBun || (original === netListen && server instanceof net.Server)) {
        new SharedPipe(server, path, absolute).start(shared.fd);
        server.emit('listening');
      } else {
        // A server with a listen of its own (Deno's http.Server) serves the
        // fd itself; its maxConnections is then its own.
        original.call(server, { fd: shared.fd });
      }
    });
    return server;
  }

  /**
   * A server serving a Unix socket shared through the primary, taking
   * at most maxConnections at a time and leaving the rest in the socket's
   * queue for other workers, as Node's round-robin primary hands a
   * connection a full worker refused to another. Connections reach the
   * server as Node's own onconnection hands them over.
   *
   * Node: an acceptor of ours (a net.Server over this worker's copy of the
   * socket) takes them; at maxConnections it closes (libuv's accept loop
   * stops with it, taking nothing more), and a close that leaves room asks
   * the primary for the socket again. Deno's net.Server takes every queued
   * connection at once, and Bun's servers do not adopt a listening fd, so
   * there a NativeAcceptor takes one per permit (permits: the room left).
   */
  class SharedPipe {
    constructor(server, path, absolute) {
      this.server = server;
      this.path = path;
      this.absolute = absolute;
      this.acceptor = null;
      this.active = 0;
      this.closed = false;
      this.refed = true;
      const state = this;
      if (runtime.isBun) {
        // Bun's servers are not Node's net.Server (as for TCP, child.js).
        runtime.replaceBunServerMethods(server, state, () => path);
        return;
      }
      this.usesHandle = true;
      // The server's handle is ours, so net.Server's address(), close(),
      // listening, ref()/unref() and 'close' (once its connections end) apply.
      server._pipeName = path;
      server._handle = {
        close(cb) {
          state.close();
          if (typeof cb === 'function') process.nextTick(cb);
        },
        ref() {
          state.refed = true;
          if (state.acceptor) state.acceptor.ref();
        },
        unref() {
          state.refed = false;
          if (state.acceptor) state.acceptor.unref();
        },
        hasRef() {
          return state.refed;
        },
        getAsyncId() {
          return -1;
        },
        fd: -1,
        reading: false,
        onconnection: null,
      };
    }

    /** Whether the server may take another connection now. */
    hasRoom() {
      const max = this.server.maxConnections;
      return !(typeof max === 'number' && max > 0 && this.active >= max);
    }

    /** Accepts on `fd`, this worker's copy of the shared socket (closed with the acceptor). */
    start(fd) {
      const server = this.server;
      if (runtime.isDeno || runtime.isBun) {
        this.startNative(fd);
        return;
      }
      const acceptor = new net.Server({ allowHalfOpen: server.allowHalfOpen, pauseOnConnect: server.pauseOnConnect });
      acceptor.on('connection', (socket) => this.deliver(socket));
      acceptor.on('error', (e) => server.emit('error', e));
      netListen.call(acceptor, { fd });
      if (!this.refed) acceptor.unref();
      this.acceptor = acceptor;
    }

    /** Deno and Bun: a native thread accepts, one connection per permit. */
    startNative(fd) {
      const native = require('./native');
      let acceptor;
      try {
        acceptor = new native.NativeAcceptor(fd);
      } catch (e) {
        native.closeFd(fd);
        this.server.emit('error', e);
        return;
      }
      this.native = acceptor;
      acceptor.start((event) => {
        if (event.fd === null || event.fd === undefined) {
          this.native = null;
          acceptor.close();
          if (!this.closed) this.server.emit('error', new Error(`rcluster: ${event.error}`));
          return;
        }
        const server = this.server;
        let socket;
        try {
          socket = runtime.isBun ? runtime.socketFromFd(event.fd, server) : new net.Socket({
            fd: event.fd,
            readable: true,
            writable: true,
            allowHalfOpen: Boolean(server.allowHalfOpen),
            pauseOnCreate: Boolean(server.pauseOnConnect),
          });
        } catch (e) {
          native.closeFd(event.fd);
          if (this.native) this.granted--;
          this.grantRoom();
          server.emit('error', e);
          return;
        }
        this.deliver(socket);
      });
      this.grantRoom();
    }

    /** Deno and Bun: lets the native acceptor take what the server has room for. */
    grantRoom() {
      if (!this.native || this.closed) return;
      const max = this.server.maxConnections;
      const limited = typeof max === 'number' && max > 0;
      const want = limited ? Math.max(0, max - this.active) : 64;
      const granted = this.granted || 0;
      if (want > granted) this.native.grant(want - granted);
      this.granted = Math.max(granted, want);
    }

    /** Called in the acceptor's accept loop: closing it here stops that loop. */
    deliver(socket) {
      const server = this.server;
      this.active++;
      if (this.native) {
        this.granted--;
        this.grantRoom(); // without a limit, the window stays open
      }
      if (this.usesHandle) {
        // As net.Server's onconnection: the socket's destroy counts it off
        // the server (and lets a closing server emit 'close').
        server._connections++;
        socket.server = server;
        socket._server = server;
      }
      socket.once('close', () => this.onSocketClose());
      if (!this.hasRoom()) this.stopAccepting();
      server.emit('connection', socket);
    }

    onSocketClose() {
      this.active--;
      if (this.closed && this.active === 0 && !this.usesHandle) this.emitClose();
      if (this.native) {
        this.grantRoom();
        return;
      }
      if (this.acceptor || this.closed || !this.hasRoom() || !ctx.canListen()) return;
      let shared;
      try {
        shared = ctx.channel.share('unix', this.absolute, 0, 0);
      } catch (e) {
        this.server.emit('error', shareError(e, 'listen', this.path));
        return;
      }
      this.start(shared.fd);
    }

    stopAccepting() {
      if (!this.acceptor) return;
      this.acceptor.close();
      this.acceptor = null;
    }

    emitClose() {
      if (this.closeEmitted) return;
      this.closeEmitted = true;
      process.nextTick(() => this.server.emit('close'));
    }

    close() {
      this.closed = true;
      this.stopAccepting();
      if (this.native) {
        this.native.close();
        this.native = null;
      }
    }
  }

  // ----- dgram ---------------------------------------------------------------

  const Socket = dgram.Socket;
  const originalBind = Socket.prototype.bind;
  const kSharing = Symbol('rcluster.sharing');
  const kOptions = Symbol('rcluster.dgramOptions');
  const portZero = new Map(); // `${type} ${address}` -> next index

  // The options Node's dgram sends its primary with a bind (reuseAddr,
  // ipv6Only: the primary binds the socket, so it must set them), kept
  // from createSocket, the documented way to make a socket.
  const originalCreateSocket = dgram.createSocket;
  dgram.createSocket = function createSocket(type, listener) {
    const socket = originalCreateSocket.apply(this, arguments);
    if (type !== null && typeof type === 'object') {
      socket[kOptions] = { reuseAddr: type.reuseAddr === true, ipv6Only: type.ipv6Only === true };
    }
    return socket;
  };

  /**
   * How the primary is to bind `socket`: what createSocket was given; for a
   * socket made before this module was loaded (or with `new dgram.Socket`),
   * what the runtime's dgram keeps of it (Node's and Bun's keep the options
   * in their socket state).
   */
  function bindFlags(socket) {
    if (socket[kOptions]) return socket[kOptions];
    for (const symbol of Object.getOwnPropertySymbols(socket)) {
      const state = socket[symbol];
      if (state !== null && typeof state === 'object' && 'reuseAddr' in state && 'ipv6Only' in state) {
        return { reuseAddr: state.reuseAddr === true, ipv6Only: state.ipv6Only === true };
      }
    }
    return { reuseAddr: false, ipv6Only: false };
  }

  /**
   * Node's and Bun's dgram do not know of a bind on its way to the primary
   * (their own bind runs once the shared fd is here): until then a send
   * would bind a socket of its own and a close would close the socket
   * under that bind. Both wait on the instance instead, as they wait for a
   * bind of the runtime's own; `replay()` once bound runs them (a send
   * whose arguments are bad emits its error), `release()` (the bind
   * failed) drops the sends and runs the closes.
   */
  function holdWhileBinding(socket) {
    const queue = []; // [isClose, fn]
    socket.send = (...args) => {
      queue.push([false, () => socket.send(...args)]);
    };
    socket.close = (callback) => {
      if (typeof callback === 'function') socket.once('close', callback);
      queue.push([true, () => socket.close()]);
      return socket;
    };
    const run = (entries) => {
      delete socket.send;
      delete socket.close;
      for (const [, fn] of entries) {
        try {
          fn();
        } catch (e) {
          socket.emit('error', e);
        }
      }
    };
    return {
      replay: () => run(queue),
      release: () => run(queue.filter(([isClose]) => isClose)),
    };
  }

  /** bind()'s arguments as Node reads them. */
  function bindArgs(args) {
    const callback = args.find((a) => typeof a === 'function');
    if (args[0] !== null && typeof args[0] === 'object') {
      const { port = 0, address, exclusive = false, fd } = args[0];
      return { port, address, exclusive, fd, callback };
    }
    const port = typeof args[0] === 'function' || args[0] === undefined ? 0 : args[0];
    const address = typeof args[1] === 'string' ? args[1] : undefined;
    return { port, address, exclusive: false, fd: undefined, callback };
  }

  Socket.prototype.bind = function bind(...args) {
    const { port, address, exclusive, fd, callback } = bindArgs(args);
    if (exclusive || fd !== undefined || !ctx.canListen()) return originalBind.apply(this, args);
    if (this[kSharing]) {
      // Node's send() binds implicitly while our bind is on its way: one is enough.
      if (typeof callback === 'function') this.once('listening', callback);
      return this;
    }
    this[kSharing] = true;
    const type = this.type === 'udp6' ? 'udp6' : 'udp4';
    const number = Number(port) || 0;
    const host = address === undefined || address === null ? '' : String(address);
    let index = 0;
    if (number === 0) {
      const key = `${type} ${host}`;
      index = portZero.get(key) || 0;
      portZero.set(key, index + 1);
    }
    if (typeof callback === 'function') this.once('listening', callback);
    // Deno's dgram does not adopt an fd: the addon serves the socket there,
    // through this socket's own methods (sends and a close wait for the bind).
    const served = runtime.isDeno ? new SharedDgram(this) : null;
    const held = served ? null : holdWhileBinding(this);
    // Asynchronous, as Node's bind through its primary is.
    process.nextTick(() => {
      let shared;
      try {
        shared = ctx.channel.share(type, host, number, index, bindFlags(this));
      } catch (e) {
        this[kSharing] = false;
        if (served) served.release();
        else held.release();
        this.emit('error', shareError(e, 'bind', host || (type === 'udp6' ? '::' : '0.0.0.0'), number));
        return;
      }
      this.once('listening', () =>
        ctx.announce({ addressType: type, address: shared.address, port: shared.port }),
      );
      track(this, () => this.close());
      if (served) {
        served.serve(shared.fd);
      } else {
        originalBind.call(this, { fd: shared.fd });
        held.replay();
      }
    });
    return this;
  };

  return { listenPipe };
}

module.exports = { setupSharedSockets };
