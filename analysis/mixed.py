"""Mixed models from an lme4 formula, with one output and three backends.

    fit = fit_mixed(table, "log_prob ~ magnitude * group + (1 | role)")          # gaussian (REML)
    fit = fit_mixed(table, "label ~ anim_mental + (1 | task) + (1 | role)", family="binomial")

Backends:

- `python` (default, no R): lme4's own criteria in numpy/scipy (`mixed_engine`): the profiled REML/ML
  deviance, and for binomial models the Laplace deviance glmer maximises (nAGQ = 1). Any random
  structure. Wald z tests (df = inf).
- `lme4`: R's lme4 + lmerTest through rpy2 (`mixed_r`): Satterthwaite df for gaussian models, glmer for
  binomial ones, lme4's own convergence messages.
- `statsmodels`: MixedLM (one grouping factor plus variance components) and, for binomial models,
  variational Bayes, labelled as such in every row (its posterior sds are not standard errors).

Whatever the backend, the formula module rescales the predictors (and a gaussian response) before the fit
and every number is mapped back here, so multiplying a predictor by 1000 divides its estimate and se by
exactly 1000 and changes no p-value or interval. A fit is `converged` only if every check passed; the
reasons otherwise are in `messages`, which every table carries next to the numbers.

Tables (pingouin style): `fixed` (term, estimate, se, df, statistic, p_value, ci_low, ci_high, backend,
inference, converged, messages; terms named as patsy names them: `Intercept`, `group[T.x]`,
`magnitude:group[T.x]`), `variance` (group, term, variance, sd; `cov(a, b)` rows for covariances).

>>> from animacy.analysis.simulate import example_means
>>> means = example_means()
>>> fit = fit_mixed(means[means["condition"] == "steered"], "mean_log_prob ~ magnitude * group + (1 | role)")
>>> fit.converged, fit.fixed["term"].tolist()[:2]
(True, ['Intercept', 'group[T.Low Mental, High Physical]'])
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from animacy.analysis import BACKENDS
from animacy.analysis.formula import Design, build, parse
from animacy.errors import ConfigError, DataError

FIXED_COLUMNS = ["term", "estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high", "backend", "inference",
                 "converged", "messages"]
FAMILIES = ("gaussian", "binomial")
SEPARATION = 10.0  # |coefficient| on the logit scale of rescaled predictors that signals near separation
_NOT_CONVERGED = re.compile(r"converge|singular|boundary|hessian|unidentifiable|failed|separation|not positive", re.I)


@dataclass
class RawFit:
    """What a backend returns, on the design's rescaled variables (the wrapper maps it back)."""

    beta: np.ndarray
    vcov: np.ndarray
    df: np.ndarray  # per fixed coefficient; inf for Wald z
    variance: list[dict]  # {group, term, term2 (None unless a covariance), value}; group 'Residual' for sigma^2
    modes: dict[str, pd.DataFrame]  # grouping factor -> levels x random terms (conditional modes)
    criterion: float
    converged: bool
    messages: list[str]
    inference: str
    optimizer: str = ""
    tried: dict[str, float] = field(default_factory=dict)


@dataclass
class MixedFit:
    """A fitted mixed model as tidy tables, in the data's own units. `vcov` is the fixed effects'
    covariance; `random_effects` the conditional modes (BLUPs) of the first grouping factor."""

    fixed: pd.DataFrame
    variance: pd.DataFrame
    vcov: pd.DataFrame
    converged: bool
    messages: list[str] = field(default_factory=list)
    random_effects: pd.DataFrame | None = None
    formula: str = ""
    family: str = "gaussian"
    backend: str = "python"
    reml: bool = True
    n: int = 0
    n_groups: dict[str, int] = field(default_factory=dict)
    criterion: float = np.nan
    optimizer: str = ""
    tried: dict[str, float] = field(default_factory=dict)
    scaled: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict:
        """What `fit.json` records."""
        return {"formula": self.formula, "family": self.family, "backend": self.backend,
                "reml": self.reml if self.family == "gaussian" else None, "n": self.n, "n_groups": self.n_groups,
                "criterion": self.criterion,
                "criterion_name": ("REML criterion" if self.reml and self.family == "gaussian" else "-2 log-likelihood")
                + (" (Laplace)" if self.family == "binomial" else ""),
                "optimizer": self.optimizer, "optimizers_tried": self.tried, "converged": self.converged,
                "messages": self.messages, "rescaled_internally": self.scaled}


def wald_table(est, se, df, names, backend: str, inference: str) -> pd.DataFrame:
    """Estimates with t (finite df) or z (df = inf) tests and 95% intervals."""
    est, se = np.asarray(est, float), np.asarray(se, float)
    df = np.broadcast_to(np.asarray(df, float), est.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    finite = np.isfinite(df)
    p = np.where(finite, 2 * stats.t.sf(np.abs(stat), np.where(finite, df, 1)), 2 * stats.norm.sf(np.abs(stat)))
    q = np.where(finite, stats.t.ppf(0.975, np.where(finite, df, 1)), stats.norm.ppf(0.975))
    return pd.DataFrame({"term": list(names), "estimate": est, "se": se, "df": df, "statistic": stat,
                         "p_value": p, "ci_low": est - q * se, "ci_high": est + q * se, "backend": backend,
                         "inference": inference})


def _python(design: Design, family: str, reml: bool) -> RawFit:
    from animacy.analysis import mixed_engine as eng

    fit = eng.fit_binomial(design) if family == "binomial" else eng.fit_gaussian(design, reml)
    variance, modes = [], {}
    for t, names, level_names, cov, b in zip(design.formula.random, design.random_names, design.levels,
                                             fit.covariances, fit.modes):
        for i, a in enumerate(names):
            variance.append({"group": t.group, "term": a, "term2": None, "value": cov[i, i]})
            variance += [{"group": t.group, "term": a, "term2": names[j], "value": cov[i, j]}
                         for j in range(i + 1, len(names))]
        part = pd.DataFrame(b, index=pd.Index(level_names, name=t.group), columns=names)
        modes[t.group] = part if t.group not in modes else modes[t.group].join(part, how="outer")
    if family == "gaussian":
        variance.append({"group": "Residual", "term": "", "term2": None, "value": fit.sigma2})
    return RawFit(fit.beta, fit.vcov, np.full(len(fit.beta), np.inf), variance, modes, fit.criterion, fit.converged,
                  fit.messages, "Wald z", fit.optimizer, fit.tried)


def _backend(name: str):
    if name == "python":
        return _python
    if name == "lme4":
        from animacy.analysis.mixed_r import fit_lme4

        return fit_lme4
    from animacy.analysis.mixed_statsmodels import fit_statsmodels

    return fit_statsmodels


def fit_mixed(data: pd.DataFrame, formula: str, backend: str = "python", reml: bool = True,
              family: str = "gaussian", source: str = "the table") -> MixedFit:
    """Fit `formula` (lme4 syntax) to `data`; every number in the data's own units."""
    if backend not in BACKENDS:
        raise ConfigError("--backend", f"unknown backend '{backend}'; choose {', '.join(BACKENDS)}")
    if family not in FAMILIES:
        raise ConfigError("--family", f"unknown family '{family}'; choose {', '.join(FAMILIES)}")
    f = parse(formula)
    if not f.random:
        raise ConfigError("--formula", f"'{formula}' has no random term such as (1 | role); a mixed model needs one")
    design = build(f, data, family, source=source)
    p = len(design.fixed_names)
    if design.n <= p + 1:
        raise ConfigError("--formula", f"'{formula}' has {p} fixed effects, and {source} holds only {design.n} "
                          "usable rows: too few to estimate them and a variance")
    raw = _backend(backend)(design, family, reml)
    return _to_original_units(raw, design, family, backend, reml)


def fit_by(data: pd.DataFrame, by: str, formula: str, backend: str = "python", reml: bool = True,
           family: str = "gaussian", what: str = "the rows", keep_errors: bool = False) -> dict:
    """`fit_mixed` on every `by` group of `data` (in sorted order): {group: MixedFit}. With the python
    backend the fits run in parallel processes, one per core. A group that cannot be fitted raises its
    error, or with `keep_errors` maps to the error (a `ConfigError` saying why)."""
    jobs = {key: (part, formula, f"{what} of {by} {key}") for key, part in data.groupby(by, sort=True, observed=True)}
    return fit_many(jobs, backend, reml, family, keep_errors)


def fit_many(jobs: dict, backend: str = "python", reml: bool = True, family: str = "gaussian",
             keep_errors: bool = False) -> dict:
    """`fit_mixed` on each {key: (data, formula, source)}: {key: MixedFit}, in parallel processes (one per
    core, kept for the session) with the python backend. Errors as in `fit_by`."""
    keys = list(jobs)
    args = [(data, formula, backend, reml, family, source) for data, formula, source in jobs.values()]
    pool = _pool() if backend == "python" and len(args) > 1 else None
    try:
        results = list(pool.map(_fit_job, args)) if pool is not None else [_fit_job(job) for job in args]
    except BrokenProcessPool:  # a worker died (killed, out of memory): fit here instead, and start afresh
        _shutdown()
        results = [_fit_job(job) for job in args]
    out = {}
    for key, res in zip(keys, results):
        if isinstance(res, tuple):  # an error, sent as (class, fields): DataError does not pickle itself
            res = res[0](**res[1])
            if not keep_errors:
                raise res
        out[key] = res
    return out


_POOL: ProcessPoolExecutor | None = None


def _pool() -> ProcessPoolExecutor | None:
    """One pool of fitting processes per session, one per core, started from a clean fork server (never
    forked from this process, whose DuckDB, BLAS or numba threads a fork would copy half-way); None on one
    core."""
    global _POOL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if _POOL is None and cores > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            ctx.set_forkserver_preload(["animacy.analysis.mixed", "animacy.analysis.mixed_engine"])
        _POOL = ProcessPoolExecutor(cores, mp_context=ctx)
        atexit.register(_shutdown)
    return _POOL


def _shutdown() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None


def _fit_job(job: tuple):
    data, formula, backend, reml, family, source = job
    try:
        return fit_mixed(data, formula, backend, reml, family, source)
    except DataError as exc:
        return type(exc), dict(vars(exc))


def _to_original_units(raw: RawFit, d: Design, family: str, backend: str, reml: bool) -> MixedFit:
    sy = d.response_scale
    m = d.fixed_scale * sy
    names = d.fixed_names
    messages = list(d.messages) + list(raw.messages)
    body = d.fixed_names[1:] if names and names[0] == "Intercept" else names
    if family == "binomial":
        far = [n for n, b in zip(names, raw.beta) if n in body and abs(b) > SEPARATION]
        if far:
            messages.append(f"near separation: the coefficient of {', '.join(far)} is beyond ±{SEPARATION:g} on the "
                            "logit scale of the rescaled predictors (the outcome is almost perfectly predicted)")
    converged = raw.converged and not any(_NOT_CONVERGED.search(msg) for msg in messages)
    se = np.sqrt(np.diag(raw.vcov)) * np.abs(m)
    fixed = wald_table(raw.beta * m, se, raw.df, names, backend, raw.inference)
    fixed = fixed.assign(converged=converged, messages="; ".join(messages))[FIXED_COLUMNS]
    vcov = pd.DataFrame(raw.vcov * np.outer(m, m), index=names, columns=names)
    mult = {("Residual", ""): sy}
    for t, rn, rs in zip(d.formula.random, d.random_names, d.random_scale):
        mult |= {(t.group, a): s * sy for a, s in zip(rn, rs)}
    rows = []
    for r in raw.variance:
        ma = mult.get((r["group"], r["term"]), 1.0)
        mb = mult.get((r["group"], r["term2"]), 1.0) if r["term2"] else ma
        v = r["value"] * ma * mb
        if r["term2"]:
            rows.append({"group": r["group"], "term": f"cov({r['term']}, {r['term2']})", "variance": v, "sd": np.nan})
        else:
            rows.append({"group": r["group"], "term": r["term"], "variance": v, "sd": float(np.sqrt(max(v, 0.0)))})
    modes = None
    if raw.modes:
        g, part = next(iter(raw.modes.items()))
        modes = part * np.array([mult.get((g, c), 1.0) for c in part.columns])
    crit = raw.criterion
    if family == "gaussian" and np.isfinite(crit):  # the criterion of the data in their own units
        n, p = d.n, len(names)
        crit += 2 * (n - p if reml else n) * np.log(sy)
        if reml:
            crit -= 2 * float(np.sum(np.log(np.abs(d.fixed_scale))))
    tried = {k: v + (crit - raw.criterion) for k, v in raw.tried.items()}  # in the data's units too
    return MixedFit(fixed, pd.DataFrame(rows, columns=["group", "term", "variance", "sd"]), vcov, converged,
                    messages, modes, d.formula.text, family, backend, reml, d.n, d.n_groups(), float(crit),
                    raw.optimizer, tried, d.scaled)


def compare_fits(a: MixedFit, b: MixedFit) -> dict:
    """The largest differences between two fits of one model: estimates (absolute and relative to the se)
    and standard errors (relative)."""
    m = a.fixed.merge(b.fixed, on="term", suffixes=("_a", "_b"))
    d_est = (m["estimate_a"] - m["estimate_b"]).abs()
    return {"backends": [a.backend, b.backend], "terms": len(m),
            "max_abs_estimate_difference": float(d_est.max()),
            "max_estimate_difference_in_se": float((d_est / m["se_b"]).max()),
            "max_relative_se_difference": float(((m["se_a"] - m["se_b"]).abs() / m["se_b"]).max()),
            "criterion": [a.criterion, b.criterion]}
