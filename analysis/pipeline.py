"""`animacy analyze`: validate a run (or flat CSV), aggregate out of core, write tidy tables."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from animacy.analysis.aggregate import gap_curve, position_means, response_means
from animacy.atomic import write_csv, write_json, write_parquet
from animacy.provenance import provenance
from animacy.run import Run, connect


@dataclass
class AnalyzeOptions:
    first_n: int = 50
    quiet: bool = False


def analyze(run: Run, out: str | Path, options: AnalyzeOptions | None = None) -> dict:
    """Write the analysis tables for one run into `out` and return the summary."""
    options = options or AnalyzeOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    con = connect()
    means = response_means(run, options.first_n, con)
    positions = position_means(run, con=con)
    gap = gap_curve(positions)
    source = {"run": str(run.path), "manifest": run.manifest}
    write_parquet(means, out / "response_means.parquet", metadata=source)
    write_parquet(positions, out / "position_means.parquet", metadata=source)
    write_csv(gap, out / "gap_curve.csv")
    roles = run.read("roles")
    summary = {
        "run": str(run.path),
        "run_kind": run.manifest.get("kind"),
        "options": asdict(options),
        "n_roles": int(len(roles)),
        "roles_per_group": {str(k): int(v) for k, v in roles["group"].value_counts().sort_index().items()},
        "n_responses": int(means["response_id"].nunique()),
        "conditions": sorted(means["condition"].unique().tolist()),
        "tables": ["response_means.parquet", "position_means.parquet", "gap_curve.csv"],
        "manifest": run.manifest,
        "provenance": provenance(),
    }
    write_json(json.loads(json.dumps(summary, default=str)), out / "summary.json")
    return summary
