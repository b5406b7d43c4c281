'use strict';
// Node's process.send between a parent and a child_process.fork() child (the
// channel Node's cluster uses), measured the way bench/c/ipc_bench.c measures
// rcluster's messages:
//
//   node bench/node/ipc_bench.js [--seconds S] [--size BYTES] [--windows W1,W2,...]
//
// The child echoes every message. 1. Round trip: one message out, wait for
// its echo, repeat for S seconds (p50/p99 per round trip). 2. Pipelined:
// keep W messages in flight for S seconds; echoes received per second, once
// per window W.
// The message is a string of SIZE bytes (Node's default 'json' serialization,
// what process.send users get). Prints one line: BENCH_JSON {...}.

const { fork } = require('child_process');

if (process.argv[2] === '--child') {
  process.on('message', (m) => process.send(m));
  return;
}

const args = { seconds: 2, size: 64, windows: [256] };
for (let i = 2; i + 1 < process.argv.length; i += 2) {
  const name = process.argv[i].replace(/^--/, '');
  const value = process.argv[i + 1];
  args[name] = name === 'windows' ? value.split(',').map(Number) : Number(value);
}

const child = fork(__filename, ['--child']);
const msg = 'x'.repeat(args.size);
const now = () => Number(process.hrtime.bigint()) / 1e9;

let onEcho = null;
child.on('message', () => onEcho());

function roundTrips(count) {
  return new Promise((resolve) => {
    let left = count;
    onEcho = () => (--left > 0 ? child.send(msg) : resolve());
    child.send(msg);
  });
}

function timedRoundTrips(seconds) {
  return new Promise((resolve) => {
    const lat = [];
    const start = now();
    const end = start + seconds;
    let t0 = start;
    onEcho = () => {
      const t = now();
      lat.push((t - t0) * 1e6);
      if (t >= end) return resolve({ lat, elapsed: t - start });
      t0 = t;
      child.send(msg);
    };
    child.send(msg);
  });
}

function pipelined(seconds, window) {
  return new Promise((resolve) => {
    let received = 0;
    let inFlight = 0;
    let done = false;
    let measured = 0;
    let elapsed = 0;
    const start = now();
    const end = start + seconds;
    onEcho = () => {
      received++;
      inFlight--;
      if (!done && (received & 63) === 0 && now() >= end) {
        done = true;
        measured = received;
        elapsed = now() - start;
      }
      if (!done) {
        child.send(msg);
        inFlight++;
      } else if (inFlight === 0) {
        resolve({ measured, elapsed });
      }
    };
    for (let i = 0; i < window; i++) {
      child.send(msg);
      inFlight++;
    }
  });
}

(async () => {
  await roundTrips(1000); // warm-up
  const rt = await timedRoundTrips(args.seconds);
  rt.lat.sort((a, b) => a - b);
  const out = {
    impl: 'node',
    size: args.size,
    rt_count: rt.lat.length,
    rt_per_s: rt.lat.length / rt.elapsed,
    rt_p50_us: rt.lat[Math.floor(rt.lat.length / 2)],
    rt_p99_us: rt.lat[Math.floor(rt.lat.length * 0.99)],
    pipelined: [],
    node: process.version,
  };
  for (const window of args.windows) {
    const pl = await pipelined(args.seconds, window);
    out.pipelined.push({ window, msgs: pl.measured, per_s: pl.measured / pl.elapsed });
  }
  process.stdout.write(`BENCH_JSON ${JSON.stringify(out)}\n`);
  child.disconnect();
})();
