"""`animacy analyze`: validate a run (or flat CSV), aggregate out of core, write tidy tables."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from animacy.analysis.aggregate import gap_by_role, position_means, response_means
from animacy.analysis.curves import gap_curve_bands, relative_recovery
from animacy.analysis.denial import denial_models, label_table, rates
from animacy.analysis.geometry import (
    axis_projections,
    cosine_by_group,
    cosine_similarities,
    denial_similarity,
    direction_validation,
    embeddings,
    load_activations,
    pca_variance,
    role_matrices,
)
from animacy.analysis.ratings import blup_slopes, rating_columns, rating_multilevel, rating_regressions
from animacy.analysis.steering import (
    SteeringModel,
    fit_steering,
    role_slopes,
    slope_differences_bootstrap,
    slope_differences_delta,
)
from animacy.analysis.wordguess import word_guess_effects
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
    outcome: str = "mean_log_prob"  # or relative_recovery
    n_boot: int = 1000
    seed: int = 0
    umap: bool = True
    label_method: str | None = None
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
    roles = run.read("roles")
    steering = {}
    if (means["condition"] == "steered").any():
        model = SteeringModel(outcome=options.outcome, task=options.task, random_slopes=options.random_slopes)
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
        ratings = rating_columns(roles)
        if ratings:
            blups = blup_slopes(fit, means)
            tables["rating_regressions.csv"] = pd.concat(
                [rating_regressions(slopes, roles, "ols", ratings)]
                + ([rating_regressions(blups, roles, "blup", ratings)] if not blups.empty else []), ignore_index=True)
            tables["rating_multilevel.csv"] = pd.concat(
                [rating_multilevel(means, roles, r, options.backend, options.random_slopes)
                 for r in ("anim_mental", "anim_physical") if r in ratings], ignore_index=True)
    tables |= _other_tables(run, roles, options)
    write_parquet(means, out / "response_means.parquet", metadata=source)
    write_parquet(positions, out / "position_means.parquet", metadata=source)
    tables = {name: table for name, table in tables.items() if len(table.columns)}  # nothing to say: no file
    for name, table in tables.items():
        write_csv(table, out / name)
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


def _other_tables(run: Run, roles: pd.DataFrame, options: AnalyzeOptions) -> dict[str, pd.DataFrame]:
    """Tables from the optional parts of a run: labels, vectors, activations, word guess."""
    tables: dict[str, pd.DataFrame] = {}
    boot = {"n_boot": options.n_boot * 2, "seed": options.seed}
    groups = roles.set_index("role")["group"]
    denied = None
    if run.has("labels"):
        labels = label_table(run.read("responses"), run.read("labels"), roles, options.label_method)
        by_role, by_group = rates(labels, **boot)
        tables |= {"denial_rates_by_role.csv": by_role, "denial_rates_by_group.csv": by_group}
        models = [denial_models(labels, options.backend, options.reference_group, c)
                  for c in sorted(labels["classifier"].unique())]
        tables["denial_models.csv"] = pd.concat(models, ignore_index=True)
        d = labels[labels["classifier"] == "denies_experience"]
        denied = d.set_index("response_id")["label"].astype(bool)
    if run.has("vectors_index"):
        index, tensors = run.load_vectors()
        mats = role_matrices(index, tensors)
        pairs = cosine_similarities(mats, groups)
        tables |= {"pca_variance.csv": pca_variance(mats), "embeddings.csv": embeddings(mats, groups, options.seed,
                                                                                        options.umap),
                   "cosine_pairs.csv": pairs, "cosine_by_group.csv": cosine_by_group(pairs),
                   "assistant_axis_projection.csv": axis_projections(index, tensors, mats, groups)}
    if run.has("activations") and roles["is_control"].any():
        acts = load_activations(run)
        tables["direction_validation.csv"] = direction_validation(acts, roles.set_index("role")["is_control"],
                                                                  seed=options.seed)
        if denied is not None:
            tables["denial_similarity.csv"] = denial_similarity(acts, denied)
    if run.has("word_guess"):
        tables["word_guess.csv"] = word_guess_effects(run.read("word_guess"), roles, **boot)
    return tables


def read_tables(out: str | Path) -> dict[str, pd.DataFrame]:
    """The CSV tables an analysis wrote, by file name."""
    return {p.name: pd.read_csv(p) for p in sorted(Path(out).glob("*.csv"))}

