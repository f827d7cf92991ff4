"""Benchmark: mixed-model fit time at the full study size, statsmodels against lme4, in the same run.

One derivation of a full-size study: 120 roles x 10 tasks x 5 replicates x 8 magnitudes = 48,000
per-response rows. Fits the default model `mean_log_prob ~ magnitude * group + (magnitude | role) +
(1 | response_id)`, and the crossed variant with `+ (1 | task_id)`, with each backend in a child
process with a time limit; prints times, the ratio and the largest relative difference between the
backends' fixed effects, and each fit's peak memory.

    .venv/bin/python benchmarks/fit_time.py [--roles 40] [--limit 300]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time

from animacy.analysis.aggregate import response_means
from animacy.analysis.mixed_r import r_available
from animacy.analysis.simulate import SimConfig, simulate
from animacy.analysis.steering import SteeringModel, fit_steering
from animacy.run import Run


def _fit(queue, means, model, backend) -> None:
    t = time.perf_counter()
    est = fit_steering(means, model, backend).fixed.set_index("term")["estimate"]
    queue.put((time.perf_counter() - t, est, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def timed_fit(means, model, backend: str, limit: float):
    """(seconds, estimates, peak MB) of one fit in a child process, or None past `limit` seconds."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fit, args=(queue, means, model, backend))
    proc.start()
    proc.join(limit)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return None
    return queue.get()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--roles", type=int, default=40, help="roles per group")
    p.add_argument("--limit", type=float, default=300, help="seconds allowed per fit")
    a = p.parse_args()
    cfg = SimConfig(roles_per_group=a.roles, controls=0, tasks=10, replicates=5, tokens=50,
                    magnitudes=(0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0), derivations=("role_minus_assistant_response",))
    run = Run(simulate(tempfile.mkdtemp(prefix="animacy-fit-") + "/run", cfg, quiet=True))
    means = response_means(run)
    print(f"per-response rows: {int((means.condition == 'steered').sum()):,}")
    backends = ["statsmodels", *(["lme4"] if r_available() else [])]
    for name, model in (("nested", SteeringModel()), ("crossed", SteeringModel(task=True, random_slopes=False))):
        res = {b: timed_fit(means, model, b, a.limit) for b in backends}
        for b, r in res.items():
            shown = f"{r[0]:8.2f} s   peak {r[2]:6.0f} MB" if r else f"did not finish within {a.limit:.0f} s"
            print(f"{name:8s} {model.formula()}  {b:11s} {shown}")
        if len(res) == 2 and all(res.values()):
            sm_, r_ = res["statsmodels"], res["lme4"]
            rel = ((sm_[1] - r_[1]).abs() / r_[1].abs()).max()
            print(f"{name:8s} statsmodels / lme4 time ratio: {sm_[0] / r_[0]:.1f}x   "
                  f"max relative difference of fixed effects: {rel:.1e}")


if __name__ == "__main__":
    main()
