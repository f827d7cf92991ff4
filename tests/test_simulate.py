"""The simulator records its truth, and the truth is in the data it writes."""

from __future__ import annotations

import numpy as np
import statsmodels.formula.api as smf

from animacy.analysis.aggregate import gap_by_role, position_means, response_means
from animacy.analysis.curves import gap_curve_bands
from animacy.analysis.simulate import GROUPS, SimConfig, simulate
from animacy.run import Run


def test_steering_slopes_and_gap_are_recovered(tmp_path):
    cfg = SimConfig(roles_per_group=12, tasks=5, replicates=3, tokens=50, magnitudes=(0.0, 2.0, 4.0, 8.0),
                    derivations=("role_minus_assistant_response",), seed=3)
    run = Run(simulate(tmp_path / "run", cfg, quiet=True))
    truth = run.manifest["truth"]
    means = response_means(run, first_n=50)
    steered = means[means.condition == "steered"]
    fit = smf.ols("mean_log_prob ~ magnitude * C(group, Treatment(reference=GROUPS[0]))", steered).fit()
    ref = fit.params["magnitude"]
    assert abs(ref - truth["slopes"]["role_minus_assistant_response"][GROUPS[0]]) < 0.01
    for g in GROUPS[1:]:
        slope = ref + fit.params[f"magnitude:C(group, Treatment(reference=GROUPS[0]))[T.{g}]"]
        assert abs(slope / ref - 1 - truth["pct_difference"][g]) < 0.08, g
    gap = gap_curve_bands(gap_by_role(position_means(run)), n_boot=50)
    for g in GROUPS:
        curve = gap[gap.group == g].sort_values("token_index")["gap"].to_numpy()
        assert curve[:5].mean() > curve[-5:].mean() > 0.2, "the gap narrows but never closes"
    assert truth["folded_share"] < 1e-3


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    cfg = SimConfig(roles_per_group=2, tasks=2, replicates=2, tokens=10, controls=1)
    a = response_means(Run(simulate(tmp_path / "a", cfg, quiet=True)))
    b = response_means(Run(simulate(tmp_path / "b", cfg, quiet=True)))
    c = response_means(Run(simulate(tmp_path / "c", SimConfig(**{**cfg.__dict__, "seed": 1}), quiet=True)))
    np.testing.assert_array_equal(a["mean_log_prob"], b["mean_log_prob"])
    assert not np.allclose(a["mean_log_prob"], c["mean_log_prob"])
    assert len(a) == cfg.n_token_rows() // cfg.tokens


def test_activation_means_out_of_core_equal_numpy_means(small_run):
    """The vectors job's DuckDB aggregation (element by element) against numpy on the whole table."""
    from animacy.collect.vectors import activation_means

    run = Run(small_run)
    acts = run.read("activations").merge(run.read("responses", ["response_id", "role"]), on="response_id")
    got = activation_means(run)
    groups = acts.groupby(["role", "condition", "layer", "reduction"])
    assert len(got) == groups.ngroups
    for (role, cond, layer, red), part in groups:
        want = np.stack(part["values"].to_numpy()).astype(np.float64).mean(0)
        np.testing.assert_allclose(got[(role, cond, int(layer), red)], want, rtol=1e-12, atol=1e-12)
