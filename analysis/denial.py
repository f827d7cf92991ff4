"""Denial and AI-claim statistics: rates by role and group with role-clustered intervals, and logistic
mixed models reported as odds ratios.

Models (the original study fitted the second with glmer; the python backend fits glmer's Laplace
criterion without R):
    label ~ group + (1 | role)
    label ~ anim_mental + anim_physical + (1 | task) + (1 | role)      (ratings centred, or z-scored)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from animacy.analysis.bootstrap import resample_index
from animacy.analysis.groups import apply_rule
from animacy.analysis.mixed import fit_many
from animacy.analysis.ratings import transform_ratings


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
        idx = resample_index(len(part), n_boot, rng)
        boot = k[idx].sum(1) / n[idx].sum(1)
        rows.append({"classifier": c, "group": g, "rate": k.sum() / n.sum(), "ci_low": np.percentile(boot, 2.5),
                     "ci_high": np.percentile(boot, 97.5), "n_roles": len(part), "n_responses": int(n.sum())})
    return by_role, pd.DataFrame(rows)


def _odds_ratios(fixed: pd.DataFrame) -> pd.DataFrame:
    with np.errstate(over="ignore"):  # a separated fit's odds ratio is inf, and its messages say why
        return fixed.assign(odds_ratio=np.exp(fixed["estimate"]), or_ci_low=np.exp(fixed["ci_low"]),
                            or_ci_high=np.exp(fixed["ci_high"]))


def denial_models(table: pd.DataFrame, backend: str = "python", reference_group: str | None = None,
                  classifier: str = "denies_experience", ratings: list[str] | None = None,
                  how: str = "center") -> tuple[pd.DataFrame, list[str]]:
    """The logistic mixed models of one classifier's labels, under the group rule (controls out):
    `label ~ group + (1 | role)`, and `label ~ r1 + r2 + (1 | task) + (1 | role)` on the ratings (default:
    anim_mental and anim_physical where present). Fixed effects with odds ratios; and what was skipped, why."""
    rows, ref = apply_rule(table[table["classifier"] == classifier], reference_group)
    rows = rows.assign(task=rows["task_id"])
    out, skipped = [], []
    if ref is None or rows.empty:
        return pd.DataFrame(), [f"{classifier}: no labelled responses of non-control roles"]
    if rows["label"].nunique() < 2:
        skipped.append(f"{classifier}: every non-control response has the same label, so no model can be fitted")
        return pd.DataFrame(), skipped
    models = []
    if len(rows["group"].cat.categories) > 1:
        models.append(("label ~ group + (1 | role)", rows))
    else:
        skipped.append(f"{classifier}: label ~ group needs two groups of non-control roles")
    ratings = [r for r in (ratings or ["anim_mental", "anim_physical"]) if r in rows.columns]
    if ratings:
        roles = rows.drop_duplicates("role")[["role", "group", *ratings]].assign(is_control=False)
        scaled = transform_ratings(roles, ratings, how).set_index("role")[ratings]
        rated = rows.drop(columns=ratings).join(scaled, on="role").dropna(subset=ratings)
        random = " + (1 | task)" if rated["task"].nunique() > 1 else ""
        models.append((f"label ~ {' + '.join(ratings)}{random} + (1 | role)", rated))
    fits = fit_many({formula: (data, formula, f"the {classifier} labels") for formula, data in models}, backend,
                    family="binomial", keep_errors=True)
    for formula, fit in fits.items():
        if isinstance(fit, Exception):  # too few rows for the model, say: the other analyses still run
            skipped.append(f"{classifier}: {formula}: {fit}")
            continue
        out.append(fit.fixed.assign(model=formula, ratings=how if "group" not in formula else ""))
    if not out:
        return pd.DataFrame(), skipped
    res = _odds_ratios(pd.concat(out, ignore_index=True)).assign(classifier=classifier, reference_group=ref)
    return res[["classifier", "model", *[c for c in res.columns if c not in ("classifier", "model")]]], skipped


def example_responses(responses: pd.DataFrame, labels: pd.DataFrame, classifier: str = "denies_experience",
                      per_label: int = 3, width: int = 240) -> pd.DataFrame:
    """A few responses of each label value (first by id), text on one line and shortened, for the report."""
    lab = labels[labels["classifier"] == classifier].merge(responses[["response_id", "role", "text"]],
                                                           on="response_id")
    ex = lab.sort_values(["label", "response_id"], ascending=[False, True]).groupby("label").head(per_label)
    ex = ex.assign(text=ex["text"].str.replace(r"\s+", " ", regex=True).str.slice(0, width))
    return ex[["role", "label", "text"]].rename(columns={"label": classifier})

