"""Formula fits tested like numerics: against real R on reference data (sleepstudy, cbpp, a crossed
study), for invariance to the units of a predictor, for honest convergence, and by simulation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from animacy.analysis.formula import parse
from animacy.analysis.mixed import fit_mixed
from animacy.analysis.mixed_r import r_available
from animacy.cli import main
from animacy.errors import ConfigError

needs_r = pytest.mark.skipif(not r_available(), reason="R with lme4 + lmerTest (and rpy2) is not installed")


def _r_data(name: str) -> pd.DataFrame:
    import rpy2.robjects as ro
    from rpy2.robjects import pandas2ri
    from rpy2.robjects.conversion import localconverter

    ro.r("suppressPackageStartupMessages(library(lme4))")
    with localconverter(ro.default_converter + pandas2ri.converter):
        df = ro.conversion.rpy2py(ro.r(name))
    return df.reset_index(drop=True)


def _r_fit(call: str, df: pd.DataFrame) -> dict:
    """Fit in R directly (not through the package): estimates, SEs, variance components, criterion."""
    import rpy2.robjects as ro
    from rpy2.robjects import pandas2ri
    from rpy2.robjects.conversion import localconverter

    with localconverter(ro.default_converter + pandas2ri.converter):
        ro.globalenv["d"] = ro.conversion.py2rpy(df)
    ro.r("suppressPackageStartupMessages(library(lme4)); for (c in names(d)) if (is.character(d[[c]])) "
         "d[[c]] <- factor(d[[c]])")
    ro.r(f"m <- {call}")
    est = dict(zip(ro.r("names(fixef(m))"), ro.r("fixef(m)")))
    se = dict(zip(ro.r("names(fixef(m))"), ro.r("sqrt(diag(as.matrix(vcov(m))))")))
    vc = ro.r("as.data.frame(VarCorr(m))$vcov")
    crit = ro.r("if (isLMM(m) && isREML(m)) REMLcrit(m) else -2 * as.numeric(logLik(m))")[0]
    return {"est": est, "se": se, "vc": list(vc), "criterion": crit}


@pytest.fixture(scope="module")
def sleepstudy():
    if not r_available():
        pytest.skip("sleepstudy is read from R's lme4 package, which is not installed")
    return _r_data("sleepstudy").assign(Subject=lambda d: d["Subject"].astype(str))


@pytest.fixture(scope="module")
def cbpp():
    if not r_available():
        pytest.skip("cbpp is read from R's lme4 package, which is not installed")
    return _r_data("cbpp").assign(herd=lambda d: d["herd"].astype(str), period=lambda d: d["period"].astype(str))


def _crossed_study(seed: int, n_roles: int = 40, n_tasks: int = 8, reps: int = 3, binomial: bool = False):
    rng = np.random.default_rng(seed)
    roles = pd.DataFrame({"role": [f"r{i:02d}" for i in range(n_roles)],
                          "group": np.repeat(["A", "B"], n_roles // 2),
                          "rating": rng.normal(300, 80, n_roles)})
    rows = [(r.role, r.group, r.rating, f"t{t}", m) for r in roles.itertuples() for t in range(n_tasks)
            for m in (0.0, 1.0, 2.0, 4.0)[: reps + 1]]
    df = pd.DataFrame(rows, columns=["role", "group", "rating", "task", "magnitude"])
    u_role = dict(zip(roles.role, rng.normal(0, 0.6, n_roles)))
    s_role = dict(zip(roles.role, rng.normal(0, 0.05, n_roles)))
    u_task = {f"t{t}": v for t, v in enumerate(rng.normal(0, 0.4, n_tasks))}
    eta = (-1.0 + 0.25 * df.magnitude + 0.08 * df.magnitude * (df.group == "B") + 0.002 * (df.rating - 300)
           + df.role.map(u_role) + df.task.map(u_task) + df.magnitude * df.role.map(s_role))
    if binomial:
        return df.assign(label=rng.binomial(1, 1 / (1 + np.exp(-eta))))
    return df.assign(y=eta + rng.normal(0, 0.5, len(df)))


def test_parsing_expands_double_bars_nesting_and_counts():
    f = parse("cbind(k, n - k) ~ x * g + (1 + x || subj) + (1 | school/class) + (1 | a:b)")
    assert f.response == "k" and f.trials == "n - k" and f.fixed == "x * g"
    assert [str(t) for t in f.random] == ["(1 | subj)", "(0 + x | subj)", "(1 | school)", "(1 | school:class)",
                                          "(1 | a:b)"]
    assert f.variables == ["k", "n", "x", "g", "subj", "school", "class", "a", "b"]
    for bad in ("y ~ x | g", "y x", "y ~ (1 | g"):
        with pytest.raises(ConfigError):
            parse(bad)


@pytest.mark.r
@needs_r
@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", ["Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (Days || Subject)"])
def test_gaussian_matches_lmer_on_sleepstudy(sleepstudy, formula, reml):
    want = _r_fit(f"lmer({formula}, d, REML = {'TRUE' if reml else 'FALSE'})", sleepstudy)
    fit = fit_mixed(sleepstudy, formula, "python", reml=reml)
    t = fit.fixed.set_index("term")
    for r_name, term in (("(Intercept)", "Intercept"), ("Days", "Days")):
        assert t.loc[term, "estimate"] == pytest.approx(want["est"][r_name], rel=1e-3)
        assert t.loc[term, "se"] == pytest.approx(want["se"][r_name], rel=1e-3)
    variances = fit.variance.loc[~fit.variance["term"].str.startswith("cov("), "variance"].to_numpy()
    r_variances = [v for v in want["vc"] if v > 0] if "||" in formula else [want["vc"][0], want["vc"][1], want["vc"][3]]
    np.testing.assert_allclose(sorted(variances), sorted(r_variances), rtol=1e-3)
    assert fit.criterion == pytest.approx(want["criterion"], abs=1e-3)
    assert fit.converged and fit.fixed["inference"].eq("Wald z").all()


@pytest.mark.r
@needs_r
def test_binomial_laplace_matches_glmer_on_cbpp(cbpp):
    """glmer's Laplace criterion to 1e-3 relative. glmer is run with a tight PIRLS tolerance: at its
    default (tolPwrss = 1e-7) its finite-difference Hessian moves the standard errors by up to 1.1% here."""
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    want = _r_fit(f"glmer({formula}, d, family = binomial, control = glmerControl(tolPwrss = 1e-12))", cbpp)
    fit = fit_mixed(cbpp, formula, "python", family="binomial")
    t = fit.fixed.set_index("term")
    for r_name, term in (("(Intercept)", "Intercept"), ("period2", "period[T.2]"), ("period4", "period[T.4]")):
        assert t.loc[term, "estimate"] == pytest.approx(want["est"][r_name], rel=1e-3)
        assert t.loc[term, "se"] == pytest.approx(want["se"][r_name], rel=1e-3)
    assert fit.variance["variance"].iloc[0] == pytest.approx(want["vc"][0], rel=1e-3)
    assert fit.criterion == pytest.approx(want["criterion"], abs=1e-2)
    assert fit.converged


@pytest.mark.r
@needs_r
@pytest.mark.parametrize("family", ["gaussian", "binomial"])
def test_crossed_random_effects_match_r(family):
    df = _crossed_study(3, binomial=family == "binomial")
    if family == "gaussian":
        formula = "y ~ magnitude * group + rating + (magnitude | role) + (1 | task)"
        call = f"lmer({formula}, d)"
    else:
        formula = "label ~ magnitude * group + rating + (1 | role) + (1 | task)"
        call = f"glmer({formula}, d, family = binomial, control = glmerControl(tolPwrss = 1e-12))"
    want = _r_fit(call, df)
    fit = fit_mixed(df, formula, "python", family=family)
    t = fit.fixed.set_index("term")
    names = {"(Intercept)": "Intercept", "magnitude": "magnitude", "groupB": "group[T.B]", "rating": "rating",
             "magnitude:groupB": "magnitude:group[T.B]"}
    for r_name, term in names.items():
        assert t.loc[term, "estimate"] == pytest.approx(want["est"][r_name], rel=1e-3, abs=1e-6)
        assert t.loc[term, "se"] == pytest.approx(want["se"][r_name], rel=1e-3)
    assert fit.n_groups == {"role": 40, "task": 8}


@pytest.mark.parametrize("backend", ["python", pytest.param("lme4", marks=[pytest.mark.r, needs_r])])
@pytest.mark.parametrize("family", ["gaussian", "binomial"])
def test_rescaling_a_predictor_changes_only_its_units(backend, family):
    """magnitude x 1000: its estimate and se / 1000 exactly (to the optimizer's precision), every
    p-value, interval of other terms and percent slope difference unchanged."""
    df = _crossed_study(5, binomial=family == "binomial")
    y = "y" if family == "gaussian" else "label"
    formula = f"{y} ~ magnitude * group + (1 | role) + (1 | task)"
    a = fit_mixed(df, formula, backend, family=family).fixed.set_index("term")
    b = fit_mixed(df.assign(magnitude=df.magnitude * 1000), formula, backend, family=family).fixed.set_index("term")
    for term in ("magnitude", "magnitude:group[T.B]"):
        assert b.loc[term, "estimate"] * 1000 == pytest.approx(a.loc[term, "estimate"], rel=1e-5)
        assert b.loc[term, "se"] * 1000 == pytest.approx(a.loc[term, "se"], rel=1e-5)
    np.testing.assert_allclose(b["p_value"], a["p_value"], rtol=1e-4)
    np.testing.assert_allclose(b.loc[["Intercept", "group[T.B]"], ["ci_low", "ci_high"]],
                               a.loc[["Intercept", "group[T.B]"], ["ci_low", "ci_high"]], rtol=1e-5)
    pct = (a.loc["magnitude:group[T.B]", "estimate"] / a.loc["magnitude", "estimate"],
           b.loc["magnitude:group[T.B]", "estimate"] / b.loc["magnitude", "estimate"])
    assert pct[1] == pytest.approx(pct[0], rel=1e-5)


def test_the_studys_raw_units_give_the_well_conditioned_answer():
    """The failure the issue measured: magnitudes in the thousands made the old statsmodels fit report a
    slope se 495x too large, as converged. Every backend now gives the same se on either scale."""
    df = _crossed_study(7)
    formula = "y ~ magnitude * group + (1 | role)"
    ref = fit_mixed(df, formula, "python").fixed.set_index("term")
    raw = df.assign(magnitude=df.magnitude * 2000)
    for backend in ("python", "statsmodels"):
        fit = fit_mixed(raw, formula, backend)
        t = fit.fixed.set_index("term")
        assert fit.converged, (backend, fit.messages)
        assert t.loc["magnitude", "se"] * 2000 == pytest.approx(ref.loc["magnitude", "se"], rel=1e-4), backend


def test_a_boundary_fit_is_reported_as_not_converged():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(10)], 10), "x": rng.normal(size=100)})
    e = pd.Series(rng.normal(size=100))
    df["y"] = 1 + 0.5 * df.x + e - e.groupby(df.g).transform("mean")  # group means equal: less than no variation
    for backend in ("python", "statsmodels"):
        fit = fit_mixed(df, "y ~ x + (1 | g)", backend)
        assert not fit.converged, backend
        assert any("boundary" in m for m in fit.messages), (backend, fit.messages)
        assert not fit.fixed["converged"].any() and fit.fixed["messages"].str.contains("boundary").all()


def test_near_separation_is_reported_as_not_converged():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(12)], 20), "x": rng.normal(size=240)})
    df["label"] = (df.x > 0).astype(int)  # x predicts the outcome perfectly
    fit = fit_mixed(df, "label ~ x + (1 | g)", "python", family="binomial")
    assert not fit.converged
    assert any("separation" in m for m in fit.messages)


def test_laplace_glmm_recovers_known_parameters():
    """Over 40 simulated crossed studies: the mean estimate is within 3 Monte-Carlo standard errors of the
    truth, and the 95% Wald intervals cover the truth at a rate binomially consistent with 0.95."""
    truth = {"magnitude": 0.25, "magnitude:group[T.B]": 0.08}
    est, cover = {k: [] for k in truth}, {k: 0 for k in truth}
    sims = 40
    for s in range(sims):
        df = _crossed_study(100 + s, n_roles=30, n_tasks=6, binomial=True)
        t = fit_mixed(df, "label ~ magnitude * group + rating + (1 | role) + (1 | task)", family="binomial")
        t = t.fixed.set_index("term")
        for k, v in truth.items():
            est[k].append(t.loc[k, "estimate"])
            cover[k] += t.loc[k, "ci_low"] <= v <= t.loc[k, "ci_high"]
    for k, v in truth.items():
        e = np.array(est[k])
        assert abs(e.mean() - v) < 3 * e.std(ddof=1) / np.sqrt(sims) + 0.02, (k, e.mean())
        assert cover[k] >= 33, (k, cover[k])  # P(X <= 32 | n=40, p=0.95) < 0.001


def test_a_backend_that_cannot_fit_a_formula_refuses_it():
    df = _crossed_study(2)
    with pytest.raises(ConfigError, match="statsmodels"):
        fit_mixed(df, "y ~ magnitude + (magnitude | role) + (1 | task)", "statsmodels")
    with pytest.raises(ConfigError, match="not a column"):
        fit_mixed(df, "y ~ magnitud + (1 | role)")


def test_fit_command_writes_the_three_files(tmp_path, capsys):
    df = _crossed_study(4)
    path = tmp_path / "obs.csv.gz"
    df.rename(columns={"role": "word"}).to_csv(path, index=False, compression="gzip")
    out = tmp_path / "fit"
    code = main(["fit", str(path), "--formula", "y ~ magnitude * group + (1 | role) + (1 | task)",
                 "--columns", "role=word", "--out", str(out)] + (["--check"] if r_available() else []))
    assert code == 0
    fixed = pd.read_csv(out / "fixed.csv")
    assert list(fixed.columns) == ["term", "estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high",
                                   "backend", "inference", "converged", "messages"]
    info = json.loads((out / "fit.json").read_text())
    assert info["n"] == len(df) and info["n_groups"] == {"role": 40, "task": 8} and info["converged"]
    if r_available():
        assert info["check"]["max_estimate_difference_in_se"] < 1e-2
    assert main(["fit", str(path), "--formula", "y ~ magnitude + (1 | role)", "--columns", "role=wrd",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "wrd" in capsys.readouterr().err and not (tmp_path / "bad").exists()
