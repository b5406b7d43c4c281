#!/usr/bin/env python3
"""Adds the groups of a partial run to the committed results.

    python3 bench/run.py --only asgi,wsgi --out bench/tmp/servers --no-report
    python3 bench/merge.py bench/tmp/servers/latest.json bench/results/latest.json
    bench/tmp/venv/bin/python bench/report.py bench/results/latest.json

The whole `make bench` takes about 10 minutes of a machine others share;
a group added or changed can be run on its own and merged. Each merged
group replaces the one of the same name and worker count, and carries a
`run` record (the command, date, commit and load averages of its own run),
which report.py prints next to its tables: its numbers were not taken in
the same minutes as the rest of the file, so ratios across groups of
different runs mean less than ratios within a group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    part = json.loads(src.read_text())
    whole = json.loads(dst.read_text())
    names = sorted({g["name"] for g in part["groups"]})
    run = {
        "command": f"python3 bench/run.py --only {','.join(names)}"
        + (" --quick" if part["profile"] == "quick" else ""),
        "date": part["machine"]["date"],
        "commit": part["machine"]["commit"],
        "profile": part["profile"],
        "elapsed_s": part["elapsed_s"],
    }
    merged = 0
    for group in part["groups"]:
        group["run"] = dict(run, load_before=group["load_before"], load_after=group["load_after"])
        whole["groups"] = [g for g in whole["groups"]
                           if (g["name"], g["workers"]) != (group["name"], group["workers"])]
        whole["groups"].append(group)
        merged += 1
    dst.write_text(json.dumps(whole, indent=1) + "\n")
    print(f"merged {merged} group(s) ({', '.join(names)}) from {src} into {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
