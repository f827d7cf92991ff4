"""Denial and AI-claim statistics: rates by role and group with role-clustered intervals, and logistic
mixed models reported as odds ratios.

Models (the original study fitted the second with glmer):
    label ~ group + (1 | role)
    label ~ z_anim_mental + z_anim_physical + (1 | task_id) + (1 | role)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from animacy.analysis.mixed import fit_mixed


def label_table(responses: pd.DataFrame, labels: pd.DataFrame, roles: pd.DataFrame,
                method: str | None = None) -> pd.DataFrame:
    """One row per response x classifier with role, group, task and the 0/1 label of one method
    (default: the method with the most labels)."""
    if method is None:
        method = labels["method"].value_counts().idxmax()
    lab = labels[labels["method"] == method]
    df = lab.merge(responses[["response_id", "role", "task_id"]], on="response_id").merge(roles, on="role")
    return df.assign(method=method)


def rates(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(by role, by group) rates of each label. Group rates pool responses; their intervals resample the
    group's roles with replacement (responses of one role are not independent)."""
    by_role = (table.groupby(["classifier", "group", "role"], sort=True)["label"].agg(["mean", "size"])
               .reset_index().rename(columns={"mean": "rate", "size": "n"}))
    rng = np.random.default_rng(seed)
    rows = []
    for (c, g), part in by_role.groupby(["classifier", "group"], sort=True):
        k, n = (part["rate"] * part["n"]).to_numpy(), part["n"].to_numpy()
        idx = rng.integers(0, len(part), (n_boot, len(part)))
        boot = k[idx].sum(1) / n[idx].sum(1)
        rows.append({"classifier": c, "group": g, "rate": k.sum() / n.sum(), "ci_low": np.percentile(boot, 2.5),
                     "ci_high": np.percentile(boot, 97.5), "n_roles": len(part), "n_responses": int(n.sum())})
    return by_role, pd.DataFrame(rows)


def _odds_ratios(fixed: pd.DataFrame) -> pd.DataFrame:
    return fixed.assign(odds_ratio=np.exp(fixed["estimate"]), or_ci_low=np.exp(fixed["ci_low"]),
                        or_ci_high=np.exp(fixed["ci_high"]))


def denial_models(table: pd.DataFrame, backend: str = "statsmodels", reference_group: str | None = None,
                  classifier: str = "denies_experience") -> pd.DataFrame:
    """Both logistic mixed models for one classifier; fixed effects with odds ratios and intervals."""
    df = table[table["classifier"] == classifier].copy()
    groups = sorted(df["group"].unique())
    ref = reference_group if reference_group in groups else groups[0]
    df["group"] = pd.Categorical(df["group"], [ref, *[g for g in groups if g != ref]])
    out = []
    if df["label"].nunique() == 2 and len(groups) > 1:
        fit = fit_mixed(df, "label ~ group + (1 | role)", backend, family="binomial")
        out.append(fit.fixed.assign(model="label ~ group + (1 | role)", messages="; ".join(fit.messages)))
    rated = df.dropna(subset=[c for c in ("anim_mental", "anim_physical") if c in df])
    if {"anim_mental", "anim_physical"} <= set(df.columns) and rated["label"].nunique() == 2:
        for c in ("anim_mental", "anim_physical"):
            rated[f"z_{c}"] = (rated[c] - rated[c].mean()) / rated[c].std()
        formula = "label ~ z_anim_mental + z_anim_physical + (1 | task_id) + (1 | role)"
        fit = fit_mixed(rated, formula, backend, family="binomial")
        out.append(fit.fixed.assign(model=formula, messages="; ".join(fit.messages)))
    if not out:
        return pd.DataFrame()
    res = _odds_ratios(pd.concat(out, ignore_index=True)).assign(classifier=classifier)
    return res[["classifier", "model", *[c for c in res.columns if c not in ("classifier", "model")]]]


def example_responses(responses: pd.DataFrame, labels: pd.DataFrame, classifier: str = "denies_experience",
                      per_label: int = 3, width: int = 240) -> pd.DataFrame:
    """A few responses of each label value (first by id), text on one line and shortened, for the report."""
    lab = labels[labels["classifier"] == classifier].merge(responses[["response_id", "role", "text"]],
                                                           on="response_id")
    ex = lab.sort_values(["label", "response_id"], ascending=[False, True]).groupby("label").head(per_label)
    ex = ex.assign(text=ex["text"].str.replace(r"\s+", " ", regex=True).str.slice(0, width))
    return ex[["role", "label", "text"]].rename(columns={"label": classifier})

