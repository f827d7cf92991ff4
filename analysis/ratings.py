"""Steerability against the norm ratings.

Two routes to the same question (do roles with higher mental animacy steer less?):

- two-step: each role's steerability (its OLS slope, or its BLUP slope from the mixed model) regressed
  on the standardized ratings, with HC3 robust standard errors;
- one-step: `mean_log_prob ~ magnitude * z_rating + (magnitude | role) + (1 | response_id)`, where the
  `magnitude:z_rating` term is the change in steering slope per standard deviation of the rating.
"""

from __future__ import annotations

import pandas as pd
import statsmodels.api as sm

from animacy.analysis.mixed import fit_mixed
from animacy.analysis.steering import SteeringFits
from animacy.schema import TABLES


def rating_columns(roles: pd.DataFrame) -> list[str]:
    """The numeric columns of a roles table beyond the contract's: the norm ratings (those that vary)."""
    fixed = set(TABLES["roles"].names)
    rated = roles[~roles["is_control"].astype(bool)]
    return [c for c in roles.columns
            if c not in fixed and pd.api.types.is_numeric_dtype(roles[c]) and not pd.api.types.is_bool_dtype(roles[c])
            and rated[c].notna().sum() >= 3 and rated[c].std() > 0]


def blup_slopes(fit: SteeringFits, means: pd.DataFrame) -> pd.DataFrame:
    """Each role's steering slope from the mixed model: its group's fixed slope + its random slope (BLUP).
    Needs random slopes (magnitude | role)."""
    groups = means.drop_duplicates("role").set_index("role")["group"]
    rows = []
    for d, f in fit.fits.items():
        if f.random_effects is None or "magnitude" not in f.random_effects:
            continue
        est = f.fixed.set_index("term")["estimate"]
        for role, blup in f.random_effects["magnitude"].items():
            g = groups[role]
            fixed = est["magnitude"] + est.get(f"magnitude:group[T.{g}]", 0.0)
            rows.append({"derivation": d, "role": role, "group": g, "slope": fixed + blup, "blup": blup})
    return pd.DataFrame(rows)


def _z(x: pd.Series) -> pd.Series:
    return (x - x.mean()) / x.std()


def rating_regressions(slopes: pd.DataFrame, roles: pd.DataFrame, source: str,
                       ratings: list[str] | None = None) -> pd.DataFrame:
    """Per derivation: slope ~ z(rating) for every rating alone, and slope ~ z(anim_mental) +
    z(anim_physical) jointly when both exist. Standardized coefficients, HC3 robust SEs."""
    ratings = ratings or rating_columns(roles)
    df = slopes.merge(roles[["role", *ratings]], on="role")
    models = [[r] for r in ratings]
    if {"anim_mental", "anim_physical"} <= set(ratings):
        models.append(["anim_mental", "anim_physical"])
    rows = []
    for d, part in df.groupby("derivation", sort=True):
        for preds in models:
            sub = part.dropna(subset=preds)
            if len(sub) < len(preds) + 3:
                continue
            X = sm.add_constant(pd.DataFrame({p: _z(sub[p]) for p in preds}))
            res = sm.OLS(_z(sub["slope"]), X).fit(cov_type="HC3")
            ci = res.conf_int()
            for term in preds:
                rows.append({"derivation": d, "slopes": source, "model": " + ".join(preds), "term": term,
                             "beta": res.params[term], "se": res.bse[term], "statistic": res.tvalues[term],
                             "p_value": res.pvalues[term], "ci_low": ci.loc[term, 0], "ci_high": ci.loc[term, 1],
                             "r_squared": res.rsquared, "n_roles": len(sub)})
    return pd.DataFrame(rows)


def rating_multilevel(means: pd.DataFrame, roles: pd.DataFrame, rating: str, backend: str = "statsmodels",
                      random_slopes: bool = True) -> pd.DataFrame:
    """One step, per derivation: magnitude * z(rating) with role (and response) random effects."""
    z = roles.set_index("role")[rating]
    df = means[(means["condition"] == "steered") & means["role"].map(z).notna()].copy()
    rated = z[z.index.isin(df["role"])]
    df["z_rating"] = df["role"].map((rated - rated.mean()) / rated.std())
    formula = ("mean_log_prob ~ magnitude * z_rating + "
               + ("(magnitude | role)" if random_slopes else "(1 | role)") + " + (1 | response_id)")
    out = []
    for d, part in df.groupby("derivation", sort=True):
        fit = fit_mixed(part, formula, backend)
        out.append(fit.fixed.assign(derivation=d, rating=rating, converged=fit.converged,
                                    messages="; ".join(fit.messages)))
    res = pd.concat(out, ignore_index=True)
    return res[["derivation", "rating", *[c for c in res.columns if c not in ("derivation", "rating")]]]
