"""Word-guess generalisation: how much does steering raise the log-probability of the role word, on a
task the vectors were not fitted on?"""

from __future__ import annotations

import numpy as np
import pandas as pd


def word_guess_effects(word_guess: pd.DataFrame, roles: pd.DataFrame, n_boot: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Per group x derivation x magnitude: mean rise in the target's log-prob over the unsteered
    prompt, with a role-clustered bootstrap interval."""
    base = word_guess[word_guess["derivation"].isna()].set_index(["role", "target"])["log_prob"]
    st = word_guess[word_guess["derivation"].notna()].copy()
    st["rise"] = st["log_prob"].to_numpy() - base.reindex(pd.MultiIndex.from_frame(st[["role", "target"]])).to_numpy()
    st = st.merge(roles[["role", "group"]], on="role")
    rng = np.random.default_rng(seed)
    rows = []
    for (g, d, m), part in st.dropna(subset=["rise"]).groupby(["group", "derivation", "magnitude"], sort=True):
        per_role = part.groupby("role")["rise"].mean().to_numpy()
        boot = per_role[rng.integers(0, len(per_role), (n_boot, len(per_role)))].mean(1)
        rows.append({"group": g, "derivation": d, "magnitude": m, "mean_rise": per_role.mean(),
                     "ci_low": np.percentile(boot, 2.5), "ci_high": np.percentile(boot, 97.5),
                     "n_roles": len(per_role)})
    return pd.DataFrame(rows)
