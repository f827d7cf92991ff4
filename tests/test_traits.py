"""Trait expression (analysis/traits.py): curves over magnitudes recover a known dose-response, the proxy
agreement recovers a known correlation with an interval that covers it, and a constant measure says so."""

from __future__ import annotations

import numpy as np
import pandas as pd

from animacy.analysis.traits import proxy_agreement, trait_curves


def simulate(rho=0.7, n_q=8, reps=4, magnitudes=(0.0, 0.1, 0.2), seed=0):
    rng = np.random.default_rng(seed)
    rows, scores, proxy = [], [], []
    for q in range(n_q):
        q_effect = rng.normal(0, 5)
        for m in magnitudes:
            for r in range(reps):
                rid = f"q{q}|m{m}|r{r}"
                latent = rng.normal()
                noise = rng.normal()
                rows.append({"response_id": rid, "trait": "t", "question_id": f"q{q:02d}", "magnitude": m})
                scores.append({"response_id": rid, "trait": "t", "method": "judge:m",
                               "score": float(np.clip(20 + 200 * m + q_effect + 10 * latent, 0, 100))})
                proxy.append({"response_id": rid, "trait": "t", "layer": 10,
                              "projection": rho * latent + np.sqrt(1 - rho**2) * noise})
    return pd.DataFrame(rows), pd.DataFrame(scores), pd.DataFrame(proxy)


def test_curves_recover_the_dose_response_with_question_clustered_intervals():
    resp, scores, proxy = simulate()
    c = trait_curves(resp, scores, proxy, n_boot=500)
    judge = c[c.measure == "judge:m"].set_index("magnitude")
    slope = np.polyfit(judge.index, judge["value"], 1)[0]
    assert abs(slope - 200) < 40 and (judge["n_questions"] == 8).all()
    assert (judge["ci_low"] < judge["value"]).all() and (judge["value"] < judge["ci_high"]).all()
    assert set(c["measure"]) == {"judge:m", "projection (layer 10)"}


def test_agreement_recovers_a_known_correlation_at_the_nominal_coverage():
    """Within-question latent correlation rho between proxy and judge (magnitude and question effects add
    variance to the judge only, so the population r is lower): across studies, the Fisher-z interval covers
    the r of a very large study close to 95% of the time."""
    big = proxy_agreement(*simulate(n_q=200, reps=20, seed=99)[1:]).iloc[0]["pearson_r"]
    hits = [(lambda a: a.ci_low <= big <= a.ci_high)(proxy_agreement(*simulate(seed=s)[1:]).iloc[0])
            for s in range(80)]
    assert 0.85 <= np.mean(hits) <= 1.0, np.mean(hits)
    assert 0.2 < big < 0.7


def test_a_constant_proxy_gives_no_correlation_and_says_why():
    _, scores, proxy = simulate()
    out = proxy_agreement(scores, proxy.assign(projection=1.0)).iloc[0]
    assert np.isnan(out["pearson_r"]) and "constant" in out["note"]
