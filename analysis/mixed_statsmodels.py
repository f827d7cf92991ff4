"""The statsmodels backend: MixedLM for gaussian models (the first random term's factor is the group;
a factor nested in it or crossed with it enters as a variance component) and, for binomial models,
statsmodels' variational Bayes, labelled as such: its posterior sds were 0.46-0.62x glmer's standard
errors on simulated data, so its intervals are too narrow for inference.

MixedLM is fitted with four optimizers and the best REML/ML criterion is kept; its gradient at that
optimum is checked, and a variance component at zero is reported as a boundary fit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from animacy.analysis.formula import Design
from animacy.analysis.mixed import RawFit
from animacy.errors import ConfigError

VB_NOTE = ("variational Bayes: 'se' is a posterior sd, 0.46-0.62x glmer's standard errors on simulated data, so "
           "these intervals are too narrow; use the python or lme4 backend for inference")


def _refuse(design: Design, why: str):
    raise ConfigError("--backend statsmodels", f"cannot fit '{design.formula.text}': {why}; use --backend python "
                      "or lme4")


def fit_statsmodels(design: Design, family: str, reml: bool) -> RawFit:
    f = design.formula
    if family == "binomial":
        return _fit_vb(design)
    import statsmodels.formula.api as smf

    data = design.data.copy()
    if any(":" in t.group for t in f.random):
        _refuse(design, "statsmodels takes grouping factors that are columns, not combinations (a:b)")
    first, *others = f.random
    group = first.group
    nested = all(data.groupby(t.group)[group].nunique().max() == 1 for t in others)
    if others and not nested:  # crossed: one group holding everything, every factor a component
        if any(t.expr != "1" for t in f.random):
            _refuse(design, "random slopes with crossed factors")
        data["_all"] = 1
        vc = {t.group: f"0 + C({t.group})" for t in f.random}
        group, re_formula = "_all", "0"
    else:
        if any(t.expr != "1" for t in others) or len({t.group for t in f.random}) < len(f.random):
            _refuse(design, "random slopes on a second grouping factor, or several terms on one factor")
        re_formula = first.expr
        vc = {t.group: f"0 + C({t.group})" for t in others}
    y = f.response
    model = smf.mixedlm(f"{y} ~ {f.fixed}", data, groups=data[group], re_formula=re_formula, vc_formula=vc or None)
    tried, best, messages = {}, None, []
    for method in ("lbfgs", "bfgs", "powell", "nm"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = model.fit(reml=reml, method=method)
            except (np.linalg.LinAlgError, ValueError) as exc:
                tried[method] = float("nan")
                messages.append(f"{method}: {exc}")
                continue
        tried[method] = float(-2 * res.llf)
        if best is None or res.llf > best[0].llf:
            best = (res, method, caught)
    if best is None:
        return _failed(design, messages, tried)
    res, method, caught = best
    messages = sorted({str(w.message).splitlines()[0] for w in caught
                       if any(k in str(w.message).lower() for k in ("converge", "singular", "boundary", "hessian"))})
    grad = model.score(res.params_object, profile_fe=False)
    if np.max(np.abs(grad)) > 1e-2 * max(1.0, np.sqrt(len(design.y))):
        messages.append(f"failed to converge: the gradient at the best optimum is {np.max(np.abs(grad)):.2g}")
    if not res.converged:
        messages.append(f"statsmodels reports that {method} did not converge")
    names = list(model.exog_names)
    variance, modes = [], {}
    if group != "_all":
        cov_re = res.cov_re
        label = {a: "Intercept" if a in ("Group", "Intercept") else a for a in cov_re.index}
        for i, a in enumerate(cov_re.index):
            variance.append({"group": group, "term": label[a], "term2": None, "value": float(cov_re.loc[a, a])})
            variance += [{"group": group, "term": label[a], "term2": label[b], "value": float(cov_re.loc[a, b])}
                         for b in cov_re.index[i + 1:]]
        blups = pd.DataFrame({k: v.iloc[: len(cov_re)] for k, v in res.random_effects.items()}).T
        blups.columns = [label.get(c, c) for c in blups.columns]
        blups.index.name = group
        modes[group] = blups
    for name, v in zip(model.exog_vc.names, np.atleast_1d(res.vcomp)):
        variance.append({"group": name, "term": "Intercept", "term2": None, "value": float(v)})
    variance.append({"group": "Residual", "term": "", "term2": None, "value": float(res.scale)})
    for r in variance:
        if r["term2"] is None and r["group"] != "Residual" and r["value"] < 1e-8 * res.scale:
            messages.append(f"boundary (singular) fit: the variance of {r['term']} in {r['group']} is estimated at 0")
    cov = res.cov_params().loc[names, names].to_numpy()
    crit = float(-2 * res.llf)
    return RawFit(res.fe_params.to_numpy(), cov, np.full(len(names), np.inf), variance, modes, crit, True,
                  messages, "Wald z", f"statsmodels {method}", tried)


def _failed(design: Design, messages: list[str], tried: dict) -> RawFit:
    p = len(design.fixed_names)
    return RawFit(np.full(p, np.nan), np.full((p, p), np.nan), np.full(p, np.inf), [], {}, np.nan, False,
                  ["every optimizer failed", *messages], "Wald z", "", tried)


def _fit_vb(design: Design) -> RawFit:
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    f = design.formula
    if any(t.expr != "1" for t in f.random) or f.trials is not None:
        _refuse(design, "variational Bayes takes 0/1 outcomes with random intercepts only")
    model = BinomialBayesMixedGLM.from_formula(f"{f.response} ~ {f.fixed}",
                                               {t.group: f"0 + C({t.group})" for t in f.random}, design.data)
    res = model.fit_vb()
    sd = np.asarray(res.fe_sd)
    variance = [{"group": g, "term": "Intercept", "term2": None, "value": float(np.exp(2 * m))}
                for g, m in zip(model.vcp_names, res.vcp_mean)]
    return RawFit(np.asarray(res.fe_mean), np.diag(sd ** 2), np.full(len(sd), np.inf), variance, {}, np.nan, True,
                  [VB_NOTE], "variational Bayes (posterior mean ± 1.96 sd)", "statsmodels fit_vb")
