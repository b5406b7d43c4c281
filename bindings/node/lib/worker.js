'use strict';
// The Worker object, as in Node's lib/internal/cluster/worker.js: the same
// type in the primary (one per child) and in a worker (cluster.worker).
// A function, not a class, because Node's is one: `cluster.Worker(options)`
// without `new` makes a worker too.

const EventEmitter = require('events');

function Worker(options) {
  if (!(this instanceof Worker)) return new Worker(options);
  EventEmitter.call(this);
  if (options === null || typeof options !== 'object') options = {};
  this.exitedAfterDisconnect = undefined;
  this.state = options.state || 'none';
  this.id = options.id | 0;
  if (options.process) {
    this.process = options.process;
    this.process.on('error', (code, signal) => this.emit('error', code, signal));
    this.process.on('message', (message, handle) => this.emit('message', message, handle));
  }
}
Object.setPrototypeOf(Worker.prototype, EventEmitter.prototype);
Object.setPrototypeOf(Worker, EventEmitter);

Worker.prototype.kill = function kill(...args) {
  return this.destroy(...args);
};

Worker.prototype.send = function send(...args) {
  return this.process.send(...args);
};

Worker.prototype.isDead = function isDead() {
  // _exited: the primary saw it go but could not learn how (someone else reaped it).
  return this.process.exitCode != null || this.process.signalCode != null || this.process._exited === true;
};

Worker.prototype.isConnected = function isConnected() {
  return Boolean(this.process.connected);
};

module.exports = { Worker };
