"""Curves over token position with role-clustered bootstrap bands: the with - without gap, and pooled
recovery mean(steered - without) / mean(with - without) over a group's roles.

Two estimators of "relative recovery" exist in this toolkit, and they answer different questions:

- `pooled_recovery` (here): a ratio of means, per group x derivation x magnitude (x position): how much of
  the prompt's average effect steering recovers, for the group. Stable where single responses have
  tiny gaps, and the figure the report draws.
- `steering.with_response_recovery`: a ratio per response, (steered - without) / (with - without) of
  that response, guarded where its own gap is small: an outcome a mixed model can take
  (`--outcome response_recovery`). Its mean is not the pooled ratio.

Both start from `aggregate.position_means` (role x condition cell x position) and its by-role gap
table (`aggregate.gap_by_role`, computed once by the caller). Roles are the unit of resampling: each
band resamples the roles of a group with replacement, B times.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from animacy.analysis.bootstrap import percentiles, resample_counts, resample_means, resampled_means


def _bands(matrix: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2.5 / 97.5 percentiles of column means over role (row) resamples; NaN-aware."""
    boot = resample_means(matrix, n_boot, rng)
    return percentiles(boot, 2.5), percentiles(boot, 97.5)


def gap_curve_bands(gap: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean with - without gap by group and token position (each role once) with bootstrap bands,
    from the by-role gap table."""
    rng = np.random.default_rng(seed)
    out = []
    for g, part in gap.groupby("group", sort=True, observed=True):
        wide = part.pivot(index="role", columns="token_index", values="gap")
        m = wide.to_numpy(float)
        lo, hi = _bands(m, n_boot, rng)
        out.append(pd.DataFrame({"group": g, "token_index": wide.columns.to_numpy(), "gap": np.nanmean(m, axis=0),
                                 "ci_low": lo, "ci_high": hi, "n_roles": (~np.isnan(m)).sum(axis=0)}))
    return pd.concat(out, ignore_index=True)


def _recovery_parts(positions: pd.DataFrame, gap: pd.DataFrame) -> pd.DataFrame:
    """Per role x derivation x magnitude x position: steered - without, and with - without."""
    st = positions[positions["condition"] == "steered"][
        ["role", "derivation", "magnitude", "token_index", "mean_log_prob"]]
    df = st.merge(gap, on=["role", "token_index"])
    df["effect"] = df["mean_log_prob"] - df["without_prompt"]
    return df


def pooled_recovery(
    positions: pd.DataFrame, gap: pd.DataFrame, first_n: int | None = None, guard: float = 0.05,
    n_boot: int = 1000, seed: int = 0,
) -> pd.DataFrame:
    """Pooled recovery by group x derivation x magnitude, per token position (first_n=None) or over
    the first `first_n` tokens, as a ratio of role-averaged means: mean(steered - without) /
    mean(with - without). Where the average gap is below `guard` nats the ratio is undefined (NaN,
    flagged `guarded`), instead of exploding. Values above 1 are over-steering."""
    rng = np.random.default_rng(seed)
    df = _recovery_parts(positions, gap)
    if first_n is not None:
        df = (df[df["token_index"] < first_n]
              .groupby(["role", "group", "derivation", "magnitude"], observed=True)[["effect", "gap"]].mean()
              .reset_index().assign(token_index=-1))
    out = []
    for (g, d, m), part in df.groupby(["group", "derivation", "magnitude"], sort=True, observed=True):
        eff = part.pivot(index="role", columns="token_index", values="effect").to_numpy(float)
        gap = part.pivot(index="role", columns="token_index", values="gap").to_numpy(float)
        positions_ = np.sort(part["token_index"].unique())
        counts = resample_counts(eff.shape[0], n_boot, rng)
        bnum, bden = resampled_means(counts, eff), resampled_means(counts, gap)
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # guarded cells are all-NaN on purpose
            num, den = np.nanmean(eff, axis=0), np.nanmean(gap, axis=0)
            ratio = np.where(np.abs(den) >= guard, num / den, np.nan)
            boot = np.where(np.abs(bden) >= guard, bnum / bden, np.nan)
        lo, hi = percentiles(boot, 2.5), percentiles(boot, 97.5)
        out.append(pd.DataFrame({
            "group": g, "derivation": d, "magnitude": m, "token_index": positions_, "effect": num, "gap": den,
            "pooled_recovery": ratio, "ci_low": lo, "ci_high": hi, "guarded": np.abs(den) < guard,
            "n_roles": eff.shape[0]}))
    res = pd.concat(out, ignore_index=True)
    if first_n is not None:
        res = res.drop(columns="token_index").assign(first_n=first_n)
    return res
