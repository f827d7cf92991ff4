"""Trait expression under steering: responses generated while steering along a trait vector at several
magnitudes (`trait_responses`), scored 0-100 for their trait by a judge (`trait_scores`) and, with no
judge, by an offline proxy: the mean projection of the response's tokens on the trait vector, the
response teacher-forced by the unsteered model (`projections`, condition `trait_response`).

- `trait_curves`: per trait, measure (each judge, the proxy at each layer) and magnitude, the mean over
  questions of each question's mean, with a bootstrap interval over questions.
- `proxy_agreement`: per trait, judge and layer, how well the proxy tracks the judge across responses:
  Pearson r (Fisher-z 95% interval) and Spearman rho.

>>> import pandas as pd
>>> resp = pd.DataFrame({"response_id": ["a", "b", "c", "d"], "trait": "t", "question_id": ["q0", "q1"] * 2,
...                      "magnitude": [0.0, 0.0, 0.2, 0.2]})
>>> scores = pd.DataFrame({"response_id": ["a", "b", "c", "d"], "trait": "t", "method": "judge:m",
...                        "score": [10.0, 20.0, 60.0, 80.0]})
>>> curves = trait_curves(resp, scores, None, n_boot=50)
>>> curves[["magnitude", "value", "n_questions"]].to_dict("list")
{'magnitude': [0.0, 0.2], 'value': [15.0, 70.0], 'n_questions': [2, 2]}
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from animacy.analysis.bootstrap import clustered_mean
from animacy.run import Run, connect
from animacy.schema import TRAIT_RESPONSE


def trait_proxy(run: Run) -> pd.DataFrame:
    """`response_id, trait, layer, projection`: each trait-steered response's mean projection on its trait
    vector (teacher-forced unsteered), per layer; out of core."""
    return connect().execute(
        f"SELECT response_id, substr(direction, 7) AS trait, layer, avg(projection) AS projection "
        f"FROM {run.relation_sql('projections')} WHERE condition = '{TRAIT_RESPONSE}' "
        f"AND direction LIKE 'trait:%' GROUP BY ALL ORDER BY response_id, layer",
        run.params("projections")).df()


def _measures(responses: pd.DataFrame, scores: pd.DataFrame | None, proxy: pd.DataFrame | None) -> pd.DataFrame:
    """Every measure of every response, long: `response_id, trait, question_id, magnitude, measure, value`."""
    keys = responses[["response_id", "trait", "question_id", "magnitude"]]
    parts = []
    if scores is not None and len(scores):
        parts.append(scores.rename(columns={"method": "measure", "score": "value"})[
            ["response_id", "trait", "measure", "value"]])
    if proxy is not None and len(proxy):
        parts.append(proxy.assign(measure="projection (layer " + proxy["layer"].astype(str) + ")").rename(
            columns={"projection": "value"})[["response_id", "trait", "measure", "value"]])
    if not parts:
        return pd.DataFrame(columns=[*keys.columns, "measure", "value"])
    return keys.merge(pd.concat(parts, ignore_index=True), on=["response_id", "trait"])


def trait_curves(responses: pd.DataFrame, scores: pd.DataFrame | None, proxy: pd.DataFrame | None,
                 n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per trait, measure and magnitude: the mean over questions of each question's mean value, with a
    bootstrap 95% interval over questions (none below MIN_CLUSTERS questions, said in `note`)."""
    rng = np.random.default_rng(seed)
    rows = []
    keys = ["trait", "measure", "magnitude"]
    for key, part in _measures(responses, scores, proxy).groupby(keys, sort=True):
        value, lo, hi, n, note = clustered_mean(part["value"], part["question_id"], n_boot, rng, "questions")
        rows.append({**dict(zip(keys, key)), "value": value, "ci_low": lo, "ci_high": hi, "n_questions": n,
                     "n_responses": len(part), "note": note})
    return pd.DataFrame(rows)


def proxy_agreement(scores: pd.DataFrame, proxy: pd.DataFrame) -> pd.DataFrame:
    """Per trait, judge and layer: Pearson r between the proxy and the judge's score over the responses both
    measured (Fisher-z 95% interval), Spearman rho, and n."""
    rows = []
    merged = scores.merge(proxy, on=["response_id", "trait"])
    for (trait, method, layer), part in merged.groupby(["trait", "method", "layer"], sort=True):
        n = len(part)
        if n < 4 or part["score"].nunique() < 2 or part["projection"].nunique() < 2:
            rows.append({"trait": trait, "judge": method, "layer": layer, "n": n, "pearson_r": np.nan,
                         "ci_low": np.nan, "ci_high": np.nan, "spearman_rho": np.nan,
                         "note": "fewer than 4 responses, or a constant measure: no correlation"})
            continue
        r = float(stats.pearsonr(part["projection"], part["score"])[0])
        z, half = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1.959963984540054 / np.sqrt(n - 3)
        rows.append({"trait": trait, "judge": method, "layer": layer, "n": n, "pearson_r": r,
                     "ci_low": float(np.tanh(z - half)), "ci_high": float(np.tanh(z + half)),
                     "spearman_rho": float(stats.spearmanr(part["projection"], part["score"])[0]), "note": ""})
    return pd.DataFrame(rows)
