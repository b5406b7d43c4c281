/// <reference types="node" />
// Types for rcluster's Node binding: Node's `cluster` module surface, plus
// rcluster's extras (reload, scale, stats, shutdown, supervision settings,
// the reuseport and least policies).

import { EventEmitter } from 'events';

declare namespace rcluster {
  interface ClusterSettings {
    /** Arguments to the worker script (default: process.argv.slice(2)). */
    args?: string[];
    /** The worker script (default: process.argv[1]). */
    exec?: string;
    /** Runtime flags for workers (default: process.execArgv; Deno: ['run', '-A']). */
    execArgv?: string[];
    /** Working directory of the workers. */
    cwd?: string;
    /** Extra environment for every worker (merged under fork(env)). */
    env?: NodeJS.ProcessEnv;
    /** Accepted; not supported yet (worker output is inherited, a warning says so). */
    silent?: boolean;

    // ----- rcluster extras (durations in milliseconds) -----
    /** Replace a worker that exits without being asked to. Default false (Node's semantics). */
    restart?: boolean;
    /** First restart delay. Default 100. */
    restartDelay?: number;
    /** Longest restart delay. Default 10000. */
    restartDelayMax?: number;
    /** Each unexpected exit multiplies the delay by this. Default 2. */
    restartBackoff?: number;
    /** A worker that ran this long resets the restart delay. Default 5000. */
    stableAfter?: number;
    /** This many unexpected exits within crashLoopWindow stop a slot's restarts ('crashloop'). Default 5. */
    crashLoopCount?: number;
    /** Default 30000. */
    crashLoopWindow?: number;
    /** How long a replacement (reload, recycling) has to become ready. Default 30000. */
    readyTimeout?: number;
    /** Ready means cluster.worker.ready() was called, not the first listen. Default false. */
    waitReady?: boolean;
    /** Workers replaced at once during reload(). Default 1. */
    reloadConcurrency?: number;
    /** Ping workers this often; 0 or unset: no heartbeat. */
    heartbeatInterval?: number;
    /** A worker silent this long is killed and replaced ('unresponsive'). Default 30000. */
    heartbeatTimeout?: number;
    /** Replace a worker after it was handed this many connections (rr, least). Default 0: never. */
    recycleAfter?: number;
    /** Up to this many connections added at random to recycleAfter. Default 0. */
    recycleJitter?: number;
    /** Replace a worker gracefully once its resident memory passes this many bytes (checked every second). Default: no limit. */
    maxMemory?: number;
    /** 'HOST:PORT' to serve Prometheus metrics (GET /metrics) and GET /healthz on. Default: none. */
    metricsAddress?: string;
    /** How long a worker asked to leave may take before SIGTERM, then SIGKILL. Default 10000. */
    stopTimeout?: number;
    /** Connections a worker may hold handed-over but unacknowledged. Default 8. */
    maxUnacked?: number;
    /** Connections the primary queues before it stops accepting. Default 1024. */
    maxPending?: number;
    /** listen(2) backlog. Default 511. */
    backlog?: number;
  }

  interface Address {
    address: string;
    port: number;
    /** 4 or 6. */
    addressType: number;
    fd?: undefined;
  }

  interface WorkerStats {
    id: number;
    pid: number;
    slot?: number | null;
    state: 'starting' | 'online' | 'listening' | 'leaving' | 'disconnected';
    generation: number;
    /** Connections handed to it so far. */
    dispatched: number;
    /** Handed over, not yet acknowledged. */
    inFlight: number;
    /** Taken and not yet finished (counted under the `least` policy only). */
    active: number;
    restarts: number;
    uptimeMs: number;
    /** CPU time of its process (user + system, from /proc), in ms. */
    cpuMs: number;
    /** Its resident memory, in bytes (from /proc). */
    rssBytes: number;
    /** Application messages it sent the primary, and the primary sent it. */
    messagesIn: number;
    messagesOut: number;
  }

  /** In the primary: what Node's ChildProcess offers a cluster app. */
  interface WorkerProcess extends EventEmitter {
    readonly pid: number;
    connected: boolean;
    exitCode: number | null;
    signalCode: NodeJS.Signals | null;
    killed: boolean;
    send(message: unknown, callback?: (error: Error | null) => void): boolean;
    /** With a handle (net.Server, net.Socket, dgram.Socket), as in Node: `keepOpen` keeps a sent socket open here. */
    send(
      message: unknown,
      sendHandle: unknown,
      options?: { keepOpen?: boolean },
      callback?: (error: Error | null) => void,
    ): boolean;
    kill(signal?: NodeJS.Signals | number): boolean;
    disconnect(): void;
  }

  interface Worker extends EventEmitter {
    readonly id: number;
    /** In the primary: the worker's process; in a worker: `process`. */
    readonly process: WorkerProcess | NodeJS.Process;
    state: 'none' | 'online' | 'listening' | 'disconnecting' | 'disconnected' | 'dead' | 'destroying';
    exitedAfterDisconnect: boolean | undefined;
    /** rcluster: the slot (supervision) and reload generation it runs in. */
    slot?: number;
    generation?: number;
    send(message: unknown, callback?: (error: Error | null) => void): boolean;
    /** With a handle (net.Server, net.Socket, dgram.Socket), as in Node: `keepOpen` keeps a sent socket open here. */
    send(
      message: unknown,
      sendHandle: unknown,
      options?: { keepOpen?: boolean },
      callback?: (error: Error | null) => void,
    ): boolean;
    kill(signal?: NodeJS.Signals | number): void;
    destroy(signal?: NodeJS.Signals | number): void;
    disconnect(): this;
    isConnected(): boolean;
    isDead(): boolean;
    /** rcluster, in a worker: tell the primary this worker is ready (for `waitReady`). */
    ready(): void;

    on(event: 'disconnect', listener: () => void): this;
    on(event: 'error', listener: (error: Error) => void): this;
    on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
    on(event: 'listening', listener: (address: Address) => void): this;
    on(event: 'message', listener: (message: any, handle: undefined) => void): this;
    on(event: 'online', listener: () => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;
  }

  interface Cluster extends EventEmitter {
    readonly isPrimary: boolean;
    /** @deprecated Node's old name for isPrimary. */
    readonly isMaster: boolean;
    readonly isWorker: boolean;
    /** Which runtime this is: node, bun or deno. */
    readonly runtime: 'node' | 'bun' | 'deno';
    /** SCHED_RR (default), SCHED_NONE, or rcluster's SCHED_REUSEPORT / SCHED_LEAST. Set before the first fork. */
    schedulingPolicy: number;
    readonly SCHED_NONE: 1;
    readonly SCHED_RR: 2;
    readonly SCHED_REUSEPORT: 3;
    readonly SCHED_LEAST: 4;
    readonly settings: ClusterSettings;
    /** Primary: live workers by id (a worker leaves when it disconnects). */
    readonly workers?: Record<number, Worker>;
    /** Worker: this worker. */
    readonly worker?: Worker;
    readonly Worker: new (options?: { id?: number; state?: string }) => Worker;

    fork(env?: NodeJS.ProcessEnv): Worker;
    setupPrimary(settings?: ClusterSettings): void;
    /** @deprecated Node's old name for setupPrimary. */
    setupMaster(settings?: ClusterSettings): void;
    disconnect(callback?: () => void): void;

    /** rcluster: rolling reload; resolves with the new generation. */
    reload(): Promise<number>;
    /** rcluster: sets the number of workers. */
    scale(workers: number): void;
    /** rcluster: a snapshot of every worker. */
    stats(): WorkerStats[];
    /** rcluster: graceful shutdown of the whole cluster; resolves when every worker is gone. */
    shutdown(graceMs?: number): Promise<void>;

    on(event: 'disconnect', listener: (worker: Worker) => void): this;
    on(event: 'exit', listener: (worker: Worker, code: number | null, signal: NodeJS.Signals | null) => void): this;
    on(event: 'fork', listener: (worker: Worker) => void): this;
    on(event: 'listening', listener: (worker: Worker, address: Address) => void): this;
    on(event: 'message', listener: (worker: Worker, message: any, handle: undefined) => void): this;
    on(event: 'online', listener: (worker: Worker) => void): this;
    on(event: 'setup', listener: (settings: ClusterSettings) => void): this;
    /** rcluster: a slot's worker kept dying; its restarts stopped. */
    on(event: 'crashloop', listener: (worker: Worker | undefined, slot: number) => void): this;
    /** rcluster: a worker missed its heartbeat; it is killed and replaced. */
    on(event: 'unresponsive', listener: (worker: Worker | undefined) => void): this;
    /** rcluster: a rolling reload finished. */
    on(event: 'reload', listener: (generation: number) => void): this;
    on(event: 'reloadfailed', listener: (error: Error) => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;
  }
}

declare const rcluster: rcluster.Cluster;
export = rcluster;
