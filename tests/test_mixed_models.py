"""Steering models: the backends against each other on simulated studies, and against the simulator's known
slopes (the backends against R on reference data: test_formula_fits.py)."""

from __future__ import annotations

import numpy as np
import pytest

from animacy.analysis.aggregate import response_means
from animacy.analysis.mixed_r import r_available
from animacy.analysis.simulate import GROUPS, SimConfig, simulate
from animacy.analysis.steering import (
    SteeringModel,
    fit_steering,
    role_slopes,
    slope_differences_bootstrap,
    slope_differences_delta,
)
from animacy.run import Run

needs_r = pytest.mark.skipif(not r_available(), reason="R with lme4 + lmerTest (and rpy2) is not installed")


@pytest.fixture(scope="module")
def sim_means(tmp_path_factory):
    cfg = SimConfig(roles_per_group=8, tasks=4, replicates=2, tokens=50, magnitudes=(0.0, 2.0, 4.0, 8.0),
                    derivations=("role_minus_assistant_response", "with_minus_without_response"), seed=11)
    run = Run(simulate(tmp_path_factory.mktemp("mm") / "run", cfg, quiet=True))
    return response_means(run), run.manifest["truth"]


@pytest.mark.r
@needs_r
@pytest.mark.parametrize("random_slopes", [False, True])
def test_backends_agree_on_a_simulated_study(sim_means, random_slopes):
    means, _ = sim_means
    model = SteeringModel(random_slopes=random_slopes)
    a = fit_steering(means, model, "python").fixed
    b = fit_steering(means, model, "lme4").fixed
    m = a.merge(b, on=["derivation", "term"], suffixes=("_py", "_r"))
    assert len(m) == len(a) == len(b) == 12
    np.testing.assert_allclose(m["estimate_py"], m["estimate_r"], rtol=1e-3)
    np.testing.assert_allclose(m["se_py"], m["se_r"], rtol=1e-3)
    assert set(m["term"]) == {"Intercept", "magnitude", f"group[T.{GROUPS[1]}]", f"group[T.{GROUPS[2]}]",
                              f"magnitude:group[T.{GROUPS[1]}]", f"magnitude:group[T.{GROUPS[2]}]"}


def test_known_slopes_and_differences_are_recovered(sim_means):
    """Estimates lie within 4 standard errors of the truth (a false alarm about 1 in 16,000 per check;
    interval coverage itself is measured by simulation in benchmarks/coverage.py)."""
    means, truth = sim_means
    fit = fit_steering(means, SteeringModel(), "python")
    variance, fits = fit.variance, fit.fits
    assert fit.reference_group == GROUPS[0]
    for d, fit in fits.items():
        t = fit.fixed.set_index("term")
        ref = truth["slopes"][d][GROUPS[0]]
        assert abs(t.loc["magnitude", "estimate"] - ref) < 4 * t.loc["magnitude", "se"], d
    delta = slope_differences_delta(fits, GROUPS[0])
    boot = slope_differences_bootstrap(role_slopes(means), GROUPS[0], n_boot=500)
    for table in (delta, boot):
        assert len(table) == 4
        for row in table.itertuples():
            true_pct = 100 * truth["pct_difference"][row.group]
            se = (row.ci_high - row.ci_low) / 3.92
            assert abs(row.pct_difference - true_pct) < 4 * se, (row.method, row.group, row.pct_difference, se)
            assert row.ci_low < row.pct_difference < row.ci_high
    assert {"role", "response_id", "Residual"} <= set(variance["group"])


def test_reference_group_changes_the_terms(sim_means):
    means, _ = sim_means
    fit = fit_steering(means, SteeringModel(random_slopes=False), reference_group=GROUPS[2])
    fixed = fit.fixed
    assert fit.reference_group == GROUPS[2]
    assert f"magnitude:group[T.{GROUPS[0]}]" in set(fixed["term"])
    assert f"magnitude:group[T.{GROUPS[2]}]" not in set(fixed["term"])


def test_response_recovery_outcome(sim_means):
    """Per response, (steered - without) / (with - without) over the same tokens; its slope in the
    model is the steering slope divided by the prompt's gap, and guarded responses drop out."""
    from animacy.analysis.steering import with_response_recovery

    means, _ = sim_means
    rr = with_response_recovery(means)
    row = rr.iloc[5]
    resp = means[means.response_id == row.response_id].set_index("condition")["mean_log_prob"]
    want = (row.mean_log_prob - resp["without_prompt"]) / (resp["with_prompt"] - resp["without_prompt"])
    assert row.response_recovery == pytest.approx(want)
    assert (rr.loc[rr.magnitude == 0, "response_recovery"].abs() < 0.2).all()
    guarded = with_response_recovery(means, guard=1e9)
    assert guarded["response_recovery"].isna().all()
    fit = fit_steering(means, SteeringModel(outcome="response_recovery", random_slopes=False))
    slope = fit.fixed.set_index(["derivation", "term"]).loc[("role_minus_assistant_response", "magnitude"), "estimate"]
    assert slope > 0
