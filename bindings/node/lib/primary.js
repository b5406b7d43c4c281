'use strict';
// The primary side of the cluster module, following Node's
// lib/internal/cluster/primary.js. The difference that matters: connections
// are accepted and handed to workers by rcluster's own thread, so nothing
// here is on the data path; this file turns the native events into Node's
// events and keeps Node's bookkeeping (cluster.workers, worker.state).

const EventEmitter = require('events');
const os = require('os');
const { Worker } = require('./worker');
const runtime = require('./runtime');
const { sendArgs, decode, channelClosed } = require('./messages');
const internal = require('./internal');
const handles = require('./handles');

const SCHED_NONE = 1;
const SCHED_RR = 2;
// rcluster's extra policies (Node has only the two above).
const SCHED_REUSEPORT = 3;
const SCHED_LEAST = 4;
const SCHED_HYBRID = 5;

const POLICY_NAMES = new Map([
  [SCHED_NONE, 'shared'],
  [SCHED_RR, 'rr'],
  [SCHED_REUSEPORT, 'reuseport'],
  [SCHED_LEAST, 'least'],
  [SCHED_HYBRID, 'hybrid'],
]);

const signalNames = new Map(Object.entries(os.constants.signals).map(([k, v]) => [v, k]));

function signalNumber(signal) {
  if (signal === undefined || signal === null) return os.constants.signals.SIGTERM;
  if (typeof signal === 'number') return signal;
  const n = os.constants.signals[signal];
  if (n === undefined) {
    const e = new TypeError(`Unknown signal: ${signal}`);
    e.code = 'ERR_UNKNOWN_SIGNAL';
    throw e;
  }
  return n;
}

/**
 * The policy chosen by RCLUSTER_SCHED_POLICY or NODE_CLUSTER_SCHED_POLICY:
 * `rr`, `none` (or `shared`), and rcluster's `reuseport`, `least` and `hybrid`.
 */
function policyFromEnv() {
  const raw = process.env.RCLUSTER_SCHED_POLICY || process.env.NODE_CLUSTER_SCHED_POLICY;
  if (raw === 'none' || raw === 'shared') return SCHED_NONE;
  if (raw === 'reuseport') return SCHED_REUSEPORT;
  if (raw === 'least') return SCHED_LEAST;
  if (raw === 'hybrid') return SCHED_HYBRID;
  return SCHED_RR;
}

/**
 * rcluster's events under the names 0.1 gave them, before every layer took
 * the core's (docs/decisions/one-table-per-kind.md): still emitted, deprecated.
 */
const DEPRECATED_EVENT_NAMES = {
  crash_loop: 'crashloop',
  spawn_failed: 'spawnfailed',
  upgrade_failed: 'upgradefailed',
  reload_done: 'reload',
  reload_failed: 'reloadfailed',
};

/** A parent's IPC channel variables: the primary's, never its workers'. */
const FOREIGN_CHANNEL_ENV = ['NODE_CHANNEL_FD', 'NODE_CHANNEL_SERIALIZATION_MODE', 'NODE_UNIQUE_ID'];

const UNSUPPORTED_SETTINGS = ['uid', 'gid', 'inspectPort', 'serialization'];

/**
 * A worker's stdin, stdout and stderr as the core takes them ('pipe',
 * 'inherit', 'ignore'), from Node's `silent` and `stdio` settings; null for
 * the primary's own (inherited). As in Node, `stdio` overrides `silent` and
 * must hold an 'ipc' entry; what the core cannot give a worker (streams,
 * other fds, extra entries) is refused, not ignored.
 */
function stdioModes(settings) {
  if (settings.stdio === undefined || settings.stdio === null) {
    return settings.silent ? ['pipe', 'pipe', 'pipe'] : null;
  }
  const stdio = settings.stdio;
  if (!Array.isArray(stdio) || !stdio.includes('ipc')) {
    const e = new TypeError('Forked processes must have an IPC channel, missing value \'ipc\' in options.stdio');
    e.code = 'ERR_CHILD_PROCESS_IPC_REQUIRED';
    throw e;
  }
  stdio.forEach((entry, i) => {
    if (i > 2 && entry !== 'ipc') {
      throw new Error(`rcluster: stdio[${i}] (${String(entry)}) is not supported: a worker gets stdin, stdout, stderr and the channel only`);
    }
  });
  return [0, 1, 2].map((i) => {
    const entry = stdio[i];
    if (entry === undefined || entry === null || entry === 'pipe' || entry === 'overlapped') return 'pipe';
    if (entry === 'inherit' || entry === i) return 'inherit';
    if (entry === 'ignore') return 'ignore';
    throw new Error(
      `rcluster: stdio[${i}] (${String(entry)}) is not supported for a worker: use 'pipe', 'inherit', 'ignore' or ${i}`,
    );
  });
}

function setupPrimary(cluster, native) {
  const intercom = new EventEmitter();
  const keepAlive = new runtime.KeepAlive();
  const everyWorker = new Map(); // id -> Worker, until its exit
  let primary = null; // the NativePrimary, made on first use
  let initialized = false;
  let shutdownPromise = null;
  const warned = new Set();

  cluster.isWorker = false;
  cluster.isPrimary = true;
  cluster.isMaster = true;
  cluster.Worker = Worker;
  cluster.workers = {};
  cluster.settings = {};
  cluster.SCHED_NONE = SCHED_NONE;
  cluster.SCHED_RR = SCHED_RR;
  cluster.SCHED_REUSEPORT = SCHED_REUSEPORT;
  cluster.SCHED_LEAST = SCHED_LEAST;
  cluster.SCHED_HYBRID = SCHED_HYBRID;
  cluster.schedulingPolicy = policyFromEnv();

  function warnOnce(key, text) {
    if (warned.has(key)) return;
    warned.add(key);
    process.emitWarning(text, { code: 'RCLUSTER_UNSUPPORTED' });
  }

  cluster.setupPrimary = function setupPrimarySettings(options) {
    const settings = {
      args: process.argv.slice(2),
      exec: process.argv[1],
      execArgv: process.execArgv,
      silent: false,
      ...cluster.settings,
      ...options,
    };
    for (const key of UNSUPPORTED_SETTINGS) {
      if (options && options[key] !== undefined) {
        warnOnce(key, `rcluster: the cluster setting \`${key}\` is not supported and is ignored`);
      }
    }
    cluster.settings = settings;
    if (!initialized) {
      initialized = true;
      const policy = cluster.schedulingPolicy;
      if (!POLICY_NAMES.has(policy)) {
        throw new Error(`Bad cluster.schedulingPolicy: ${policy}`);
      }
      cluster.schedulingPolicy = policy; // frozen from here on, as in Node
    }
    process.nextTick(() => cluster.emit('setup', settings));
  };
  cluster.setupMaster = cluster.setupPrimary;

  /** The NativePrimary, made on first use with the settings of the time. */
  function nativePrimary() {
    if (primary !== null) return primary;
    const settings = cluster.settings;
    // The addon takes the settings as they are: its PrimaryOptions defines
    // them (names, units, defaults) for this file and index.d.ts alike.
    // exec, args, execArgv and cwd are read again on every fork (cluster.fork).
    primary = new native.NativePrimary({
      ...settings,
      argv: runtime.workerArgv(settings),
      policy: POLICY_NAMES.get(cluster.schedulingPolicy),
    });
    primary.start(onEvent);
    return primary;
  }

  cluster.fork = function fork(env) {
    cluster.setupPrimary();
    const p = nativePrimary();
    const merged = {};
    for (const [k, v] of Object.entries({ ...process.env, ...cluster.settings.env, ...env })) {
      if (v !== undefined) merged[k] = String(v);
    }
    merged[internal.PRIMARY_ENV] = '1'; // this worker may send internal messages
    // A primary that child_process.fork() started has its own IPC channel
    // named here (Bun keeps the variable): a worker finding it would take
    // fd 3, its rcluster channel, for that channel and read our frames.
    for (const key of FOREIGN_CHANNEL_ENV) delete merged[key];
    // exec, args, execArgv and cwd as setupPrimary() has them now: each
    // fork (and its restarts) runs what the settings said at its fork, as in Node.
    const settings = cluster.settings;
    const stdio = stdioModes(settings);
    const forked = p.fork(merged, runtime.workerArgv(settings), settings.cwd === undefined ? null : String(settings.cwd), stdio);
    const worker = adopt(forked.id, forked.pid);
    const proc = worker.process;
    if (forked.stdin != null) proc.stdin = runtime.pipeStream(forked.stdin, 'write');
    if (forked.stdout != null) proc.stdout = runtime.pipeStream(forked.stdout, 'read');
    if (forked.stderr != null) proc.stderr = runtime.pipeStream(forked.stderr, 'read');
    proc.stdio = [proc.stdin, proc.stdout, proc.stderr];
    return worker;
  };

  /** The Worker object for a started process (forked here, or by the core's supervision). */
  function adopt(id, pid) {
    const existing = everyWorker.get(id);
    if (existing) return existing;
    const proc = new WorkerProcess(primary, id, pid);
    const worker = new Worker({ id, process: proc });
    worker.disconnect = disconnectWorker;
    worker.destroy = destroyWorker;
    worker._listening = new Set();
    worker.on('message', function onMessage(message, handle) {
      cluster.emit('message', this, message, handle);
    });
    everyWorker.set(id, worker);
    cluster.workers[id] = worker;
    keepAlive.ref();
    return worker;
  }

  function removeWorker(worker) {
    if (cluster.workers[worker.id] === undefined) return;
    delete cluster.workers[worker.id];
    if (Object.keys(cluster.workers).length === 0) intercom.emit('disconnect');
  }

  function disconnectWorker() {
    this.exitedAfterDisconnect = true;
    if (this.process.connected) {
      try {
        primary.disconnect(this.id);
      } catch (e) {
        // It hung up already: its 'disconnect' event is on the way.
      }
    }
    removeWorker(this);
    return this;
  }

  /**
   * worker.kill(signal), as Node's: the signal is sent at once and the
   * channel closed from here (the worker is not asked, so
   * exitedAfterDisconnect stays false). A hung worker gets the signal
   * without waiting. Node closes the channel first and signals on the
   * 'disconnect' it emits a tick later; here that event comes from the
   * primary's thread after the worker too saw the hang-up (and it may have
   * exited 0 on it already), so the signal goes first: a worker that keeps
   * the default action dies of it, one that handles it then finds its
   * channel closed, as in Node.
   */
  function destroyWorker(signal) {
    const signo = signalNumber(signal);
    const connected = this.isConnected();
    this.process.kill(signo);
    if (connected) this.process.disconnect();
  }

  cluster.disconnect = function disconnect(cb) {
    const workers = Object.values(cluster.workers);
    if (typeof cb === 'function') intercom.once('disconnect', cb);
    if (workers.length === 0) {
      process.nextTick(() => intercom.emit('disconnect'));
      return;
    }
    // Each worker leaves cluster.workers when it has disconnected, so the
    // callback runs once every channel is closed, not merely asked to close.
    for (const worker of workers) {
      worker.exitedAfterDisconnect = true;
      if (worker.isConnected()) {
        try {
          primary.disconnect(worker.id);
        } catch (e) {
          // hung up already
        }
      }
    }
  };

  /**
   * rcluster: graceful shutdown of the whole cluster — the primary stops
   * accepting, hands out what the kernel already queued, asks every worker
   * to leave (SIGTERM after `graceMs`, then SIGKILL). Resolves when every
   * worker is gone. The primary cannot fork again afterwards.
   */
  cluster.shutdown = function shutdown(graceMs = 10000) {
    if (shutdownPromise) return shutdownPromise;
    if (primary === null) return Promise.resolve();
    keepAlive.ref();
    shutdownPromise = new Promise((resolve) => intercom.once('shutdown', resolve));
    for (const worker of everyWorker.values()) worker.exitedAfterDisconnect = true;
    primary.shutdown(graceMs);
    return shutdownPromise;
  };

  const reloads = []; // { generation, resolve, reject }

  /**
   * rcluster: rolling reload. Worker by worker (`reloadConcurrency` at a
   * time) a replacement starts, and the old one is asked to leave once the
   * new one listens (or calls `cluster.worker.ready()` with `waitReady`).
   * The listeners stay open, so no connection is refused. Resolves with the
   * new generation once every worker is replaced; rejects if a replacement
   * did not become ready in time (the old workers keep serving).
   */
  cluster.reload = function reload() {
    if (primary === null) return Promise.reject(new Error('rcluster: reload() before any fork'));
    let generation;
    try {
      generation = primary.reload();
    } catch (e) {
      return Promise.reject(e);
    }
    keepAlive.ref();
    return new Promise((resolve, reject) => reloads.push({ generation, resolve, reject })).finally(() =>
      keepAlive.unref(),
    );
  };

  /** rcluster: sets the number of workers: starts new ones, or asks the newest to leave. */
  cluster.scale = function scale(n) {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`rcluster: scale(n) needs a whole number >= 0, got ${n}`);
    cluster.setupPrimary();
    nativePrimary().scale(n);
  };

  /** rcluster: a snapshot of every worker: id, pid, slot, state, generation, dispatched, inFlight, active, restarts, uptimeMs, cpuMs, rssBytes, messagesIn, messagesOut. */
  cluster.stats = function stats() {
    return primary === null ? [] : primary.stats();
  };

  function settleReloads(generation, error) {
    for (let i = reloads.length - 1; i >= 0; i--) {
      const pending = reloads[i];
      if (pending.generation > generation) continue;
      reloads.splice(i, 1);
      if (error) pending.reject(error);
      else pending.resolve(generation);
    }
  }

  // ----- events from the primary's thread ---------------------------------

  /**
   * Emits one of rcluster's own cluster events by its name in the core's
   * table (the name Python and C use too), then, for a listener of the
   * name 0.1 used, by that deprecated name.
   */
  function emitRcluster(name, ...args) {
    cluster.emit(name, ...args);
    const old = DEPRECATED_EVENT_NAMES[name];
    if (old === undefined || cluster.listenerCount(old) === 0) return;
    if (!warned.has(old)) {
      warned.add(old);
      process.emitWarning(`rcluster: the '${old}' event is deprecated; listen for '${name}'`, {
        type: 'DeprecationWarning',
        code: 'RCLUSTER_DEP_EVENT_NAME',
      });
    }
    cluster.emit(old, ...args);
  }

  function emitListening(worker, info) {
    worker.state = 'listening';
    worker.emit('listening', info);
    cluster.emit('listening', worker, info);
  }

  function onEvent(event) {
    const worker = event.worker !== null && event.worker !== undefined ? everyWorker.get(event.worker) : undefined;
    switch (event.kind) {
      case 'fork': {
        // Workers the core starts itself (restarts, reload, scale) arrive here first.
        const forked = worker || adopt(event.worker, event.pid);
        forked.slot = event.slot === null ? undefined : event.slot;
        forked.generation = event.generation;
        cluster.emit('fork', forked);
        break;
      }
      case 'online':
        if (!worker) break;
        worker.state = 'online';
        worker.emit('online');
        cluster.emit('online', worker);
        break;
      case 'listening': {
        if (!worker) break;
        // A worker at its maxConnections leaves and rejoins a listener;
        // Node's apps expect one 'listening' per server, so report once.
        const key = `${event.address}:${event.port}`;
        if (worker._listening.has(key)) break;
        worker._listening.add(key);
        emitListening(worker, { addressType: event.family, address: event.address, port: event.port, fd: undefined });
        break;
      }
      case 'message': {
        if (!worker) {
          handles.closeFds(event.fds);
          break;
        }
        if (internal.isInternal(event.data)) {
          handles.closeFds(event.fds);
          if (event.data === internal.LEAVING) {
            // cluster.worker.disconnect() in the worker: known before its 'disconnect'.
            worker.exitedAfterDisconnect = true;
            try {
              primary.send(worker.id, internal.LEAVING_ACK);
            } catch (e) {
              // it hung up already: nothing waits for the answer
            }
          }
          const info = internal.parseListening(event.data);
          if (info !== null) emitListening(worker, { ...info, fd: undefined });
          break;
        }
        let message;
        try {
          message = decode(event.data);
        } catch (e) {
          handles.closeFds(event.fds);
          worker.process.emit('error', new Error(`rcluster: worker ${worker.id} sent a message that is not JSON: ${e.message}`));
          break;
        }
        // HOOK(handles): a handle envelope becomes (message, server or socket).
        handles.receive(message, event.fds, (msg, handle) => worker.process.emit('message', msg, handle));
        break;
      }
      case 'disconnect':
        if (!worker) break;
        worker.process.connected = false;
        removeWorker(worker);
        worker.exitedAfterDisconnect = Boolean(worker.exitedAfterDisconnect);
        worker.state = 'disconnected';
        worker.emit('disconnect');
        cluster.emit('disconnect', worker);
        break;
      case 'exit': {
        if (!worker) break;
        const proc = worker.process;
        proc.connected = false;
        proc.exitCode = event.code === null || event.code === undefined ? null : event.code;
        proc.signalCode =
          event.signal === null || event.signal === undefined ? null : signalNames.get(event.signal) || null;
        proc._exited = true;
        removeWorker(worker);
        everyWorker.delete(worker.id);
        // Not the core's afterDisconnect, which counts a bare
        // process.disconnect() in the worker as leaving on purpose: as in
        // Node, only worker.disconnect() (either side), cluster.disconnect(),
        // kill() and destroy() set it (each has by now), and here also a
        // stop the core asked for (scale, reload, shutdown).
        worker.exitedAfterDisconnect = Boolean(worker.exitedAfterDisconnect || event.stopRequested);
        worker.state = 'dead';
        proc.emit('exit', proc.exitCode, proc.signalCode);
        worker.emit('exit', proc.exitCode, proc.signalCode);
        cluster.emit('exit', worker, proc.exitCode, proc.signalCode);
        keepAlive.unref();
        break;
      }
      case 'worker_error': {
        const error = new Error(`rcluster: ${event.message}`);
        if (worker && worker.listenerCount('error') > 0) worker.emit('error', error);
        else process.emitWarning(error.message, { code: 'RCLUSTER_WORKER_ERROR' });
        break;
      }
      case 'crash_loop':
        // rcluster: the slot's worker kept dying; the core stopped restarting it.
        emitRcluster('crash_loop', worker, event.slot);
        break;
      case 'unresponsive':
        // rcluster: no heartbeat answer or acknowledgement; the core kills and replaces it.
        emitRcluster('unresponsive', worker);
        break;
      case 'spawn_failed':
        // rcluster: a worker could not be started; the core retries with backoff.
        emitRcluster('spawn_failed', event.slot, new Error(`rcluster: ${event.message}`));
        break;
      case 'upgraded':
        // rcluster: a new primary took over (SIGUSR2); this one is stopping.
        emitRcluster('upgraded', event.pid);
        break;
      case 'upgrade_failed':
        emitRcluster('upgrade_failed', new Error(`rcluster: ${event.message}`));
        break;
      case 'reload_done':
        settleReloads(event.generation, null);
        emitRcluster('reload_done', event.generation);
        break;
      case 'reload_failed': {
        const error = new Error(`rcluster: reload to generation ${event.generation} failed: ${event.message}`);
        settleReloads(event.generation, error);
        emitRcluster('reload_failed', error);
        break;
      }
      case 'shutdown':
        intercom.emit('shutdown');
        if (shutdownPromise) keepAlive.unref();
        break;
      default:
        break;
    }
  }

  // ----- the primary's view of one worker process ---------------------------

  class WorkerProcess extends EventEmitter {
    constructor(p, id, pid) {
      super();
      this._primary = p;
      this._id = id;
      this._exited = false;
      this.pid = pid;
      this.connected = true;
      this.exitCode = null;
      this.signalCode = null;
      this.killed = false;
      this.stdin = null;
      this.stdout = null;
      this.stderr = null;
    }

    send(...args) {
      const { deliver, callback } = sendArgs(args);
      if (!this.connected) {
        const error = channelClosed();
        if (callback) process.nextTick(callback, error);
        else process.nextTick(() => this.emit('error', error));
        return false;
      }
      try {
        // HOOK(handles): a handle travels as fds attached to the message.
        deliver((text, fds) => (fds ? this._primary.sendFds(this._id, text, fds) : this._primary.send(this._id, text)));
      } catch (e) {
        if (callback) process.nextTick(callback, e);
        else process.nextTick(() => this.emit('error', e));
        return false;
      }
      if (callback) process.nextTick(callback, null);
      return true;
    }

    kill(signal) {
      const signo = signalNumber(signal);
      if (this._exited) return false;
      this._primary.kill(this._id, signo);
      this.killed = true;
      return true;
    }

    /** Closes the channel from this side at once, as child_process's disconnect(). */
    disconnect() {
      if (!this.connected) return;
      try {
        this._primary.hangUp(this._id);
      } catch (e) {
        // It hung up already: its 'disconnect' event is on the way.
      }
    }
  }
}

module.exports = { DEPRECATED_EVENT_NAMES, setupPrimary, SCHED_NONE, SCHED_RR, SCHED_REUSEPORT, SCHED_LEAST, SCHED_HYBRID };
