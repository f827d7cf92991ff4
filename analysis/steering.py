"""Steering effectiveness: mixed models per derivation, slope differences between groups, per-role slopes.

The outcome is a response's mean log-prob over its first N tokens while steered (one row per response
x derivation x magnitude, from `aggregate.response_means`). Each response is teacher-forced at every
magnitude, so rows of one response share its intercept: the default model adds `(1 | response_id)`
within role, without which the slope's standard error absorbs between-response variance and is far
too wide (or, on token-level rows, far too narrow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from animacy.analysis.mixed import MixedFit, fit_mixed
from animacy.errors import ConfigError
from animacy.schema import CONTROL_GROUP


@dataclass
class SteeringModel:
    """Which model to fit: random terms beyond (1 | role), and the outcome column."""

    outcome: str = "mean_log_prob"
    response: bool = True  # (1 | response_id): a response seen at several magnitudes
    task: bool = False  # crossed (1 | task_id)
    random_slopes: bool = True  # (magnitude | role): roles differ in steerability

    def formula(self) -> str:
        parts = [f"{self.outcome} ~ magnitude * group", "(magnitude | role)" if self.random_slopes else "(1 | role)"]
        if self.response:
            parts.append("(1 | response_id)")
        if self.task:
            parts.append("(1 | task_id)")
        return " + ".join(parts)


def with_relative_recovery(means: pd.DataFrame, guard: float = 0.05) -> pd.DataFrame:
    """Steered rows with each response's relative recovery over the same tokens,
    (steered - without) / (with - without); NaN where the response's with - without gap is below
    `guard` nats (the ratio would explode), so those rows drop out of a model of it."""
    un = means[means["condition"].isin(["with_prompt", "without_prompt"])].pivot_table(
        index="response_id", columns="condition", values="mean_log_prob")
    st = means[means["condition"] == "steered"].join(un, on="response_id")
    gap = st["with_prompt"] - st["without_prompt"]
    rr = (st["mean_log_prob"] - st["without_prompt"]) / gap
    return st.drop(columns=["with_prompt", "without_prompt"]).assign(
        relative_recovery=rr.where(gap.abs() >= guard))


def steered_rows(means: pd.DataFrame, reference_group: str | None = None) -> pd.DataFrame:
    """Steered rows of non-control roles, `group` categorical with the reference level first."""
    df = means[(means["condition"] == "steered") & (means["group"] != CONTROL_GROUP)].copy()
    if df.empty:
        raise ConfigError("response means", "there are no steered rows to model")
    groups = sorted(df["group"].unique())
    ref = reference_group or groups[0]
    if ref not in groups:
        raise ConfigError("--reference-group", f"'{ref}' is not a group of this run (groups: {', '.join(groups)})")
    df["group"] = pd.Categorical(df["group"], [ref, *[g for g in groups if g != ref]])
    return df


@dataclass
class SteeringFits:
    """The model fitted per derivation: tidy tables, the fits, and the reference group used."""

    fixed: pd.DataFrame
    variance: pd.DataFrame
    fits: dict[str, MixedFit]
    reference_group: str


def fit_steering(
    means: pd.DataFrame, model: SteeringModel | None = None, backend: str = "statsmodels",
    reference_group: str | None = None,
) -> SteeringFits:
    """Fit the model for every derivation (reference group: the one given, else the first in order)."""
    model = model or SteeringModel()
    if model.outcome == "relative_recovery" and "relative_recovery" not in means:
        means = with_relative_recovery(means)
    df = steered_rows(means, reference_group).dropna(subset=[model.outcome])
    fixed, variance, fits = [], [], {}
    for d, part in df.groupby("derivation", sort=True):
        fit = fit_mixed(part, model.formula(), backend)
        fits[d] = fit
        fixed.append(fit.fixed.assign(derivation=d, converged=fit.converged, messages="; ".join(fit.messages)))
        variance.append(fit.variance.assign(derivation=d, backend=backend))
    fixed_df = pd.concat(fixed, ignore_index=True)
    order = ["derivation", *[c for c in fixed_df.columns if c != "derivation"]]
    return SteeringFits(fixed_df[order], pd.concat(variance, ignore_index=True), fits,
                        str(df["group"].cat.categories[0]))


def slope_differences_delta(fits: dict[str, MixedFit], reference_group: str) -> pd.DataFrame:
    """Percent difference of each group's steering slope against the reference, 100 * b_int / b_ref,
    with a delta-method interval; the p-value is the interaction's (slope difference = 0)."""
    rows = []
    for d, fit in fits.items():
        est = fit.fixed.set_index("term")
        a = est.loc["magnitude", "estimate"]
        for term in est.index:
            if not term.startswith("magnitude:group[T."):
                continue
            b = est.loc[term, "estimate"]
            grad = np.array([-b / a**2, 1 / a]) * 100
            cov = fit.vcov.loc[["magnitude", term], ["magnitude", term]].to_numpy()
            se = float(np.sqrt(grad @ cov @ grad))
            pct = 100 * b / a
            dfree = est.loc[term, "df"]
            q = stats.t.ppf(0.975, dfree) if np.isfinite(dfree) else stats.norm.ppf(0.975)
            group = term[len("magnitude:group[T."):-1]
            rows.append({"derivation": d, "group": group, "reference_group": reference_group,
                         "pct_difference": pct, "ci_low": pct - q * se, "ci_high": pct + q * se,
                         "p_value": est.loc[term, "p_value"], "method": f"delta ({est.loc[term, 'backend']})"})
    return pd.DataFrame(rows)


def role_slopes(means: pd.DataFrame) -> pd.DataFrame:
    """Per-role OLS steering slope (and its se) for every derivation, from the role's steered rows."""
    df = means[(means["condition"] == "steered") & (means["group"] != CONTROL_GROUP)]
    rows = []
    for (d, role, group), part in df.groupby(["derivation", "role", "group"], sort=True, observed=True):
        x, y = part["magnitude"].to_numpy(float), part["mean_log_prob"].to_numpy(float)
        xc = x - x.mean()
        sxx = float(xc @ xc)
        if sxx == 0 or len(x) < 3:
            continue
        slope = float(xc @ (y - y.mean()) / sxx)
        resid = y - y.mean() - slope * xc
        rows.append({"derivation": d, "role": role, "group": group, "slope": slope,
                     "se": float(np.sqrt(resid @ resid / (len(x) - 2) / sxx)), "n": len(x)})
    return pd.DataFrame(rows)


def slope_differences_bootstrap(
    slopes: pd.DataFrame, reference_group: str, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Percent slope differences from per-role OLS slopes, with a role-clustered bootstrap: roles are
    resampled with replacement within each group, B times; percentile interval, two-sided p-value
    from the share of resamples on the other side of zero."""
    rng = np.random.default_rng(seed)
    rows = []
    for d, part in slopes.groupby("derivation", sort=True):
        ref = part.loc[part["group"] == reference_group, "slope"].to_numpy()
        if len(ref) == 0:
            continue
        ref_boot = ref[rng.integers(0, len(ref), (n_boot, len(ref)))].mean(axis=1)
        for g, gpart in part.groupby("group", sort=True, observed=True):
            if g == reference_group:
                continue
            s = gpart["slope"].to_numpy()
            boot = 100 * (s[rng.integers(0, len(s), (n_boot, len(s)))].mean(axis=1) / ref_boot - 1)
            pct = 100 * (s.mean() / ref.mean() - 1)
            p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()) + 1 / n_boot)
            rows.append({"derivation": d, "group": g, "reference_group": reference_group, "pct_difference": pct,
                         "ci_low": float(np.percentile(boot, 2.5)), "ci_high": float(np.percentile(boot, 97.5)),
                         "p_value": p, "method": f"role-clustered bootstrap (B={n_boot})"})
    return pd.DataFrame(rows)
