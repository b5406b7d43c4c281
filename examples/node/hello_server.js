'use strict';
// The hello server of examples/README.md, written the way a Node cluster
// app is written. The only rcluster-specific line is the require: with
// `require('cluster')` it is a plain Node cluster app.
//
//   node examples/node/hello_server.js --workers 2 --port 8080 --policy rr
//   (also: bun examples/node/hello_server.js ..., deno run -A examples/node/hello_server.js ...)

const cluster = require('rcluster');
const http = require('http');
const os = require('os');

const POLICIES = {
  rr: cluster.SCHED_RR,
  shared: cluster.SCHED_NONE,
  // rcluster's extra policies (plain Node cluster has only the two above).
  reuseport: cluster.SCHED_REUSEPORT,
  least: cluster.SCHED_LEAST,
  hybrid: cluster.SCHED_HYBRID,
};

function usage(message) {
  process.stderr.write(`hello_server: ${message} (usage: --workers N --port P --host H --policy rr|shared|reuseport|least|hybrid)\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const options = {
    workers: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
    port: 8080,
    host: '127.0.0.1',
    policy: 'rr',
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (!['--workers', '--port', '--host', '--policy'].includes(flag)) usage(`unknown argument ${JSON.stringify(flag)}`);
    if (value === undefined) usage(`${flag} needs a value`);
    i++;
    if (flag === '--workers') {
      if (!/^\d+$/.test(value) || Number(value) < 1) usage(`--workers must be a positive integer, not ${JSON.stringify(value)}`);
      options.workers = Number(value);
    } else if (flag === '--port') {
      if (!/^\d+$/.test(value) || Number(value) > 65535) usage(`--port must be 0..65535, not ${JSON.stringify(value)}`);
      options.port = Number(value);
    } else if (flag === '--host') {
      options.host = value;
    } else if (POLICIES[value] === undefined) {
      usage(`--policy must be one of ${Object.keys(POLICIES).filter((p) => POLICIES[p] !== undefined).join(', ')}, not ${JSON.stringify(value)}`);
    } else {
      options.policy = value;
    }
  }
  return options;
}

const options = parseArgs(process.argv.slice(2));

if (cluster.isPrimary) {
  cluster.schedulingPolicy = POLICIES[options.policy];
  let stopping = false;
  let ready = false;
  const listening = new Set();

  cluster.on('listening', (worker, address) => {
    listening.add(worker.id);
    if (!ready && listening.size === options.workers) {
      ready = true;
      process.stdout.write(
        `ready http://${options.host}:${address.port} workers=${options.workers} policy=${options.policy}\n`,
      );
    }
  });

  // Node's cluster never restarts a worker: "it is the application's
  // responsibility". Replace one that died without being asked to.
  cluster.on('exit', (worker, code, signal) => {
    listening.delete(worker.id);
    if (!stopping && !worker.exitedAfterDisconnect) {
      console.error(`worker ${worker.id} died (${signal || code}); starting a new one`);
      cluster.fork();
    }
  });

  // SIGHUP: rolling reload, one worker at a time: start the new one, wait
  // until it listens, then let the old one finish its requests and leave.
  // rcluster does it in the primary (cluster.reload()); with Node's own
  // cluster the app does it by hand.
  let reloading = false;
  process.on('SIGHUP', async () => {
    if (reloading || stopping) return;
    reloading = true;
    try {
      if (typeof cluster.reload === 'function') {
        await cluster.reload();
      } else {
        for (const old of Object.values(cluster.workers)) {
          if (stopping) break;
          const fresh = cluster.fork();
          await new Promise((resolve) => fresh.once('listening', resolve));
          await new Promise((resolve) => {
            old.once('exit', resolve);
            old.disconnect();
          });
        }
      }
    } catch (e) {
      console.error(`reload failed: ${e.message}`);
    }
    reloading = false;
  });

  // SIGTERM / SIGINT: graceful shutdown: no new connections, in-flight
  // requests finish, every worker exits, then the primary exits 0.
  const stop = () => {
    if (stopping) return;
    stopping = true;
    if (typeof cluster.shutdown === 'function') {
      // rcluster: stop accepting first, drain, then let every worker leave.
      cluster.shutdown(10000).then(() => process.exit(0));
    } else {
      cluster.disconnect(() => process.exit(0));
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  for (let i = 0; i < options.workers; i++) cluster.fork();
} else {
  const body = `worker ${cluster.worker.id} pid ${process.pid}\n`;
  http
    .createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    })
    .listen(options.port, options.host);
}
