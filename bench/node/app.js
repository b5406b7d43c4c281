'use strict';
// The Node contenders' app: one plain Node cluster program, run either on
// Node's own `cluster` module or on rcluster's drop-in (bindings/node), so the
// two differ only in the require:
//
//   BENCH_CLUSTER=node     node bench/node/app.js --workers 2 --port 0 --policy rr|shared
//   BENCH_CLUSTER=rcluster node bench/node/app.js --workers 2 --port 0 --policy rr|shared|least|reuseport|hybrid
//
// Under Bun (`bun bench/node/app.js`), BENCH_CLUSTER=node is Bun's own
// node:cluster, whose workers bind the port with SO_REUSEPORT whatever the
// policy. rr is SCHED_RR, shared is SCHED_NONE. Every request gets `worker <id> pid
// <pid>\n` with the headers of examples/c/hello_server.c (Node's http adds
// its own Date/Connection/Keep-Alive). Prints `ready http://HOST:PORT
// workers=N policy=POLICY` once every worker listens; SIGTERM: disconnect
// every worker, exit 0.

const path = require('path');
const http = require('http');

const which = process.env.BENCH_CLUSTER || 'node';
// BENCH_RCLUSTER_NODE: another checkout's bindings/node (default: this one's).
const addon = process.env.BENCH_RCLUSTER_NODE || path.join(__dirname, '..', '..', 'bindings', 'node');
const cluster = which === 'rcluster' ? require(addon) : require('cluster');

const options = { workers: 2, port: 0, host: '127.0.0.1', policy: 'rr' };
for (let i = 2; i + 1 < process.argv.length; i += 2) {
  const name = process.argv[i].replace(/^--/, '');
  const value = process.argv[i + 1];
  options[name] = name === 'workers' || name === 'port' ? Number(value) : value;
}
const POLICIES = {
  rr: cluster.SCHED_RR,
  shared: cluster.SCHED_NONE,
  least: cluster.SCHED_LEAST,
  reuseport: cluster.SCHED_REUSEPORT,
  hybrid: cluster.SCHED_HYBRID,
};

if (cluster.isPrimary) {
  if (POLICIES[options.policy] === undefined) {
    process.stderr.write(`app: ${which} cluster has no policy ${options.policy}\n`);
    process.exit(2);
  }
  cluster.schedulingPolicy = POLICIES[options.policy];
  const listening = new Set();
  let ready = false;
  cluster.on('listening', (worker, address) => {
    listening.add(worker.id);
    if (!ready && listening.size === options.workers) {
      ready = true;
      process.stdout.write(
        `ready http://${options.host}:${address.port} workers=${options.workers} policy=${options.policy}\n`,
      );
    }
  });
  const stop = () => {
    // Bun's own cluster.disconnect() does not call back here (its workers
    // stay up): after 2 s, end the workers and exit.
    const workers = Object.values(cluster.workers);
    setTimeout(() => {
      for (const worker of workers) worker.process.kill();
      process.exit(0);
    }, 2000).unref();
    cluster.disconnect(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  for (let i = 0; i < options.workers; i++) cluster.fork();
} else {
  const body = `worker ${cluster.worker.id} pid ${process.pid}\n`;
  const length = Buffer.byteLength(body);
  http
    .createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': length });
      res.end(body);
    })
    .listen(options.port, options.host);
}
