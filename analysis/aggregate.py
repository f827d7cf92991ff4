"""Out-of-core aggregates of the per-token table (DuckDB over Parquet parts; never pandas on it whole).

Two reductions feed every later statistic, and `aggregates` computes both in one scan of the table
(DuckDB grouping sets):

- `response_means`: per response x condition x derivation x magnitude (or capping tau) x layers, the mean log-prob of
  the first N response tokens (the mixed models' outcome), and of any further windows asked for;
- `position_means`: per role x condition x derivation x magnitude x layers x token position, the mean
  log-prob (gap curves and pooled recovery). Teacher forcing scores the same tokens in every
  condition, so differences of these means equal means of per-token differences without a join.
"""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from animacy.run import Run, connect

_CELL = ("condition", "derivation", "magnitude", "tau", "layers")


def _window(n: int | None) -> str:
    return "TRUE" if not n else f"token_index < {int(n)}"


def aggregates(run: Run, first_n: int | None = 50, windows: tuple[int, ...] = (), positions: bool = True,
               means: bool = True, con: duckdb.DuckDBPyConnection | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`(response means, position means)` from one scan of the tokens table.

    Response means hold `n_tokens` and `mean_log_prob` over the first `first_n` tokens (all if None), and
    `mean_log_prob_<n>` for every extra window `n`; either table is empty when not asked for."""
    con = con or connect()
    names = set(pq.read_schema(run.files("tokens")[0]).names)
    absent = {"tau": "NULL::DOUBLE"}  # optional cell columns, NULL where a table has none
    cell = [f"t.{c}" if c in names else f"{absent.get(c, 'NULL::VARCHAR')} AS {c}" for c in _CELL]
    keys = ", ".join(_CELL)
    sets = ([f"(response_id, role, {keys})"] if means else []) + ([f"(role, {keys}, token_index)"] if positions
                                                                   else [])
    rid = "response_id" if means else "NULL AS response_id"
    tix = "token_index" if positions else "NULL AS token_index"
    per = "GROUPING(token_index)" if means and positions else str(int(means))  # 1: a per-response row
    extra = "".join(f", avg(log_prob) FILTER (WHERE {_window(n)}) AS mean_log_prob_{int(n)}" for n in windows)
    first = _window(first_n)
    df = con.execute(
        f"""WITH t AS (SELECT t.response_id, r.role, {', '.join(cell)}, t.token_index, t.log_prob
                       FROM {run.relation_sql('tokens')} t JOIN {run.relation_sql('responses')} r USING (response_id))
            SELECT {rid}, role, {keys}, {tix}, {per} AS per_response,
                   count(*) FILTER (WHERE {first}) AS n_tokens, avg(log_prob) FILTER (WHERE {first}) AS mean_log_prob,
                   count(*) AS n, avg(log_prob) AS mean_all{extra}
            FROM t GROUP BY GROUPING SETS ({', '.join(sets)})""", run.params("tokens", "responses")
    ).df()
    roles = run.read("roles", ["role", "group"])
    resp = run.read("responses", ["response_id", "task_id", "replicate"])
    by_response = df[df["per_response"] == 1]
    by_response = by_response[by_response["n_tokens"] > 0].merge(resp, on="response_id").merge(roles, on="role")
    extra_cols = [f"mean_log_prob_{int(n)}" for n in windows]
    by_response = by_response[["response_id", "role", "group", "task_id", "replicate", *_CELL, "n_tokens",
                               "mean_log_prob", *extra_cols]]
    by_response = by_response.assign(n_tokens=by_response["n_tokens"].astype("int64")).sort_values(
        ["response_id", "condition", "derivation", "magnitude"], na_position="first").reset_index(drop=True)
    by_position = df[df["per_response"] == 0].drop(columns=["mean_log_prob"])
    by_position = by_position.rename(columns={"mean_all": "mean_log_prob"})
    by_position = by_position.merge(roles, on="role", how="left")
    by_position = by_position[["role", "group", *_CELL, "token_index", "n", "mean_log_prob"]].astype(
        {"token_index": "int64", "n": "int64"})
    by_position = by_position.sort_values(["role", "condition", "derivation", "magnitude", "token_index"],
                                          na_position="first").reset_index(drop=True)
    return by_response, by_position


def response_means(run: Run, first_n: int | None = 50, con: duckdb.DuckDBPyConnection | None = None) -> pd.DataFrame:
    """Mean log-prob of the first `first_n` tokens (all tokens if None) of every response in every
    condition cell, with role, group, task and replicate attached."""
    return aggregates(run, first_n, positions=False, con=con)[0]


def position_means(run: Run, con: duckdb.DuckDBPyConnection | None = None) -> pd.DataFrame:
    """Mean log-prob by role x condition cell x token position (over the role's responses)."""
    return aggregates(run, means=False, con=con)[1]


def gap_by_role(positions: pd.DataFrame) -> pd.DataFrame:
    """with_prompt - without_prompt mean log-prob by role and token position (tidy)."""
    un = positions[positions["condition"].isin(["with_prompt", "without_prompt"])]
    wide = un.pivot_table(index=["role", "group", "token_index"], columns="condition", values="mean_log_prob",
                          observed=True).reset_index()
    wide["gap"] = wide["with_prompt"] - wide["without_prompt"]
    return wide[["role", "group", "token_index", "with_prompt", "without_prompt", "gap"]]
