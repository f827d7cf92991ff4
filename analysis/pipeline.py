"""`animacy analyze`: aggregate a run's tokens table in one out-of-core pass, then compute every statistic the
run supports, as one `Analysis` (tidy tables and a summary) saved to an analysis folder that the report reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from animacy.analysis.ablation import ablation_effects
from animacy.analysis.aggregate import aggregates, gap_by_role
from animacy.analysis.bootstrap import MIN_CLUSTERS
from animacy.analysis.classify import evaluate
from animacy.analysis.curves import gap_curve_bands, pooled_recovery
from animacy.analysis.denial import denial_models, example_responses, label_table, rates
from animacy.analysis.drift import DRIFT_FORMULA, drift_curves, drift_models, turn_behaviour, turn_projections
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
from animacy.analysis.groups import RULE, apply_rule
from animacy.analysis.ratings import baselines, blup_slopes, rating_columns, rating_multilevel, rating_regressions
from animacy.analysis.result import Analysis, claim
from animacy.analysis.steering import (
    SteeringModel,
    fit_steering,
    role_slopes,
    slope_differences_bootstrap,
    slope_differences_delta,
)
from animacy.analysis.traits import proxy_agreement, trait_curves, trait_proxy
from animacy.analysis.wordguess import word_guess_effects, word_guess_models
from animacy.provenance import provenance
from animacy.run import Run, connect
from animacy.support import support


@dataclass
class AnalyzeOptions:
    first_n: int = 50
    backend: str = "python"
    reference_group: str | None = None
    task: bool = False
    random_slopes: bool = True
    outcome: str = "mean_log_prob"  # or response_recovery
    formula: str | None = None  # the steering model in lme4 syntax; overrides task/random_slopes/outcome
    ratings: str = "center"  # or z
    rating_models: tuple[str, ...] = ("anim_mental", "anim_physical")  # one-step models; () for every rating
    n_boot: int = 1000
    seed: int = 0
    umap: bool = True
    label_method: str | None = None
    allow_incomplete: bool = False  # analyse a run whose collection did not finish (and say so everywhere)
    quiet: bool = False


STEERING_WINDOWS = (10, 100)  # first-N windows of the steering-effect figure, besides first_n


def analyze(run: Run, out: str | Path | None = None, options: AnalyzeOptions | None = None,
            source: str | None = None) -> Analysis:
    """Every analysis the run's tables support, as one `Analysis`, saved into `out` when given. What the
    data do not support is listed, with the reason, in its `skipped`. `source` names the input in the
    result (default: the run folder); an `out` holding another source's analysis is refused."""
    options = options or AnalyzeOptions()
    source = source or str(run.path.resolve())
    if out is not None:
        claim(Path(out).resolve(), source)  # refuse another source's folder before the work, not after
    missing = run.check_complete(options.allow_incomplete)
    con = connect()
    has_tokens = run.has("tokens")
    if has_tokens:
        means, positions = aggregates(run, options.first_n, STEERING_WINDOWS, con=con)
    else:
        means, positions = pd.DataFrame(columns=["response_id", "condition"]), pd.DataFrame()
    conditions = set(means["condition"].unique())
    supported = support(run, conditions)
    skipped = [f"{name}: {why}" for name, why in supported.items() if why is not None]
    boot = {"n_boot": options.n_boot, "seed": options.seed}
    roles = run.read("roles")
    tables: dict[str, pd.DataFrame] = {"roles.csv": roles}
    gap = None
    if supported["gap curves and recovery"] is None:
        gap = gap_by_role(positions)
        tables["gap_curve.csv"] = gap_curve_bands(gap, **boot)
    model = SteeringModel(outcome=options.outcome, task=options.task, random_slopes=options.random_slopes,
                          formula_text=options.formula)
    steering: dict = {"formula": model.formula()}
    if supported["assistant-axis ablation"] is None:
        tables["ablation_effects.csv"] = ablation_effects(means, **boot)
    if supported["steering models and slopes"] is None:
        tables["steering_effect.csv"] = steering_effect(means, (options.first_n, *STEERING_WINDOWS))
        tables |= _steering_tables(means, positions, gap, roles, model, options, steering, skipped,
                                   run.manifest.get("magnitude_units"))
    tables |= _other_tables(run, roles, options, supported, skipped)
    tables = {name: table for name, table in tables.items() if len(table.columns)}  # nothing to say: no file
    summary = {
        "source": source,
        "run_kind": run.manifest.get("kind"),
        "options": asdict(options),
        "group_rule": RULE,
        "n_roles": len(roles),
        "roles_per_group": {str(k): int(v) for k, v in roles["group"].value_counts().sort_index().items()},
        "n_responses": len(run.read("responses", ["response_id"])),
        "conditions": sorted(conditions),
        "skipped": skipped,
        "complete": not missing,
        "missing_jobs": missing,
        "steering_model": steering,
        "drift_formula": DRIFT_FORMULA,
        "manifest": run.manifest,
        "provenance": provenance(),
    }
    result = Analysis(json.loads(json.dumps(summary, default=str)),
                      {"response_means.parquet": means.drop(columns=[f"mean_log_prob_{n}" for n in STEERING_WINDOWS],
                                                            errors="ignore"),
                       "position_means.parquet": positions, **tables})
    if out is not None:
        result.save(out)
    return result


def steering_effect(means: pd.DataFrame, windows: tuple[int | None, ...]) -> pd.DataFrame:
    """Mean over steered responses of their mean log-prob, by derivation x group x magnitude, one block per
    first-N window (`first_n`; the first window is the response means' own `mean_log_prob`)."""
    st = means[means["condition"] == "steered"]
    keys = ["derivation", "group", "magnitude"]
    blocks = []
    for i, n in enumerate(windows):
        col = "mean_log_prob" if i == 0 else f"mean_log_prob_{n}"
        b = st.groupby(keys, observed=True)[col].agg(["mean", "size"]).reset_index()
        blocks.append(b.rename(columns={"mean": "mean_log_prob", "size": "n_responses"}).assign(first_n=n))
    return pd.concat(blocks, ignore_index=True)[["first_n", *keys, "n_responses", "mean_log_prob"]]


def _steering_tables(means, positions, gap, roles, model: SteeringModel, options: AnalyzeOptions, steering: dict,
                     skipped: list[str], units: str | None) -> dict[str, pd.DataFrame]:
    """Mixed models, slopes, slope differences, pooled recovery and rating models, each where the steered
    rows support it."""
    tables: dict[str, pd.DataFrame] = {}
    boot = {"n_boot": options.n_boot, "seed": options.seed}
    if gap is not None:
        tables["pooled_recovery.csv"] = pooled_recovery(positions, gap, None, **boot)
        tables["pooled_recovery_first_n.csv"] = pooled_recovery(positions, gap, options.first_n, **boot)
    steered, ref = apply_rule(means[means["condition"] == "steered"], options.reference_group)
    n_roles = steered["role"].nunique()
    groups = list(steered["group"].cat.categories) if ref is not None else []
    formula = model.formula()
    fit = None
    if steered["magnitude"].nunique() < 2:
        skipped.append("steering models and slopes: every steered row has the same magnitude, so no slope exists")
        return tables
    if n_roles < 2:
        skipped.append(f"steering models: {n_roles} non-control role(s); a model with (… | role) needs at least two")
        return tables
    if "group" in formula and len(groups) < 2:
        skipped.append(f"the steering model {formula}: it compares groups, and the steered rows hold one "
                       f"non-control group ({', '.join(groups) or 'none'}); give --formula without group")
    else:
        fit = fit_steering(means, model, options.backend, options.reference_group)
        steering |= {"backend": options.backend, "reference_group": fit.reference_group,
                     "magnitude_units": units,
                     "fit_messages": {d: f.messages for d, f in fit.fits.items() if not f.converged or f.messages},
                     "fits": {d: f.info() for d, f in fit.fits.items()}}
        tables |= {"mixed_fixed.csv": fit.fixed.assign(magnitude_units=units or ""),
                   "mixed_variance.csv": fit.variance}
        delta = slope_differences_delta(fit.fits, fit.reference_group)
        tables["slope_differences.csv"] = delta
    slopes = role_slopes(means)
    tables["role_slopes.csv"] = slopes
    if ref is not None and len(groups) > 1:
        sizes = steered.groupby("group", observed=True)["role"].nunique()
        small = sizes[sizes < MIN_CLUSTERS]
        if len(small):
            skipped.append("role-clustered bootstrap of slope differences: fewer than "
                           f"{MIN_CLUSTERS} roles in " + ", ".join(f"{g} ({n})" for g, n in small.items()))
        else:
            bs = slope_differences_bootstrap(slopes, ref, options.n_boot * 2, options.seed)
            tables["slope_differences.csv"] = pd.concat([tables.get("slope_differences.csv"), bs], ignore_index=True)
    ratings = rating_columns(roles)
    if not ratings:
        skipped.append("rating models: the roles table has no rating columns")
        return tables
    base = baselines(means)
    regs = [rating_regressions(slopes, roles, "ols", ratings, options.ratings, base)]
    blups = blup_slopes(fit, means) if fit is not None else pd.DataFrame()
    if not blups.empty:
        regs.append(rating_regressions(blups, roles, "blup", ratings, options.ratings, base))
    tables["rating_regressions.csv"] = pd.concat(regs, ignore_index=True)
    chosen = [r for r in ratings if r in options.rating_models] if options.rating_models else ratings
    multi = rating_multilevel(means, roles, chosen, model, options.backend, options.ratings) if chosen else None
    if multi is not None and not multi.empty:
        tables["rating_multilevel.csv"] = multi
    return tables


def _other_tables(run: Run, roles: pd.DataFrame, options: AnalyzeOptions, supported: dict,
                  skipped: list[str]) -> dict[str, pd.DataFrame]:
    """Tables from the optional parts of a run: labels, vectors, activations, word guess."""
    tables: dict[str, pd.DataFrame] = {}
    boot = {"n_boot": options.n_boot * 2, "seed": options.seed}
    groups = roles.set_index("role")["group"]
    denied = None
    if supported["denial and AI-claim statistics"] is None:
        responses, labelled = run.read("responses"), run.read("labels")
        labels = label_table(responses, labelled, roles, options.label_method)
        by_role, by_group = rates(labels, **boot)
        tables |= {"denial_rates_by_role.csv": by_role, "denial_rates_by_group.csv": by_group,
                   "example_responses.csv": example_responses(responses, labelled)}
        metrics, _ = evaluate()
        tables["classifier_validation.csv"] = metrics
        models = []
        for c in sorted(labels["classifier"].unique()):
            table, why = denial_models(labels, options.backend, options.reference_group, c, how=options.ratings)
            models.append(table)
            skipped += why
        tables["denial_models.csv"] = pd.concat(models, ignore_index=True)
        d = labels[labels["classifier"] == "denies_experience"]
        denied = d.set_index("response_id")["label"].astype(bool)
    if supported["vector geometry"] is None:
        index, tensors = run.load_vectors()
        mats = role_matrices(index, tensors)
        pairs = cosine_similarities(mats, groups)
        tables |= {"pca_variance.csv": pca_variance(mats), "embeddings.csv": embeddings(mats, groups, options.seed,
                                                                                        options.umap),
                   "cosine_pairs.csv": pairs, "cosine_by_group.csv": cosine_by_group(pairs),
                   "assistant_axis_projection.csv": axis_projections(index, tensors, mats, groups)}
    if supported["direction validation"] is None:
        acts = load_activations(run)
        tables["direction_validation.csv"] = direction_validation(acts, roles.set_index("role")["is_control"],
                                                                  seed=options.seed)
        if denied is not None:
            tables["denial_similarity.csv"] = denial_similarity(acts, denied)
    if supported["persona drift over conversation turns"] is None:
        per_turn = turn_projections(run)
        labels = run.read("labels") if run.has("labels") else None
        tables |= {"drift_turns.csv": per_turn.astype({"arm": str}),
                   "drift_curves.csv": drift_curves(per_turn, **boot).astype({"arm": str}),
                   "drift_models.csv": drift_models(per_turn, options.backend, skipped=skipped),
                   "drift_behaviour.csv": turn_behaviour(run.read("conversations"), labels, **boot).astype(
                       {"arm": str})}
    if supported["trait expression under steering"] is None:
        proxy = trait_proxy(run)
        scores = run.read("trait_scores") if run.has("trait_scores") else None
        tables["trait_curves.csv"] = trait_curves(run.read("trait_responses"), scores, proxy, **boot)
        if scores is not None:
            tables["trait_proxy_agreement.csv"] = proxy_agreement(scores, proxy)
    if supported["word guess"] is None:
        wg = run.read("word_guess")
        tables["word_guess.csv"] = word_guess_effects(wg, roles, **boot)
        formula = options.formula.replace("mean_log_prob", "log_prob") if options.formula else None
        if formula and "response_id" in formula:
            formula = None  # word-guess rows have no response; the default model is used
        tables["word_guess_models.csv"] = word_guess_models(wg, roles, formula, options.backend,
                                                            options.reference_group, skipped)
    return tables
