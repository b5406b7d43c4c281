#!/usr/bin/env python3
"""Turns a run's latest.json into latest.md (tables, ratios, targets) and latest.png (the chart).

    bench/tmp/venv/bin/python bench/report.py bench/results/latest.json

The Markdown needs only the standard library; the chart needs matplotlib
(make bench installs it into bench/tmp/venv). Without it the PNG is skipped
and the Markdown says so.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# Targets of the issue, ratios within one run.
T_NODE_VS_RR = 1.7
T_NODE_VS_NONE = 1.0
T_C_VS_PREFORK = 0.9
T_RR_MAXMIN = 1.1
T_UNEVEN_P99_CUT = 2.0
T_IPC_PIPELINED = 5.0
T_BUN_VS_BUN_CLUSTER = 1.0  # rcluster rr under Bun against Bun's own node:cluster
T_BUN_VS_NODE_ADDON = 0.9  # the addon under Bun or Deno against the addon under Node (within 10%)
IPC_HEADLINE_WINDOW = 256


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def fmt_ms(us: float | None) -> str:
    if us is None:
        return "–"
    return f"{us / 1000:.2f} ms" if us < 10000 else f"{us / 1000:.1f} ms"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def fmt_f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ok(flag: bool | None) -> str:
    return "–" if flag is None else ("**met**" if flag else "**missed**")


class Run:
    def __init__(self, data: dict) -> None:
        self.data = data
        self.groups = data["groups"]

    def group(self, name: str, workers: int) -> dict | None:
        return next((g for g in self.groups if g["name"] == name and g["workers"] == workers), None)

    def entry(self, name: str, workers: int, key: str) -> dict | None:
        g = self.group(name, workers)
        return next((c for c in g["contenders"] if c["key"] == key), None) if g else None

    def rate(self, name: str, workers: int, key: str, mode: str = "close") -> float | None:
        e = self.entry(name, workers, key)
        return e[mode]["rate"] if e and mode in e else None

    def ratio(self, name: str, workers: int, a: str, b: str) -> float | None:
        x, y = self.rate(name, workers, a), self.rate(name, workers, b)
        return x / y if x and y else None

    def worker_counts(self, name: str) -> list[int]:
        return sorted({g["workers"] for g in self.groups if g["name"] == name})


# --------------------------------------------------------------------------
# Markdown


def targets(run: Run) -> list[tuple[str, str, bool | None]]:
    rows = []

    def per_workers(name, fn, fmt, good):
        parts, flags = [], []
        for n in run.worker_counts(name):
            v = fn(n)
            parts.append(f"{n} workers: {fmt(v)}")
            flags.append(None if v is None else good(v))
        flag = None if not flags or any(f is None for f in flags) else all(flags)
        return "; ".join(parts) or "not run", flag

    m, f = per_workers("node", lambda n: run.ratio("node", n, "rcluster-rr", "node-rr"), fmt_ratio,
                       lambda v: v >= T_NODE_VS_RR)
    rows.append((f"Node app through rcluster rr ≥ {T_NODE_VS_RR}× Node cluster SCHED_RR (conn/s)", m, f))
    m, f = per_workers("node", lambda n: run.ratio("node", n, "rcluster-rr", "node-none"), fmt_ratio,
                       lambda v: v >= T_NODE_VS_NONE)
    rows.append((f"Node app through rcluster rr ≥ {T_NODE_VS_NONE}× Node cluster SCHED_NONE (conn/s)", m, f))
    m, f = per_workers("bun", lambda n: run.ratio("bun", n, "rcluster-rr", "bun-cluster"), fmt_ratio,
                       lambda v: v >= T_BUN_VS_BUN_CLUSTER)
    rows.append((f"Node app under Bun through rcluster rr ≥ {T_BUN_VS_BUN_CLUSTER}× Bun's own node:cluster (conn/s)", m, f))
    for name in ("bun", "deno"):
        m, f = per_workers(name, lambda n, g=name: run.ratio(g, n, "rcluster-rr", "node-rcluster-rr"), fmt_ratio,
                           lambda v: v >= T_BUN_VS_NODE_ADDON)
        rows.append((f"rcluster rr: the addon under {name.capitalize()} ≥ {T_BUN_VS_NODE_ADDON}× the addon under "
                     f"Node (conn/s)", m, f))
    m, f = per_workers("c", lambda n: run.ratio("c", n, "rr", "prefork"), fmt_ratio, lambda v: v >= T_C_VS_PREFORK)
    rows.append((f"C workers: rcluster rr ≥ {T_C_VS_PREFORK}× the shared-socket prefork server (conn/s)", m, f))

    def maxmin(n):
        e = run.entry("c", n, "rr")
        return e["close"]["max_min"] if e and "close" in e else None

    m, f = per_workers("c", maxmin, lambda v: fmt_f(v, 3), lambda v: v <= T_RR_MAXMIN)
    rows.append((f"rr distribution max/min ≤ {T_RR_MAXMIN} (C workers, connections per worker)", m, f))

    def cut(n):
        rr, least = run.entry("uneven", n, "rr"), run.entry("uneven", n, "least")
        if rr and least and "close" in rr and "close" in least:
            return rr["close"]["p99_us"] / least["close"]["p99_us"]
        return None

    m, f = per_workers("uneven", cut, fmt_ratio, lambda v: v >= T_UNEVEN_P99_CUT)
    rows.append((f"Uneven test: least cuts p99 ≥ {T_UNEVEN_P99_CUT}× against rr", m, f))

    ipc = ipc_summary(run)
    r = ipc.get(("all", IPC_HEADLINE_WINDOW))
    v = r["ratio"] if r else None
    b = r.get("ratio_batched") if r else None
    best = ipc_best(run)
    if v:
        parts = [f"{IPC_HEADLINE_WINDOW} in flight: {fmt_ratio(v)} (one call per message)"]
        if b:
            parts.append(f"{fmt_ratio(b)} (batch calls)")
        if best:
            parts.append(f"each at its best window: {fmt_ratio(best['ratio'])} "
                         f"({fmt_rate(best['rcluster'])} at {best['rcluster_window']} vs "
                         f"{fmt_rate(best['node'])} at {best['node_window']})")
        measured = "; ".join(parts)
        met = v >= T_IPC_PIPELINED
        if not met and best and best["ratio"] >= T_IPC_PIPELINED:
            measured += f" (met best against best, not at {IPC_HEADLINE_WINDOW} in flight)"
    else:
        measured, met = "not run", None
    rows.append((f"Pipelined IPC messages ≥ {T_IPC_PIPELINED}× Node's process.send", measured, met))
    return rows


def ipc_best(run: Run) -> dict | None:
    """Each side at the window where it is fastest (one call per message for rcluster), both CPUs."""
    ipc = run.data.get("ipc")
    if not ipc:
        return None
    s = ipc_summary(run)
    rc = [(s[("all", w)]["rcluster"], w) for w in ipc["windows"] if (s.get(("all", w)) or {}).get("rcluster")]
    nd = [(s[("all", w)]["node"], w) for w in ipc["windows"] if (s.get(("all", w)) or {}).get("node")]
    if not rc or not nd:
        return None
    (r, rw), (n, nw) = max(rc), max(nd)
    return {"rcluster": r, "rcluster_window": rw, "node": n, "node_window": nw, "ratio": r / n}


def ipc_summary(run: Run) -> dict:
    """(cpus, window or 'rt') -> {'rcluster': median, 'node': median, 'ratio': ...}."""
    ipc = run.data.get("ipc")
    out: dict = {}
    if not ipc:
        return out
    for cpus in ("all", "1"):
        runs = [r for r in ipc["runs"] if r["cpus"] == cpus]
        for window in ["rt", "rt_p50", *ipc["windows"]]:
            vals = {}
            for impl in ("rcluster", "rcluster-batched", "node"):
                xs = []
                for r in runs:
                    if r["impl"] != impl:
                        continue
                    if window == "rt":
                        xs.append(r["rt_per_s"])
                    elif window == "rt_p50":
                        xs.append(r["rt_p50_us"])
                    else:
                        xs += [p["per_s"] for p in r["pipelined"] if p["window"] == window]
                vals[impl] = statistics.median(xs) if xs else None
            if vals["rcluster"] and vals["node"]:
                vals["ratio"] = vals["rcluster"] / vals["node"]
            else:
                vals["ratio"] = None
            if vals["rcluster-batched"] and vals["node"]:
                vals["ratio_batched"] = vals["rcluster-batched"] / vals["node"]
            else:
                vals["ratio_batched"] = None
            out[(cpus, window)] = vals
    return out


def http_table(run: Run, name: str, baselines: list[tuple[str, str]], note_keepalive: bool = True) -> list[str]:
    lines = []
    for n in run.worker_counts(name):
        g = run.group(name, n)
        head = ["contender", "conn/s", "rounds (min–max)"] + [f"vs {label}" for _, label in baselines] + [
            "p50", "p99", "per worker (max/min, Jain)", "primary CPU per 1k conn", "workers CPU per 1k conn",
            "primary peak RSS"]
        if note_keepalive:
            head += ["keep-alive req/s", "keep-alive p99"]
        lines += [f"**{n} workers** ({g['load']}, new connection per request unless noted)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in g["contenders"]:
            if "not_run" in c or "close" not in c:
                why = c.get("not_run") or "; ".join(c.get("failures", ["no result"]))
                lines.append(f"| {c['label']} | {why} |" + " |" * (len(head) - 2))
                continue
            s = c["close"]
            spread = f"{fmt_rate(min(s['rates']))}–{fmt_rate(max(s['rates']))}" if len(s["rates"]) > 1 else "–"
            cells = [c["label"], fmt_rate(s["rate"]), spread]
            for key, _ in baselines:
                r = run.ratio(name, n, c["key"], key)
                cells.append("1" if key == c["key"] else fmt_ratio(r))
            dist = f"{fmt_f(s['max_min'], 2)}, {fmt_f(s['jain'], 3)}"
            cells += [fmt_ms(s["p50_us"]), fmt_ms(s["p99_us"]), dist,
                      f"{s['primary_us_per_conn']:.1f} ms" if s["primary_us_per_conn"] is not None else "–",
                      f"{s['workers_us_per_conn']:.1f} ms" if s["workers_us_per_conn"] is not None else "–",
                      f"{c['primary_peak_rss_kib'] / 1024:.1f} MiB" if c.get("primary_peak_rss_kib") else "–"]
            if note_keepalive:
                ka = c.get("keepalive")
                cells += [fmt_rate(ka["rate"]) if ka else "–", fmt_ms(ka["p99_us"]) if ka else "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def uneven_table(run: Run, name: str) -> list[str]:
    lines = []
    for n in run.worker_counts(name):
        g = run.group(name, n)
        head = ["policy", "served/s", "p50", "p99", "p99.9", "p99 vs rr", "slow worker's share",
                "per worker (max/min, Jain)", "errors"]
        lines += [f"**{n} workers, {g['load']}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rr = run.entry(name, n, "rr")
        for c in g["contenders"]:
            if "close" not in c:
                lines.append(f"| {c['label']} | {c.get('not_run', 'no result')} |" + " |" * (len(head) - 2))
                continue
            s = c["close"]
            # The slow worker is id 1: its key starts "1 pid".
            slow = sum(v for r in s["runs"] for k, v in r["workers"].items() if k.startswith("1 pid"))
            share = slow / s["requests"] if s["requests"] else None
            cut = rr["close"]["p99_us"] / s["p99_us"] if rr and "close" in rr and s["p99_us"] else None
            errors = sum(s["errors"].values())
            cells = [c["label"], fmt_rate(s["rate"]), fmt_ms(s["p50_us"]), fmt_ms(s["p99_us"]), fmt_ms(s["p999_us"]),
                     fmt_ratio(cut) + (" less" if c["key"] != "rr" else ""),
                     f"{share * 100:.0f}% (fair: {100 / n:.0f}%)" if share is not None else "–",
                     f"{fmt_f(s['max_min'], 2)}, {fmt_f(s['jain'], 3)}", str(errors)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def ipc_table(run: Run) -> list[str]:
    ipc = run.data.get("ipc")
    if not ipc:
        return ["IPC: not run.", ""]
    s = ipc_summary(run)
    lines = ["| messages of 64 bytes | CPUs | rcluster, one call per message | rcluster, batch calls | "
             "Node process.send | rcluster ÷ Node (per message / batch) |",
             "|---|---|---|---|---|---|"]

    def rate_or_dash(v):
        return fmt_rate(v) if v else "–"

    def ratios(v):
        return f"{fmt_ratio(v['ratio'])} / {fmt_ratio(v['ratio_batched'])}" if v.get("ratio_batched") \
            else fmt_ratio(v["ratio"])

    for cpus, cpu_label in (("all", "both"), ("1", "one (pinned)")):
        v = s.get((cpus, "rt_p50"))
        if v and v["ratio"]:
            batched = f"{v['rcluster-batched']:.1f} µs" if v.get("rcluster-batched") else "–"
            lines.append(f"| round trip, p50 latency (lower is better) | {cpu_label} | {v['rcluster']:.1f} µs | "
                         f"{batched} | {v['node']:.1f} µs | {ratios(v)} |")
        v = s.get((cpus, "rt"))
        if v and v["ratio"]:
            lines.append(f"| round trips/s, one at a time | {cpu_label} | {fmt_rate(v['rcluster'])} | "
                         f"{rate_or_dash(v.get('rcluster-batched'))} | {fmt_rate(v['node'])} | {ratios(v)} |")
        for w in ipc["windows"]:
            v = s.get((cpus, w))
            if v and v["ratio"]:
                lines.append(f"| pipelined echoes/s, {w} in flight | {cpu_label} | {fmt_rate(v['rcluster'])} | "
                             f"{rate_or_dash(v.get('rcluster-batched'))} | {fmt_rate(v['node'])} | {ratios(v)} |")
    lines.append("")
    best = ipc_best(run)
    if best:
        lines += [f"Each at its best window (both CPUs, one call per message): rcluster {fmt_rate(best['rcluster'])} "
                  f"at {best['rcluster_window']} in flight, Node {fmt_rate(best['node'])} at {best['node_window']}: "
                  f"{fmt_ratio(best['ratio'])}. Node's throughput falls past a few hundred messages in flight "
                  "(its pipe's backlog grows); rcluster's keeps rising as more messages share each record.", ""]
    return lines


def queue_table(run: Run) -> list[str]:
    """The queue-worker example: jobs/s by language and worker count (median over rounds)."""
    q = run.data.get("queue")
    if not q:
        return []
    if q.get("not_run"):
        return [f"Not run: {q['not_run']}", ""]
    counts = sorted({r["workers"] for r in q["runs"]})
    L = ["| version | " + " | ".join(f"{n} worker{'s' if n > 1 else ''}" for n in counts) + f" | {counts[-1]} vs 1 |",
         "|---|" + "---|" * (len(counts) + 1)]
    for lang in sorted({r["lang"] for r in q["runs"]}, key=lambda x: (x != "python", x)):
        med = {n: statistics.median([r["jobs_per_s"] for r in q["runs"] if r["lang"] == lang and r["workers"] == n])
               for n in counts if any(r["lang"] == lang and r["workers"] == n for r in q["runs"])}
        scale = med[counts[-1]] / med[counts[0]] if counts[-1] in med and counts[0] in med else None
        L.append(f"| {lang} | " + " | ".join(f"{fmt_rate(med.get(n))} jobs/s" for n in counts)
                 + f" | {fmt_ratio(scale)} |")
    return L + [""]


def others_line(run: Run) -> str:
    """How busy the rest of the machine was during the measured runs (other tenants)."""
    xs = []
    for g in run.groups:
        if "run" in g:
            continue  # run on its own and merged in (bench/merge.py): its own line says how busy it was
        for c in g["contenders"]:
            for mode in ("close", "keepalive"):
                xs += [r["others_busy"] for r in c.get(mode, {}).get("runs", []) if "others_busy" in r]
    xs += [r["others_busy"] for r in (run.data.get("ipc") or {}).get("runs", []) if "others_busy" in r]
    if not xs:
        return "the other tenants' share was not recorded."
    xs.sort()
    return (f"processes other than the benchmark's used a median {100 * statistics.median(xs):.1f}% of the "
            f"machine's CPU time during the {len(xs)} measured runs (90th percentile "
            f"{100 * xs[int(0.9 * (len(xs) - 1))]:.1f}%, worst {100 * xs[-1]:.1f}%).")


def idle_line(m: dict) -> str:
    """How the machine's idle CPUs wait, where the run recorded it: on a
    virtual machine whose idle CPUs halt at once, every wake-up of a
    sleeping CPU is an exit to the hypervisor (docs/performance.md)."""
    if "virtual" not in m:
        return ""
    parts = ["; a virtual machine" if m["virtual"] else "; not virtualized"]
    if m.get("cpuidle_driver"):
        parts.append(f"cpuidle driver {m['cpuidle_driver']}")
    poll = m.get("guest_halt_poll_ns")
    if poll:
        parts.append(f"guest halt polling {poll} ns" + (" (an idle CPU halts at once)" if poll == "0" else ""))
    return ", ".join(parts)


def markdown(run: Run, png_note: str) -> str:
    d = run.data
    m = d["machine"]
    cfg = d["config"]
    L = [
        "# rcluster benchmark: latest run",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gib']} GiB, Linux {m['kernel']}{idle_line(m)}. "
        f"Date: {m['date']}. Commit {m['commit']}. {m['wrk']}; Node {m['node']}; Bun {m.get('bun', 'not recorded')}; {m.get('deno', 'Deno not recorded')}; {m['python']}; gcc {m['gcc']}.",
        "",
        f"Run: `{'make bench-quick' if d['profile'] == 'quick' else 'make bench'}` ({d['profile']} profile), "
        f"{d['elapsed_s'] / 60:.1f} minutes. Load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.2f}' for x in d['load_start'])}, at the end {', '.join(f'{x:.2f}' for x in d['load_end'])}. "
        f"The client, the servers and the other tenants of this machine share its {m['cpus']} CPUs; "
        + others_line(run),
        "",
        f"Method: each group's contenders run side by side; wrk (`-t1 -c{cfg['connections']}`, "
        f"`Connection: close`: one request per connection) loads one at a time for {cfg['seconds']} s, "
        f"{cfg['rounds']} round(s) in alternating order after a {cfg['warmup']} s warm-up; throughput and "
        f"percentiles are medians over rounds; per-worker counts (from each response's `worker <id>` body) and "
        f"CPU are over all rounds. Keep-alive: {cfg['ka_rounds']} round(s) of {cfg['seconds']} s. "
        "CPU per 1k connections = utime+stime from /proc per 1,000 requests (ms per 1k = µs per connection); "
        "peak RSS = the primary's VmHWM.",
        "",
        png_note,
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for name, measured, flag in targets(run):
        L.append(f"| {name} | {measured} | {ok(flag)} |")
    L += ["", "## C workers", "",
          "All C rows serve with one HTTP engine (bench/c/http_engine.c): the rcluster rows feed it from an "
          "rcluster listener (rcluster_server.c), the prefork row with accept4 on one shared socket (prefork.c).", ""]
    L += http_table(run, "c", [("prefork", "prefork")])
    if run.worker_counts("c-pinned"):
        L += ["The same C servers with the client on one CPU and every server process (primary and workers) on "
              "the other (`taskset`): the primary's handoffs to the workers then never cross CPUs. On this "
              "virtual machine a wake-up on the other CPU is costly, and where the scheduler puts the primary's "
              "thread, the workers and wrk varies from run to run; that, not the dispatch work itself, is what "
              "spreads the unpinned rr rounds above.", ""]
        L += http_table(run, "c-pinned", [("prefork", "prefork")], note_keepalive=False)
    L += ["## Node workers", "",
          "One app (bench/node/app.js), on Node's `cluster` or on rcluster's addon (`require` is the only "
          "difference).", ""]
    L += http_table(run, "node", [("node-rr", "SCHED_RR"), ("node-none", "SCHED_NONE")])
    if run.worker_counts("bun"):
        L += ["## Bun workers", "",
              f"The same app under Bun ({run.data['machine'].get('bun', '?')}): Bun's own `node:cluster` (each "
              "worker's server binds the port with SO_REUSEPORT, whatever the policy) against rcluster's addon "
              "under Bun, and the addon under Node for reference. Under Bun the addon accepts on a thread and "
              "Bun's node:http serves each handed-over socket with its JavaScript HTTP/1 parser, where Bun's own "
              "cluster serves with its native server (docs/performance.md, \"Bun\").", ""]
        L += http_table(run, "bun", [("bun-cluster", "Bun node:cluster"), ("node-rcluster-rr", "addon under Node")])
    if run.worker_counts("deno"):
        L += ["## Deno workers", "",
              f"The same app under Deno ({run.data['machine'].get('deno', '?')}, `deno run -A`): Deno's own "
              "`node:cluster` against rcluster's addon under Deno (an accept thread, the fd adopted by "
              "`new net.Socket({ fd })`), and the addon under Node.", ""]
        L += http_table(run, "deno", [("deno-cluster", "Deno node:cluster"), ("node-rcluster-rr", "addon under Node")])
    L += ["## Python workers", "",
          "`examples/python/hello_server.py` (http.server, a thread per connection) against the gunicorn model: "
          "the same Server and Handler classes, `os.fork` after binding, every child accepting on the shared "
          "socket (bench/python/prefork.py). The handler does not echo `Connection: close`, so wrk counts a "
          "read error after each response (the response is complete; wrk then reconnects); both rows alike.", ""]
    L += http_table(run, "python", [("prefork", "prefork")])
    L += ["Keep-alive runs are one round of 2 s each (noisier than the five rounds of the headline column); once a "
          "connection is handed over, the cluster is out of its path.", ""]
    if run.worker_counts("asgi") or run.worker_counts("wsgi"):
        L += ["## Python web servers", "",
              "Real apps on the servers Python users run (bench/python/servers.py; every server's access log off, "
              "other settings its defaults). rcluster rows: `rcluster.run_asgi` (uvicorn's `Server` in each "
              "worker) and `rcluster.run_wsgi` (gunicorn's own worker classes in each worker), the primary "
              "handing each connection over (`rr`). The others: uvicorn's and gunicorn's own process managers, "
              "whose workers accept on one shared socket. uvicorn runs asyncio + h11 in every ASGI row "
              "(uvloop/httptools are not installed).", ""]
        for name in ("asgi", "wsgi"):
            for n in run.worker_counts(name):
                g = run.group(name, n)
                r = g.get("run")
                if r:
                    others = [c["close"]["others_busy"] for c in g["contenders"] if c.get("close")]
                    busy = f"; other tenants kept {100 * statistics.median(others):.0f}% of the CPUs busy " \
                           f"(median over contenders)" if others else ""
                    L += [f"{name.upper()}, {n} workers: not part of the run above; run on its own "
                          f"(`{r['command']}`, {r['profile']} profile) on {r['date']}, commit {r['commit']}; load "
                          f"average before {', '.join(f'{x:.2f}' for x in r['load_before'])}, after "
                          f"{', '.join(f'{x:.2f}' for x in r['load_after'])}{busy}.", ""]
        L += ["ASGI: a FastAPI app answering `/` with plain text.", ""]
        L += http_table(run, "asgi", [("uvicorn", "uvicorn --workers"), ("gunicorn-uvicorn", "gunicorn + UvicornWorker")])
        L += ["WSGI: a Flask app answering `/` with plain text; gunicorn's sync worker class serves one request at "
              "a time and closes every connection (no keep-alive), gthread keeps connections alive (2 s).", ""]
        L += http_table(run, "wsgi", [("gunicorn-sync", "gunicorn sync"), ("gunicorn-gthread", "gunicorn gthread")])
    if run.worker_counts("c-low") or run.worker_counts("node-low"):
        L += ["## A few connections at a time", "",
              f"The same C and Node servers under wrk `-t1 -c{cfg['low_connections']}` "
              f"({cfg['low_rounds']} round(s) of {cfg['seconds']} s): the load of a lightly used server, "
              "not a saturated one. Every connection then finds the processes asleep and nothing is batched: "
              "under `rr` the primary's thread wakes to accept it and then a worker to take it, two wake-ups "
              "where a shared socket needs one, and the workers take turns, so each one served has slept while "
              "the others ran. docs/performance.md has what this costs and why.", ""]
        L += ["C workers (bench/c/http_engine.c):", ""] + http_table(run, "c-low", [("prefork", "prefork")],
                                                                        note_keepalive=False)
        L += ["Node workers (bench/node/app.js):", ""] + http_table(run, "node-low", [("node-none", "SCHED_NONE")],
                                                                      note_keepalive=False)
    if run.worker_counts("c-one") or run.worker_counts("node-one"):
        L += ["## One connection at a time", "",
              f"The same under wrk `-t1 -c{cfg.get('one_connections', 1)}`: each connection finds every process "
              "asleep.", ""]
        L += ["C workers (bench/c/http_engine.c):", ""] + http_table(run, "c-one", [("prefork", "prefork")],
                                                                        note_keepalive=False)
        L += ["Node workers (bench/node/app.js):", ""] + http_table(run, "node-one", [("node-none", "SCHED_NONE")],
                                                                      note_keepalive=False)
    if run.worker_counts("cmd-python") or run.worker_counts("cmd-node"):
        L += ["## The `rcluster` command", "",
              "The same unmodified app on both sides (bench/cmd/app.py, bench/cmd/app.js, access logs off), "
              "started by bench/cmd/launch.py: uvicorn taking its socket from `rcluster run --listen` (fd 3, "
              "every worker accepting on it) against uvicorn's own `--workers`; a plain Node http app on fd 3 "
              "under `rcluster run` against pm2's cluster mode (`pm2 start app.js -i 2 --no-daemon`: Node's "
              "cluster, SCHED_RR, the primary accepting and handing over). The 'primary' here is the launcher "
              "(idle); the workers' CPU column counts every process of the contender (rcluster's primary, "
              "pm2's daemon, uvicorn's supervisor and the workers).", ""]
        L += http_table(run, "cmd-python", [("uvicorn", "uvicorn --workers")], note_keepalive=False)
        L += http_table(run, "cmd-node", [("pm2", "pm2 -i")], note_keepalive=False)
    if run.worker_counts("nginx"):
        L += ["## Behind nginx", "",
              "The seed's alternative to a cluster: nginx in front of N single-process Node servers "
              "(bench/cmd/app.js), against one rcluster Node cluster of N workers (examples/node/hello_server.js, "
              "rr), and nginx in front of that cluster; bench/nginx/launch.py starts each (nginx with keep-alive "
              "to its upstreams, one worker process, access logs off). The 'primary' is the launcher (idle); the "
              "workers' CPU column counts every process of the contender, nginx's included.", ""]
        for n in run.worker_counts("nginx"):
            r = run.group("nginx", n).get("run")
            if r:
                L += [f"{n} workers: not part of the run above; run on its own (`{r['command']}`, {r['profile']} "
                      f"profile) on {r['date']}, commit {r['commit']}; load average before "
                      f"{', '.join(f'{x:.2f}' for x in r['load_before'])}, after "
                      f"{', '.join(f'{x:.2f}' for x in r['load_after'])}.", ""]
        L += http_table(run, "nginx", [("nginx-singles", "nginx -> singles")], note_keepalive=False)
    u = d.get("uneven", {})
    L += ["## Uneven workers", "",
          f"Every request takes {u.get('work_us')} µs more (the worker's loop waits), and {u.get('slow_work_us')} µs "
          f"(10×) on worker {u.get('slow_worker')}. Load: bench/c/openloop.c, an open loop starting "
          f"{u.get('rate_per_worker')} new connections/s per worker whatever the server does (more than the slow "
          "worker can serve under an even split), latency from when each connection was due.", ""]
    L += uneven_table(run, "uneven")
    if run.worker_counts("uneven-closed"):
        L += ["The same under wrk's closed loop (32 connections always outstanding): every policy keeps the slow "
              "worker's queue about as long, so no policy can cut the tail here.", ""]
        L += uneven_table(run, "uneven-closed")
    L += ["## IPC: messages between primary and worker", "",
          "bench/c/ipc_bench.c (rcluster_primary_send / rcluster_worker_send, events by *_wait_event) against "
          "bench/node/ipc_bench.js (child_process.fork + process.send, a 64-character string): the worker echoes "
          "every message (rcluster's worker takes what is waiting and echoes it with one "
          "rcluster_worker_send_many). 'One call per message': the primary calls rcluster_primary_send once per "
          "message, as Node's process.send is called; 'batch calls' (`ipc_bench --batched`): it takes every echo "
          "waiting and sends as many with one rcluster_primary_send_many. Medians over rounds; 'one (pinned)': "
          "both processes on one CPU (`taskset -c 1`), which takes the cross-CPU wake-up latency out of the round "
          "trip.", ""]
    L += ipc_table(run)
    if run.data.get("queue"):
        q = run.data["queue"]
        L += ["", "## Queue workers", "",
              f"`examples/queue` (a Redis list into MariaDB, no job lost; bench/queue_bench.py): {q['jobs']:,} "
              "jobs per run, timed from the first LPUSH to the last row, with a fresh database and queue each; "
              "each job is an LMOVE (a blocking BLMOVE when the queue is empty), an autocommit INSERT and an LREM. Redis, MariaDB "
              "(`innodb_flush_log_at_trx_commit=2`) and the workers share the machine's CPUs, so more workers "
              "than CPUs mostly hide the round trips' latency. Medians over rounds.", ""]
        L += queue_table(run)
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------
# Chart


def chart(run: Run, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (make bench installs it into bench/tmp/venv)."

    from matplotlib.ticker import FuncFormatter

    kfmt = FuncFormatter(lambda x, _: f"{x / 1000:.0f}k" if x >= 1000 else f"{x:.0f}")
    RC, OTHER = "#1f77b4", "#9a9a9a"
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    m = run.data["machine"]
    fig.suptitle(f"rcluster vs the alternatives — {m['cpus']}-CPU {m['cpu'].split(' @')[0]}, {m['date']}, "
                 f"commit {m['commit'].split()[0]}", fontsize=13, fontweight="bold")

    def bars(ax, name, title, baseline_key, baseline_label, second=None):
        """The group's rows, then its few-connections group's (`<name>-low`), if it ran."""
        rows = [(name, n) for n in run.worker_counts(name)]
        rows += [(f"{name}-low", n) for n in run.worker_counts(f"{name}-low")]
        labels, values, colors, notes, lo, hi = [], [], [], [], [], []
        for gname, n in rows:
            g = run.group(gname, n)
            is_low = gname.endswith("-low")
            base = run.rate(gname, n, baseline_key)
            base2 = run.rate(gname, n, second[0]) if second else None
            for c in g["contenders"]:
                at_a_time = f", {run.data['config']['low_connections']} at a time" if is_low else ""
                labels.append(f"{c['label']} · {n}w{at_a_time}")
                if "close" in c:
                    v = c["close"]["rate"]
                    values.append(v)
                    lo.append(v - min(c["close"]["rates"]))
                    hi.append(max(c["close"]["rates"]) - v)
                    note = f"{v / 1000:.1f}k"
                    if c["label"].startswith("rcluster"):
                        if is_low:  # one baseline only here: name it
                            note += "".join(f"  {v / b:.2f}× {lab}" for b, lab in
                                            ((base, baseline_label), (base2, second and second[1])) if b)
                        elif base:
                            note += f"  {v / base:.2f}×"
                            if base2:
                                note += f" / {v / base2:.2f}×"
                    notes.append(note)
                else:
                    values.append(0)
                    lo.append(0)
                    hi.append(0)
                    notes.append(c.get("not_run", "not run"))
                colors.append(RC if c["label"].startswith("rcluster") else OTHER)
        y = list(range(len(labels)))[::-1]
        ax.barh(y, values, color=colors, xerr=[lo, hi], error_kw={"ecolor": "#444444", "lw": 0.8, "capsize": 2})
        ax.set_yticks(y, labels, fontsize=8.5)
        top = max(v + h for v, h in zip(values, hi)) if values and max(values) > 0 else 1
        for yi, v, h, note in zip(y, values, hi, notes):
            ax.text(v + h + top * 0.01, yi, note, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.35)
        ax.xaxis.set_major_formatter(kfmt)
        vs = f"vs {baseline_label}" + (f" / vs {second[1]}" if second else "")
        ax.set_title(f"{title}: new connections/s\n(higher is better; × = {vs})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)

    bars(axes[0][0], "c", "C workers", "prefork", "C prefork")
    bars(axes[0][1], "node", "Node workers (same app)", "node-rr", "SCHED_RR", second=("node-none", "SCHED_NONE"))
    bars(axes[0][2], "python", "Python workers", "prefork", "Python prefork")

    # Uneven: p99 per policy.
    ax = axes[1][0]
    labels, values, colors, notes = [], [], [], []
    for n in run.worker_counts("uneven"):
        for c in run.group("uneven", n)["contenders"]:
            labels.append(f"{c['label']} · {n}w")
            s = c.get("close")
            values.append(s["p99_us"] / 1000 if s else 0)
            if s:
                slow = sum(v for r in s["runs"] for k, v in r["workers"].items() if k.startswith("1 pid"))
                notes.append(f"{s['p99_us'] / 1000:.1f} ms  (slow worker: {100 * slow / max(1, s['requests']):.0f}%)")
            else:
                notes.append("not run")
            colors.append({"rr": "#d62728", "least": "#2ca02c", "shared": OTHER}.get(c["key"], OTHER))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=8.5)
    top = max(values) if values and max(values) > 0 else 1
    for yi, v, note in zip(y, values, notes):
        ax.text(v + top * 0.01, yi, note, va="center", fontsize=8)
    ax.set_xlim(0, top * 1.55)
    u = run.data.get("uneven", {})
    ax.set_title(f"One worker 10× slower ({u.get('slow_work_us')} µs vs {u.get('work_us')} µs a request):\n"
                 f"p99 latency in ms, lower is better; open loop, {u.get('rate_per_worker')} conn/s per worker",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)

    # Primary CPU per connection.
    ax = axes[1][1]
    labels, values, colors = [], [], []
    for name in ("c", "node", "python"):
        ns = run.worker_counts(name)
        if not ns:
            continue
        n = ns[0]
        for c in run.group(name, n)["contenders"]:
            s = c.get("close")
            if not s or s["primary_us_per_conn"] is None:
                continue
            if s["primary_us_per_conn"] < 0.05 and "rcluster" not in c["label"]:
                continue  # prefork parents and kernel-accepting rows: nothing to show
            labels.append(f"{c['label']} · {n}w")
            values.append(s["primary_us_per_conn"])
            colors.append(RC if c["label"].startswith("rcluster") else OTHER)
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=8.5)
    top = max(values) if values and max(values) > 0 else 1
    for yi, v in zip(y, values):
        ax.text(v + top * 0.01, yi, f"{v:.1f}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.2)
    ax.set_title("Primary's CPU per 1,000 connections (ms)\n(shared/reuseport/prefork: ~0, the kernel accepts)",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)

    # IPC.
    ax = axes[1][2]
    s = ipc_summary(run)
    ipc = run.data.get("ipc")
    if ipc:
        cats = [("rt", "one at\na time")] + [(w, f"{w}\nin flight") for w in ipc["windows"]]
        xs = range(len(cats))
        rv = [(s.get(("all", k)) or {}).get("rcluster") or 0 for k, _ in cats]
        bv = [(s.get(("all", k)) or {}).get("rcluster-batched") or 0 for k, _ in cats]
        nv = [(s.get(("all", k)) or {}).get("node") or 0 for k, _ in cats]
        width = 0.27
        ax.bar([x - width for x in xs], [v / 1000 for v in rv], width, color=RC,
               label="rcluster, one call per message")
        ax.bar(list(xs), [v / 1000 for v in bv], width, color=RC, alpha=0.55, label="rcluster, batch calls")
        ax.bar([x + width for x in xs], [v / 1000 for v in nv], width, color=OTHER, label="Node process.send")
        for x, a, c, b in zip(xs, rv, bv, nv):
            if a and b:
                ax.text(x, max(a, b, c) / 1000 * 1.03, f"{a / b:.1f}×", ha="center", fontsize=9, fontweight="bold")
        ax.set_xticks(list(xs), [c for _, c in cats], fontsize=8)
        ax.set_ylabel("thousand messages/s")
        ax.legend(fontsize=7.5, loc="upper left")
        top = max(rv + bv + nv) / 1000 if rv + nv else 1
        ax.set_ylim(0, top * 1.2)
    # Short lines: this panel is the figure's right edge, and tight_layout does not shrink titles.
    ax.set_title("IPC: 64-byte messages, echoed\n(× = rcluster, a call per message, ÷ Node)", fontsize=10, loc="right")
    ax.grid(axis="y", alpha=0.3)

    fig.text(0.5, 0.005, "Blue: rcluster. Grey: the alternatives. Bars: medians over rounds; whiskers: the slowest and "
             "fastest round. latest.md has p50/p99, distribution, CPU, memory, and the C servers pinned to one CPU.",
             ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json")
    run = Run(json.loads(src.read_text()))
    png = src.with_suffix(".png")
    missing = chart(run, png)
    note = missing or f"![chart]({png.name})"
    md = src.with_suffix(".md")
    md.write_text(markdown(run, note))
    print(f"wrote {md}" + ("" if missing else f" and {png}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
