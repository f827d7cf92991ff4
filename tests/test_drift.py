"""Persona drift (analysis/drift.py), tested like numerics: the drift model recovers a known drift and a
known capping effect from simulated conversations, rescaling the projection rescales only its units, and
the curves' intervals are clustered by role."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from animacy.analysis.drift import drift_curves, drift_models, turn_behaviour


def simulate(n_roles=12, reps=3, turns=4, drift=-0.6, capped_drift=-0.1, seed=0) -> pd.DataFrame:
    """Conversations whose projection falls by `drift` per turn freely and `capped_drift` capped, with role
    and conversation effects and noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_roles):
        role_effect = rng.normal(0, 1.0)
        for a, slope in (("free", drift), ("capped τ=0.1", capped_drift)):
            for k in range(reps):
                conv_effect = rng.normal(0, 0.5)
                for t in range(turns):
                    rows.append({"conversation_id": f"r{r}|{a}|{k}", "role": f"role{r}", "group": "g",
                                 "arm": a, "turn": t, "layer": 10, "direction": "assistant_axis",
                                 "projection": 2.0 + role_effect + conv_effect + slope * t + rng.normal(0, 0.3)})
    df = pd.DataFrame(rows)
    return df.assign(arm=pd.Categorical(df["arm"], categories=["free", "capped τ=0.1"]))


def test_the_drift_model_recovers_the_free_drift_and_the_capping_effect():
    fixed = drift_models(simulate()).set_index("term")
    free, diff = fixed.loc["turn"], fixed.loc["turn:arm[T.capped τ=0.1]"]
    assert free.ci_low < -0.6 < free.ci_high and abs(free.estimate + 0.6) < 3 * free.se
    assert diff.ci_low < 0.5 < diff.ci_high and diff.p_value < 1e-6
    assert fixed["converged"].all() and set(fixed["n_roles"]) == {12}


def test_rescaling_the_projection_changes_only_its_units():
    data = simulate(seed=3)
    a = drift_models(data).set_index("term")
    b = drift_models(data.assign(projection=data["projection"] * 250.0)).set_index("term")
    np.testing.assert_allclose(b["estimate"], a["estimate"] * 250.0, rtol=1e-5)
    np.testing.assert_allclose(b["se"], a["se"] * 250.0, rtol=1e-4)
    np.testing.assert_allclose(b["p_value"], a["p_value"], rtol=1e-4, atol=1e-12)


def test_drift_intervals_cover_the_true_curve_at_the_nominal_rate():
    """Across simulated studies, the role-clustered interval of the free arm's turn-3 mean covers the
    population value (2 - 0.6 * 3) close to 95% of the time (role effects shared by all turns)."""
    hits = []
    for seed in range(60):
        c = drift_curves(simulate(n_roles=15, reps=2, seed=seed), n_boot=400, seed=seed)
        row = c[(c.arm == "free") & (c.turn == 3)].iloc[0]
        hits.append(row.ci_low <= 2.0 - 1.8 <= row.ci_high)
    assert 0.85 <= np.mean(hits) <= 1.0, np.mean(hits)


def test_behaviour_by_turn_joins_the_labels_to_the_turns():
    conv = pd.DataFrame({"response_id": [f"c{i}|t{t}" for i in range(6) for t in range(2)],
                         "role": [f"r{i % 3}" for i in range(6) for _ in range(2)],
                         "condition": ["conversation"] * 6 + ["conversation_capped"] * 6,
                         "tau": [np.nan] * 6 + [0.1] * 6, "turn": [0, 1] * 6,
                         "mean_log_prob": np.linspace(-3, -1, 12)})
    labels = pd.DataFrame({"response_id": conv["response_id"], "classifier": "claims_ai", "method": "rules",
                           "label": [0, 1] * 6})
    b = turn_behaviour(conv, labels, n_boot=50)
    claims = b[b.measure == "claims_ai"].set_index(["arm", "turn"])["value"]
    assert claims.loc[("free", 0)] == 0 and claims.loc[("free", 1)] == 1
    assert set(b["measure"]) == {"mean_log_prob", "claims_ai"} and (b["n_roles"] == 3).all()
    # three roles are too few for an interval, and each row says so
    assert b["ci_low"].isna().all() and b["note"].str.contains("no interval").all()


@pytest.mark.parametrize("n_roles", [2])
def test_a_model_that_cannot_be_fitted_is_skipped_with_its_reason(n_roles):
    data = simulate(n_roles=n_roles, reps=1, turns=2)
    skipped: list[str] = []
    out = drift_models(data.head(3), skipped=skipped)
    assert out.empty and skipped and "assistant_axis at layer 10" in skipped[0]


def test_the_drift_model_matches_lme4_on_the_same_conversations():
    """The crossed random intercepts (conversation, role) of the drift model, fitted by the python engine
    and by R's lme4 + lmerTest on the same simulated conversations: the same fixed effects."""
    from animacy.analysis.mixed_r import r_available

    if not r_available():
        pytest.skip("R with lme4 + lmerTest (and rpy2) is not installed")
    data = simulate(n_roles=10, reps=2, turns=3, seed=5)
    py = drift_models(data, backend="python").set_index("term")
    r = drift_models(data, backend="lme4").set_index("term")
    np.testing.assert_allclose(py["estimate"], r.loc[py.index, "estimate"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(py["se"], r.loc[py.index, "se"], rtol=1e-3)
    assert r["converged"].all()


def test_the_ablated_arm_is_left_out_of_the_axis_own_model_but_kept_for_other_directions():
    base = simulate(n_roles=8, reps=2, turns=3)
    ablated = base[base.arm == "free"].assign(arm="axis ablated", projection=0.0,
                                              conversation_id=lambda d: d["conversation_id"] + "|ab")
    other = base.assign(direction="trait:x")
    data = pd.concat([base, ablated, other, ablated.assign(direction="trait:x", projection=np.random.default_rng(1)
                                                                   .normal(size=len(ablated)))])
    data = data.assign(arm=pd.Categorical(data["arm"], categories=["free", "capped τ=0.1", "axis ablated"]))
    fixed = drift_models(data)
    axis_terms = set(fixed.loc[fixed.direction == "assistant_axis", "term"])
    assert not any("ablated" in t for t in axis_terms) and "turn:arm[T.capped τ=0.1]" in axis_terms
    assert "turn:arm[T.axis ablated]" in set(fixed.loc[fixed.direction == "trait:x", "term"])
