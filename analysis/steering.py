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

from animacy.analysis.bootstrap import resample_index
from animacy.analysis.groups import apply_rule, is_control
from animacy.analysis.mixed import MixedFit, fit_by
from animacy.errors import ConfigError


@dataclass
class SteeringModel:
    """Which model to fit: the user's own formula (lme4 syntax), or the default built from the switches.

    In a formula, `log_prob` (or `mean_log_prob`) is a response's mean log-prob over its first N tokens
    while steered, `response_recovery` its own recovery ratio, `task` (or `task_id`) its task.
    """

    outcome: str = "mean_log_prob"
    response: bool = True  # (1 | response_id): a response seen at several magnitudes
    task: bool = False  # crossed (1 | task_id)
    random_slopes: bool = True  # (magnitude | role): roles differ in steerability
    formula_text: str | None = None  # the user's formula; overrides the switches above

    def formula(self) -> str:
        if self.formula_text:
            return self.formula_text
        parts = [f"{self.outcome} ~ magnitude * group", "(magnitude | role)" if self.random_slopes else "(1 | role)"]
        if self.response:
            parts.append("(1 | response_id)")
        if self.task:
            parts.append("(1 | task_id)")
        return " + ".join(parts)

    @property
    def needs_recovery(self) -> bool:
        return "response_recovery" in self.formula()


def with_response_recovery(means: pd.DataFrame, guard: float = 0.05) -> pd.DataFrame:
    """Steered rows with each response's own recovery ratio over the same tokens (the per-response
    estimator; `curves.pooled_recovery` is the ratio of means),
    (steered - without) / (with - without); NaN where the response's with - without gap is below
    `guard` nats (the ratio would explode), so those rows drop out of a model of it."""
    un = means[means["condition"].isin(["with_prompt", "without_prompt"])].pivot_table(
        index="response_id", columns="condition", values="mean_log_prob")
    st = means[means["condition"] == "steered"].join(un, on="response_id")
    gap = st["with_prompt"] - st["without_prompt"]
    rr = (st["mean_log_prob"] - st["without_prompt"]) / gap
    return st.drop(columns=["with_prompt", "without_prompt"]).assign(
        response_recovery=rr.where(gap.abs() >= guard))


def steered_rows(means: pd.DataFrame, reference_group: str | None = None) -> tuple[pd.DataFrame, str]:
    """Steered rows of non-control roles under the group rule, with the formula aliases `log_prob` and
    `task`; (rows, reference group)."""
    df, ref = apply_rule(means[means["condition"] == "steered"], reference_group)
    if df.empty or ref is None:
        raise ConfigError("response means", "there are no steered rows of non-control roles to model")
    return df.assign(log_prob=df["mean_log_prob"], task=df["task_id"]), ref


@dataclass
class SteeringFits:
    """The model fitted per derivation: tidy tables, the fits, and the reference group used."""

    fixed: pd.DataFrame
    variance: pd.DataFrame
    fits: dict[str, MixedFit]
    reference_group: str


def fit_steering(
    means: pd.DataFrame, model: SteeringModel | None = None, backend: str = "python",
    reference_group: str | None = None,
) -> SteeringFits:
    """Fit the model for every derivation (reference group and controls: the group rule)."""
    model = model or SteeringModel()
    if model.needs_recovery and "response_recovery" not in means:
        means = with_response_recovery(means)
    df, ref = steered_rows(means, reference_group)
    fixed, variance = [], []
    fits = fit_by(df, "derivation", model.formula(), backend, what="the steered rows")
    for d, fit in fits.items():
        fixed.append(fit.fixed.assign(derivation=d, formula=fit.formula))
        variance.append(fit.variance.assign(derivation=d, backend=backend, formula=fit.formula))
    fixed_df = pd.concat(fixed, ignore_index=True)
    order = ["derivation", *[c for c in fixed_df.columns if c != "derivation"]]
    return SteeringFits(fixed_df[order], pd.concat(variance, ignore_index=True), fits, ref)


def slope_differences_delta(fits: dict[str, MixedFit], reference_group: str) -> pd.DataFrame:
    """Percent difference of each group's steering slope against the reference, 100 * b_int / b_ref,
    with a delta-method interval; the p-value is the interaction's (slope difference = 0)."""
    rows = []
    for d, fit in fits.items():
        est = fit.fixed.set_index("term")
        if "magnitude" not in est.index:
            continue
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
                         "p_value": est.loc[term, "p_value"], "method": f"delta ({est.loc[term, 'backend']})",
                         "formula": fit.formula, "converged": fit.converged, "messages": "; ".join(fit.messages)})
    return pd.DataFrame(rows)


def role_slopes(means: pd.DataFrame) -> pd.DataFrame:
    """Per-role OLS steering slope (and its se) for every derivation, from the role's steered rows."""
    df = means[(means["condition"] == "steered") & ~is_control(means)]
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
        ref_boot = ref[resample_index(len(ref), n_boot, rng)].mean(axis=1)
        for g, gpart in part.groupby("group", sort=True, observed=True):
            if g == reference_group:
                continue
            s = gpart["slope"].to_numpy()
            boot = 100 * (s[resample_index(len(s), n_boot, rng)].mean(axis=1) / ref_boot - 1)
            pct = 100 * (s.mean() / ref.mean() - 1)
            p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()) + 1 / n_boot)
            rows.append({"derivation": d, "group": g, "reference_group": reference_group, "pct_difference": pct,
                         "ci_low": float(np.percentile(boot, 2.5)), "ci_high": float(np.percentile(boot, 97.5)),
                         "p_value": p, "method": f"role-clustered bootstrap (B={n_boot})"})
    return pd.DataFrame(rows)
