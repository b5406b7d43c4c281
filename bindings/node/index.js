'use strict';
// rcluster: a drop-in for Node's `cluster` module whose primary dispatches
// connections on its own Rust thread. `require('cluster')` becomes
// `require('rcluster')`; works in Node >= 20, Bun and Deno.

const EventEmitter = require('events');
const native = require('./lib/native');
const { SCHED_NONE, SCHED_RR, SCHED_REUSEPORT, SCHED_LEAST, SCHED_HYBRID } = require('./lib/primary');

const cluster = new EventEmitter();
cluster.SCHED_NONE = SCHED_NONE;
cluster.SCHED_RR = SCHED_RR;
cluster.SCHED_REUSEPORT = SCHED_REUSEPORT;
cluster.SCHED_LEAST = SCHED_LEAST;
cluster.SCHED_HYBRID = SCHED_HYBRID;
cluster.runtime = require('./lib/runtime').name;

if (native.isWorker()) {
  require('./lib/child').setupChild(cluster, native);
} else {
  require('./lib/primary').setupPrimary(cluster, native);
}

module.exports = cluster;
