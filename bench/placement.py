#!/usr/bin/env python3
"""Where the scheduler puts a server's threads and wrk, round by round.

    python3 bench/placement.py [--rounds N] [--connections C] -- SERVER ARGV...

Starts the server (it prints its URL on its first line, as every bench
server does), then runs wrk (`-t1 -cC -d2s`, `Connection: close`) N times.
During each round it reads every thread's last CPU from /proc every 10 ms:
the primary's loop thread (L), each worker process's main thread (W, one
digit each, sorted) and wrk's load thread. Each round prints its conn/s, the CPU ticks
each party used, and the four most frequent arrangements with their share of
the samples, for example `L0 wrk1 W0000 96%`: the loop thread and all four
workers on CPU 0, wrk on CPU 1.

A diagnostic for the bimodal C rr rounds on the 2-CPU machine (README,
Performance), not part of `make bench`. Reading /proc costs about 0.2 ms of
CPU per sample (2% of a CPU). The server is stopped by its pid.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import time

from run import ROOT, children  # bench/run.py: the harness's root and /proc readings


def threads(pid: int) -> dict[int, tuple[str, int, int]]:
    """tid -> (comm, last CPU, utime + stime ticks)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (comm, int(fields[36]), int(fields[11]) + int(fields[12]))
    return out


def label(pid: int, server: int, wrk: int, comm: str) -> str:
    if pid == wrk:
        return "wrk"
    if pid == server:
        return "L" if comm.startswith("rcluster-prim") else "main"
    return "W"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("server", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.server[1:] if args.server[:1] == ["--"] else args.server
    if not argv:
        parser.error("give the server's argv after --")

    server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        match = re.search(r"http://\S+", server.stdout.readline())
        if not match:
            raise SystemExit("placement: the server printed no URL")
        wrk_argv = ["wrk", "-t1", f"-c{args.connections}", "-H", "Connection: close"]
        subprocess.run([*wrk_argv, "-d1s", match.group(0) + "/"], capture_output=True, check=True)
        for round_no in range(args.rounds):
            wrk = subprocess.Popen([*wrk_argv, "-d2s", match.group(0) + "/"], stdout=subprocess.PIPE, text=True)
            time.sleep(0.1)
            pids = [server.pid, *children(server.pid), wrk.pid]
            before = {tid: t[2] for pid in pids for tid, t in threads(pid).items()}
            arrangements: collections.Counter[str] = collections.Counter()
            samples = 0
            until = time.monotonic() + 1.7
            while time.monotonic() < until:
                where: dict[str, list[int]] = collections.defaultdict(list)
                for pid in pids:
                    for tid, (comm, cpu, _) in threads(pid).items():
                        if pid == wrk.pid and tid == wrk.pid:
                            continue  # wrk's main thread only waits
                        if pid not in (server.pid, wrk.pid) and tid != pid:
                            continue  # a worker's own helper threads (a runtime's) are not the worker
                        where[label(pid, server.pid, wrk.pid, comm)].append(cpu)
                workers = "".join(str(c) for c in sorted(where["W"]))
                arrangements[f"L{where['L'][0] if where['L'] else '?'} "
                             f"wrk{where['wrk'][0] if where['wrk'] else '?'} W{workers}"] += 1
                samples += 1
                time.sleep(0.01)
            ticks: collections.Counter[str] = collections.Counter()
            for pid in pids:
                for tid, (comm, _, used) in threads(pid).items():
                    ticks[label(pid, server.pid, wrk.pid, comm)] += used - before.get(tid, 0)
            out = wrk.communicate()[0]
            rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            top = ", ".join(f"{k} {100 * v // samples}%" for k, v in arrangements.most_common(4))
            print(f"round {round_no + 1}: {rate:8.0f} conn/s | CPU ticks: loop {ticks['L']}, workers {ticks['W']}, "
                  f"wrk {ticks['wrk']} | {top}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
