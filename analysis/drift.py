"""Persona drift over the turns of a conversation (the `conversations` table and its projections): how far
the residual stream sits along the assistant axis at each turn, freely and capped, and what the model says.

- `turn_projections`: one row per conversation x turn x direction x layer, the mean projection over the
  turn's answer tokens (aggregated in DuckDB, out of core).
- `drift_curves`: per arm (free, or capped at a τ), layer and turn, the mean over roles of each role's mean
  projection, with a role-clustered bootstrap interval.
- `drift_models`: `projection ~ turn * arm + (1 | conversation_id) + (1 | role)` per direction and layer
  (the free arm is the reference: `turn` is the free drift per turn, `turn:arm[...]` how capping changes it;
  the ablated arm is left out of the assistant axis' own model, where its projection is 0 by construction).
- `turn_behaviour`: per arm and turn, the rate of each label among the answers (role-clustered intervals)
  and their mean log-prob.

>>> import pandas as pd
>>> rows = [{"conversation_id": f"{r}|{a}", "role": r, "group": "g", "arm": a, "turn": t, "layer": 5,
...          "direction": "assistant_axis", "projection": p}
...         for r, base in (("a", 0.0), ("b", 1.0)) for a, drift in (("free", -1.0), ("capped τ=0.1", 0.0))
...         for t in range(3) for p in [base + drift * t]]
>>> c = drift_curves(pd.DataFrame(rows), n_boot=50)
>>> c[c.arm == "free"][["turn", "projection"]].to_dict("list")
{'turn': [0, 1, 2], 'projection': [0.5, -0.5, -1.5]}
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from animacy.analysis.bootstrap import clustered_mean
from animacy.analysis.mixed import fit_many
from animacy.run import Run, connect
from animacy.schema import AXIS, CONVERSATION_CONDITIONS

DRIFT_FORMULA = "projection ~ turn * arm + (1 | conversation_id) + (1 | role)"
FREE = "free"


ABLATED_ARM = "axis ablated"


def arm(condition: str, tau: float | None) -> str:
    """The arm of a conversation: 'free', 'capped τ=<tau>' or 'axis ablated'."""
    if condition == "conversation_ablated":
        return ABLATED_ARM
    return FREE if condition == CONVERSATION_CONDITIONS[0] or tau is None or tau != tau else f"capped τ={tau:g}"


def _arms(df: pd.DataFrame) -> pd.DataFrame:
    names = [arm(c, t) for c, t in zip(df["condition"], df["tau"])]
    capped = sorted({n for n in names if n.startswith("capped")}, key=lambda n: float(n.split("=")[1]))
    order = [FREE, *capped, *([ABLATED_ARM] if ABLATED_ARM in names else [])]
    return df.assign(arm=pd.Categorical(names, categories=order))


def turn_projections(run: Run) -> pd.DataFrame:
    """Mean projection of each conversation turn's answer tokens, per direction and layer, with the role's
    group and the conversation's arm."""
    con = connect()
    conds = ", ".join(f"'{c}'" for c in CONVERSATION_CONDITIONS)
    df = con.execute(
        f"SELECT c.conversation_id, c.role, c.replicate, c.condition, c.tau, c.turn, p.direction, p.layer, "
        f"avg(p.projection) AS projection, count(*) AS n_tokens "
        f"FROM {run.relation_sql('projections')} p JOIN {run.relation_sql('conversations')} c "
        f"USING (response_id, turn) WHERE p.condition IN ({conds}) "
        f"GROUP BY ALL ORDER BY c.conversation_id, c.turn, p.direction, p.layer",
        run.params("projections", "conversations")).df()
    groups = run.read("roles", ["role", "group"])
    return _arms(df.merge(groups, on="role", how="left"))


def drift_curves(per_turn: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per direction, layer, arm and turn: the mean over roles of each role's mean projection, with a
    role-clustered bootstrap 95% interval (none below MIN_CLUSTERS roles, said in `note`)."""
    rng = np.random.default_rng(seed)
    rows = []
    keys = ["direction", "layer", "arm", "turn"]
    for key, part in per_turn.groupby(keys, sort=True, observed=True):
        projection, lo, hi, n, note = clustered_mean(part["projection"], part["role"], n_boot, rng)
        rows.append({**dict(zip(keys, key)), "projection": projection, "ci_low": lo, "ci_high": hi, "n_roles": n,
                     "n_conversations": part["conversation_id"].nunique(), "note": note})
    return pd.DataFrame(rows)


def drift_models(per_turn: pd.DataFrame, backend: str = "python", formula: str = DRIFT_FORMULA,
                 skipped: list[str] | None = None) -> pd.DataFrame:
    """The drift model per direction and layer: fixed effects with their fit's convergence and messages
    beside them. A direction and layer that cannot be fitted is listed in `skipped` with the reason."""
    # the ablated arm's projection on the axis it ablates is 0 by construction: it tells the model nothing
    data = per_turn[~((per_turn["direction"] == AXIS) & (per_turn["arm"] == ABLATED_ARM))]
    jobs = {key: (_used_arms(part), formula, f"the conversation turns of {key[0]} at layer {key[1]}")
            for key, part in data.groupby(["direction", "layer"], sort=True) if part["arm"].nunique() > 1
            or "arm" not in formula}
    fits = fit_many(jobs, backend, keep_errors=True)
    tables = []
    for (direction, layer), fit in fits.items():
        if isinstance(fit, Exception):
            if skipped is not None:
                skipped.append(f"drift model of {direction} at layer {layer}: {fit}")
            continue
        tables.append(fit.fixed.assign(direction=direction, layer=layer, formula=fit.formula, n=fit.n,
                                       n_roles=fit.n_groups.get("role"), converged=fit.converged,
                                       messages="; ".join(fit.messages)))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _used_arms(part: pd.DataFrame) -> pd.DataFrame:
    """The arms a model's rows hold, no others (an empty arm would be a column of zeros in its design)."""
    arms = part["arm"]
    return part.assign(arm=arms.cat.remove_unused_categories()) if isinstance(arms.dtype, pd.CategoricalDtype) else part


def turn_behaviour(conversations: pd.DataFrame, labels: pd.DataFrame | None, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """Per arm and turn: the answers' mean log-prob, and (with labels) each label's rate among them, each
    averaged per role and then over roles with a role-clustered bootstrap 95% interval (`note` says why
    there is none)."""
    rng = np.random.default_rng(seed)
    conv = _arms(conversations)
    measures = [("mean_log_prob", conv.rename(columns={"mean_log_prob": "value"}))]
    if labels is not None and len(labels):
        method = labels["method"].value_counts().idxmax()
        lab = labels[labels["method"] == method].merge(conv[["response_id", "role", "arm", "turn"]],
                                                       on="response_id")
        measures += [(c, part.rename(columns={"label": "value"})) for c, part in lab.groupby("classifier")]
    rows = []
    for measure, df in measures:
        for (a, turn), part in df.dropna(subset=["value"]).groupby(["arm", "turn"], sort=True, observed=True):
            value, lo, hi, n, note = clustered_mean(part["value"], part["role"], n_boot, rng)
            rows.append({"measure": measure, "arm": a, "turn": turn, "value": value, "ci_low": lo, "ci_high": hi,
                         "n_roles": n, "n_answers": len(part), "note": note})
    return pd.DataFrame(rows)
