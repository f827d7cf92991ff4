"""The role-clustered bootstrap, in one place: roles are the unit of resampling (responses of one role are
not independent), so an interval resamples a group's roles with replacement, B times.

>>> import numpy as np
>>> lo, hi = role_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), n_boot=2000, rng=np.random.default_rng(0))
>>> bool(lo < 3.0 < hi)
True
"""

from __future__ import annotations

import warnings

import numpy as np

MIN_CLUSTERS = 5  # fewer roles than this in a group: no bootstrap interval (it would be far too narrow)


def resample_index(n_roles: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """B x n_roles indices: each row one resample of the roles, with replacement. Every role-clustered
    statistic (means, ratios of means, ratios of sums) takes its resamples from here."""
    return rng.integers(0, n_roles, (n_boot, n_roles))


def resample_counts(n_roles: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """B x n_roles: how often each resample (a row of `resample_index`, the same draws) takes each role."""
    idx = resample_index(n_roles, n_boot, rng)
    flat = (idx + n_roles * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_roles).reshape(n_boot, n_roles).astype(float)


def resampled_means(counts: np.ndarray, per_role: np.ndarray) -> np.ndarray:
    """The mean (column means, for a roles x k matrix) of every resample given by `counts`, NaN-aware:
    a matrix product instead of B copies of the data."""
    x = np.asarray(per_role, float)
    ok = ~np.isnan(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (counts @ np.where(ok, x, 0.0)) / (counts @ ok)


def resample_means(per_role: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """B means (or column means, for a roles x k matrix) of roles resampled with replacement; NaN-aware."""
    return resampled_means(resample_counts(per_role.shape[0], n_boot, rng), per_role)


def percentiles(boot: np.ndarray, q: float) -> np.ndarray:
    """The q-th percentile of resamples over axis 0, skipping NaN (numpy's NaN-aware version, which
    loops over columns, only where a NaN is present)."""
    if not np.isnan(boot).any():
        return np.percentile(boot, q, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is NaN on purpose
        return np.nanpercentile(boot, q, axis=0)


def role_interval(per_role: np.ndarray, n_boot: int, rng: np.random.Generator,
                  level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over roles (NaN where there are fewer than MIN_CLUSTERS roles)."""
    tail = 100 * (1 - level) / 2
    if per_role.shape[0] < MIN_CLUSTERS:
        nan = np.full(per_role.shape[1:], np.nan)
        return (nan, nan) if per_role.ndim > 1 else (np.nan, np.nan)
    boot = resample_means(per_role, n_boot, rng)
    return percentiles(boot, tail), percentiles(boot, 100 - tail)


def clustered_mean(values, clusters, n_boot: int, rng: np.random.Generator,
                   unit: str = "roles") -> tuple[float, float, float, int, str]:
    """The mean over clusters (roles, or questions) of each cluster's mean of `values` (pandas Series,
    clusters in sorted order), its cluster-bootstrap 95% interval, the number of clusters, and a note saying
    why there is no interval where there are fewer than MIN_CLUSTERS: (mean, low, high, n, note)."""
    per = values.groupby(clusters, observed=True).mean().to_numpy()
    lo, hi = role_interval(per, n_boot, rng)
    note = "" if len(per) >= MIN_CLUSTERS else f"fewer than {MIN_CLUSTERS} {unit}: no interval"
    return float(per.mean()), lo, hi, len(per), note
