"""`animacy analyze`: validate a run (or flat CSV), aggregate out of core, write tidy tables."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from animacy.analysis.aggregate import gap_by_role, position_means, response_means
from animacy.analysis.curves import gap_curve_bands, relative_recovery
from animacy.analysis.steering import (
    SteeringModel,
    fit_steering,
    role_slopes,
    slope_differences_bootstrap,
    slope_differences_delta,
)
from animacy.atomic import write_csv, write_json, write_parquet
from animacy.provenance import provenance
from animacy.run import Run, connect


@dataclass
class AnalyzeOptions:
    first_n: int = 50
    backend: str = "statsmodels"
    reference_group: str | None = None
    task: bool = False
    random_slopes: bool = True
    n_boot: int = 1000
    seed: int = 0
    quiet: bool = False


def analyze(run: Run, out: str | Path, options: AnalyzeOptions | None = None) -> dict:
    """Write the analysis tables for one run into `out` and return the summary."""
    options = options or AnalyzeOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    con = connect()
    means = response_means(run, options.first_n, con)
    positions = position_means(run, con=con)
    source = {"run": str(run.path), "manifest": run.manifest}
    gap = gap_by_role(positions)
    boot = {"n_boot": options.n_boot, "seed": options.seed}
    tables = {"gap_curve.csv": gap_curve_bands(gap, **boot)}
    steering = {}
    if (means["condition"] == "steered").any():
        model = SteeringModel(task=options.task, random_slopes=options.random_slopes)
        fit = fit_steering(means, model, options.backend, options.reference_group)
        reference = fit.reference_group
        slopes = role_slopes(means)
        tables |= {
            "relative_recovery.csv": relative_recovery(positions, gap, None, **boot),
            "relative_recovery_first_n.csv": relative_recovery(positions, gap, options.first_n, **boot),
            "mixed_fixed.csv": fit.fixed,
            "mixed_variance.csv": fit.variance,
            "role_slopes.csv": slopes,
            "slope_differences.csv": pd.concat([
                slope_differences_delta(fit.fits, reference),
                slope_differences_bootstrap(slopes, reference, options.n_boot * 2, options.seed)], ignore_index=True),
        }
        steering = {"formula": model.formula(), "backend": options.backend, "reference_group": reference,
                    "fit_messages": {d: f.messages for d, f in fit.fits.items() if not f.converged or f.messages}}
    write_parquet(means, out / "response_means.parquet", metadata=source)
    write_parquet(positions, out / "position_means.parquet", metadata=source)
    for name, table in tables.items():
        write_csv(table, out / name)
    roles = run.read("roles")
    summary = {
        "run": str(run.path),
        "run_kind": run.manifest.get("kind"),
        "options": asdict(options),
        "n_roles": len(roles),
        "roles_per_group": {str(k): int(v) for k, v in roles["group"].value_counts().sort_index().items()},
        "n_responses": int(means["response_id"].nunique()),
        "conditions": sorted(means["condition"].unique().tolist()),
        "tables": ["response_means.parquet", "position_means.parquet", *tables],
        "steering_model": steering,
        "manifest": run.manifest,
        "provenance": provenance(),
    }
    write_json(json.loads(json.dumps(summary, default=str)), out / "summary.json")
    return summary
