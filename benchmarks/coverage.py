"""Benchmark by simulation: do 95% intervals cover the truth 95% of the time, and does the slope-difference
test reject a true null 5% of the time?

Each simulation draws a study from the simulator (known slopes, role random slopes), fits the default
steering model `mean_log_prob ~ magnitude * group + (magnitude | role) + (1 | response_id)` and checks
the reference slope's interval, the delta-method and bootstrap intervals of the percent slope
differences, and (in null studies, where every group has the same slope) the rejection rate at 0.05.

    .venv/bin/python benchmarks/coverage.py --sims 200 [--backend python|lme4|statsmodels] [--roles 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from animacy.analysis import BACKENDS
from animacy.analysis.aggregate import response_means
from animacy.analysis.simulate import GROUPS, SimConfig, simulate
from animacy.analysis.steering import (
    SteeringModel,
    fit_steering,
    role_slopes,
    slope_differences_bootstrap,
    slope_differences_delta,
)
from animacy.progress import progress
from animacy.run import Run

DERIVATION = "role_minus_assistant_response"


def one(seed: int, roles: int, null: bool, backend: str, work: str) -> dict:
    pct = {GROUPS[1]: 0.0, GROUPS[2]: 0.0} if null else {GROUPS[1]: 0.14, GROUPS[2]: 0.44}
    cfg = SimConfig(roles_per_group=roles, tasks=4, replicates=2, tokens=50, magnitudes=(0.0, 2.0, 4.0, 8.0),
                    derivations=(DERIVATION,), pct_difference=pct, seed=seed, controls=0)
    run = Run(simulate(f"{work}/{seed}-{null}", cfg, quiet=True))
    means = response_means(run)
    fits = fit_steering(means, SteeringModel(), backend).fits
    fixed = fits[DERIVATION].fixed.set_index("term")
    truth = cfg.slope(GROUPS[0], DERIVATION)
    out = {"slope": fixed.loc["magnitude", "ci_low"] <= truth <= fixed.loc["magnitude", "ci_high"]}
    delta = slope_differences_delta(fits, GROUPS[0])
    boot = slope_differences_bootstrap(role_slopes(means), GROUPS[0], n_boot=1000, seed=seed)
    for name, table in (("delta", delta), ("bootstrap", boot)):
        t = table.set_index("group")
        out[name] = [t.loc[g, "ci_low"] <= 100 * pct[g] <= t.loc[g, "ci_high"] for g in GROUPS[1:]]
        out[f"{name}_reject"] = [t.loc[g, "p_value"] < 0.05 for g in GROUPS[1:]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", type=int, default=200)
    p.add_argument("--roles", type=int, default=12, help="roles per group")
    p.add_argument("--backend", default="python", choices=BACKENDS)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="animacy-coverage-")
    t0 = time.perf_counter()
    alt = [one(s, a.roles, False, a.backend, work) for s in progress(range(a.sims), "studies with differences")]
    null = [one(10_000 + s, a.roles, True, a.backend, work) for s in progress(range(a.sims), "null studies")]
    n = a.sims
    print(f"{n} simulated studies with true differences (+14%, +44%) and {n} null studies; "
          f"{a.roles} roles per group; backend {a.backend}; {time.perf_counter() - t0:.0f} s")
    print(f"coverage of 95% CI, reference slope:        {np.mean([r['slope'] for r in alt]):.3f}")
    for name in ("delta", "bootstrap"):
        cov = np.mean([r[name] for r in alt])
        rej = np.mean([r[f"{name}_reject"] for r in null])
        print(f"coverage of 95% CI, % slope difference ({name:9s}): {cov:.3f}   "
              f"null rejection rate at 0.05: {rej:.3f}   (2 groups x {n} studies each)")


if __name__ == "__main__":
    main()
