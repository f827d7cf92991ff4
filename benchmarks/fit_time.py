"""Benchmark: mixed-model fit time at the full study size, every backend in the same run, lme4 the baseline.

1. Gaussian, one derivation of a full-size study: 120 roles x 10 tasks x 5 replicates x 8 magnitudes =
   48,000 per-response rows. The default model `mean_log_prob ~ magnitude * group + (magnitude | role) +
   (1 | response_id)`, and the crossed variant `(1 | role) + (1 | response_id) + (1 | task_id)`.
2. Binomial GLMM: 6,000 responses, 120 roles x 10 tasks crossed x 5, `deny ~ anim_mental + anim_physical +
   (1 | task) + (1 | role)` (the study's denial model): the Python Laplace fit against glmer.

Each fit runs in a child process with a time limit (R is loaded there before the clock starts); prints
times, the ratio against lme4, the largest differences of estimates and SEs, and each fit's peak memory.

    .venv/bin/python benchmarks/fit_time.py [--roles 40] [--limit 300] [--skip-gaussian]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time

import numpy as np
import pandas as pd

from animacy.analysis.aggregate import response_means
from animacy.analysis.mixed import fit_mixed
from animacy.analysis.mixed_r import r_available
from animacy.analysis.simulate import SimConfig, simulate
from animacy.analysis.steering import SteeringModel, steered_rows
from animacy.run import Run


def _fit(queue, data, formula, backend, family) -> None:
    if backend == "lme4":
        r_available()  # load R, lme4 and lmerTest before the clock starts
    t = time.perf_counter()
    fit = fit_mixed(data, formula, backend, family=family)
    queue.put((time.perf_counter() - t, fit.fixed.set_index("term")[["estimate", "se"]], fit.converged,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def timed_fit(data, formula: str, backend: str, family: str, limit: float):
    """(seconds, estimates and SEs, converged, peak MB) of one fit in a child process, or None past `limit`."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fit, args=(queue, data, formula, backend, family))
    proc.start()
    proc.join(limit)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return None
    return queue.get()


def denial_study(seed: int = 0, roles: int = 120, tasks: int = 10, reps: int = 5) -> pd.DataFrame:
    """A binomial outcome with known effects: role and task random intercepts, two ratings."""
    rng = np.random.default_rng(seed)
    r = pd.DataFrame({"role": [f"r{i:03d}" for i in range(roles)], "anim_mental": rng.normal(300, 120, roles),
                      "anim_physical": rng.normal(350, 100, roles)})
    df = pd.DataFrame([(x, f"t{t}") for x in r.role for t in range(tasks) for _ in range(reps)],
                      columns=["role", "task"]).merge(r, on="role")
    eta = (-0.8 + 0.004 * (df.anim_mental - 300) - 0.002 * (df.anim_physical - 350)
           + df.role.map(dict(zip(r.role, rng.normal(0, 0.9, roles))))
           + df.task.map({f"t{t}": v for t, v in enumerate(rng.normal(0, 0.5, tasks))}))
    return df.assign(deny=rng.binomial(1, 1 / (1 + np.exp(-eta))))


def report(name: str, formula: str, res: dict) -> None:
    for b, r in res.items():
        shown = (f"{r[0]:8.2f} s   peak {r[3]:6.0f} MB   {'converged' if r[2] else 'NOT converged'}" if r
                 else "did not finish in the time limit")
        print(f"{name:9s} {b:11s} {shown}")
    base = res.get("lme4")
    for b, r in res.items():
        if b == "lme4" or not (r and base):
            continue
        d_est = ((r[1]["estimate"] - base[1]["estimate"]).abs() / base[1]["se"]).max()
        d_se = ((r[1]["se"] - base[1]["se"]).abs() / base[1]["se"]).max()
        print(f"{name:9s} {b} / lme4 time ratio {r[0] / base[0]:.2f}x   largest estimate difference "
              f"{d_est:.1e} SE   largest relative SE difference {d_se:.1e}")
    print(f"{name:9s} formula: {formula}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--roles", type=int, default=40, help="roles per group (gaussian study)")
    p.add_argument("--limit", type=float, default=300, help="seconds allowed per fit")
    p.add_argument("--skip-gaussian", action="store_true")
    a = p.parse_args()
    r_ok = r_available()
    if not a.skip_gaussian:
        cfg = SimConfig(roles_per_group=a.roles, controls=0, tasks=10, replicates=5, tokens=50,
                        magnitudes=(0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
                        derivations=("role_minus_assistant_response",))
        run = Run(simulate(tempfile.mkdtemp(prefix="animacy-fit-") + "/run", cfg, quiet=True))
        rows, _ = steered_rows(response_means(run))
        print(f"gaussian: {len(rows):,} per-response rows")
        for name, model in (("nested", SteeringModel()), ("crossed", SteeringModel(task=True, random_slopes=False))):
            backends = ["python", "statsmodels", *(["lme4"] if r_ok else [])]
            report(name, model.formula(), {b: timed_fit(rows, model.formula(), b, "gaussian", a.limit)
                                           for b in backends})
    data = denial_study()
    formula = "deny ~ anim_mental + anim_physical + (1 | task) + (1 | role)"
    print(f"binomial: {len(data):,} responses, {data.role.nunique()} roles x {data.task.nunique()} tasks crossed")
    report("binomial", formula, {b: timed_fit(data, formula, b, "binomial", a.limit)
                                 for b in ["python", *(["lme4"] if r_ok else [])]})


if __name__ == "__main__":
    main()
