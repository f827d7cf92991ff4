"""Linear mixed models with one output table and two backends.

`fit_mixed(data, formula spec, backend)` fits `y ~ fixed + (random)` with statsmodels (default, no R)
or R's lme4 + lmerTest through rpy2 (Satterthwaite df), and returns tidy tables:

- fixed effects: term, estimate, se, df, statistic, p_value, ci_low, ci_high, backend
  (terms in patsy notation: Intercept, magnitude, group[T.X], magnitude:group[T.X]);
- variance components: group, term, variance, sd;
- convergence messages, never swallowed.

Why rpy2 rather than pymer4: pymer4 0.8.2 calls DataFrame.applymap (gone in pandas 3) and 0.9 needs R
packages Debian lacks, while lme4 + lmerTest are a few lines of R. rpy2 is pinned < 3.6 for R 4.2.

Random-effect specs use lme4 syntax: "(1 | role)", "(magnitude | role)", "(1 | task_id)",
"(1 | response_id)". statsmodels takes one grouping factor for its random effects; other factors nested
in it (response in role) become variance components within it, and crossed factors (task) make the
whole data one group with variance components for each: exact but slow on big tables, where lme4 is
the backend to use.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

FIXED_COLUMNS = ["term", "estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high", "backend"]
_RE = re.compile(r"\(\s*(.+?)\s*\|\s*([\w.]+)\s*\)")


@dataclass
class MixedFit:
    """A fitted mixed model as tables; `vcov` is the fixed-effect covariance (terms as in `fixed`)."""

    fixed: pd.DataFrame
    variance: pd.DataFrame
    vcov: pd.DataFrame
    converged: bool
    messages: list[str] = field(default_factory=list)
    random_effects: pd.DataFrame | None = None  # BLUPs: group level x term


def parse_formula(formula: str) -> tuple[str, str, list[tuple[str, str]]]:
    """'y ~ a * b + (1 | g) + (x | h)' -> ('y', 'a * b', [('1', 'g'), ('x', 'h')])."""
    lhs, rhs = (s.strip() for s in formula.split("~", 1))
    randoms = [(a.strip(), b.strip()) for a, b in _RE.findall(rhs)]
    fixed = _RE.sub("", rhs)
    fixed = re.sub(r"\+\s*(\+\s*)+", "+ ", fixed).strip().strip("+").strip() or "1"
    return lhs, fixed, randoms


def _wald_table(est, se, df, names, backend) -> pd.DataFrame:
    est, se = np.asarray(est, float), np.asarray(se, float)
    df = np.broadcast_to(np.asarray(df, float), est.shape)
    stat = est / se
    finite = np.isfinite(df)
    p = np.where(finite, 2 * stats.t.sf(np.abs(stat), np.where(finite, df, 1)), 2 * stats.norm.sf(np.abs(stat)))
    q = np.where(finite, stats.t.ppf(0.975, np.where(finite, df, 1)), stats.norm.ppf(0.975))
    return pd.DataFrame({"term": list(names), "estimate": est, "se": se, "df": df, "statistic": stat,
                         "p_value": p, "ci_low": est - q * se, "ci_high": est + q * se, "backend": backend})


def fit_statsmodels(data: pd.DataFrame, formula: str, reml: bool = True) -> MixedFit:
    """statsmodels MixedLM. The first random term's factor is the group; a factor nested in it or
    crossed with it enters as a variance component. Wald z intervals (df = inf)."""
    import statsmodels.formula.api as smf

    y, fixed, randoms = parse_formula(formula)
    if not randoms:
        raise ValueError("a mixed model needs at least one random term, e.g. (1 | role)")
    (expr, group), *others = randoms
    vc = {}
    nested = all(data.groupby(g)[group].nunique().max() == 1 for _, g in others)
    if others and not nested:  # crossed: one group holding everything, every factor a component
        data = data.assign(_all=1)
        vc = {g: f"0 + C({g})" for _, g in randoms}
        group, re_formula = "_all", "0"
        if any(e != "1" for e, _ in randoms):
            raise ValueError("statsmodels: random slopes with crossed factors are not supported; use lme4")
    else:
        re_formula = "1" if expr == "1" else f"1 + {expr.replace('1 +', '').strip()}"
        vc = {g: f"0 + C({g})" for e, g in others}
        if any(e != "1" for e, _ in others):
            raise ValueError("statsmodels: random slopes are supported on the first grouping factor only")
    model = smf.mixedlm(f"{y} ~ {fixed}", data, groups=data[group], re_formula=re_formula,
                        vc_formula=vc or None)
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = None
        for method in ("lbfgs", "bfgs", "powell", "nm"):
            res = model.fit(reml=reml, method=method)
            if res.converged:
                break
    messages += sorted({str(w.message).splitlines()[0] for w in caught
                        if "converge" in str(w.message).lower() or "singular" in str(w.message).lower()
                        or "boundary" in str(w.message).lower()})
    names = list(model.exog_names)
    fe = res.fe_params
    cov = res.cov_params().loc[names, names]
    fixed_tab = _wald_table(fe.values, np.sqrt(np.diag(cov)), np.inf, names, "statsmodels")
    var_rows = []
    if group != "_all":
        cov_re = res.cov_re
        label = {a: "Intercept" if a in ("Group", "Intercept") else a for a in cov_re.index}
        for a in cov_re.index:
            var_rows.append({"group": group, "term": label[a],
                             "variance": float(cov_re.loc[a, a]), "sd": float(np.sqrt(cov_re.loc[a, a]))})
        for i, a in enumerate(cov_re.index):
            for b in cov_re.index[i + 1:]:
                var_rows.append({"group": group, "term": f"cov({label[a]}, {label[b]})",
                                 "variance": float(cov_re.loc[a, b]), "sd": np.nan})
    for name, v in zip(model.exog_vc.names, np.atleast_1d(res.vcomp)):
        var_rows.append({"group": name, "term": "Intercept", "variance": float(v), "sd": float(np.sqrt(v))})
    var_rows.append({"group": "Residual", "term": "", "variance": float(res.scale), "sd": float(np.sqrt(res.scale))})
    blups = None
    if group != "_all":
        blups = pd.DataFrame({k: v.iloc[: len(res.cov_re)] for k, v in res.random_effects.items()}).T
        blups.columns = ["Intercept" if c in ("Group", "Intercept") else c for c in blups.columns]
        blups.index.name = group
    return MixedFit(fixed_tab, pd.DataFrame(var_rows), cov, bool(res.converged), messages, blups)


_R_HELPER = r"""
function(df, formula, reml, family) {
  suppressPackageStartupMessages({library(lme4); library(lmerTest)})
  msgs <- character(0)
  fit <- withCallingHandlers(
    if (family == "binomial") lme4::glmer(as.formula(formula), data = df, family = binomial)
    else lmerTest::lmer(as.formula(formula), data = df, REML = reml),
    warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") })
  msgs <- c(msgs, unlist(fit@optinfo$conv$lme4$messages))
  if (isSingular(fit)) msgs <- c(msgs, "boundary (singular) fit")
  co <- if (family == "binomial") summary(fit)$coefficients else summary(fit, ddf = "Satterthwaite")$coefficients
  dfs <- if (family == "binomial") rep(Inf, nrow(co)) else co[, 3]
  vc <- as.data.frame(VarCorr(fit))
  re <- ranef(fit)
  g1 <- names(re)[1]
  list(terms = rownames(co), est = co[, 1], se = co[, 2], df = dfs,
       vcov = as.matrix(vcov(fit)), vc_grp = vc$grp, vc_var1 = ifelse(is.na(vc$var1), "", vc$var1),
       vc_var2 = ifelse(is.na(vc$var2), "", vc$var2), vc_vcov = vc$vcov,
       blup_group = g1, blup_levels = rownames(re[[1]]), blup_terms = colnames(re[[1]]),
       blups = as.matrix(re[[1]]), messages = unique(msgs))
}
"""


def _r_term(term: str, factors: dict[str, list[str]]) -> str:
    """lme4 names ('(Intercept)', 'groupLow Mental, ...') -> patsy names ('Intercept', 'group[T.Low ...]')."""
    if term == "(Intercept)":
        return "Intercept"
    parts = []
    for piece in term.split(":"):
        for f, levels in factors.items():
            if piece.startswith(f) and piece[len(f):] in levels:
                piece = f"{f}[T.{piece[len(f):]}]"
                break
        parts.append(piece)
    return ":".join(parts)


def environment_without_r() -> dict[str, str]:
    """This process's environment minus what embedding R added: rpy2 prepends R's library folders to
    LD_LIBRARY_PATH, which breaks the extension modules of Python child processes (e.g. a kernel)."""
    import os

    env = dict(os.environ)
    r_home = env.get("R_HOME")
    if r_home and "LD_LIBRARY_PATH" in env:
        kept = [p for p in env["LD_LIBRARY_PATH"].split(":") if p and not p.startswith(r_home)
                and p not in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/jvm/default-java/lib/server")]
        if kept:
            env["LD_LIBRARY_PATH"] = ":".join(kept)
        else:
            del env["LD_LIBRARY_PATH"]
    return env


def r_available() -> bool:
    try:
        import rpy2.robjects as ro

        ro.r('suppressPackageStartupMessages({library(lme4); library(lmerTest)})')
        return True
    except Exception:  # R, rpy2, lme4 or lmerTest missing
        return False


def fit_lme4(data: pd.DataFrame, formula: str, reml: bool = True, family: str = "gaussian") -> MixedFit:
    """R lme4 + lmerTest via rpy2: Satterthwaite df, t intervals, warnings kept as messages. With
    family='binomial', lme4's glmer (Laplace): Wald z intervals on the logit scale."""
    import rpy2.robjects as ro
    from rpy2.robjects import pandas2ri
    from rpy2.robjects.conversion import localconverter

    factors = {c: list(data[c].cat.categories) for c in data.columns if isinstance(data[c].dtype, pd.CategoricalDtype)}
    used = sorted(set(re.findall(r"[A-Za-z_][\w.]*", formula)) & set(data.columns))
    df = data[used].copy()
    for c in used:
        if c in factors:
            continue
        if not pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].astype(str)
    with localconverter(ro.default_converter + pandas2ri.converter):
        rdf = ro.conversion.py2rpy(df)
    for c, levels in factors.items():  # keep the reference level first
        if c in used:
            idx = list(rdf.colnames).index(c)
            rdf[idx] = ro.r["factor"](ro.StrVector(df[c].astype(str)), levels=ro.StrVector(levels))
    out = ro.r(_R_HELPER)(rdf, formula, reml, family)
    get = dict(zip(out.names, out))
    terms = [_r_term(t, factors) for t in get["terms"]]
    fixed_tab = _wald_table(np.array(get["est"]), np.array(get["se"]), np.array(get["df"]), terms, "lme4")
    vcov = pd.DataFrame(np.array(get["vcov"]), index=terms, columns=terms)
    var_rows = []
    for g, v1, v2, v in zip(get["vc_grp"], get["vc_var1"], get["vc_var2"], get["vc_vcov"]):
        if v2:  # a covariance between two random terms
            var_rows.append({"group": g, "term": f"cov({_r_term(v1, factors)}, {_r_term(v2, factors)})",
                             "variance": float(v), "sd": np.nan})
        else:
            var_rows.append({"group": g, "term": _r_term(v1, factors) if v1 else "", "variance": float(v),
                             "sd": float(np.sqrt(v))})
    msgs = [str(m) for m in get["messages"]]
    blups = pd.DataFrame(np.array(get["blups"]), index=list(get["blup_levels"]),
                         columns=[_r_term(t, factors) for t in get["blup_terms"]])
    blups.index.name = str(get["blup_group"][0])
    converged = not any("converge" in m.lower() for m in msgs)
    return MixedFit(fixed_tab, pd.DataFrame(var_rows), vcov, converged, msgs, blups)


def fit_binomial_statsmodels(data: pd.DataFrame, formula: str) -> MixedFit:
    """statsmodels' Bayesian mixed logistic model (variational Bayes), random intercepts only. Its
    'se' is the posterior sd and intervals are mean +/- 1.96 sd: an approximation to glmer's Laplace
    fit, close for the fixed effects (compared in the tests)."""
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    y, fixed, randoms = parse_formula(formula)
    if any(e != "1" for e, _ in randoms):
        raise ValueError("statsmodels' binomial mixed model takes random intercepts only; use lme4")
    model = BinomialBayesMixedGLM.from_formula(f"{y} ~ {fixed}", {g: f"0 + C({g})" for _, g in randoms}, data)
    res = model.fit_vb()
    names = list(model.exog_names)
    messages = ["variational Bayes: its posterior sds were 0.46-0.62x glmer's standard errors on simulated data, "
                "so these intervals are too narrow; use --backend lme4 for inference"]
    fixed_tab = _wald_table(res.fe_mean, res.fe_sd, np.inf, names, "statsmodels-vb")
    cov = pd.DataFrame(np.diag(np.asarray(res.fe_sd) ** 2), index=names, columns=names)
    var = pd.DataFrame([{"group": g, "term": "Intercept", "variance": float(np.exp(2 * m)), "sd": float(np.exp(m))}
                        for g, m in zip(model.vcp_names, res.vcp_mean)])
    return MixedFit(fixed_tab, var, cov, True, messages)


BACKENDS = {"statsmodels": fit_statsmodels, "lme4": fit_lme4}


def fit_mixed(data: pd.DataFrame, formula: str, backend: str = "statsmodels", reml: bool = True,
              family: str = "gaussian") -> MixedFit:
    """Fit a linear (family='gaussian') or logistic (family='binomial') mixed model."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if family == "binomial":
        return fit_binomial_statsmodels(data, formula) if backend == "statsmodels" else fit_lme4(
            data, formula, family="binomial")
    return BACKENDS[backend](data, formula, reml)
