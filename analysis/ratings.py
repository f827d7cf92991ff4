"""Steerability against the norm ratings, as the original study did it and more.

Ratings enter centred (`--ratings center`, the study's choice: a coefficient is per rating point) or
z-scored (`--ratings z`: per standard deviation), always through `transform_ratings`, over the rated
(non-control) roles. Two routes to the same question (do roles with higher mental animacy steer less?):

- two-step: each role's steerability (its OLS slope, or its BLUP slope from the mixed model) regressed
  on a rating, alone, with the role's baseline (its mean log-prob unsteered, at magnitude 0) as a
  covariate, and jointly with the other animacy rating; HC3 robust standard errors;
- one-step: the steering model with the rating in place of `group`, e.g.
  `log_prob ~ magnitude * anim_mental + (1 | role)`, whose `magnitude:anim_mental` term is the change
  in steering slope per unit of the rating.

>>> roles = pd.DataFrame({"role": ["a", "b", "c", "assistant"], "group": ["g", "g", "g", "Assistant"],
...                       "is_control": [False, False, False, True], "anim_mental": [100.0, 200.0, 300.0, None]})
>>> transform_ratings(roles, ["anim_mental"], "center")["anim_mental"].tolist()[:3]
[-100.0, 0.0, 100.0]
"""

from __future__ import annotations

import pandas as pd
import statsmodels.api as sm

from animacy.analysis.groups import is_control
from animacy.analysis.mixed import fit_many
from animacy.analysis.steering import SteeringFits, SteeringModel, steered_rows
from animacy.errors import ConfigError
from animacy.schema import TABLES

HOW = ("center", "z")


def rating_columns(roles: pd.DataFrame) -> list[str]:
    """The numeric columns of a roles table beyond the contract's: the norm ratings (those that vary)."""
    fixed = set(TABLES["roles"].names)
    rated = roles[~is_control(roles)]
    return [c for c in roles.columns
            if c not in fixed and pd.api.types.is_numeric_dtype(roles[c]) and not pd.api.types.is_bool_dtype(roles[c])
            and rated[c].notna().sum() >= 3 and rated[c].std() > 0]


def transform_ratings(roles: pd.DataFrame, ratings: list[str], how: str = "center") -> pd.DataFrame:
    """The roles table with each rating centred (or z-scored) over the rated, non-control roles."""
    if how not in HOW:
        raise ConfigError("--ratings", f"'{how}' is not one of {', '.join(HOW)}")
    out = roles.copy()
    rated = ~is_control(roles)
    for c in ratings:
        x = roles.loc[rated, c]
        out[c] = (roles[c] - x.mean()) / (x.std() if how == "z" else 1.0)
    return out


def baselines(means: pd.DataFrame) -> pd.DataFrame:
    """Each role's baseline per derivation: its mean log-prob unsteered (steered rows at magnitude 0)."""
    zero = means[(means["condition"] == "steered") & (means["magnitude"] == 0)]
    return zero.groupby(["derivation", "role"], as_index=False)["mean_log_prob"].mean().rename(
        columns={"mean_log_prob": "baseline"})


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


def rating_regressions(slopes: pd.DataFrame, roles: pd.DataFrame, source: str, ratings: list[str] | None = None,
                       how: str = "center", base: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per derivation: slope ~ rating for every rating alone, slope ~ rating + baseline when baselines are
    given, and slope ~ anim_mental + anim_physical jointly when both exist. HC3 robust SEs. With
    how='z' the slope is standardized too (standardized coefficients)."""
    ratings = ratings or rating_columns(roles)
    df = slopes.merge(transform_ratings(roles, ratings, how)[["role", *ratings]], on="role")
    if base is not None:
        df = df.merge(base, on=["derivation", "role"], how="left")
    models = [[r] for r in ratings]
    if base is not None:
        models += [[r, "baseline"] for r in ratings]
    if {"anim_mental", "anim_physical"} <= set(ratings):
        models.append(["anim_mental", "anim_physical"])
    rows = []
    for d, part in df.groupby("derivation", sort=True):
        for preds in models:
            sub = part.dropna(subset=[*preds, "slope"])
            if len(sub) < len(preds) + 3:
                continue
            y = sub["slope"]
            X = sub[preds].astype(float)
            if how == "z":
                y = (y - y.mean()) / y.std()
                X = (X - X.mean()) / X.std()
            res = sm.OLS(y.astype(float), sm.add_constant(X, has_constant="add")).fit(cov_type="HC3")
            ci = res.conf_int()
            for term in preds:
                rows.append({"derivation": d, "slopes": source, "model": "slope ~ " + " + ".join(preds), "term": term,
                             "ratings": how, "estimate": res.params[term], "se": res.bse[term],
                             "statistic": res.tvalues[term], "p_value": res.pvalues[term], "ci_low": ci.loc[term, 0],
                             "ci_high": ci.loc[term, 1], "r_squared": res.rsquared, "n_roles": len(sub)})
    return pd.DataFrame(rows)


def rating_multilevel(means: pd.DataFrame, roles: pd.DataFrame, ratings: list[str], model: SteeringModel,
                      backend: str = "python", how: str = "center") -> pd.DataFrame:
    """One step, per rating and derivation: the steering model with the rating in place of `group`
    (all fits at once, in parallel with the python backend)."""
    if "group" not in model.formula():
        return pd.DataFrame()
    steered, _ = steered_rows(means)
    rated = transform_ratings(roles, ratings, how).set_index("role")
    jobs = {}
    for rating in ratings:
        df = steered.assign(**{rating: steered["role"].map(rated[rating])}).dropna(subset=[rating])
        for d, part in df.groupby("derivation", sort=True):
            if part["role"].nunique() >= 3:
                jobs[(rating, d)] = (part, model.formula().replace("group", rating),
                                     f"the steered rows of derivation {d}")
    fits = fit_many(jobs, backend)
    out = [fit.fixed.assign(derivation=d, rating=r, ratings=how, formula=fit.formula) for (r, d), fit in fits.items()]
    if not out:
        return pd.DataFrame()
    res = pd.concat(out, ignore_index=True)
    return res[["derivation", "rating", *[c for c in res.columns if c not in ("derivation", "rating")]]]

