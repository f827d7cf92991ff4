"""Benchmark: out-of-core aggregation of the per-token table against a plain pandas baseline.

Simulates a study (full size by default: 40 roles x 3 groups + 3 controls, 10 tasks, 5 replicates,
300 tokens, 6 derivations x 8 magnitudes = 90,090,000 token rows), then computes the two reductions
every analysis needs (per-response means of the first 50 tokens; per-role x position means) with the
project's DuckDB path (one scan) and with pandas loading the table whole. Each path runs in its own process so
that its peak memory (max RSS) is its own; both are timed in the same run, and their results compared.

    .venv/bin/python benchmarks/aggregate.py            # full size (about 0.5 GB of Parquet in /tmp)
    .venv/bin/python benchmarks/aggregate.py --small    # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL = dict(roles=40, controls=3, tasks=10, replicates=5, tokens=300, magnitudes="0,0.5,1,2,3,4,6,8")
SMALL = dict(roles=6, controls=2, tasks=4, replicates=3, tokens=100, magnitudes="0,1,2,4")


def project(run: str, out: str) -> None:
    from animacy.analysis.aggregate import aggregates
    from animacy.run import Run

    means, positions = aggregates(Run(run), 50)  # both reductions from one scan
    means.to_parquet(f"{out}/project_means.parquet")
    positions.to_parquet(f"{out}/project_positions.parquet")


def baseline(run: str, out: str) -> None:
    import pandas as pd

    tok = pd.read_parquet(f"{run}/tokens")  # the whole table in memory
    resp = pd.read_parquet(f"{run}/responses.parquet", columns=["response_id", "role"])
    cell = ["response_id", "condition", "derivation", "magnitude", "layers"]
    means = (tok[tok.token_index < 50].groupby(cell, observed=True, dropna=False)["log_prob"]
             .agg(["size", "mean"]).reset_index())
    means.to_parquet(f"{out}/pandas_means.parquet")
    tok = tok.merge(resp, on="response_id")
    pos = (tok.groupby(["role", *cell[1:], "token_index"], observed=True, dropna=False)["log_prob"]
           .agg(["size", "mean"]).reset_index())
    pos.to_parquet(f"{out}/pandas_positions.parquet")


def _child(which: str, run: str, out: str) -> None:
    t = time.perf_counter()
    {"project": project, "pandas": baseline}[which](run, out)
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _measure(which: str, run: Path, out: Path) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", which, str(run), str(out)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return {"failed": res.stderr.strip().splitlines()[-1] if res.stderr else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _compare(out: Path) -> float:
    import numpy as np
    import pandas as pd

    a = pd.read_parquet(out / "project_positions.parquet")
    b = pd.read_parquet(out / "pandas_positions.parquet")
    key = ["role", "condition", "derivation", "magnitude", "token_index"]
    for df in (a, b):
        df["derivation"] = df["derivation"].astype(object).where(df["derivation"].notna(), "")
        df["condition"] = df["condition"].astype(str)
        df["magnitude"] = df["magnitude"].fillna(-1.0)
    m = a.merge(b, on=key)
    if len(m) != len(a) or len(a) != len(b):
        return float("inf")
    return float(np.max(np.abs(m["mean_log_prob"] - m["mean"])))


def simulated_run(given: str | None, small: bool, work: Path) -> Path:
    """The run folder to benchmark: `given` if it holds a run, else simulated there (or in `work`)."""
    run = Path(given) if given else work / "run"
    if not (run / "manifest.json").exists():
        from animacy.cli import main as cli

        size = SMALL if small else FULL
        t = time.perf_counter()
        cli(["simulate", "--out", str(run), "--quiet", *[x for k, v in size.items() for x in (f"--{k}", str(v))]])
        print(f"simulated in {time.perf_counter() - t:.1f} s")
    rows = json.loads((run / "manifest.json").read_text())
    from animacy.analysis.simulate import SimConfig

    n = SimConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in rows["config"].items()}).n_token_rows()
    disk = sum(f.stat().st_size for f in (run / "tokens").glob("*.parquet")) / 1e6
    print(f"token rows: {n:,}  tokens Parquet: {disk:.0f} MB")
    return run


def start(doc: str, child, child_args: tuple[str, ...]) -> tuple[Path, Path] | None:
    """The options every table benchmark takes (--small, --run). In a measured child process, run
    `child(*args)` and return None; else return (a scratch folder, the run folder to measure)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--run", help="reuse a simulated run folder (made if missing)")
    p.add_argument("--child", nargs=len(child_args), metavar=child_args, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(*a.child)
        return None
    work = Path(tempfile.mkdtemp(prefix="animacy-bench-"))
    return work, simulated_run(a.run, a.small, work)


def main() -> None:
    started = start(__doc__, _child, ("WHICH", "RUN", "OUT"))
    if started is None:
        return
    work, run = started
    proj = _measure("project", run, work)
    base = _measure("pandas", run, work)
    print(f"project (DuckDB, out of core): {proj.get('seconds', float('nan')):8.2f} s   "
          f"peak {proj.get('peak_mb', float('nan')):8.0f} MB")
    if "failed" in base:
        print(f"pandas baseline: did not finish ({base['failed']})")
    else:
        print(f"pandas baseline (whole table):  {base['seconds']:8.2f} s   peak {base['peak_mb']:8.0f} MB")
        print(f"speed-up: {base['seconds'] / proj['seconds']:.1f}x   memory ratio: "
              f"{base['peak_mb'] / proj['peak_mb']:.1f}x   max |difference| of position means: {_compare(work):.2e}")


if __name__ == "__main__":
    main()
