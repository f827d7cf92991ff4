"""Which analyses a run's tables support, decided in one place for `validate` (which lists them) and
`analyze` (which runs them and lists what it skipped, with the same reasons)."""

from __future__ import annotations

from animacy.run import Run, connect


def conditions(run: Run) -> set[str]:
    if not run.has("tokens"):
        return set()
    con = connect()
    rows = con.execute(f"SELECT DISTINCT condition FROM {run.relation_sql('tokens')}", run.params("tokens")).fetchall()
    return {r[0] for r in rows}


def support(run: Run, known_conditions: set[str] | None = None) -> dict[str, str | None]:
    """Analysis -> None where the tables support it, else the reason it cannot run. A caller that has the
    tokens table's conditions already passes them, sparing a scan of the table."""
    cond = conditions(run) if known_conditions is None else known_conditions
    roles = run.read("roles")
    no_tokens = "the run has no tokens table (per-token log-probs)"
    return {
        "gap curves and recovery": None if {"with_prompt", "without_prompt"} <= cond else (
            no_tokens if not cond else "the tokens table has no with_prompt / without_prompt pair (teacher forcing "
            "with and without the role prompt)"),
        "steering models and slopes": None if "steered" in cond else (
            no_tokens if not cond else "the tokens table has no steered rows"),
        "assistant-axis ablation": None if {"ablated", "with_prompt"} <= cond else (
            no_tokens if not cond else "the tokens table has no ablated rows (collect with steer.ablate = true)"),
        "denial and AI-claim statistics": None if run.has("labels") else (
            "the run has no labels table (animacy classify RUN, or animacy labels import)"),
        "vector geometry": None if run.has("vectors_index") else "the run has no vectors",
        "direction validation": None if run.has("activations") and roles["is_control"].any() else (
            "the run has no activations" if not run.has("activations") else "the run has no control roles"),
        "word guess": None if run.has("word_guess") else "the run has no word_guess table",
        "trait expression under steering": None if run.has("trait_responses") and run.has("projections") else (
            "the run has no trait-steered responses (collect with [[traits]] magnitudes)"),
        "persona drift over conversation turns": None if run.has("conversations") and run.has("projections") else (
            "the run has no conversations (collect with [conversations])" if not run.has("conversations") else
            "the run's conversations have no projections"),
    }
