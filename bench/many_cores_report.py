#!/usr/bin/env python3
"""Turns bench/many_cores.sh's many_cores.jsonl into a Markdown table.

    python3 bench/many_cores_report.py bench/results/many-cores/many_cores.jsonl > bench/results/many-cores/latest.md

Per contender: the median of the rounds' connections/s (each round listed),
the ratio to the prefork server of the same run, the median p99, and the
spread of connections over workers (busiest / least busy, all rounds).
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
from pathlib import Path


def main() -> int:
    path = Path(sys.argv[1])
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    machine = (path.parent / "machine.txt").read_text().strip().splitlines() if (path.parent / "machine.txt").exists() else []
    groups: dict[tuple[int, int], dict[str, list[dict]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
        groups[(row["workers"], row["connections"])][row["contender"]].append(row["wrk"])
    print("# C servers on many cores (bench/many_cores.sh)\n")
    print(f"Machine: {'; '.join(machine)}. Servers on CPUs 0-11, wrk -t4 on CPUs 12-15, a new connection")
    print("per request, 3 s per run, rounds in alternating order. `rr`/`least`/`shared`/`reuseport`:")
    print("the rcluster C bench server under that policy; `prefork`: every process accepting on one")
    print("shared socket (the kernel decides).\n")
    for (workers, connections), by_key in sorted(groups.items()):
        base = statistics.median(r["requests"] / (r["duration_us"] / 1e6) for r in by_key.get("prefork", []) or [{"requests": 0, "duration_us": 1}])
        print(f"## {workers} workers, {connections} connections at a time\n")
        print("| contender | conn/s (median) | rounds | vs prefork | p99 ms | max/min per worker | errors |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for key in ("rr", "least", "shared", "reuseport", "prefork"):
            runs = by_key.get(key)
            if not runs:
                continue
            rates = [r["requests"] / (r["duration_us"] / 1e6) for r in runs]
            counts: collections.Counter[str] = collections.Counter()
            for r in runs:
                counts.update({k: v for k, v in r["workers"].items() if k != "other"})
            per_worker = sorted(counts.values())
            spread = f"{per_worker[-1] / per_worker[0]:.2f}" if per_worker and per_worker[0] and len(per_worker) >= workers else "n/a"
            errors = sum(sum(r["errors"].values()) for r in runs)
            p99 = statistics.median(r["latency_us"]["p99"] for r in runs) / 1000
            ratio = f"{statistics.median(rates) / base:.2f}x" if base else "n/a"
            print(f"| {key} | {statistics.median(rates):,.0f} | {', '.join(f'{x / 1000:.1f}k' for x in rates)} | {ratio} | {p99:.2f} | {spread} | {errors} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
