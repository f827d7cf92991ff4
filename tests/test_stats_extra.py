"""Rating regressions, geometry, denial statistics, power: each against a hand computation or a
known truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from animacy.analysis.denial import denial_models, label_table, rates
from animacy.analysis.geometry import (
    cohens_d,
    cosine_by_group,
    cosine_similarities,
    direction_validation,
    pca_variance,
)
from animacy.analysis.mixed_r import r_available
from animacy.analysis.power import power_curve, wilson
from animacy.analysis.ratings import rating_columns, rating_regressions
from animacy.analysis.simulate import GROUPS, SimConfig, simulate
from animacy.cli import main
from animacy.run import Run


def test_rating_regression_recovers_a_known_standardized_effect():
    rng = np.random.default_rng(0)
    n = 400
    roles = pd.DataFrame({"role": [f"r{i}" for i in range(n)], "group": "g", "is_control": False,
                          "anim_mental": rng.normal(400, 100, n), "anim_physical": rng.normal(300, 80, n)})
    z = (roles.anim_mental - roles.anim_mental.mean()) / roles.anim_mental.std()
    slopes = pd.DataFrame({"derivation": "d", "role": roles.role, "slope": 0.1 - 0.6 * z * 0.01
                           + rng.normal(0, 0.008, n)})
    out = rating_regressions(slopes, roles, "ols", how="z").set_index(["model", "term"])
    # the standardized beta equals the correlation: -0.6 / sqrt(0.6^2 + 0.8^2) = -0.6
    assert out.loc[("slope ~ anim_mental", "anim_mental"), "estimate"] == pytest.approx(-0.6, abs=0.06)
    assert abs(out.loc[("slope ~ anim_physical", "anim_physical"), "estimate"]) < 0.15
    assert ("slope ~ anim_mental + anim_physical", "anim_physical") in out.index
    # centred (the study's choice): the coefficient is per rating point, -0.006 * sd(slope)-free units
    raw = rating_regressions(slopes, roles, "ols", how="center").set_index(["model", "term"])
    per_point = raw.loc[("slope ~ anim_mental", "anim_mental"), "estimate"]
    assert per_point == pytest.approx(-0.006 / roles.anim_mental.std(), rel=0.15)
    assert rating_columns(roles) == ["anim_mental", "anim_physical"]


def test_pca_cosine_and_cohens_d_by_hand():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(16, 2)))[0].T  # a 2-dimensional subspace of R^16
    x = rng.normal(size=(30, 2)) @ basis
    m = pd.DataFrame(x, index=[f"r{i}" for i in range(30)])
    pv = pca_variance({("d", 5): m})
    assert pv["dims_to_70"].iloc[0] <= 2 and pv["cumulative"].iloc[1] == pytest.approx(1.0)
    groups = pd.Series(["a"] * 15 + ["b"] * 15, index=m.index)
    pairs = cosine_similarities({("d", 5): m}, groups)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert len(pairs) == 30 * 29 // 2
    assert pairs.set_index(["role_a", "role_b"]).loc[("r0", "r7"), "cosine"] == pytest.approx(unit[0] @ unit[7])
    summary = cosine_by_group(pairs)
    assert set(zip(summary.group_a, summary.group_b)) == {("a", "a"), ("a", "b"), ("b", "b")}
    # by hand: means 2 and 4, both variances 1 (n - 1 denominators), so the pooled sd is 1 and d = -2;
    # unequal sizes weight the variances (2 and 4) by their degrees of freedom: (1*2 + 4*4) / 5
    assert cohens_d(np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0])) == pytest.approx(-2.0)
    assert cohens_d(np.array([0.0, 2.0]), np.array([2.0, 2.0, 6.0, 6.0, 4.0])) == pytest.approx(
        (1 - 4) / np.sqrt((1 * 2 + 4 * 4) / 5))


def _acts(shift: float, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(12):
        positive = r < 4
        for _ in range(10):
            v = rng.normal(0, 1, 24) + (shift if positive else 0.0)
            rows.append({"role": f"r{r}", "layer": 3, "reduction": "mean_response", "values": v})
    return pd.DataFrame(rows), pd.Series({f"r{r}": r < 4 for r in range(12)})


def test_direction_validation_separates_signal_and_not_noise():
    signal = direction_validation(*_acts(1.5, 0)).iloc[0]
    assert signal["heldout_accuracy"] == 1.0 and signal["cohens_d"] > 5
    noise = direction_validation(*_acts(0.0, 0)).iloc[0]
    # in sample, a fitted direction always separates a little; held out (folds by role), it cannot
    assert noise["heldout_accuracy"] < 0.75
    assert noise["folds"] >= 2


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    cfg = SimConfig(roles_per_group=10, tasks=4, replicates=3, tokens=10, controls=0, magnitudes=(0.0,),
                    derivations=("role_minus_assistant_response",), seed=5)
    run = Run(simulate(tmp_path_factory.mktemp("den") / "run", cfg, quiet=True))
    return label_table(run.read("responses"), run.read("labels"), run.read("roles")), cfg


def test_denial_rates_pool_responses_with_role_clustered_intervals(labelled):
    table, _ = labelled
    by_role, by_group = rates(table, n_boot=500)
    d = table[table.classifier == "denies_experience"]
    for row in by_group[by_group.classifier == "denies_experience"].itertuples():
        assert row.rate == pytest.approx(d[d.group == row.group]["label"].mean())
        assert row.ci_low <= row.rate <= row.ci_high
    assert (by_role["n"] == 12).all()


@pytest.mark.r
@pytest.mark.skipif(not r_available(), reason="R with lme4 is not installed")
def test_vb_logistic_model_against_glmer(labelled):
    """statsmodels' variational Bayes against glmer on the same data: estimates within 0.15 on the logit
    scale, and its posterior sds no wider than glmer's SEs (they are narrower: the README says by how much)."""
    table, _ = labelled
    vb = denial_models(table, "statsmodels", GROUPS[0])[0].set_index(["model", "term"])
    gl = denial_models(table, "lme4", GROUPS[0])[0].set_index(["model", "term"])
    assert len(vb) == len(gl) == 6
    diff = (vb["estimate"] - gl["estimate"]).abs()
    assert diff.max() < 0.15, diff
    assert (vb["se"] <= gl["se"] * 1.05).all()


def test_wilson_interval_and_power_smoke():
    lo, hi = wilson(7, 20)
    ref = proportion_confint(7, 20, method="wilson")
    assert lo == pytest.approx(ref[0]) and hi == pytest.approx(ref[1])
    table = power_curve([4], pct_difference=300.0, sims=3, quiet=True)
    assert table["power"].iloc[0] == 1.0 and table["sims"].iloc[0] == 3


def test_analyze_writes_every_table(small_run, tmp_path):
    out = tmp_path / "a"
    assert main(["analyze", str(small_run), "--out", str(out), "--no-umap", "--n-boot", "200", "--quiet"]) == 0
    expected = {"gap_curve.csv", "pooled_recovery.csv", "pooled_recovery_first_n.csv", "mixed_fixed.csv",
                "mixed_variance.csv", "role_slopes.csv", "slope_differences.csv", "rating_regressions.csv",
                "rating_multilevel.csv", "denial_rates_by_role.csv", "denial_rates_by_group.csv",
                "denial_models.csv", "pca_variance.csv", "embeddings.csv", "cosine_pairs.csv", "cosine_by_group.csv",
                "assistant_axis_projection.csv", "direction_validation.csv", "denial_similarity.csv",
                "word_guess.csv", "analysis.json"}
    assert expected <= {p.name for p in out.iterdir()}
    sd = pd.read_csv(out / "slope_differences.csv")
    assert list(sd.columns) == ["derivation", "group", "reference_group", "pct_difference", "ci_low", "ci_high",
                                "p_value", "method", "formula", "converged", "messages"]
    summary = json.loads((out / "analysis.json").read_text())
    assert set(summary["tables"]) >= expected - {"analysis.json"}
    wg = pd.read_csv(out / "word_guess.csv")
    assert (wg.groupby("group")["mean_rise"].max() > 0).all()


def test_rating_regression_intervals_keep_coverage_when_the_noise_grows_with_the_rating():
    """HC3 by simulation: the slopes' noise grows with the rating, where plain OLS intervals undercover
    (about 0.85 here); the 95% intervals must cover the true coefficient about 95% of the time."""
    rng = np.random.default_rng(5)
    n, sims, truth = 60, 300, 0.002
    covered = []
    for _ in range(sims):
        rating = rng.uniform(100, 700, n)
        x = rating - rating.mean()
        roles = pd.DataFrame({"role": [f"r{i}" for i in range(n)], "group": "g", "is_control": False,
                              "anim_mental": rating})
        slopes = pd.DataFrame({"derivation": "d", "role": roles.role,
                               "slope": truth * x + rng.normal(0, 1, n) * (0.02 + 0.004 * np.abs(x))})
        row = rating_regressions(slopes, roles, "ols", ["anim_mental"], how="center").iloc[0]
        covered.append(row.ci_low <= truth <= row.ci_high)
    assert 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)
