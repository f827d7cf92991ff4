"""The role-clustered bootstrap, in one place: roles are the unit of resampling (responses of one role are
not independent), so an interval resamples a group's roles with replacement, B times.

>>> import numpy as np
>>> lo, hi = role_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), n_boot=2000, rng=np.random.default_rng(0))
>>> bool(lo < 3.0 < hi)
True
"""

from __future__ import annotations

import numpy as np

MIN_CLUSTERS = 5  # fewer roles than this in a group: no bootstrap interval (it would be far too narrow)


def resample_index(n_roles: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """B x n_roles indices: each row one resample of the roles, with replacement. Every role-clustered
    statistic (means, ratios of means, ratios of sums) takes its resamples from here."""
    return rng.integers(0, n_roles, (n_boot, n_roles))


def resample_means(per_role: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """B means (or column means, for a roles x k matrix) of roles resampled with replacement; NaN-aware."""
    return np.nanmean(per_role[resample_index(per_role.shape[0], n_boot, rng)], axis=1)


def role_interval(per_role: np.ndarray, n_boot: int, rng: np.random.Generator,
                  level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over roles (NaN where there are fewer than MIN_CLUSTERS roles)."""
    tail = 100 * (1 - level) / 2
    if per_role.shape[0] < MIN_CLUSTERS:
        nan = np.full(per_role.shape[1:], np.nan)
        return (nan, nan) if per_role.ndim > 1 else (np.nan, np.nan)
    boot = resample_means(per_role, n_boot, rng)
    return np.nanpercentile(boot, tail, axis=0), np.nanpercentile(boot, 100 - tail, axis=0)
