"""lme4 formulas, parsed once and turned into design matrices for every backend.

    y ~ x * g + (1 | role) + (x | task) + (1 + x || subject) + (1 | school/class) + (1 | a:b)
    cbind(successes, trials - successes) ~ x + (1 | role)          (binomial counts)

The fixed part is patsy's (so terms are named `Intercept`, `group[T.x]`, `magnitude:group[T.x]`); each
random term `(expr | factor)` has a patsy model matrix for `expr` and a grouping factor. `||` makes the
term's columns uncorrelated (one term per column), `a/b` is `a` plus `b` nested in `a` (`a:b`), and `a:b`
groups by the combinations of `a` and `b`.

Predictors are rescaled before fitting and every estimate is mapped back: each numeric variable that the
formula uses is divided by its standard deviation (not centred, so that an uncorrelated `||` structure
means the same model on either scale). The map from the rescaled to the original coefficients is found
exactly from the two design matrices, so a formula whose columns are not plain products of variables
(e.g. `np.log(x)`) is fitted on the original scale, and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from animacy.errors import ConfigError

_RANDOM = re.compile(r"\(\s*([^()|]+?)\s*(\|\|?)\s*([\w.:/ ]+?)\s*\)")
_NAME = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class RandomTerm:
    """One `(expr | group)` after expansion (`||` and `/` are expanded into several of these)."""

    expr: str
    group: str  # a column, or `a:b` for the combinations of two columns

    def __str__(self) -> str:
        return f"({self.expr} | {self.group})"


@dataclass(frozen=True)
class Formula:
    """A parsed formula: response, fixed part (patsy) and the expanded random terms."""

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]
    trials: str | None = None  # cbind(k, n - k): the expression for the failures, `n - k`

    @property
    def variables(self) -> list[str]:
        """Every name the formula uses (response, predictors, grouping factors), in order of appearance."""
        text = " ".join([self.response, self.trials or "", self.fixed, *[f"{t.expr} {t.group}" for t in self.random]])
        text = re.sub(r"[A-Za-z_][\w.]*\(", "(", text)  # function names: C(...), np.log(...), I(...)
        text = re.sub(r"\[[^]]*\]|'[^']*'|\"[^\"]*\"", " ", text)  # strings and treatment levels
        return list(dict.fromkeys(_NAME.findall(text)))

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(t.group for t in self.random))


def _expand(expr: str, bars: str, group: str) -> list[RandomTerm]:
    group = re.sub(r"\s+", "", group)
    if "/" in group:  # a/b -> a + a:b
        parts = group.split("/")
        groups = [":".join(parts[: i + 1]) for i in range(len(parts))]
    else:
        groups = [group]
    exprs = [expr.strip()]
    if bars == "||":  # one uncorrelated term per column: (1 + x || g) -> (1 | g) + (0 + x | g)
        pieces = [p.strip() for p in re.split(r"\+", expr) if p.strip()]
        intercept = not any(p in ("0", "-1") for p in pieces)
        pieces = [p for p in pieces if p not in ("0", "-1", "1")]
        exprs = (["1"] if intercept else []) + [f"0 + {p}" for p in pieces]
    return [RandomTerm(e, g) for g in groups for e in exprs]


def parse(text: str) -> Formula:
    """Parse an lme4 formula. Raises ConfigError naming what is wrong."""
    if text.count("~") != 1:
        raise ConfigError("--formula", f"'{text}' needs exactly one '~' (response ~ predictors)")
    lhs, rhs = (s.strip() for s in text.split("~"))
    if not lhs:
        raise ConfigError("--formula", f"'{text}' has no response on the left of '~'")
    if rhs.count("(") != rhs.count(")"):
        raise ConfigError("--formula", f"'{text}' has unbalanced parentheses")
    trials = None
    m = re.fullmatch(r"cbind\(\s*([^,]+?)\s*,\s*(.+?)\s*\)", lhs)
    if m:
        lhs, trials = m.group(1), m.group(2)
    random: list[RandomTerm] = []
    for expr, bars, group in _RANDOM.findall(rhs):
        random += _expand(expr, bars, group)
    fixed = _RANDOM.sub("", rhs)
    if "|" in fixed:
        raise ConfigError("--formula", f"'{text}': a random term must be written in parentheses, e.g. (1 | role)")
    fixed = re.sub(r"\+\s*(\+\s*)+", "+ ", fixed).strip().strip("+").strip() or "1"
    return Formula(text, lhs.strip(), fixed, tuple(random), trials)


@dataclass
class Design:
    """Everything a backend needs, on the rescaled variables, plus the maps back to the original units.

    `fixed_scale[j]` multiplies fixed coefficient j (and its se) to give it in the original units, and
    `random_scale[t][j]` does the same for column j of random term t; `response_scale` multiplies the
    response (gaussian), and so every coefficient, sd and mode.
    """

    formula: Formula
    data: pd.DataFrame  # the rows used, variables rescaled (what an external backend such as R is given)
    y: np.ndarray
    trials: np.ndarray  # binomial trials per row (1 for 0/1 data)
    X: np.ndarray
    fixed_names: list[str]
    random_X: list[np.ndarray]
    random_names: list[list[str]]
    codes: list[np.ndarray]
    levels: list[list[str]]
    fixed_scale: np.ndarray
    random_scale: list[np.ndarray]
    response_scale: float = 1.0
    scaled: dict[str, float] = field(default_factory=dict)  # variable -> the sd it was divided by
    messages: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.y)

    def n_groups(self) -> dict[str, int]:
        return {t.group: len(lv) for t, lv in zip(self.formula.random, self.levels)}

    def with_message(self, message: str) -> Design:
        self.messages.append(message)
        return self


def _matrix(expr: str, data: pd.DataFrame, what: str):
    import patsy

    try:
        return patsy.dmatrix(expr, data, return_type="dataframe", NA_action="raise")
    except patsy.PatsyError as exc:
        raise ConfigError("--formula", f"cannot build the {what} '{expr}': {str(exc).splitlines()[0]}") from exc


def _column_scale(orig: np.ndarray, scaled: np.ndarray) -> np.ndarray | None:
    """m with scaled[:, j] == m[j] * orig[:, j] for every column, so that a coefficient in the original units
    is m[j] times the one fitted on the rescaled column; None when the columns are not plain rescalings of
    each other (then the formula is fitted unscaled)."""
    m = np.ones(orig.shape[1])
    for j in range(orig.shape[1]):
        a, b = orig[:, j], scaled[:, j]
        nz = np.abs(a) > 0
        if not nz.any():
            if np.any(b != 0):
                return None
            continue
        ratio = b[nz] / a[nz]
        if not (np.allclose(ratio, ratio[0], rtol=1e-9, atol=0) and np.all(b[~nz] == 0)):
            return None
        m[j] = ratio[0]
    return m


def build(formula: Formula | str, data: pd.DataFrame, family: str = "gaussian", scale: bool = True,
          source: str = "the table") -> Design:
    """Design matrices for `formula` on `data` (rows with a missing value in a used column are dropped,
    and counted in the messages)."""
    f = parse(formula) if isinstance(formula, str) else formula
    missing = [v for v in f.variables if v not in data.columns]
    if missing:
        raise ConfigError("--formula", f"names '{missing[0]}', which is not a column of {source} "
                          f"(columns: {', '.join(map(str, data.columns[:20]))})")
    used = [v for v in f.variables if v in data.columns]
    df = data[used]
    n0 = len(df)
    df = df.dropna()
    messages = []
    if len(df) < n0:
        messages.append(f"{n0 - len(df):,} rows with a missing value in {', '.join(used)} were left out")
    if df.empty:
        raise ConfigError("--formula", f"no rows of {source} have every variable of '{f.text}'")
    df = df.reset_index(drop=True)
    groups = set()
    for t in f.random:
        groups |= set(t.group.split(":"))
    outcome = set(_NAME.findall(f"{f.response} {f.trials or ''}"))
    numeric = [v for v in used if v not in groups and v not in outcome and pd.api.types.is_numeric_dtype(df[v])
               and not pd.api.types.is_bool_dtype(df[v])]
    y, trials = _response(f, df, family, source)
    sds = {v: float(df[v].std()) for v in numeric} if scale else {}
    sds = {v: s for v, s in sds.items() if np.isfinite(s) and s > 0}
    scaled_df = df.assign(**{v: df[v] / s for v, s in sds.items()})
    X0 = _matrix(f.fixed, df, "fixed part")
    X = _matrix(f.fixed, scaled_df, "fixed part") if sds else X0
    fixed_scale = _column_scale(X0.to_numpy(float), X.to_numpy(float)) if sds else np.ones(X0.shape[1])
    random_X, random_names, codes, levels, random_scale = [], [], [], [], []
    for t in f.random:
        Z0 = _matrix(t.expr, df, f"random term {t}")
        Z = _matrix(t.expr, scaled_df, f"random term {t}") if sds else Z0
        rs = _column_scale(Z0.to_numpy(float), Z.to_numpy(float)) if sds else np.ones(Z0.shape[1])
        if rs is None:
            fixed_scale = None
        random_X.append(Z.to_numpy(float))
        random_names.append(list(Z.columns))
        random_scale.append(rs)
        key = df[t.group.split(":")].astype(str).agg(":".join, axis=1) if ":" in t.group else df[t.group].astype(str)
        cat = pd.Categorical(key)
        codes.append(cat.codes.astype(np.int64))
        levels.append([str(c) for c in cat.categories])
    if sds and fixed_scale is None:  # not plain rescalings: fit on the original scale
        note = ("predictors were not rescaled internally (the formula transforms them), so the optimizer "
                "works in the data's own units")
        return build(f, data, family, scale=False, source=source).with_message(note)
    response_scale = 1.0
    if family == "gaussian" and scale:
        sy = float(np.std(y))
        if np.isfinite(sy) and sy > 0:
            response_scale, y = sy, y / sy
            scaled_df[f.response] = y
    return Design(f, scaled_df, y, trials, X.to_numpy(float), list(X.columns), random_X, random_names, codes,
                  levels, fixed_scale, random_scale, response_scale, sds, messages)


def _response(f: Formula, df: pd.DataFrame, family: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    y = df[f.response]
    if family == "binomial":
        if f.trials is not None:
            failures = df.eval(f.trials).to_numpy(float)
            k = y.to_numpy(float)
            return k, k + failures
        if pd.api.types.is_bool_dtype(y):
            y = y.astype(int)
        vals = set(pd.unique(y.astype(float)))
        if not vals <= {0.0, 1.0}:
            raise ConfigError("--formula", f"the binomial response '{f.response}' of {source} must be 0/1 "
                              f"(or cbind(successes, failures)); it holds {sorted(vals)[:5]}")
        return y.to_numpy(float), np.ones(len(y))
    if not pd.api.types.is_numeric_dtype(y):
        raise ConfigError("--formula", f"the response '{f.response}' of {source} is not numeric")
    return y.to_numpy(float), np.ones(len(y))
