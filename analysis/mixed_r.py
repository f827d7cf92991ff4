"""The lme4 backend: R's lme4 + lmerTest through rpy2 (Satterthwaite df for gaussian models; glmer's
Laplace fit for binomial ones, Wald z). Warnings and lme4's convergence messages are kept, never
swallowed.

Why rpy2 rather than pymer4: pymer4 0.8.2 calls DataFrame.applymap (gone in pandas 3) and 0.9 needs R
packages Debian lacks, while lme4 + lmerTest are a few lines of R. rpy2 is pinned < 3.6 for R 4.2.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from animacy.analysis.formula import Design
from animacy.analysis.mixed import RawFit

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
  if (isSingular(fit)) msgs <- c(msgs, "boundary (singular) fit: see help('isSingular')")
  co <- if (family == "binomial") summary(fit)$coefficients else summary(fit, ddf = "Satterthwaite")$coefficients
  dfs <- if (family == "binomial") rep(Inf, nrow(co)) else co[, 3]
  crit <- if (family == "gaussian" && reml) REMLcrit(fit) else -2 * as.numeric(logLik(fit))
  vc <- as.data.frame(VarCorr(fit))
  re <- ranef(fit)
  g1 <- names(re)[1]
  list(terms = rownames(co), est = co[, 1], df = dfs, criterion = crit,
       vcov = as.matrix(vcov(fit)), vc_grp = vc$grp, vc_var1 = ifelse(is.na(vc$var1), "", vc$var1),
       vc_var2 = ifelse(is.na(vc$var2), "", vc$var2), vc_vcov = vc$vcov,
       blup_group = g1, blup_levels = rownames(re[[1]]), blup_terms = colnames(re[[1]]),
       blups = as.matrix(re[[1]]), optimizer = paste(fit@optinfo$optimizer, collapse = ", "),
       messages = unique(msgs))
}
"""


def environment_without_r() -> dict[str, str]:
    """This process's environment minus what embedding R added: rpy2 prepends R's library folders to
    LD_LIBRARY_PATH, which breaks the extension modules of Python child processes (e.g. a kernel)."""
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


def _patsy_name(term: str, factors: dict[str, list[str]]) -> str:
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


def fit_lme4(design: Design, family: str, reml: bool) -> RawFit:
    import rpy2.robjects as ro
    from rpy2.robjects import pandas2ri
    from rpy2.robjects.conversion import localconverter

    from animacy.errors import ConfigError

    if not r_available():
        raise ConfigError("--backend lme4", "needs R with lme4 and lmerTest, and rpy2 (./setup.sh --dev installs them)")
    data = design.data
    factors = {}
    df = data.copy()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            factors[c] = [str(x) for x in df[c].cat.categories]
        elif not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            if pd.api.types.is_bool_dtype(df[c]):
                df[c] = df[c].astype(int)
            else:
                factors[c] = sorted(df[c].astype(str).unique())
    with localconverter(ro.default_converter + pandas2ri.converter):
        rdf = ro.conversion.py2rpy(df.assign(**{c: df[c].astype(str) for c in factors}))
    for c, levels in factors.items():  # the reference level first, as patsy has it
        idx = list(rdf.colnames).index(c)
        rdf[idx] = ro.r["factor"](ro.StrVector(df[c].astype(str)), levels=ro.StrVector(levels))
    out = ro.r(_R_HELPER)(rdf, design.formula.text, reml, family)
    get = dict(zip(out.names, out))
    terms = [_patsy_name(t, factors) for t in get["terms"]]
    order = [terms.index(t) for t in design.fixed_names]  # the design's order (R may differ for interactions)
    est = np.array(get["est"])[order]
    vcov = np.array(get["vcov"])[np.ix_(order, order)]
    variance = []
    for g, v1, v2, v in zip(get["vc_grp"], get["vc_var1"], get["vc_var2"], get["vc_vcov"]):
        group = re.sub(r"\.\d+$", "", str(g))  # (x || g) terms come back as g, g.1, ...
        variance.append({"group": group, "term": _patsy_name(v1, factors) if v1 else "",
                         "term2": _patsy_name(v2, factors) if v2 else None, "value": float(v)})
    first = str(get["blup_group"][0])
    blups = pd.DataFrame(np.array(get["blups"]), index=pd.Index(list(get["blup_levels"]), name=first),
                         columns=[_patsy_name(t, factors) for t in get["blup_terms"]])
    msgs = [str(m) for m in get["messages"]]
    return RawFit(est, vcov, np.array(get["df"])[order], variance,
                  {first: blups}, float(get["criterion"][0]), True, msgs,
                  "Wald z" if family == "binomial" else "t, Satterthwaite df (lmerTest)",
                  str(get["optimizer"][0]))
