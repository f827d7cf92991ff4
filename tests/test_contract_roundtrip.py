"""Run folder <-> flat CSV, and the out-of-core aggregates against a direct pandas computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from animacy.analysis.aggregate import gap_by_role, position_means, response_means
from animacy.analysis.curves import gap_curve_bands
from animacy.atomic import atomic_path, write_parquet
from animacy.cli import main
from animacy.run import Run
from animacy.schema import FLAT_COLUMN_ORDER, TABLES


def _all_tokens(run: Run) -> pd.DataFrame:
    return pd.concat([pq.read_table(f).to_pandas() for f in run.files("tokens")], ignore_index=True)


def test_simulated_run_is_valid_and_complete(small_run):
    run = Run(small_run)
    run.validate()
    # projections, conversations and trait-steered responses come from collected studies with [monitor],
    # [conversations] and trait magnitudes; their analyses are tested by simulations of their own
    for name in set(TABLES) - {"projections", "conversations", "trait_responses", "trait_scores"}:
        assert run.has(name), name
    index, tensors = run.load_vectors()
    norms = [np.linalg.norm(tensors[t][r]) for t, r in zip(index["tensor"], index["row"])]
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    m = run.manifest
    assert {"config", "truth", "provenance", "seeds", "layers"} <= set(m)
    assert "numpy" in m["provenance"]["packages"]


def test_response_means_match_pandas(small_run):
    run = Run(small_run)
    tok = _all_tokens(run)
    got = response_means(run, first_n=10)
    want = (tok[tok.token_index < 10].groupby(["response_id", "condition", "derivation", "magnitude"], dropna=False)
            ["log_prob"].mean().rename("want").reset_index())
    merged = got.merge(want, on=["response_id", "condition", "derivation", "magnitude"], how="outer")
    assert len(merged) == len(got) == len(want)
    np.testing.assert_allclose(merged["mean_log_prob"], merged["want"], rtol=1e-6)
    assert (got["n_tokens"] == 10).all()


def test_gap_curve_matches_per_token_differences(small_run):
    """Differences of position means equal means of paired per-token differences (same tokens)."""
    run = Run(small_run)
    tok = _all_tokens(run)
    resp = run.read("responses")[["response_id", "role"]]
    roles = run.read("roles")[["role", "group"]]
    un = tok[tok.condition.isin(["with_prompt", "without_prompt"])]
    wide = un.pivot_table(index=["response_id", "token_index"], columns="condition", values="log_prob").reset_index()
    wide = wide.merge(resp, on="response_id").merge(roles, on="role")
    wide["gap"] = wide.with_prompt - wide.without_prompt
    per_role = wide.groupby(["group", "role", "token_index"])["gap"].mean().reset_index()
    want = per_role.groupby(["group", "token_index"])["gap"].mean().reset_index()
    bands = gap_curve_bands(gap_by_role(position_means(run)), n_boot=50)
    got = bands.merge(want, on=["group", "token_index"], suffixes=("", "_want"))
    assert len(got) == len(want)
    np.testing.assert_allclose(got["gap"], got["gap_want"], rtol=1e-5)


def test_export_then_import_gives_the_same_analysis(small_run, tmp_path):
    csv = tmp_path / "flat.csv"
    assert main(["export", str(small_run), "--csv", str(csv)]) == 0
    header = csv.read_text().splitlines()[0].split(",")
    assert header == [c for c in FLAT_COLUMN_ORDER if c in header]
    assert header[:9] == list(FLAT_COLUMN_ORDER[:9])
    roles_csv = tmp_path / "flat.roles.csv"
    assert "anim_mental" in roles_csv.read_text().splitlines()[0]
    assert main(["analyze", str(small_run), "--out", str(tmp_path / "a")]) == 0
    assert main(["analyze", str(csv), "--roles-csv", str(roles_csv), "--out", str(tmp_path / "b")]) == 0
    a = pd.read_parquet(tmp_path / "a" / "response_means.parquet")
    b = pd.read_parquet(tmp_path / "b" / "response_means.parquet")
    key = ["response_id", "condition", "derivation", "magnitude"]
    m = a.merge(b, on=key, suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b)
    np.testing.assert_allclose(m["mean_log_prob_a"], m["mean_log_prob_b"], rtol=1e-6)
    summary = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert summary["run_kind"] == "imported" and summary["provenance"]["packages"]


def test_flat_csv_without_response_id_groups_by_role_task_replicate(small_run, tmp_path):
    csv = tmp_path / "flat.csv"
    main(["export", str(small_run), "--csv", str(csv)])
    df = pd.read_csv(csv).drop(columns=["response_id", "token_id", "layers"])
    df.to_csv(tmp_path / "min.csv", index=False)
    assert main(["analyze", str(tmp_path / "min.csv"), "--out", str(tmp_path / "o")]) == 0
    means = pd.read_parquet(tmp_path / "o" / "response_means.parquet")
    assert means["response_id"].nunique() == len(Run(small_run).read("responses"))


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "t.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a table")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_parquet(pd.DataFrame({"a": [1]}), target)
    assert pd.read_parquet(target)["a"].tolist() == [1]
