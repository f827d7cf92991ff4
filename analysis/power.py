"""Power by simulation: how many roles per group does a study need to detect a slope difference?

For each number of roles per group, simulate `sims` studies from the simulator with the given percent
slope difference (and the simulator's variance components, which a user can set from a pilot run),
fit the steering model, and count how often the difference is significant at `alpha`.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from animacy.analysis.aggregate import response_means
from animacy.analysis.simulate import GROUPS, SimConfig, simulate
from animacy.analysis.steering import SteeringModel, fit_steering, slope_differences_delta
from animacy.progress import progress
from animacy.run import Run


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def power_curve(roles_per_group: list[int], pct_difference: float, sims: int = 100, alpha: float = 0.05,
                base: SimConfig | None = None, backend: str = "python", seed: int = 0,
                quiet: bool = False) -> pd.DataFrame:
    """Power to detect `pct_difference` (e.g. 14 for +14%) of the second group's slope against the
    first, per number of roles per group."""
    base = base or SimConfig(tasks=4, replicates=2, tokens=50, magnitudes=(0.0, 2.0, 4.0, 8.0), controls=0)
    derivation = base.derivations[0]
    cfg0 = replace(base, derivations=(derivation,), pct_difference={GROUPS[1]: pct_difference / 100,
                                                                      GROUPS[2]: pct_difference / 100})
    rows = []
    with tempfile.TemporaryDirectory(prefix="animacy-power-") as work:
        for n_roles in roles_per_group:
            hits = 0
            for s in progress(range(sims), f"{n_roles} roles per group", quiet=quiet):
                cfg = replace(cfg0, roles_per_group=n_roles, seed=seed + 1000 * n_roles + s)
                means = response_means(Run(simulate(f"{work}/{n_roles}-{s}", cfg, quiet=True)))
                fit = fit_steering(means, SteeringModel(), backend)
                delta = slope_differences_delta(fit.fits, GROUPS[0]).set_index("group")
                hits += bool(delta.loc[GROUPS[1], "p_value"] < alpha)
            lo, hi = wilson(hits, sims)
            rows.append({"roles_per_group": n_roles, "pct_difference": pct_difference, "alpha": alpha,
                         "power": hits / sims, "ci_low": lo, "ci_high": hi, "sims": sims})
    return pd.DataFrame(rows)
