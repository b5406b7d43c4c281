'use strict';
// The Worker object, as in Node's lib/internal/cluster/worker.js: the same
// class in the primary (one per child) and in a worker (cluster.worker).

const EventEmitter = require('events');

class Worker extends EventEmitter {
  constructor(options = {}) {
    super();
    this.exitedAfterDisconnect = undefined;
    this.state = options.state || 'none';
    this.id = options.id | 0;
    if (options.process) {
      this.process = options.process;
      this.process.on('error', (code, signal) => this.emit('error', code, signal));
      this.process.on('message', (message, handle) => this.emit('message', message, handle));
    }
  }

  kill(...args) {
    return this.destroy(...args);
  }

  send(...args) {
    return this.process.send(...args);
  }

  isDead() {
    // _exited: the primary saw it go but could not learn how (someone else reaped it).
    return this.process.exitCode != null || this.process.signalCode != null || this.process._exited === true;
  }

  isConnected() {
    return Boolean(this.process.connected);
  }
}

module.exports = { Worker };
