"""`animacy fit`: any mixed model, from an lme4 formula, on any table with one row per observation.

Writes `fixed.csv` (term, estimate, se, df, statistic, p_value, ci_low, ci_high, backend, inference,
converged, messages), `variance.csv` and `fit.json` (formula, family, backend, n, groups per factor,
criterion, optimizer, converged, messages; with `--check`, the largest differences from a refit with
another backend).
"""

from __future__ import annotations

from pathlib import Path

from animacy.analysis.mixed import MixedFit, compare_fits, fit_mixed
from animacy.analysis.mixed_r import r_available
from animacy.atomic import write_csv, write_json
from animacy.provenance import provenance
from animacy.tables import parse_columns, read_table


def fit_table(table: str | Path, formula: str, out: str | Path, family: str = "gaussian", backend: str = "python",
              reml: bool = True, check: bool = False, columns: str | None = None) -> MixedFit:
    df = read_table(table, parse_columns(columns))
    fit = fit_mixed(df, formula, backend, reml, family, source=str(table))
    info = fit.info() | {"table": str(Path(table).resolve()), "provenance": provenance()}
    if check:
        other = "lme4" if backend != "lme4" and r_available() else ("python" if backend != "python" else None)
        if other is None:
            info["check"] = "not run: the lme4 backend needs R with lme4 and lmerTest"
        else:
            info["check"] = compare_fits(fit, fit_mixed(df, formula, other, reml, family, source=str(table)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(fit.fixed, out / "fixed.csv")
    write_csv(fit.variance, out / "variance.csv")
    write_json(info, out / "fit.json")
    return fit
