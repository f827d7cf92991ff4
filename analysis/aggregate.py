"""Out-of-core aggregates of the per-token table (DuckDB over Parquet parts; never pandas on it whole).

Two reductions feed every later statistic:

- `response_means`: per response x condition x derivation x magnitude x layers, the mean log-prob of
  the first N response tokens (the mixed models' outcome);
- `position_means`: per role x condition x derivation x magnitude x layers x token position, the mean
  log-prob (gap curves and relative recovery). Teacher forcing scores the same tokens in every
  condition, so differences of these means equal means of per-token differences without a join.
"""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from animacy.run import Run, connect

_CELL = ("condition", "derivation", "magnitude", "layers")


def _cell_sql(run: Run, alias: str) -> str:
    """The condition cell columns; `layers` is optional in the contract and read as NULL when absent."""
    names = set(pq.read_schema(run.files("tokens")[0]).names)
    return ", ".join(f"{alias}.{c}" if c in names else f"NULL::VARCHAR AS {c}" for c in _CELL)


def response_means(run: Run, first_n: int | None = 50, con: duckdb.DuckDBPyConnection | None = None) -> pd.DataFrame:
    """Mean log-prob of the first `first_n` tokens (all tokens if None) of every response in every
    condition cell, with role, group, task and replicate attached."""
    con = con or connect()
    where = f"WHERE t.token_index < {int(first_n)}" if first_n else ""
    agg = (f"SELECT t.response_id, {_cell_sql(run, 't')}, count(*) AS n_tokens, avg(log_prob) AS mean_log_prob "
           f"FROM {run.relation_sql('tokens')} t {where} GROUP BY ALL")
    df = con.execute(
        f"""SELECT a.response_id, r.role, g."group", r.task_id, r.replicate, a.condition, a.derivation,
                   a.magnitude, a.layers, a.n_tokens, a.mean_log_prob
            FROM ({agg}) a JOIN {run.relation_sql('responses')} r USING (response_id)
            JOIN {run.relation_sql('roles')} g ON g.role = r.role
            ORDER BY a.response_id, a.condition, a.derivation NULLS FIRST, a.magnitude NULLS FIRST"""
    ).df()
    return df


def position_means(
    run: Run, max_position: int | None = None, con: duckdb.DuckDBPyConnection | None = None
) -> pd.DataFrame:
    """Mean log-prob by role x condition cell x token position (over the role's responses)."""
    con = con or connect()
    where = f"WHERE t.token_index < {int(max_position)}" if max_position else ""
    df = con.execute(
        f"""SELECT r.role, {_cell_sql(run, 't')}, t.token_index, count(*) AS n, avg(t.log_prob) AS mean_log_prob
            FROM {run.relation_sql('tokens')} t JOIN {run.relation_sql('responses')} r USING (response_id)
            {where} GROUP BY ALL"""
    ).df()
    roles = run.read("roles", ["role", "group"])
    df = df.merge(roles, on="role", how="left")
    order = ["role", "group", *_CELL, "token_index", "n", "mean_log_prob"]
    return df[order].sort_values(["role", "condition", "derivation", "magnitude", "token_index"],
                                 na_position="first").reset_index(drop=True)


def gap_by_role(positions: pd.DataFrame) -> pd.DataFrame:
    """with_prompt - without_prompt mean log-prob by role and token position (tidy)."""
    un = positions[positions["condition"].isin(["with_prompt", "without_prompt"])]
    wide = un.pivot_table(index=["role", "group", "token_index"], columns="condition", values="mean_log_prob",
                          observed=True).reset_index()
    wide["gap"] = wide["with_prompt"] - wide["without_prompt"]
    return wide[["role", "group", "token_index", "with_prompt", "without_prompt", "gap"]]

