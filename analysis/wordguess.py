"""Word-guess generalisation, as the original study did it: how much does steering raise the log-probability
of the role word, on prompts the vectors were not fitted on?

The rise of a row is its log-prob minus its baseline: the unsteered row (no derivation) where the run has
one, else the same derivation's row at magnitude 0 (the study's sweeps start at 0). Rises are reported
per prompt and pooled over prompts, by group x derivation x magnitude, with role-clustered intervals;
the mixed models go through the formula interface, one per derivation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from animacy.analysis.bootstrap import clustered_mean
from animacy.analysis.groups import apply_rule
from animacy.analysis.mixed import fit_by
from animacy.errors import ConfigError

DEFAULT_FORMULA = "log_prob ~ magnitude * group + (1 | role)"


def with_rise(word_guess: pd.DataFrame) -> pd.DataFrame:
    """Steered rows with `rise` over their baseline."""
    wg = word_guess.copy()
    for c in ("prompt", "replicate", "layers"):
        if c not in wg:
            wg[c] = None
    key = ["role", "prompt", "replicate", "target"]
    wg[key] = wg[key].astype(str)
    steered = wg[wg["derivation"].notna()].copy()
    unsteered = wg[wg["derivation"].isna()].set_index(key)["log_prob"]
    if len(unsteered):
        base = unsteered.reindex(pd.MultiIndex.from_frame(steered[key])).to_numpy()
    else:
        zero = steered[steered["magnitude"] == 0].set_index([*key, "derivation", "layers"])["log_prob"]
        base = zero.reindex(pd.MultiIndex.from_frame(steered[[*key, "derivation", "layers"]])).to_numpy()
    return steered.assign(rise=steered["log_prob"].to_numpy() - base)


def word_guess_effects(word_guess: pd.DataFrame, roles: pd.DataFrame, n_boot: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Mean rise per prompt (and pooled: prompt 'all') x group x derivation x magnitude, each role once, with
    a role-clustered bootstrap interval (none for groups of fewer than 5 roles)."""
    st = with_rise(word_guess).merge(roles[["role", "group"]], on="role").dropna(subset=["rise"])
    pooled = st.assign(prompt="all")
    rng = np.random.default_rng(seed)
    rows = []
    for (p, g, d, m), part in pd.concat([st, pooled]).groupby(["prompt", "group", "derivation", "magnitude"],
                                                               sort=True):
        rise, lo, hi, n, note = clustered_mean(part["rise"], part["role"], n_boot, rng)
        rows.append({"prompt": p, "group": g, "derivation": d, "magnitude": m, "mean_rise": rise,
                     "ci_low": lo, "ci_high": hi, "n_roles": n, "note": note})
    return pd.DataFrame(rows)


def word_guess_models(word_guess: pd.DataFrame, roles: pd.DataFrame, formula: str | None = None,
                      backend: str = "python", reference_group: str | None = None,
                      skipped: list[str] | None = None) -> pd.DataFrame:
    """The formula (default: log_prob ~ magnitude * group + (1 | role), plus (1 | prompt) where there are
    several prompts) per derivation on the steered word-guess rows, under the group rule."""
    wg = word_guess[word_guess["derivation"].notna()].merge(roles[["role", "group", "is_control"]], on="role")
    rows, _ = apply_rule(wg, reference_group)
    if rows.empty or rows["magnitude"].nunique() < 2 or rows["role"].nunique() < 2:
        return pd.DataFrame()
    if formula is None:
        formula = DEFAULT_FORMULA + (" + (1 | prompt)" if "prompt" in rows and rows["prompt"].nunique() > 1 else "")
    out = []
    for d, fit in fit_by(rows, "derivation", formula, backend, what="the word-guess rows", keep_errors=True).items():
        if isinstance(fit, ConfigError):  # too few rows for this derivation: said, not fitted
            if skipped is not None:
                skipped.append(f"word-guess model of {d}: {fit.message}")
            continue
        out.append(fit.fixed.assign(derivation=d, formula=fit.formula))
    if not out:
        return pd.DataFrame()
    res = pd.concat(out, ignore_index=True)
    return res[["derivation", *[c for c in res.columns if c != "derivation"]]]
