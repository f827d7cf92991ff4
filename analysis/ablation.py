"""What ablating the assistant axis does to behaviour under the role prompt: per group, the change in a
response's mean log-prob (its first N tokens) when the axis' projection is removed (`ablated`) or set to
the assistant controls' mean (`mean_ablated`), against the same response scored with the prompt alone;
averaged per role, then over roles, with role-clustered bootstrap intervals.

>>> import pandas as pd
>>> means = pd.DataFrame({"response_id": ["a1", "a1", "b1", "b1"], "role": ["a", "a", "b", "b"],
...                       "group": "g", "condition": ["with_prompt", "ablated"] * 2,
...                       "mean_log_prob": [-2.0, -2.5, -1.0, -1.3]})
>>> ablation_effects(means, n_boot=100)[["condition", "group", "effect", "n_roles"]].round(2).to_dict("records")
[{'condition': 'ablated', 'group': 'g', 'effect': -0.4, 'n_roles': 2}]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from animacy.analysis.bootstrap import clustered_mean
from animacy.schema import ABLATED


def ablation_effects(means: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per ablation condition and group: mean over roles of (ablated - with prompt) mean log-prob, with a
    role-bootstrap 95% interval (none below MIN_CLUSTERS roles, said in `note`)."""
    rng = np.random.default_rng(seed)
    base = means[means["condition"] == "with_prompt"][["response_id", "mean_log_prob"]]
    ab = means[means["condition"].isin(ABLATED)].merge(base, on="response_id", suffixes=("", "_with"))
    ab = ab.assign(effect=ab["mean_log_prob"] - ab["mean_log_prob_with"])
    rows = []
    for (cond, group), part in ab.groupby(["condition", "group"], sort=True, observed=True):
        effect, lo, hi, n, note = clustered_mean(part["effect"], part["role"], n_boot, rng)
        rows.append({"condition": cond, "group": group, "effect": effect, "ci_low": lo, "ci_high": hi,
                     "n_roles": n, "n_responses": part["response_id"].nunique(), "note": note})
    return pd.DataFrame(rows)
