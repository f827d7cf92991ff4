"""The `animacy` command line. Each subcommand imports only its own half when it runs, so analysis
subcommands work where torch is not installed."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from animacy.analysis import BACKENDS
from animacy.errors import ConfigError, DataError, from_io_failure


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def cmd_power(a: argparse.Namespace) -> int:
    from animacy.analysis.power import power_curve
    from animacy.atomic import write_csv

    table = power_curve(list(a.roles), a.pct_difference, a.sims, a.alpha, backend=a.backend, seed=a.seed,
                        quiet=a.quiet)
    print(table.to_string(index=False))
    if a.out:
        write_csv(table, a.out)
    return 0


def cmd_classify(a: argparse.Namespace) -> int:
    import os

    from animacy.analysis.classify import classify_texts, evaluate, judge_traits, label_run, read_texts
    from animacy.analysis.judge import Judge
    from animacy.atomic import write_csv
    from animacy.run import Run

    judge = None
    if a.endpoint or a.method == "judge":
        if not (a.endpoint and a.model):
            raise ConfigError("--endpoint", "the judge needs --endpoint URL (ending in /v1) and --model NAME")
        judge = Judge(a.endpoint, a.model, api_key=os.environ.get(a.api_key_env) if a.api_key_env else None,
                      timeout=a.timeout)
    if a.evaluate:
        result, kappa = evaluate(judge=judge, quiet=a.quiet, data=Path(a.data) if a.data else None)
        print(result.round(3).to_string(index=False))
        print(kappa.round(3).to_string(index=False))
        if a.out:
            write_csv(result, a.out)
            write_csv(kappa, Path(a.out).with_name(Path(a.out).stem + ".kappa.csv"))
        return 0
    if a.traits:
        if not (a.run and judge):
            raise ConfigError("--traits", "scores a RUN's trait-steered responses with the judge: give RUN, "
                              "--endpoint URL/v1 and --model NAME")
        run = Run(a.run)
        run.validate()
        scores = judge_traits(run, judge, a.quiet)
        print(f"scored {len(scores):,} trait-steered responses of {a.run} with {judge.model}")
        return 0
    if a.run:
        run = Run(a.run)
        run.validate()
        labels = label_run(run, a.method, judge, a.quiet)
        print(f"labelled {labels['response_id'].nunique():,} responses of {a.run} with {a.method}")
        return 0
    if not (a.texts and a.out):
        raise ConfigError("classify", "give a RUN folder, or --texts IN.csv --out OUT.csv, or --evaluate")
    texts = read_texts(Path(a.texts))
    pred = classify_texts(texts, a.method, judge, a.quiet)
    keep = [c for c in ("id", "denies_experience", "claims_ai", "method") if c in pred]
    write_csv(texts.merge(pred[keep], on="id"), a.out)
    print(f"wrote {a.out}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from animacy.analysis.pipeline import AnalyzeOptions
    from animacy.analysis.render import report
    from animacy.sources import open_source

    if a.analysis:
        if a.run:
            raise ConfigError("report", "give either RUN or --analysis DIR, not both")
        path = report(a.out, analysis=a.analysis, engine=a.engine)
    elif not a.run:
        raise ConfigError("report", "give a RUN folder (or flat table) to analyse, or --analysis DIR to render")
    else:
        with tempfile.TemporaryDirectory(prefix="animacy-import-") as work:
            run = open_source(a.run, work)
            options = AnalyzeOptions(backend=a.backend, n_boot=a.n_boot, allow_incomplete=a.allow_incomplete,
                                     quiet=True)
            path = report(a.out, run, options=options,
                          source=str(Path(a.run).resolve()), engine=a.engine)
    print(f"report: {path}")
    return 0


def cmd_replicate(a: argparse.Namespace) -> int:
    from animacy.analysis.render import render
    from animacy.resources import REPLICATION_SOURCE

    seed = Path(a.data).resolve()
    if not (seed / "seed_study").is_dir():
        raise DataError(seed, "has no seed_study/ folder (the original study's files: ../shared/data)")
    out = Path(a.out)
    path = render(out, {"data": str(seed), "tables": str(out.resolve() / "tables"), "n_boot": a.n_boot},
                  engine=a.engine, source=REPLICATION_SOURCE)
    print(f"replication: {path}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """The embedded default: a small real study on SmolLM2 on the CPU, collect -> classify -> analyze -> report."""
    import time

    from animacy.analysis.classify import label_run
    from animacy.analysis.pipeline import AnalyzeOptions
    from animacy.analysis.render import report
    from animacy.collect import cli as collect_cli
    from animacy.resources import DEMO_CONFIG
    from animacy.run import Run

    t0 = t = time.perf_counter()
    out, stages = Path(a.out), {}

    def lap(name: str) -> None:
        nonlocal t
        stages[name], t = time.perf_counter() - t, time.perf_counter()

    run = collect_cli.run(str(DEMO_CONFIG), str(out / "run"), None, a.quiet)
    lap("collect")
    label_run(Run(run), "rules", quiet=a.quiet)
    lap("label")
    html = report(out / "report", Run(run), options=AnalyzeOptions(quiet=a.quiet), source=str(Path(run).resolve()))
    lap("analyze + report")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ")")
    print(f"report: {html}")
    return 0


def cmd_collect(a: argparse.Namespace) -> int:
    from animacy.collect import cli as collect_cli

    if a.action == "plan":
        collect_cli.plan(a.config, a.device_profile, a.model_shape, a.response_tokens)
    else:
        if not a.out:
            raise ConfigError("collect run", "needs --out RUN (the run folder to write or resume)")
        collect_cli.run(a.config, a.out, a.shard, a.quiet, a.allow_config_change)
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    from animacy.analysis.simulate import SimConfig, simulate

    cfg = SimConfig(roles_per_group=a.roles, controls=a.controls, tasks=a.tasks, replicates=a.replicates,
                    tokens=a.tokens, seed=a.seed, **({"magnitudes": a.magnitudes} if a.magnitudes else {}))
    out = simulate(a.out, cfg, quiet=a.quiet)
    print(f"simulated run: {out} ({cfg.n_token_rows():,} token rows)")
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    from animacy.analysis.pipeline import AnalyzeOptions, analyze
    from animacy.run import describe_missing
    from animacy.sources import open_source

    out = Path(a.out)
    with tempfile.TemporaryDirectory(prefix="animacy-import-") as work:
        run = open_source(a.source, work, a.roles_csv, a.columns)
        summary = analyze(run, out, source=str(Path(a.source).resolve()), options=AnalyzeOptions(
            first_n=a.first_n, backend=a.backend, reference_group=a.reference_group, task=a.task,
            random_slopes=not a.no_random_slopes, outcome=a.outcome, formula=a.formula, ratings=a.ratings,
            rating_models=() if a.rating_models == "all" else tuple(r for r in a.rating_models.split(",") if r),
            n_boot=a.n_boot, seed=a.seed, umap=not a.no_umap, label_method=a.label_method,
            allow_incomplete=a.allow_incomplete, quiet=a.quiet)).summary
    if summary["missing_jobs"]:
        print(f"animacy: analysed an INCOMPLETE run: {describe_missing(summary['missing_jobs'])} not done",
              file=sys.stderr)
    for line in summary["skipped"]:
        print(f"animacy: skipped {line}", file=sys.stderr)
    print(f"analysis of {summary['n_responses']:,} responses written to {out}")
    return 0


def cmd_fit(a: argparse.Namespace) -> int:
    from animacy.analysis.fitcmd import fit_table

    fit = fit_table(a.table, a.formula, a.out, family=a.family, backend=a.backend, reml=a.reml, check=a.check,
                    columns=a.columns)
    print(fit.fixed.drop(columns=["messages"]).to_string(index=False, float_format=lambda x: f"{x:.6g}"))
    state = "converged" if fit.converged else "NOT CONVERGED: " + "; ".join(fit.messages)
    print(f"{fit.formula} ({fit.family}, {fit.backend}, n = {fit.n:,}): {state}")
    print(f"wrote {a.out}/fixed.csv, variance.csv, fit.json")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from animacy.seedstudy import import_study

    run = import_study(a.files, a.out, a.roles, units=a.units)
    tables = [n for n in ("roles", "responses", "tokens", "word_guess") if run.has(n)]
    print(f"imported {len(a.files)} file(s) into {run.path} ({', '.join(tables)})")
    return 0


def cmd_labels(a: argparse.Namespace) -> int:
    from animacy.labels import import_labels
    from animacy.run import Run
    from animacy.tables import parse_columns

    run = Run(a.run)
    run.validate()
    labels = import_labels(a.table, run, [c.strip() for c in a.id_columns.split(",") if c.strip()], a.method,
                           parse_columns(a.columns))
    n = labels[labels["method"] == a.method]["response_id"].nunique()
    print(f"attached {a.method} labels to {n:,} responses of {a.run}")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    """Exit 0: valid and complete (or a table whose completeness is not recorded); 1: valid but
    incomplete, naming the jobs; 2: invalid, naming file, column and row."""
    from animacy.run import describe_missing
    from animacy.schema import TABLES
    from animacy.sources import open_source
    from animacy.support import support

    with tempfile.TemporaryDirectory(prefix="animacy-import-") as work:
        run = open_source(a.source, work, a.roles_csv, a.columns)
        tables = [n for n in TABLES if run.has(n)]  # every table of the contract the run holds
        supported = support(run)
        missing = run.missing_jobs()
    unrecorded = ("completeness not recorded (collected before runs recorded their jobs)"
                  if run.manifest.get("kind") == "collected" else "written whole (not collected job by job)")
    state = ("complete" if missing == [] else unrecorded if missing is None
             else f"INCOMPLETE: {describe_missing(missing)} not done")
    print(f"{a.source}: valid, {state} ({', '.join(tables)})")
    for name, why in supported.items():
        print(f"  {'yes' if why is None else 'no '}  {name}" + ("" if why is None else f": {why}"))
    return 1 if missing else 0


def cmd_export(a: argparse.Namespace) -> int:
    from animacy.flatcsv import export_flat_csv
    from animacy.run import Run

    run = Run(a.run)
    run.validate()
    print("wrote " + ", ".join(map(str, export_flat_csv(run, a.csv, a.roles_csv))))
    return 0


def cmd_roles(a: argparse.Namespace) -> int:
    from animacy.atomic import write_csv
    from animacy.roles import DEFAULT_CONTROLS, GroupRule, design_roles, read_norms

    norms = read_norms(a.norms)
    rule = GroupRule(a.x, a.y, a.high, a.low)
    controls = DEFAULT_CONTROLS if a.controls is None else [c for c in a.controls.split(",") if c]
    roles = design_roles(norms, a.per_group, a.seed, rule, controls=controls)
    write_csv(roles, a.out)
    counts = roles["group"].value_counts().sort_index()
    print("\n".join(f"{g}: {n}" for g, n in counts.items()) + f"\nwrote {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="animacy", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a simulated run folder with known ground truth")
    s.add_argument("--out", required=True)
    s.add_argument("--roles", type=int, default=8, help="roles per group (3 groups)")
    s.add_argument("--controls", type=int, default=3, help="assistant control roles")
    s.add_argument("--tasks", type=int, default=4)
    s.add_argument("--replicates", type=int, default=3)
    s.add_argument("--tokens", type=int, default=60, help="response tokens per response")
    s.add_argument("--magnitudes", type=_floats, default=None, help="e.g. 0,1,2,4,8")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("analyze", help="analyse a run folder or a flat per-token CSV")
    s.add_argument("source", help="run folder, or flat tokens table (CSV, CSV.gz, Parquet, folder of parts)")
    s.add_argument("--out", required=True)
    s.add_argument("--roles-csv", default=None, help="groups and ratings keyed by role, for a flat table")
    s.add_argument("--columns", default=None, help="rename a flat table's (and roles CSV's) columns: role=word,...")
    s.add_argument("--first-n", type=int, default=50, help="tokens averaged per response (default 50)")
    s.add_argument("--backend", choices=BACKENDS, default="python",
                   help="mixed-model backend: python (lme4's criteria, no R), lme4 (R), statsmodels")
    s.add_argument("--formula", default=None,
                   help="the steering model in lme4 syntax, e.g. 'log_prob ~ magnitude * group + (1 | role)' "
                        "(log_prob: a response's mean log-prob over its first N tokens)")
    s.add_argument("--ratings", choices=["center", "z"], default="center",
                   help="ratings enter centred (per rating point) or z-scored (per sd)")
    s.add_argument("--rating-models", default="anim_mental,anim_physical",
                   help="ratings that get the one-step model (steering model with the rating for group); 'all'")
    s.add_argument("--reference-group", default=None, help="default: the first group in sort order")
    s.add_argument("--task", action="store_true", help="add a crossed (1 | task_id) to the default model")
    s.add_argument("--no-random-slopes", action="store_true", help="(1 | role) instead of (magnitude | role)")
    s.add_argument("--outcome", choices=["mean_log_prob", "response_recovery"], default="mean_log_prob",
                   help="the mixed models' outcome: mean log-prob of the first N tokens, or each response's own "
                   "recovery ratio (steered - without) / (with - without)")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (roles)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-umap", action="store_true", help="skip UMAP embeddings (PCA only)")
    s.add_argument("--label-method", default=None, help="which labels method to use (default: the most common)")
    s.add_argument("--allow-incomplete", action="store_true",
                   help="analyse a run whose collection did not finish (every output then says so)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("demo", help="the CPU demo: a small real study on SmolLM2, collect -> report")
    s.add_argument("--out", default="runs/demo", help="where the run and the report go (default runs/demo)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("report", help="analyse a run once and render the write-up as HTML (Quarto, or its own "
                       "fallback); or render an existing analysis folder")
    s.add_argument("run", nargs="?", help="run folder (or flat tokens table)")
    s.add_argument("--analysis", default=None, help="render this analysis folder (from animacy analyze) as it is")
    s.add_argument("--out", required=True, help="output folder for report.html and, from a run, its analysis "
                   "in OUT/tables (refused if that holds another source's analysis)")
    s.add_argument("--engine", choices=["auto", "quarto", "nbclient"], default="auto")
    s.add_argument("--backend", choices=BACKENDS, default="python")
    s.add_argument("--n-boot", type=int, default=500)
    s.add_argument("--allow-incomplete", action="store_true",
                   help="report on a run whose collection did not finish (the report then says so at the top)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("replicate", help="re-analyse the original study's Qwen3-30B sweeps end to end (HTML)")
    s.add_argument("--data", default="../shared/data",
                   help="the folder holding seed_study/ and seed_selected_roles.csv")
    s.add_argument("--out", required=True)
    s.add_argument("--engine", choices=["auto", "quarto", "nbclient"], default="auto")
    s.add_argument("--n-boot", type=int, default=500)
    s.set_defaults(func=cmd_replicate)

    s = sub.add_parser("collect", help="run a study on a model (needs the collect extra: torch, transformers)")
    s.add_argument("action", choices=["run", "plan"])
    s.add_argument("config", help="study config (TOML), e.g. data/demo.toml")
    s.add_argument("--out", help="run folder (written, or resumed if it exists)")
    s.add_argument("--shard", default=None, help="i/n: run the i-th of n shards (default: SLURM_ARRAY_TASK_ID)")
    s.add_argument("--allow-config-change", default=None, metavar="KEYS",
                   help="resume a run whose config differs in these keys (comma-separated); the change is recorded")
    s.add_argument("--device-profile", default=None, metavar="CARD",
                   help="plan: estimate for h100, h200 or a100 from stored rates (data/device_profiles.json) "
                        "instead of measuring here")
    s.add_argument("--model-shape", default=None, help="plan: the model's shape by name (gemma3-27b, llama3-8b, "
                                                       "qwen3-30b-a3b, smollm2), when its config is not on disk")
    s.add_argument("--response-tokens", type=int, default=None,
                   help="plan: expected tokens per response (default: max_new_tokens, an upper bound)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("classify", help="label responses: denies_experience, claims_ai")
    s.add_argument("run", nargs="?", help="a run folder: label its responses into its labels table")
    s.add_argument("--texts", help="CSV with id, text (and optionally role)")
    s.add_argument("--out", help="output CSV (with --texts or --evaluate)")
    s.add_argument("--method", choices=["rules", "judge", "trained"], default="rules")
    s.add_argument("--endpoint", help="OpenAI-compatible base URL for the judge, e.g. http://localhost:8000/v1")
    s.add_argument("--model", help="the judge's model name")
    s.add_argument("--api-key-env", default=None, help="environment variable holding the judge's API key")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each judge answer (default 60)")
    s.add_argument("--evaluate", action="store_true", help="measure the methods against the held-out hand labels")
    s.add_argument("--traits", action="store_true", help="with RUN and a judge: score the run's trait-steered "
                                                           "responses for their trait (0-100) into trait_scores")
    s.add_argument("--data", help="with --evaluate: the seed study's folder (../shared/data), to measure on the "
                                  "held-out real Gemma responses as well")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("power", help="power to detect a slope difference, by simulation")
    s.add_argument("--roles", type=_ints, default=(10, 20, 40), help="roles per group to try, e.g. 10,20,40")
    s.add_argument("--pct-difference", type=float, default=14.0, help="true slope difference in percent")
    s.add_argument("--sims", type=int, default=100)
    s.add_argument("--alpha", type=float, default=0.05)
    s.add_argument("--backend", choices=BACKENDS, default="python")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="write the table as CSV")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_power)

    s = sub.add_parser("fit", help="fit any mixed model (lme4 formula) to a table with one row per observation")
    s.add_argument("table", help="CSV, CSV.gz or Parquet (a file or a folder of parts)")
    s.add_argument("--formula", required=True, help="lme4 syntax, e.g. 'y ~ x * g + (1 | role) + (1 | task)'")
    s.add_argument("--family", choices=["gaussian", "binomial"], default="gaussian")
    s.add_argument("--backend", choices=BACKENDS, default="python")
    s.add_argument("--reml", action=argparse.BooleanOptionalAction, default=True,
                   help="REML (default) or ML (--no-reml) for gaussian models")
    s.add_argument("--check", action="store_true",
                   help="refit with another backend (lme4 where R is present) and report the largest differences")
    s.add_argument("--columns", default=None, help="rename columns first: new=old,new2=old2")
    s.add_argument("--out", required=True, help="folder for fixed.csv, variance.csv and fit.json")
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("import", help="the original study's own files (sweeps, responses) into a run folder")
    s.add_argument("files", nargs="+", help="the study's sweep CSVs (…_steered_<derivation>.csv[.gz]) and/or its "
                                            "responses CSV (role, task, sample_idx, text)")
    s.add_argument("--roles", required=True, help="the roles with groups and ratings (e.g. seed_selected_roles.csv)")
    s.add_argument("--units", default="absolute", help="what the magnitudes are in (recorded as given)")
    s.add_argument("--out", required=True, help="the run folder to create")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("labels", help="attach labels made elsewhere to a run's responses")
    s.add_argument("action", choices=["import"])
    s.add_argument("table", help="CSV, CSV.gz or Parquet with id columns and label columns")
    s.add_argument("--run", required=True)
    s.add_argument("--id-columns", required=True,
                   help="the table's response_id column, or its role,task,replicate columns in that order")
    s.add_argument("--method", default="imported", help="how the labels were made (kept in the labels table)")
    s.add_argument("--columns", default=None, help="rename columns first: denies_experience=deny,...")
    s.set_defaults(func=cmd_labels)

    s = sub.add_parser("validate", help="check a run folder or flat table against the data contract, and say "
                                        "which analyses it supports")
    s.add_argument("source", help="run folder, or flat tokens table (CSV, CSV.gz, Parquet, folder of parts)")
    s.add_argument("--roles-csv", default=None)
    s.add_argument("--columns", default=None, help="rename columns first: role=word,...")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("export", help="write a run's tokens as the flat CSV (+ roles CSV)")
    s.add_argument("run")
    s.add_argument("--csv", required=True)
    s.add_argument("--roles-csv", default=None, help="default: <csv stem>.roles.csv beside it")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("roles", help="design a roles table from norm ratings")
    s.add_argument("--norms", required=True, help="VanArsdall & Blunt .xlsx or a roles CSV with ratings")
    s.add_argument("--per-group", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--x", default="anim_mental")
    s.add_argument("--y", default="anim_physical")
    s.add_argument("--high", type=float, default=300.0)
    s.add_argument("--low", type=float, default=250.0)
    s.add_argument("--controls", default=None, help="comma-separated assistant controls")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_roles)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        error = exc if isinstance(exc, DataError) else from_io_failure(exc)
        if error is None or args.debug:
            raise
        print(f"animacy: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
