'use strict';
// The worker side of the cluster module, following Node's
// lib/internal/cluster/child.js: `server.listen(port)` on any net, http or
// https server asks the rcluster primary for the address, and connections
// the primary hands over reach the server as real sockets on its
// 'connection' path.

const net = require('net');
const dns = require('dns');
const os = require('os');
const { Worker } = require('./worker');
const runtime = require('./runtime');
const { sendArgs, decode, channelClosed } = require('./messages');
const internal = require('./internal');
const { setupSharedSockets } = require('./shared_sockets');
const handles = require('./handles');

/** How many connections may be accepted ahead of JS (without maxConnections). */
const ACCEPT_WINDOW = 64;
/** Most connections taken in one acceptMany (poll mode). */
const ACCEPT_BATCH = 64;
const UNLIMITED = 0xffffffff;
/** On a delivered socket: the ClusterServer it came through. */
const kClusterServer = Symbol('rcluster.server');

/** 'close' of a delivered socket (one function for all, not a closure each); counted once. */
function onClusterSocketClose() {
  const state = this[kClusterServer];
  if (state === undefined) return;
  this[kClusterServer] = undefined;
  state.onSocketClose();
}

const errnoNames = new Map(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));

/**
 * A native error as Node's listen errors look: code (the errno's name, as
 * EADDRINUSE), errno (negative, as libuv's), syscall, address, port. The
 * addon's error says what failed in `code` (RCLUSTER_E_*) and `errno`.
 */
function listenError(e, host, port) {
  const errno = typeof e.errno === 'number' ? e.errno : 0;
  const code = errnoNames.get(errno) || e.code || 'RCLUSTER_E_ADDR';
  const error = new Error(`listen ${code}: ${e.message}`);
  error.code = code;
  error.errno = errno ? -errno : 0;
  error.syscall = 'listen';
  error.address = host;
  error.port = port;
  return error;
}

/**
 * Poll mode (Node): libuv watches the worker's and listeners' fds on this
 * thread and JS takes what is ready synchronously, with no helper thread.
 * Thread mode (Bun, Deno, or RCLUSTER_NODE_ACCEPT=thread): Rust threads
 * block on the library and hand results over through threadsafe functions.
 */
function usePollMode(native) {
  if (process.env.RCLUSTER_NODE_ACCEPT === 'thread') return false;
  return runtime.name === 'node' && typeof native.canPoll === 'function' && native.canPoll();
}

function setupChild(cluster, native) {
  const channel = native.NativeWorker.open();
  // As Node deletes NODE_UNIQUE_ID: this worker's children are ordinary
  // processes. The library removed the variables from the C environment;
  // runtimes that keep a copy of it (Bun, Deno) need this too.
  delete process.env.RCLUSTER_WORKER_ID;
  delete process.env.RCLUSTER_CHANNEL_FD;
  const nodePrimary = process.env[internal.PRIMARY_ENV] === '1';
  delete process.env[internal.PRIMARY_ENV];
  const pollMode = usePollMode(native);
  const keepAlive = new runtime.KeepAlive();
  const servers = new Set(); // ClusterServer
  let connected = true;
  let closingChannel = false;
  let leaving = false; // sent LEAVING, waiting for the primary's LEAVING_ACK
  let channelRef = true; // process.channel.ref()/unref()

  const worker = new Worker({ id: channel.id, process, state: 'online' });
  // process.connected is the runtime's own (a getter in Bun, where setting it
  // does nothing): ours says whether this channel is open.
  worker.isConnected = () => connected;
  cluster.isWorker = true;
  cluster.isPrimary = false;
  cluster.isMaster = false;
  cluster.worker = worker;
  cluster.Worker = Worker;

  // Like Node's IPC channel in a cluster worker, an open channel keeps the
  // worker alive; it ends with disconnect() or when the primary says so.
  keepAlive.ref();

  try {
    Object.defineProperty(process, 'connected', { configurable: true, enumerable: true, get: () => connected });
  } catch (e) {
    process.connected = true; // not redefinable here: kept up to date by hand below
  }
  // As Node's IPC channel handle: unref() lets the worker exit while the
  // channel is open, ref() keeps it alive again.
  process.channel = {
    ref() {
      if (!channelRef && connected) keepAlive.ref();
      channelRef = true;
    },
    unref() {
      if (channelRef && connected) keepAlive.unref();
      channelRef = false;
    },
    hasRef() {
      return channelRef && connected;
    },
  };
  process.send = function send(...args) {
    const { deliver, callback } = sendArgs(args);
    if (!connected) {
      const error = channelClosed();
      if (callback) process.nextTick(callback, error);
      else process.nextTick(() => process.emit('error', error));
      return false;
    }
    // HOOK(handles): a handle travels as fds attached to the message.
    deliver((text, fds) => (fds ? channel.sendFds(text, fds) : channel.send(text)));
    if (callback) process.nextTick(callback, null);
    return true;
  };
  process.disconnect = function disconnect() {
    if (!connected) {
      const e = new Error('IPC channel is already disconnected');
      e.code = 'ERR_IPC_DISCONNECTED';
      throw e;
    }
    closeChannel();
  };

  process.once('disconnect', () => {
    worker.emit('disconnect');
    if (!worker.exitedAfterDisconnect) {
      // The primary went away or the channel broke: leave at once, as Node does.
      process.exit(0);
    }
  });

  function closeChannel() {
    if (!connected) return;
    connected = false;
    closingChannel = true;
    if (process.connected) process.connected = false;
    channel.close();
    if (channelRef) keepAlive.unref();
    process.nextTick(() => process.emit('disconnect'));
  }

  /** Closes every server (waiting for their connections), then the channel. */
  function disconnectGracefully() {
    worker.exitedAfterDisconnect = true;
    let waiting = 1;
    const done = () => {
      if (--waiting === 0) leave();
    };
    for (const state of [...servers]) {
      waiting++;
      state.server.once('close', done);
      state.drainThenClose();
    }
    done();
  }

  /**
   * Closes the channel once the primary has acknowledged that this worker
   * leaves on purpose (as Node's worker waits for its primary), so the
   * primary's 'disconnect' already sees exitedAfterDisconnect.
   */
  function leave() {
    if (!connected || leaving) return;
    if (!nodePrimary) {
      closeChannel();
      return;
    }
    leaving = true;
    try {
      channel.send(internal.LEAVING);
    } catch (e) {
      closeChannel(); // the channel broke: nothing to wait for
    }
  }

  worker.disconnect = function disconnect() {
    if (this.state !== 'disconnecting' && this.state !== 'destroying') {
      this.state = 'disconnecting';
      disconnectGracefully();
    }
    return this;
  };
  /** rcluster: tells the primary this worker is ready (primaries with `waitReady` wait for it). */
  worker.ready = function ready() {
    channel.ready();
  };
  worker.destroy = function destroy() {
    if (this.state === 'destroying') return;
    this.exitedAfterDisconnect = true;
    this.state = 'destroying';
    if (connected && nodePrimary) {
      // Told before the hang-up (as Node's worker does), so the primary's
      // 'disconnect' and 'exit' see exitedAfterDisconnect; no answer awaited.
      try {
        channel.send(internal.LEAVING);
      } catch (e) {
        // the channel broke: the primary hears of the hang-up alone
      }
    }
    if (connected) closeChannel();
    process.exit(0);
  };

  function onEvent(event) {
    if (process.env.RCLUSTER_DEBUG) console.error('worker event', event);
    switch (event.kind) {
      case 'message': {
        if (internal.isInternal(event.data)) {
          handles.closeFds(event.fds);
          if (event.data === internal.LEAVING_ACK && leaving) closeChannel();
          return;
        }
        let message;
        try {
          message = decode(event.data);
        } catch (e) {
          handles.closeFds(event.fds);
          process.emitWarning(`rcluster: the primary sent a message that is not JSON: ${e.message}`);
          return;
        }
        // HOOK(handles): a handle envelope becomes (message, server or socket).
        handles.receive(message, event.fds, (msg, handle) => process.emit('message', msg, handle));
        break;
      }
      case 'disconnect':
        // The primary asks us to leave: serve what is queued, close the
        // servers once their connections end, then close the channel.
        if (worker.state !== 'disconnecting') {
          worker.state = 'disconnecting';
          for (const state of servers) state.draining = true;
          disconnectGracefully();
        }
        break;
      case 'primary_gone':
        if (!closingChannel && connected) {
          connected = false;
          if (process.connected) process.connected = false;
          if (channelRef) keepAlive.unref();
          process.emit('disconnect');
        }
        break;
      default:
        break;
    }
  }
  if (pollMode) {
    let eventsClosed = false;
    const events = new native.NativePoll(channel.fd, (status) => {
      if (status < 0) setImmediate(() => eventsClosed || events.start()); // see ClusterServer.attach
      let event;
      while ((event = channel.nextEvent()) != null) {
        if (event.kind === 'primary_gone') {
          eventsClosed = true;
          events.close(); // the channel stays readable (hung up)
        }
        onEvent(event);
      }
      // Connections come over the channel too: reading it for events queued
      // them, so take them now rather than on the listener's own poll a
      // loop turn later (a wake-up and a callback fewer per batch).
      for (const state of servers) {
        if (state.dispatched && state.poll && !state.pollStopped) state.onReadable();
      }
    });
    events.start();
  } else {
    channel.start(onEvent);
  }

  // ----- server.listen through the primary ----------------------------------

  /** One server listening through the primary. */
  class ClusterServer {
    constructor(server, host, listener) {
      this.server = server;
      this.host = host;
      this.address = listener.address;
      this.port = listener.port;
      this.family = listener.family;
      this.listener = null;
      this.pausedListener = null; // kept while paused: it holds our port-0 place
      this.poll = null;
      this.active = 0;
      this.granted = 0;
      this.delivered = 0;
      this.paused = false;
      this.draining = false;
      this.closed = false;
      this.pollStopped = false;
      // Fixed by the primary's policy, known once a listen is answered.
      this.reportsDone = channel.reportsDone !== false;
      this.attach(listener);
    }

    attach(listener) {
      this.listener = listener;
      this.dispatched = !listener.shared; // the primary hands it connections
      if (pollMode) {
        this.poll = new native.NativePoll(listener.fd, (status) => {
          // A poll error stops libuv's handle: look now, and poll again later.
          if (status < 0) setImmediate(() => this.poll && !this.pollStopped && this.poll.start());
          this.onReadable();
        });
        this.pollStopped = true; // refill() starts it
      } else {
        listener.start((event) => this.onAccepted(event));
      }
    }

    /** Poll mode: the listener may have connections; take what this server can serve. */
    onReadable() {
      const listener = this.listener;
      if (!listener) return;
      const room = this.room();
      if (room === 0) {
        this.poll.stop(); // refill() starts it again when a connection closes
        this.pollStopped = true;
        return;
      }
      const fds = listener.acceptMany(Math.min(room, ACCEPT_BATCH));
      if (fds == null) {
        // The listener ended: the worker is disconnecting, or the channel is gone.
        this.detach();
        if (!this.closed) this.server.close();
        return;
      }
      this.deliverAll(fds, 0);
      if (fds.length > 0) this.refill();
    }

    /**
     * Delivers fds[from..]. If a 'connection' listener throws, the rest of
     * the batch (already acknowledged: ours to serve) is delivered on the
     * next turn and the error propagates as Node's own would.
     */
    deliverAll(fds, from) {
      for (let i = from; i < fds.length; i++) {
        try {
          this.deliver(fds[i]);
        } catch (e) {
          if (i + 1 < fds.length) setImmediate(() => this.deliverAll(fds, i + 1));
          throw e;
        }
      }
    }

    /** Poll mode: how many connections may be taken now. */
    room() {
      if (this.closed) return 0;
      if (this.draining) return ACCEPT_BATCH;
      const max = this.server.maxConnections;
      if (typeof max === 'number' && max > 0) return Math.max(0, max - this.active);
      return ACCEPT_BATCH;
    }

    onAccepted(event) {
      if (event.fd !== null && event.fd !== undefined) {
        this.delivered++;
        this.deliver(event.fd);
        this.refill();
        return;
      }
      // The listener ended: the worker is disconnecting, or the channel is gone.
      this.detach();
      if (!this.closed) this.server.close();
    }

    deliver(fd) {
      const server = this.server;
      let socket;
      try {
        socket = runtime.socketFromFd(fd, server);
      } catch (e) {
        require('fs').closeSync(fd);
        server.emit('error', e);
        return;
      }
      if (server.noDelay && socket.setNoDelay) socket.setNoDelay(true);
      if (server.keepAlive && socket.setKeepAlive) {
        socket.setKeepAlive(true, (server.keepAliveInitialDelay || 0) * 1000);
      }
      this.active++;
      socket[kClusterServer] = this;
      socket.on('close', onClusterSocketClose);
      if (this.usesHandle) {
        // net.Socket's destroy decrements these, as for Node's own connections.
        server._connections++;
        socket.server = server;
        socket._server = server;
      }
      server.emit('connection', socket);
    }

    /** A connection this server delivered has closed. */
    onSocketClose() {
      this.active--;
      if (this.reportsDone) {
        try {
          channel.done(1); // the `least` policy counts finished connections
        } catch (e) {
          // the channel is closed: nobody is counting any more
        }
      }
      this.refill();
      if (this.closed && this.active === 0 && !this.usesHandle) this.emitClose();
    }

    /** Grants the accept thread what this server can take; pauses at maxConnections. */
    refill() {
      if (this.closed) return;
      if (this.draining) {
        if (this.listener) this.grant(UNLIMITED);
        return;
      }
      const max = this.server.maxConnections;
      const limited = typeof max === 'number' && max > 0;
      if (limited && this.active >= max) {
        this.pause();
        return;
      }
      if (this.paused) this.resume();
      if (!this.listener) return;
      if (pollMode) {
        // onReadable takes what room() allows. Started only when stopped:
        // this runs on every connection's close.
        if (this.pollStopped) {
          this.poll.start();
          this.pollStopped = false; // only once started: a throw retries on the next close
        }
        return;
      }
      const want = limited ? Math.min(ACCEPT_WINDOW, max - this.active) : ACCEPT_WINDOW;
      const inflight = this.granted - this.delivered;
      if (inflight < want) this.grant(want - inflight);
    }

    grant(n) {
      if (pollMode) {
        this.poll.start(); // taken in onReadable, as room() allows
        this.pollStopped = false;
        return;
      }
      this.listener.grant(n);
      this.granted += n;
    }

    /**
     * At maxConnections: leave the listener. Connections queued for this
     * worker are refused and the primary hands them to another worker, as
     * Node's round-robin child refuses them. The paused listener keeps this
     * server's place among the worker's port-0 servers, so one started
     * meanwhile does not get this server's port.
     */
    pause() {
      if (this.paused) return;
      this.paused = true;
      this.detach(true);
    }

    resume() {
      let listener;
      try {
        listener = this.pausedListener ? this.pausedListener.resume() : channel.listen(this.host, this.port);
      } catch (e) {
        return; // retried on the next connection close
      }
      this.pausedListener = null;
      this.paused = false;
      this.attach(listener);
    }

    /** Leaves the listener; `pausing` keeps it (and its port-0 place) for resume(). */
    detach(pausing = false) {
      if (!this.listener) return;
      if (this.poll) {
        this.poll.close();
        this.poll = null;
      }
      const unused = pausing ? this.listener.pause() : this.listener.close();
      this.granted -= Math.min(unused, this.granted - this.delivered);
      if (pausing) this.pausedListener = this.listener;
      this.listener = null;
    }

    /** Primary-initiated disconnect: take what is queued here, then close. */
    drainThenClose() {
      if (this.closed) return;
      if (this.listener && this.draining) {
        this.grant(UNLIMITED);
        return; // onAccepted / onReadable close the server when the listener ends
      }
      this.server.close();
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      this.detach();
      if (this.pausedListener) {
        this.pausedListener.close(); // gives the port-0 place up
        this.pausedListener = null;
      }
      // Counted until its 'close' (its connections ended): a disconnect
      // that comes meanwhile waits for it, as Node's worker does.
      this.server.once('close', () => servers.delete(this));
    }

    emitClose() {
      if (this.closeEmitted) return;
      this.closeEmitted = true;
      process.nextTick(() => this.server.emit('close'));
    }
  }

  /** Node and Deno: the server gets a handle of ours, so net.Server's own
   * address(), close(), listening, ref()/unref() and 'close' logic apply. */
  function installHandle(server, state) {
    state.usesHandle = true;
    server._handle = {
      getsockname(out) {
        out.address = state.address;
        out.family = state.family === 6 ? 'IPv6' : 'IPv4';
        out.port = state.port;
        return 0;
      },
      close(cb) {
        state.close();
        if (typeof cb === 'function') process.nextTick(cb);
      },
      ref() {},
      unref() {},
      hasRef() {
        return true;
      },
      getAsyncId() {
        return -1;
      },
      fd: -1,
      reading: false,
      onconnection: null,
    };
    server._connectionKey = `${state.family}:${state.address}:${state.port}`;
  }

  /** Bun: its http.Server is not a net.Server, so the methods are replaced on the instance. */
  function installOverrides(server, state) {
    runtime.replaceBunServerMethods(server, state, () => ({
      address: state.address,
      family: state.family === 6 ? 'IPv6' : 'IPv4',
      port: state.port,
    }));
  }

  function resolveHost(host, callback) {
    if (host === undefined || host === null || host === '') return callback(null, '::', true);
    if (host === 'localhost' || net.isIP(host)) return callback(null, host, false);
    dns.lookup(host, (err, address) => callback(err, address, false));
  }

  function listenThroughPrimary(server, options, callback) {
    if (server.listening) {
      const e = new Error('Listen method has been called more than once without closing.');
      e.code = 'ERR_SERVER_ALREADY_LISTEN';
      throw e;
    }
    const port = options.port === undefined || options.port === null ? 0 : Number(options.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      const e = new RangeError(`options.port should be >= 0 and < 65536. Received ${options.port}.`);
      e.code = 'ERR_SOCKET_BAD_PORT';
      throw e;
    }
    if (typeof callback === 'function') server.once('listening', callback);
    // Asynchronous, as Node's round trip to the primary is: 'listening' and
    // 'error' come after listen() returns, so handlers attached after the
    // call (`server.listen(port); server.on('error', ...)`) see them.
    process.nextTick(() => resolveHost(options.host, (err, host, defaulted) => {
      if (!connected || worker.state === 'disconnecting' || worker.state === 'destroying') {
        // Asked to leave before the request went out: like a listen whose
        // answer never comes in Node, the server does not listen.
        return;
      }
      if (err) {
        server.emit('error', err);
        return;
      }
      let listener;
      try {
        listener = channel.listen(host, port);
      } catch (e) {
        if (defaulted) {
          // No IPv6 here: all IPv4 interfaces, as Node falls back.
          try {
            listener = channel.listen('', port);
            host = '';
          } catch (e2) {
            server.emit('error', listenError(e2, '0.0.0.0', port));
            return;
          }
        } else {
          server.emit('error', listenError(e, host, port));
          return;
        }
      }
      const state = new ClusterServer(server, host, listener);
      servers.add(state);
      if (server instanceof net.Server && !runtime.isBun) installHandle(server, state);
      else installOverrides(server, state);
      state.refill();
      server.emit('listening');
    }));
    return server;
  }

  /** listen()'s arguments as Node normalizes them. */
  function listenOptions(args) {
    const callback = typeof args[args.length - 1] === 'function' ? args[args.length - 1] : undefined;
    const rest = callback ? args.slice(0, -1) : args;
    const first = rest[0];
    if (first !== null && typeof first === 'object') {
      if (first._handle || first.handle || first.fd !== undefined) return { options: null, callback };
      return { options: first, callback };
    }
    if (typeof first === 'string' && !/^\d+$/.test(first)) return { options: { path: first }, callback }; // a pipe path
    const options = { port: first };
    if (typeof rest[1] === 'string') options.host = rest[1];
    return { options, callback };
  }

  const shared = setupSharedSockets({
    channel,
    servers,
    canListen: () => connected && worker.state !== 'disconnecting' && worker.state !== 'destroying',
    announce(info) {
      if (!nodePrimary || !connected) return;
      try {
        channel.send(internal.listening(info));
      } catch (e) {
        // the channel is closing: nobody to tell
      }
    },
  });

  const patched = new WeakSet();
  function patchListen(proto) {
    if (!proto || !Object.prototype.hasOwnProperty.call(proto, 'listen')) return;
    const original = proto.listen;
    if (patched.has(original)) return;
    const listen = function listen(...args) {
      const { options, callback } = listenOptions(args);
      // Handles, fds and `exclusive` listens are the worker's own, as in Node.
      if (options === null || options.exclusive === true) {
        return original.apply(this, args);
      }
      // A pipe path: the primary binds it once and every worker shares it.
      if (options.path !== undefined) return shared.listenPipe(this, String(options.path), callback, original);
      return listenThroughPrimary(this, options, callback);
    };
    patched.add(listen);
    proto.listen = listen;
  }
  patchListen(net.Server.prototype);
  for (const name of ['http', 'https', 'tls', 'http2']) {
    let mod;
    try {
      mod = require(name);
    } catch (e) {
      continue;
    }
    if (mod.Server) patchListen(mod.Server.prototype);
    if (mod.Http2Server) patchListen(mod.Http2Server.prototype);
    if (mod.Http2SecureServer) patchListen(mod.Http2SecureServer.prototype);
  }
}

module.exports = { setupChild };
