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

const SCHED_NONE = 1;
const SCHED_RR = 2;

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

/** The policy chosen by NODE_CLUSTER_SCHED_POLICY (or RCLUSTER_SCHED_POLICY). */
function policyFromEnv() {
  const raw = process.env.RCLUSTER_SCHED_POLICY || process.env.NODE_CLUSTER_SCHED_POLICY;
  if (raw === 'none' || raw === 'shared') return SCHED_NONE;
  return SCHED_RR;
}

const UNSUPPORTED_SETTINGS = ['uid', 'gid', 'stdio', 'inspectPort', 'serialization'];

function setupPrimary(cluster, native) {
  const intercom = new EventEmitter();
  const keepAlive = new runtime.KeepAlive();
  const everyWorker = new Map(); // id -> Worker, until its exit
  let primary = null; // the NativePrimary, made on first use
  let spawnKey = null; // argv+cwd it was made with
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
    if (settings.silent) {
      warnOnce(
        'silent',
        'rcluster: `silent` is not supported yet (the core\'s SpawnSpec has no stdio setting); worker output is inherited',
      );
    }
    for (const key of UNSUPPORTED_SETTINGS) {
      if (options && options[key] !== undefined) {
        warnOnce(key, `rcluster: the cluster setting \`${key}\` is not supported and is ignored`);
      }
    }
    cluster.settings = settings;
    if (!initialized) {
      initialized = true;
      const policy = cluster.schedulingPolicy;
      if (policy !== SCHED_NONE && policy !== SCHED_RR) {
        throw new Error(`Bad cluster.schedulingPolicy: ${policy}`);
      }
      cluster.schedulingPolicy = policy; // frozen from here on, as in Node
    }
    process.nextTick(() => cluster.emit('setup', settings));
  };
  cluster.setupMaster = cluster.setupPrimary;

  function nativePrimary() {
    const settings = cluster.settings;
    const argv = runtime.workerArgv(settings);
    const key = JSON.stringify([argv, settings.cwd || null]);
    if (primary !== null) {
      if (key !== spawnKey) {
        throw new Error(
          'rcluster: exec, args, execArgv and cwd cannot change after the first fork ' +
            '(the core takes one SpawnSpec per primary; Primary::fork has no per-fork override)',
        );
      }
      return primary;
    }
    primary = new native.NativePrimary({
      argv,
      cwd: settings.cwd,
      policy: cluster.schedulingPolicy === SCHED_NONE ? 'shared' : 'rr',
      stopTimeoutMs: settings.stopTimeout,
      maxUnacked: settings.maxUnacked,
      maxPending: settings.maxPending,
    });
    spawnKey = key;
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
    const { id, pid } = p.fork(merged);
    const proc = new WorkerProcess(p, id, pid);
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
  };

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

  function destroyWorker(signal) {
    const signo = signalNumber(signal);
    if (this.isConnected()) {
      this.once('disconnect', () => this.process.kill(signo));
      this.disconnect();
      return;
    }
    this.process.kill(signo);
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

  function coreMissing(what, needed) {
    return new Error(
      `rcluster: cluster.${what} needs ${needed} in the rcluster core, which this build does not have yet`,
    );
  }
  cluster.reload = function reload() {
    if (primary && typeof primary.reload === 'function') return primary.reload();
    return Promise.reject(coreMissing('reload()', 'supervision (Primary::reload)'));
  };
  cluster.scale = function scale(n) {
    if (primary && typeof primary.scale === 'function') return primary.scale(n);
    throw coreMissing('scale()', 'supervision (Primary::scale)');
  };
  cluster.stats = function stats() {
    if (primary && typeof primary.stats === 'function') return primary.stats();
    throw coreMissing('stats()', 'per-worker stats (Primary::stats)');
  };

  // ----- events from the primary's thread ---------------------------------

  function onEvent(event) {
    const worker = event.worker !== null && event.worker !== undefined ? everyWorker.get(event.worker) : undefined;
    switch (event.kind) {
      case 'fork':
        if (worker) cluster.emit('fork', worker);
        break;
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
        const info = { addressType: event.family, address: event.address, port: event.port, fd: undefined };
        worker.state = 'listening';
        worker.emit('listening', info);
        cluster.emit('listening', worker, info);
        break;
      }
      case 'message': {
        if (!worker) break;
        let message;
        try {
          message = decode(event.data);
        } catch (e) {
          worker.process.emit('error', new Error(`rcluster: worker ${worker.id} sent a message that is not JSON: ${e.message}`));
          break;
        }
        worker.process.emit('message', message, undefined);
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
        worker.exitedAfterDisconnect = Boolean(worker.exitedAfterDisconnect || event.afterDisconnect);
        worker.state = 'dead';
        proc.emit('exit', proc.exitCode, proc.signalCode);
        worker.emit('exit', proc.exitCode, proc.signalCode);
        cluster.emit('exit', worker, proc.exitCode, proc.signalCode);
        keepAlive.unref();
        break;
      }
      case 'error': {
        const error = new Error(`rcluster: ${event.message}`);
        if (worker && worker.listenerCount('error') > 0) worker.emit('error', error);
        else process.emitWarning(error.message, { code: 'RCLUSTER_WORKER_ERROR' });
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
      const { text, callback } = sendArgs(args);
      if (!this.connected) {
        const error = channelClosed();
        if (callback) process.nextTick(callback, error);
        else process.nextTick(() => this.emit('error', error));
        return false;
      }
      try {
        this._primary.send(this._id, text);
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

    disconnect() {
      if (!this.connected) return;
      this._primary.disconnect(this._id);
    }
  }
}

module.exports = { setupPrimary, SCHED_NONE, SCHED_RR };
