/// <reference types="node" />
// Types for rcluster's Node binding: Node's `cluster` module surface, plus
// rcluster's extras (reload, scale, stats, shutdown, supervision settings,
// the reuseport and least policies).

import { EventEmitter } from 'events';
import type { PrimaryOptions } from './native';

declare namespace rcluster {
  /**
   * The settings of setupPrimary(). rcluster's own (restart, heartbeat,
   * maxUnacked...; durations in milliseconds) are defined once, with their
   * defaults, by the addon's `PrimaryOptions` (src/primary.rs, generated
   * into native.d.ts by the build).
   */
  interface ClusterSettings extends Omit<PrimaryOptions, 'argv' | 'cwd' | 'policy'> {
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
    /** SCHED_RR (default), SCHED_NONE, or rcluster's SCHED_REUSEPORT / SCHED_LEAST / SCHED_HYBRID. Set before the first fork. */
    schedulingPolicy: number;
    readonly SCHED_NONE: 1;
    readonly SCHED_RR: 2;
    readonly SCHED_REUSEPORT: 3;
    readonly SCHED_LEAST: 4;
    readonly SCHED_HYBRID: 5;
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
    // rcluster's own events, named as in every layer (Python's EventKind,
    // C's RCLUSTER_EVENT_*). 0.1's names (crashloop, spawnfailed,
    // upgradefailed, reload, reloadfailed) still fire, deprecated.
    /** rcluster: a slot's worker kept dying; its restarts stopped. */
    on(event: 'crash_loop', listener: (worker: Worker | undefined, slot: number) => void): this;
    /** rcluster: a worker missed its heartbeat; it is killed and replaced. */
    on(event: 'unresponsive', listener: (worker: Worker | undefined) => void): this;
    /** rcluster: a worker could not be started; the slot retries with backoff. */
    on(event: 'spawn_failed', listener: (slot: number, error: Error) => void): this;
    /** rcluster: a rolling reload finished. */
    on(event: 'reload_done', listener: (generation: number) => void): this;
    on(event: 'reload_failed', listener: (error: Error) => void): this;
    /** rcluster: a new primary took over (SIGUSR2); this one is stopping. */
    on(event: 'upgraded', listener: (pid: number) => void): this;
    on(event: 'upgrade_failed', listener: (error: Error) => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;
  }
}

declare const rcluster: rcluster.Cluster;
export = rcluster;
