"""Benchmark: `animacy analyze` and `animacy report` of a full-size simulated study (90,090,000 token rows)
on this machine, against the targets (analyze under 60 s; analyze plus report under 2 minutes) and
against a baseline measured in the same run: the tokens table aggregated by one scan per reduction, as the
analysis and the report did before (means of the first 50, 10 and 100 tokens, and position means: four
scans), versus the one scan `aggregates` makes now.

Each step runs in its own process, so its peak memory (max RSS) is its own.

    .venv/bin/python benchmarks/report.py --run /tmp/sim90     # full size (simulates it first if missing)
    .venv/bin/python benchmarks/report.py --small              # seconds, for a smoke run

Before this change, on the same 2-core machine: `animacy analyze` took 237 s (peak 1.45 GB) and `animacy report` of the
same run 13.5 minutes (it re-ran the analysis, then scanned the tokens table twice more).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from aggregate import start

TARGETS = {"analyze": 60.0, "analyze + report": 120.0}


def _scans(run: str, one: bool) -> None:
    from animacy.analysis.aggregate import aggregates
    from animacy.run import Run, connect

    r, con = Run(run), connect()
    if one:
        aggregates(r, 50, (10, 100), con=con)
    else:
        for n in (50, 10, 100):
            aggregates(r, n, positions=False, con=con)
        aggregates(r, means=False, con=con)


def _child(which: str, run: str) -> None:
    t = time.perf_counter()
    _scans(run, which == "one scan")
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _timed(args: list[str]) -> dict:
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    if res.returncode != 0:
        return {"failed": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]}
    out = res.stdout.strip().splitlines()
    if out and out[-1].startswith("{"):
        return json.loads(out[-1])
    return {"seconds": time.perf_counter() - t, "peak_mb": peak}


def main() -> None:
    started = start(__doc__, _child, ("WHICH", "RUN"))
    if started is None:
        return
    work, run = started
    cli = [sys.executable, "-m", "animacy.cli"]
    res = {which: _timed([sys.executable, __file__, "--child", which, str(run)])
           for which in ("four scans", "one scan")}
    res["analyze"] = _timed([*cli, "analyze", str(run), "--out", str(work / "analysis"), "--quiet"])
    res["report"] = _timed([*cli, "report", "--analysis", str(work / "analysis"), "--out", str(work / "report")])
    for name, r in res.items():
        shown = f"{r['seconds']:8.1f} s   peak {r['peak_mb']:6.0f} MB" if "seconds" in r else f"failed: {r['failed']}"
        print(f"{name:18s} {shown}")
    if all("seconds" in r for r in res.values()):
        print(f"one scan vs four: {res['four scans']['seconds'] / res['one scan']['seconds']:.2f}x faster")
        total = {"analyze": res["analyze"]["seconds"],
                 "analyze + report": res["analyze"]["seconds"] + res["report"]["seconds"]}
        for name, target in TARGETS.items():
            verdict = "meets" if total[name] <= target else "MISSES"
            print(f"{name}: {total[name]:.1f} s, {verdict} the {target:.0f} s target ({total[name] / target:.2f}x)")


if __name__ == "__main__":
    main()
