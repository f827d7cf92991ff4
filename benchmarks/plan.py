"""Benchmark: how far to trust `animacy collect plan`. The plan measured on this device (no named card)
against the same study actually collected here, in the same run, stage by stage.

Each stage's actual time is read from the run's job markers: from the last marker of the stage before it
(the run's start for the first) to its own last marker, so it includes loading the model for the first
stage. The plan's stages map onto the runner's: generation (gen), scoring (score), steering sweeps +
capping + ablation (steer), word guess (wordguess), trait-steered generation (trait), conversations
(conversations); the vectors job is not planned and is shown as it took. Prints planned and actual seconds, their
ratio, and the peak memory of each process.

    .venv/bin/python benchmarks/plan.py [--config data/demo.toml]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

STAGES = {"gen": ("generation",), "score": ("scoring",), "steer": ("steering sweeps", "capping", "ablation"),
          "wordguess": ("word guess",), "trait": ("trait-steered generation",), "conversations": ("conversations",)}
ORDER = ("gen", "score", "vectors", "steer", "wordguess", "trait", "conversations")


def main() -> None:
    from animacy.cli import main as cli
    from animacy.collect.cli import plan

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "data" / "demo.toml"))
    a = p.parse_args()
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        planned = plan(a.config)
    plan_seconds = time.perf_counter() - t
    peak_plan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.time()
        if cli(["collect", "run", a.config, "--out", str(out), "--quiet"]) != 0:
            sys.exit("the collect run failed")
        total = time.time() - start
        last = {}
        for marker in (out / "_jobs").glob("*.done"):
            stage = marker.stem.rsplit("-", 1)[0]
            last[stage] = max(last.get(stage, 0.0), marker.stat().st_mtime)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"measuring the plan's rates took {plan_seconds:.0f} s (peak {peak_plan:.0f} MB); the run {total:.0f} s "
          f"(peak {peak:.0f} MB, the model loaded twice in one process)")
    print(f"{'runner stage':16s} {'planned s':>10s} {'actual s':>10s} {'actual / planned':>17s}")
    before, planned_total = start, 0.0
    for stage in ORDER:
        if stage not in last:
            continue
        actual, before = last[stage] - before, last[stage]
        names = STAGES.get(stage, ())
        plan_s = sum(s.seconds for s in planned["stages"] if s.name.startswith(names)) if names else None
        planned_total += plan_s or 0.0
        shown = f"{plan_s:10.1f} {actual:10.1f} {actual / plan_s:17.2f}" if plan_s else f"{'-':>10s} {actual:10.1f}"
        print(f"{stage:16s} {shown}")
    print(f"{'total':16s} {planned_total:10.1f} {total:10.1f} {total / planned_total:17.2f}")


if __name__ == "__main__":
    main()
