'use strict';
// The queue-worker example (issue 23), in Node: jobs from a Redis list into
// MariaDB/MySQL, with no job lost. See ../README.md for the guarantees. The
// Python version (../python/queue_worker.py) behaves the same and prints the
// same lines.
//
//   node examples/queue/node/queue_worker.js --workers 4 \
//     --redis redis://127.0.0.1:6379/0 --mysql mysql://root@127.0.0.1:3306/app --queue jobs
//
// The primary checks both servers, creates the table, returns processing
// lists left by an earlier primary to the queue, then forks N workers and
// supervises them through rcluster (restarts with backoff, SIGHUP rolling
// reload, SIGTERM/SIGINT graceful stop, exit 0). When a worker exits, the
// primary moves what its processing list still holds back to the queue.
//
// A worker takes one job at a time with BLMOVE from the queue to its own
// processing list (`<queue>:processing:<worker id>`), inserts the row (the
// job id is the primary key: a job delivered twice is one row), then
// removes the job from its list. Bad jobs go to `<queue>:dead` with the reason.

const cluster = require('rcluster');
const crypto = require('crypto');
const os = require('os');
const Redis = require('ioredis');
const mysql = require('mysql2/promise');

const PROG = 'queue_worker';
// A blocking take waits at most this long, so a worker asked to leave while
// the queue is empty notices within that time (a BLMOVE that times out
// moved nothing, so the wait never loses a job).
const TAKE_TIMEOUT_S = 1;
const REPORT_TO_PRIMARY_MS = 200;
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 2000;
const ID_MAX_CHARS = 64;
// A job larger than this is rejected: a row far beyond it would be refused
// by the server's max_allowed_packet as a connection error, retried forever.
const JOB_MAX_BYTES = 1 << 20;
// The third worker to die holding a job sends it to the dead-letter list.
const MAX_DEATHS = 3;
const DEATHS_TTL_S = 86400; // the death counts expire a day after the last death
const TABLE = 'jobs';
const CREATE_TABLE = `
CREATE TABLE IF NOT EXISTS ${TABLE} (
  job_id  VARBINARY(256) NOT NULL PRIMARY KEY,
  payload JSON NOT NULL,
  worker  INT UNSIGNED NOT NULL,
  done_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`;
// A duplicate id is a no-op (0 rows affected, FOUND_ROWS being off): the job
// was done before, by a worker that died before it could remove it from its
// processing list.
const INSERT = `INSERT INTO ${TABLE} (job_id, payload, worker) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE job_id = job_id`;

// ----- command line ---------------------------------------------------------

function usage(message) {
  process.stderr.write(`${PROG}: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const options = {
    workers: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
    redis: 'redis://127.0.0.1:6379/0',
    mysql: 'mysql://root@127.0.0.1:3306/rcluster',
    queue: 'jobs',
    reportEvery: 5,
    crashLoopCount: 5,
  };
  const flags = {
    '--workers': 'workers',
    '--redis': 'redis',
    '--mysql': 'mysql',
    '--queue': 'queue',
    '--report-every': 'reportEvery',
    '--crash-loop-count': 'crashLoopCount',
  };
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i];
    let value;
    const eq = flag.indexOf('=');
    if (flag.startsWith('--') && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    } else {
      value = argv[++i];
    }
    const key = flags[flag];
    if (key === undefined) usage(`unrecognized argument ${JSON.stringify(flag)}`);
    if (value === undefined) usage(`${flag} needs a value`);
    options[key] = value;
  }
  const integer = (flag, value, min) => {
    if (!/^\d+$/.test(String(value)) || Number(value) < min) usage(`${flag} must be an integer >= ${min}, not ${JSON.stringify(value)}`);
    return Number(value);
  };
  options.workers = integer('--workers', options.workers, 1);
  options.crashLoopCount = integer('--crash-loop-count', options.crashLoopCount, 0);
  options.reportEvery = Number(options.reportEvery);
  if (!Number.isFinite(options.reportEvery) || options.reportEvery < 0) usage('--report-every must be a number >= 0');
  if (!options.queue) usage('--queue must not be empty');
  let redisUrl;
  try {
    redisUrl = new URL(options.redis);
  } catch (e) {
    usage(`--redis must be a redis:// URL, not ${JSON.stringify(options.redis)}`);
  }
  if (!['redis:', 'rediss:'].includes(redisUrl.protocol)) usage(`--redis must be a redis:// URL, not ${JSON.stringify(options.redis)}`);
  try {
    options.mysqlParams = mysqlParams(options.mysql);
  } catch (e) {
    usage(`--mysql: ${e.message}`);
  }
  return options;
}

/** `mysql://user:password@host:port/database` -> mysql2's connection options. */
function mysqlParams(url) {
  let parts;
  try {
    parts = new URL(url);
  } catch (e) {
    throw new Error(`must be a mysql:// URL, not ${JSON.stringify(url)}`);
  }
  if (!['mysql:', 'mariadb:'].includes(parts.protocol)) throw new Error(`must be a mysql:// URL, not ${JSON.stringify(url)}`);
  const database = decodeURIComponent(parts.pathname.replace(/^\//, ''));
  if (!database || database.includes('/')) {
    throw new Error(`must name one database (mysql://user@host:port/DATABASE), not ${JSON.stringify(url)}`);
  }
  return {
    host: parts.hostname || '127.0.0.1',
    port: parts.port ? Number(parts.port) : 3306,
    user: decodeURIComponent(parts.username || 'root'),
    password: decodeURIComponent(parts.password || ''),
    database,
  };
}

/**
 * The worker's own list of jobs taken and not finished. Named by the
 * worker's id, which the primary never reuses: a dead worker's list has no
 * other writer, so the primary can empty it whenever it likes.
 */
const processingList = (queue, workerId) => `${queue}:processing:${workerId}`;
const deadList = (queue) => `${queue}:dead`;

function redisClient(url) {
  return new Redis(url, {
    lazyConnect: true,
    connectTimeout: 2000,
    // A command that fails, fails: we back off and resynchronise ourselves.
    // Resending a BLMOVE after a reconnect could take a second job while
    // the first one's reply was lost.
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 1,
  });
}

function mysqlConnect(params) {
  return mysql.createConnection({
    ...params,
    charset: 'utf8mb4',
    connectTimeout: 2000,
    // Without FOUND_ROWS, a duplicate id reports 0 affected rows.
    flags: ['-FOUND_ROWS'],
  });
}

/** Hash: SHA-1 of a job -> how many workers died holding it. */
const deathsKey = (queue) => `${queue}:deaths`;

function deadEntry(raw, reason, detail, workerId) {
  return JSON.stringify({ reason, detail, job: raw.toString('utf8'), worker: workerId, at: new Date().toISOString() });
}

/** Runs a MULTI; throws its first error. */
async function execAll(multi) {
  const results = await multi.exec();
  if (results === null) throw new Error('transaction aborted');
  for (const [error] of results) if (error) throw error;
  return results.map(([, value]) => value);
}

/**
 * Empties the processing list of a worker that died unasked: each job goes
 * back to the queue, unless this is the MAX_DEATHS-th worker that died
 * holding it: then it goes to the dead-letter list, so a job that kills its
 * workers cannot crash-loop them all and stop the queue. Returns how many
 * jobs left the list.
 */
async function giveBackAfterCrash(redis, queue, workerId) {
  const source = processingList(queue, workerId);
  let moved = 0;
  let raw;
  while ((raw = await redis.lindexBuffer(source, -1)) !== null) {
    const digest = crypto.createHash('sha1').update(raw).digest('hex');
    const [deaths] = await execAll(redis.multi().hincrby(deathsKey(queue), digest, 1).expire(deathsKey(queue), DEATHS_TTL_S));
    if (deaths >= MAX_DEATHS) {
      const entry = deadEntry(raw, 'worker died holding it', `${deaths} workers died while they held this job`, workerId);
      await execAll(redis.multi().lpush(deadList(queue), entry).lrem(source, -1, raw).hdel(deathsKey(queue), digest));
    } else {
      await redis.lmoveBuffer(source, queue, 'RIGHT', 'RIGHT'); // the one we looked at: the list has no other writer
    }
    moved++;
  }
  return moved;
}

/** Moves every job of `source` back to the consuming end of the queue, one atomic LMOVE at a time. */
async function returnToQueue(redis, queue, source) {
  let moved = 0;
  while ((await redis.lmoveBuffer(source, queue, 'RIGHT', 'RIGHT')) !== null) moved++;
  return moved;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ----- the worker -----------------------------------------------------------

/** A job that can never be done: it goes to the dead-letter list. */
class Reject extends Error {
  constructor(reason, detail = '') {
    super(reason);
    this.reason = reason;
    this.detail = detail;
  }
}

/** The primary asked this worker to leave while it waited for a server. */
class Leaving extends Error {}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A job's id and its payload as JSON text, or a Reject. A job is a JSON
 * object with `id` (a string of 1 to 64 characters, or a non-negative
 * integer below 2**53) and `payload` (any JSON value).
 */
function parseJob(raw) {
  if (raw.length > JOB_MAX_BYTES) throw new Reject('too large', `${raw.length} bytes; the limit is ${JOB_MAX_BYTES}`);
  let text;
  try {
    text = utf8.decode(raw);
  } catch (e) {
    throw new Reject('invalid JSON', `not UTF-8: ${e.message}`);
  }
  let job;
  try {
    job = JSON.parse(text);
  } catch (e) {
    throw new Reject('invalid JSON', e.message);
  }
  if (job === null || typeof job !== 'object' || Array.isArray(job)) {
    throw new Reject('not an object', `a JSON ${job === null ? 'null' : Array.isArray(job) ? 'array' : typeof job}`);
  }
  if (!Object.prototype.hasOwnProperty.call(job, 'id')) throw new Reject('missing field: id');
  let id = job.id;
  if (Number.isSafeInteger(id) && id >= 0) {
    id = String(id);
  } else {
    const chars = typeof id === 'string' ? [...id].length : 0;
    if (!(chars >= 1 && chars <= ID_MAX_CHARS && id.isWellFormed())) {
      throw new Reject('bad field: id', `must be a string of 1 to ${ID_MAX_CHARS} characters or an integer, not ${JSON.stringify(id)}`);
    }
  }
  if (!Object.prototype.hasOwnProperty.call(job, 'payload')) throw new Reject('missing field: payload');
  return [id, JSON.stringify(job.payload)];
}

/** mysql2 errors that are the data's fault (SQLSTATE class 22: data exception, 23: integrity). */
const isDataError = (e) => typeof e.sqlState === 'string' && /^2[23]/.test(e.sqlState) && !e.fatal;

class Consumer {
  constructor(options, worker) {
    this.options = options;
    this.worker = worker;
    this.queue = options.queue;
    this.mine = processingList(options.queue, worker.id);
    this.dead = deadList(options.queue);
    this.redis = redisClient(options.redis);
    this.redis.on('error', () => {}); // every failed command reports it too
    this.db = null;
    this.counts = { done: 0, dup: 0, dead: 0, db_retries: 0, redis_retries: 0 };
    this.reportedAt = 0;
    this.reported = {};
    this.asked = false;
    worker.on('disconnect', () => {
      this.asked = true;
    });
  }

  /** True once the primary asked us to leave (rcluster closes our channel at once: we have no servers to drain). */
  leaving() {
    return this.asked || this.worker.state === 'disconnecting' || !process.connected;
  }

  report(force = false) {
    const now = Date.now();
    if (!force && now - this.reportedAt < REPORT_TO_PRIMARY_MS) return;
    this.reportedAt = now;
    this.reported = { ...this.counts };
    if (process.connected) process.send(this.reported);
  }

  dirty() {
    return Object.keys(this.counts).some((key) => this.counts[key] !== this.reported[key]);
  }

  /** Sleeps before retry `attempt` (0.1 s doubling up to 2 s), watching for a request to leave. */
  async backoff(attempt, what, error) {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
    if (attempt === 0 || delay === BACKOFF_MAX_MS) {
      process.stderr.write(`${PROG}: worker ${this.worker.id}: ${what}: ${error.message}; retrying in ${(delay / 1000).toFixed(1)} s\n`);
    }
    const deadline = Date.now() + delay;
    for (let left = delay; left > 0; left = deadline - Date.now()) {
      if (this.leaving()) throw new Leaving();
      await sleep(Math.min(left, 100));
    }
  }

  /** Waits (backing off) until both servers answer. */
  async connect() {
    for (let attempt = 0; ; attempt++) {
      try {
        if (this.redis.status === 'wait' || this.redis.status === 'end') await this.redis.connect();
        await this.redis.ping();
        await this.dbConnection();
        return;
      } catch (e) {
        await this.backoff(attempt, 'cannot reach the servers', e);
      }
    }
  }

  async dbConnection() {
    if (this.db === null) {
      const db = await mysqlConnect(this.options.mysqlParams);
      db.on('error', () => this.dropDb(db)); // a connection that dies while idle
      this.db = db;
    }
    return this.db;
  }

  dropDb(which = this.db) {
    if (which === null || which !== this.db) return;
    this.db = null;
    which.destroy();
  }

  async run() {
    let attempt = 0;
    while (!this.leaving()) {
      try {
        let raw = await this.redis.lmoveBuffer(this.queue, this.mine, 'RIGHT', 'LEFT');
        if (raw === null) {
          // The queue is empty: tell the primary what we did before we
          // block (our channel closes as soon as we are asked to leave).
          this.report(this.dirty());
          raw = await this.redis.blmoveBuffer(this.queue, this.mine, 'RIGHT', 'LEFT', TAKE_TIMEOUT_S);
        }
        if (raw !== null) await this.handle(raw);
        attempt = 0;
      } catch (e) {
        if (e instanceof Leaving) break;
        // Redis failed. We may hold a job we never saw (a BLMOVE whose reply
        // was lost) or one whose LREM failed: give back whatever our list
        // holds once Redis answers; the insert is idempotent.
        this.counts.redis_retries++;
        try {
          await this.backoff(attempt++, 'redis', e);
        } catch (leaving) {
          break;
        }
        try {
          await returnToQueue(this.redis, this.queue, this.mine);
        } catch (again) {
          // the next turn fails again and backs off longer
        }
      }
      this.report();
    }
    this.report(true);
  }

  async handle(raw) {
    let id;
    let payload;
    try {
      [id, payload] = parseJob(raw);
    } catch (e) {
      // A Reject, or a bug of ours: neither may stop the queue.
      await this.deadLetter(raw, e instanceof Reject ? e.reason : 'worker error', e instanceof Reject ? e.detail : String(e));
      return;
    }
    let inserted;
    try {
      inserted = await this.insert(id, payload);
    } catch (e) {
      if (e instanceof Reject) {
        await this.deadLetter(raw, e.reason, e.detail);
        return;
      }
      if (e instanceof Leaving) {
        // Asked to leave while the database is away: give the job back
        // rather than hold it until the stop timeout kills us.
        await this.redis.lmoveBuffer(this.mine, this.queue, 'RIGHT', 'RIGHT');
      }
      throw e;
    }
    // Done: only now does the job leave our processing list. Dying before
    // this line leaves it there; it comes back and the second insert is a no-op.
    await this.redis.lrem(this.mine, 1, raw);
    this.counts[inserted ? 'done' : 'dup']++;
  }

  /** Inserts the row, retrying with backoff while the database is away; true if inserted, false if the id was there. */
  async insert(id, payload) {
    for (let attempt = 0; ; attempt++) {
      try {
        const db = await this.dbConnection();
        const [result] = await db.query(INSERT, [Buffer.from(id, 'utf8'), payload, this.worker.id]);
        return result.affectedRows === 1;
      } catch (e) {
        if (isDataError(e)) throw new Reject('rejected by database', e.message);
        // Connection lost or refused, server restarting, lock timeout, a
        // missing table: none of it is the job's fault.
        this.dropDb();
        this.counts.db_retries++;
        await this.backoff(attempt, 'database', e);
      }
    }
  }

  async deadLetter(raw, reason, detail) {
    // One transaction: the job is in the dead-letter list or in our
    // processing list, never both, never neither.
    await execAll(this.redis.multi().lpush(this.dead, deadEntry(raw, reason, detail, this.worker.id)).lrem(this.mine, 1, raw));
    this.counts.dead++;
  }

  async close() {
    this.dropDb();
    this.redis.disconnect();
  }
}

async function runWorker(options) {
  const worker = cluster.worker;
  const consumer = new Consumer(options, worker);
  try {
    await consumer.connect();
  } catch (e) {
    if (!(e instanceof Leaving)) throw e;
    await consumer.close();
    process.exit(0);
  }
  worker.ready(); // a reload stops the worker we replace only now
  process.send({ ready: true });
  await consumer.run();
  await consumer.close();
  process.exit(0);
}

// ----- the primary ------------------------------------------------------------

/** What the workers reported, and the line printed every few seconds. */
class Progress {
  constructor() {
    this.live = new Map(); // worker id -> its counts
    this.gone = {}; // summed counts of exited workers
    this.lastDone = 0;
    this.lastAt = Date.now();
  }

  update(workerId, counts) {
    this.live.set(workerId, counts);
  }

  exited(workerId) {
    for (const [key, value] of Object.entries(this.live.get(workerId) || {})) this.gone[key] = (this.gone[key] || 0) + value;
    this.live.delete(workerId);
  }

  total(key) {
    let sum = this.gone[key] || 0;
    for (const counts of this.live.values()) sum += counts[key] || 0;
    return sum;
  }

  async line(redis, queue) {
    const now = Date.now();
    const done = this.total('done') + this.total('dup');
    const rate = (done - this.lastDone) / Math.max((now - this.lastAt) / 1000, 1e-9);
    this.lastDone = done;
    this.lastAt = now;
    // Taken before the await: a worker may exit (and leave `live`) meanwhile.
    const perWorker = [...this.live.entries()]
      .sort(([a], [b]) => a - b)
      .map(([id, counts]) => `${id}:${(counts.done || 0) + (counts.dup || 0)}`)
      .join(',');
    const ids = [...this.live.keys()];
    let lists;
    try {
      const pipe = redis.pipeline().llen(queue).llen(deadList(queue));
      for (const id of ids) pipe.llen(processingList(queue, id));
      const results = (await pipe.exec()).map(([error, value]) => {
        if (error) throw error;
        return value;
      });
      const [depth, dead, ...held] = results;
      lists = `queue=${depth} processing=${held.reduce((a, b) => a + b, 0)} dead=${dead}`;
    } catch (e) {
      lists = `queue=? (redis: ${e.message})`;
    }
    return (
      `progress done=${this.total('done')} dup=${this.total('dup')} rate=${rate.toFixed(0)}/s ${lists} ` +
      `rejected=${this.total('dead')} db_retries=${this.total('db_retries')} workers=${perWorker || '-'}`
    );
  }
}

/** Both servers answer and the table exists, or a one-line error (exit 1). */
async function checkServers(options) {
  const redis = redisClient(options.redis);
  let cause = null; // connect() itself only says "Connection is closed"
  redis.on('error', (e) => {
    cause = cause || e;
  });
  try {
    await redis.connect();
    await redis.ping();
  } catch (e) {
    process.stderr.write(`${PROG}: cannot reach redis at ${options.redis}: ${(cause || e).message}\n`);
    process.exit(1);
  }
  try {
    const db = await mysqlConnect(options.mysqlParams);
    await db.query(CREATE_TABLE);
    await db.end();
  } catch (e) {
    process.stderr.write(`${PROG}: cannot use the database at ${options.mysql}: ${e.message}\n`);
    process.exit(1);
  }
  return redis;
}

/**
 * Moves every processing list of this queue back to it. Run before any
 * worker starts (lists an earlier primary's workers left: a primary killed
 * outright takes its workers with it) and after the last one exits.
 */
async function recoverAll(redis, queue) {
  const pattern = processingList(queue, '').replace(/[\\*?[\]]/g, '\\$&') + '*';
  let moved = 0;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    for (const key of keys) moved += await returnToQueue(redis, queue, key);
  } while (cursor !== '0');
  return moved;
}

async function runPrimary(options) {
  const say = (line) => process.stdout.write(`${line}\n`);
  const redis = await checkServers(options);
  const stale = await recoverAll(redis, options.queue);
  if (stale) say(`recovered ${stale} jobs left in processing lists`);
  const progress = new Progress();
  const ready = new Set();
  const unrecovered = new Map(); // exited workers whose list Redis did not let us empty yet -> crashed
  let announced = false;
  let stopping = false;

  async function recover(workerId, crashed) {
    try {
      // A worker that left when asked and still held a job was ended by the
      // stop timeout: that is not the job's fault, so no death is counted.
      const moved = crashed
        ? await giveBackAfterCrash(redis, options.queue, workerId)
        : await returnToQueue(redis, options.queue, processingList(options.queue, workerId));
      unrecovered.delete(workerId);
      return moved;
    } catch (e) {
      process.stderr.write(`${PROG}: cannot recover worker ${workerId}'s jobs yet: ${e.message}\n`);
      unrecovered.set(workerId, crashed);
      return null;
    }
  }

  cluster.setupPrimary({
    restart: true, // rcluster replaces workers that exit unasked, with backoff
    waitReady: true, // a worker is ready once connected (it listens on nothing)
    crashLoopCount: options.crashLoopCount,
    stopTimeout: 10000,
  });
  cluster.on('fork', (worker) => say(`worker ${worker.id} started pid ${worker.process.pid} slot ${worker.slot}`));
  cluster.on('message', (worker, message) => {
    if (message && message.ready) {
      ready.add(worker.id);
      say(`worker ${worker.id} ready`);
      if (!announced && ready.size >= options.workers) {
        announced = true;
        say(`ready queue=${options.queue} workers=${options.workers}`);
      }
    } else if (message && typeof message === 'object') {
      progress.update(worker.id, message);
    }
  });
  const exiting = new Set(); // recoveries under way, which the stop waits for
  cluster.on('exit', (worker, code, signal) => {
    // Its processing list has no writer any more: give back what it holds.
    // (The replacement has a list of its own, so the order against its
    // start does not matter.)
    progress.exited(worker.id);
    ready.delete(worker.id);
    const asked = worker.exitedAfterDisconnect ? 'asked' : 'unasked';
    const how = signal ? `signal ${os.constants.signals[signal] || signal}` : `code ${code}`;
    const done = recover(worker.id, !worker.exitedAfterDisconnect).then((moved) => {
      say(`worker ${worker.id} exited ${how} ${asked} recovered ${moved === null ? '?' : moved}`);
      exiting.delete(done);
    });
    exiting.add(done);
  });
  cluster.on('reload_done', (generation) => say(`reload done generation ${generation}`));
  cluster.on('reload_failed', (error) => {
    // The binding's message: "rcluster: reload to generation G failed: WHY".
    const m = /generation (\d+) failed: (.*)$/s.exec(error.message);
    say(m ? `reload failed generation ${m[1]}: ${m[2]}` : `reload failed: ${error.message}`);
  });
  cluster.on('crash_loop', (worker, slot) => say(`slot ${slot} is crash-looping; not restarted`));

  process.on('SIGHUP', () => {
    if (!stopping) cluster.reload().catch(() => {}); // reported by 'reload_failed'
  });
  const stop = () => {
    if (stopping) {
      // A second signal: do not wait for the workers (their jobs are recovered below).
      for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGKILL');
      return;
    }
    stopping = true;
    cluster.shutdown(10000).then(async () => {
      clearInterval(timer);
      await Promise.all([...exiting]);
      // Every worker is gone: nothing can hold a job now.
      try {
        const leftover = await recoverAll(redis, options.queue);
        say(`${(await progress.line(redis, options.queue)).replace('progress', 'stopped')} recovered=${leftover}`);
      } catch (e) {
        process.stderr.write(`${PROG}: at exit, cannot check the processing lists: ${e.message}\n`);
        process.exit(1);
      }
      redis.disconnect();
      process.exit(0);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const timer = setInterval(() => {
    tick().catch((e) => process.stderr.write(`${PROG}: progress: ${e.stack || e}\n`));
  }, Math.min(1000, options.reportEvery > 0 ? options.reportEvery * 1000 : 1000));
  async function tick() {
    for (const [id, crashed] of [...unrecovered]) await recover(id, crashed);
    if (options.reportEvery > 0 && Date.now() >= nextReport) {
      nextReport = Date.now() + options.reportEvery * 1000;
      say(await progress.line(redis, options.queue));
    }
  }
  let nextReport = Date.now() + options.reportEvery * 1000;

  for (let i = 0; i < options.workers; i++) cluster.fork();
}

const options = parseArgs(process.argv.slice(2));
const main = cluster.isPrimary ? runPrimary : runWorker;
main(options).catch((e) => {
  process.stderr.write(`${PROG}: ${e.stack || e}\n`);
  process.exit(1);
});
