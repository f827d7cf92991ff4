"""Re-analysing someone else's tables: every input form, column mapping, partial studies, the original
study's own files (read from ../shared, never copied) and labels made elsewhere."""

from __future__ import annotations

import gzip
import json
import shutil

import duckdb
import pandas as pd
import pytest

from animacy.analysis.pipeline import AnalyzeOptions, analyze
from animacy.cli import main
from animacy.flatcsv import export_flat_csv
from animacy.run import Run
from animacy.seedstudy import import_study
from tests.conftest import SHARED_DATA

SEED = SHARED_DATA / "seed_study"
QUIET = ["--n-boot", "100", "--no-umap"]


@pytest.fixture(scope="module")
def flat(small_run, tmp_path_factory):
    """The small simulated run as the flat CSV people share, plus its roles CSV."""
    d = tmp_path_factory.mktemp("flat")
    tokens, roles = export_flat_csv(Run(small_run), d / "tokens.csv")  # no projections: two files
    return tokens, roles


def _analyze(source, out, *extra) -> int:
    return main(["analyze", str(source), "--out", str(out), *QUIET, "--quiet", *extra])


@pytest.mark.parametrize("form", ["gzip named .csv", "gzip", "parquet", "parquet parts"])
def test_every_form_of_a_flat_table_is_read_by_its_bytes(flat, tmp_path, form, capsys):
    tokens, roles = flat
    if form.startswith("gzip"):
        src = tmp_path / ("t.csv" if form == "gzip named .csv" else "t.csv.gz")
        src.write_bytes(gzip.compress(tokens.read_bytes()))
    else:
        df = pd.read_csv(tokens)
        if form == "parquet":
            src = tmp_path / "t.data"
            df.to_parquet(src)
        else:
            src = tmp_path / "parts"
            src.mkdir()
            half = len(df) // 2
            df.iloc[:half].to_parquet(src / "part-0.parquet")
            df.iloc[half:].to_parquet(src / "part-1.parquet")
    assert main(["validate", str(src), "--roles-csv", str(roles)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "yes  steering models and slopes" in out


def test_arrow_reads_a_clean_csv_as_the_careful_reader_does_and_hands_it_what_it_will_not_take(
        flat, tmp_path, monkeypatch):
    """The flat CSV parsed and typed by Arrow imports to exactly the tables the careful reader makes, with
    quoted newlines and commas in a role and in an extra column, and empty cells; Arrow alone reads it (the
    careful reader is not called). A file Arrow will not take as it stands (spaces around numbers, 1.0 for
    an integer) is read by the careful reader, to the same tables."""
    from animacy import flatcsv
    from animacy.schema import FLAT_TOKENS

    tokens, roles = flat
    df = pd.read_csv(tokens)
    first = df.role.iloc[1]
    df.loc[df.role == first, "role"] = 'odd,\n"role"'
    df["comment"] = ["a, b\nc" if i % 7 == 0 else "" for i in range(len(df))]
    df.to_csv(tmp_path / "t.csv", index=False)
    r = pd.read_csv(roles)
    r.loc[r.role == first, "role"] = 'odd,\n"role"'
    r.to_csv(tmp_path / "r.csv", index=False)
    messy = df.copy()
    messy["log_prob"] = [f" {v} " for v in df["log_prob"]]
    messy["token_index"] = df["token_index"].astype(float)
    messy.to_csv(tmp_path / "m.csv", index=False)

    careful = flatcsv.read_csv_chunks
    newlines: list = []
    want = flatcsv._import_flat(careful(tmp_path / "t.csv", FLAT_TOKENS, newlines=newlines), [], tmp_path / "c",
                                tmp_path / "r.csv", {}, str(tmp_path / "t.csv"), True, newlines)
    def roles_only(path, table, *args, **kwargs):  # the roles CSV is still read carefully
        if table is FLAT_TOKENS:
            pytest.fail("Arrow did not read the clean file")
        return careful(path, table, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(flatcsv, "read_csv_chunks", roles_only)
        fast = flatcsv.import_flat_csv(tmp_path / "t.csv", tmp_path / "a", tmp_path / "r.csv")
    slow = flatcsv.import_flat_csv(tmp_path / "m.csv", tmp_path / "s", tmp_path / "r.csv")
    for name, key in {"tokens": ["response_id", "condition", "derivation", "magnitude", "token_index"],
                      "responses": ["response_id"], "roles": ["role"]}.items():
        w = want.read(name).sort_values(key, na_position="first").reset_index(drop=True)
        for got in (fast, slow):
            g = got.read(name).sort_values(key, na_position="first").reset_index(drop=True)
            pd.testing.assert_frame_equal(w, g, check_exact=True, obj=name)


def test_a_flat_parquet_table_is_read_as_parquet_and_imports_as_its_csv_does(flat, tmp_path):
    """The same flat table as CSV and as Parquet parts stored as people write them (integers as floats,
    strings dictionary-encoded, a column renamed, an extra column) imports to the same run tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from animacy.sources import open_source

    tokens, roles = flat
    df = pd.read_csv(tokens)
    parts = tmp_path / "parts"
    parts.mkdir()
    table = pa.Table.from_pandas(df.assign(token_index=df["token_index"].astype(float), note="x")
                                 .rename(columns={"role": "word"}), preserve_index=False)
    table = table.set_column(table.schema.get_field_index("condition"), "condition",
                             table.column("condition").dictionary_encode())
    half = len(df) // 2
    pq.write_table(table.slice(0, half), parts / "part-0.parquet")
    pq.write_table(table.slice(half), parts / "part-1.parquet")
    pd.read_csv(roles).rename(columns={"role": "word"}).to_csv(tmp_path / "r.csv", index=False)
    csv_run = open_source(tokens, tmp_path / "a", roles)
    pq_run = open_source(parts, tmp_path / "b", tmp_path / "r.csv", "role=word")
    for name, key in {"tokens": ["response_id", "condition", "derivation", "magnitude", "token_index"],
                      "responses": ["response_id"], "roles": ["role"]}.items():
        a, b = (r.read(name).sort_values(key, na_position="first").reset_index(drop=True) for r in (csv_run, pq_run))
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)


@pytest.mark.parametrize(("damage", "column", "words"), [
    ("text in log_prob", "log_prob", "not a number"),
    ("a fraction in token_index", "token_index", "not an integer"),
    ("no role column", "role", "role"),
    ("not parquet inside", None, "cannot be read as Parquet"),
])
def test_a_bad_flat_parquet_table_names_the_file_column_and_row(flat, tmp_path, damage, column, words, capsys):
    tokens, roles = flat
    df = pd.read_csv(tokens)
    src = tmp_path / "t.parquet"
    if damage == "text in log_prob":
        df["log_prob"] = df["log_prob"].astype(object)
        df.loc[41, "log_prob"] = "n/a"
        df["log_prob"] = df["log_prob"].astype(str)
    elif damage == "a fraction in token_index":
        df["token_index"] = df["token_index"].astype(float)
        df.loc[41, "token_index"] = 2.5
    elif damage == "no role column":
        df = df.drop(columns="role")
    df.to_parquet(src)
    if damage == "not parquet inside":
        data = bytearray(src.read_bytes())
        data[8:200] = bytes(192)
        src.write_bytes(bytes(data))
    assert main(["validate", str(src), "--roles-csv", str(roles)]) == 2
    err = capsys.readouterr().err
    assert "t.parquet" in err and words in err and "Traceback" not in err, err
    if damage in ("text in log_prob", "a fraction in token_index"):
        assert f"column '{column}'" in err and "row 42" in err, err


def test_column_mapping_and_groups_from_the_roles_csv(flat, tmp_path):
    tokens, roles = flat
    df = pd.read_csv(tokens).rename(columns={"role": "word"}).drop(columns="group")
    df.to_csv(tmp_path / "t.csv", index=False)
    pd.read_csv(roles).rename(columns={"role": "word"}).to_csv(tmp_path / "r.csv", index=False)
    out = tmp_path / "a"
    assert _analyze(tmp_path / "t.csv", out, "--roles-csv", str(tmp_path / "r.csv"), "--columns", "role=word") == 0
    fixed = pd.read_csv(out / "mixed_fixed.csv")
    want = pd.read_csv(tokens)["group"].unique()
    assert {t[len("group[T."):-1] for t in fixed["term"] if t.startswith("group[T.")} < set(want)
    # without the roles CSV there is no group anywhere: a clear error, not a traceback
    assert _analyze(tmp_path / "t.csv", tmp_path / "b", "--columns", "role=word") == 2


@pytest.mark.parametrize("case", ["mapping to a missing column", "gzip that is damaged"])
def test_bad_intake_stops_with_the_file_and_column(flat, tmp_path, case, capsys):
    tokens, roles = flat
    if case == "mapping to a missing column":
        args = [str(tokens), "--roles-csv", str(roles), "--columns", "role=wrd"]
        named = "wrd"
    else:
        bad = tmp_path / "t.csv.gz"
        bad.write_bytes(gzip.compress(tokens.read_bytes())[:200])
        args = [str(bad)]
        named = "t.csv.gz"
    assert main(["validate", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def _partial(small_run, tmp_path, keep_conditions=None, drop_tables=(), roles_filter=None, magnitudes=None):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    for t in drop_tables:
        target = run / t if (run / t).is_dir() else run / f"{t}.parquet"
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    con = duckdb.connect()
    where = []
    if keep_conditions:
        where.append("condition IN (" + ", ".join(f"'{c}'" for c in keep_conditions) + ")")
    if magnitudes is not None:
        where.append(f"(magnitude IS NULL OR magnitude IN ({', '.join(map(str, magnitudes))}))")
    if roles_filter:
        roles = pd.read_parquet(run / "roles.parquet")
        keep = roles[roles_filter(roles)]
        keep.to_parquet(run / "roles.parquet")
        resp = pd.read_parquet(run / "responses.parquet")
        resp = resp[resp.role.isin(keep.role)]
        resp.to_parquet(run / "responses.parquet")
        for t in ("labels", "activations"):
            for p in sorted((run / t).glob("*.parquet")) if (run / t).is_dir() else [run / f"{t}.parquet"]:
                if p.exists():
                    df = pd.read_parquet(p)
                    df[df.response_id.isin(resp.response_id)].to_parquet(p)
        wg = run / "word_guess.parquet"
        if wg.exists():
            df = pd.read_parquet(wg)
            df[df.role.isin(keep.role)].to_parquet(wg)
        ids = ", ".join("'" + r.replace("'", "''") + "'" for r in resp.response_id)
        where.append(f"response_id IN ({ids})")
    if where:
        for p in sorted((run / "tokens").glob("*.parquet")):
            con.execute(f"COPY (SELECT * FROM read_parquet('{p}') WHERE {' AND '.join(where)}) TO '{p}.new' "
                        "(FORMAT parquet)")
            p.with_name(p.name + ".new").replace(p)
    if drop_tables and "vectors" in drop_tables:
        (run / "vectors").mkdir(exist_ok=True)
    return run


PARTIAL = {
    "steering only": ({"keep_conditions": ["steered"]}, "gap curves and recovery"),
    "no with/without pass": ({"keep_conditions": ["steered", "without_prompt"]}, "with_prompt / without_prompt"),
    "no labels": ({"drop_tables": ["labels"]}, "no labels table"),
    "no vectors": ({"drop_tables": ["vectors"]}, "no vectors"),
    "a single group": ({"roles_filter": lambda r: r.group.isin(["Assistant", r.group.iloc[0]])},
                       "one non-control group"),
    "a single role": ({"roles_filter": lambda r: r.role == r.role.iloc[0]}, "non-control role"),
    "all magnitudes zero": ({"magnitudes": [0.0]}, "same magnitude"),
}


@pytest.mark.parametrize("case", list(PARTIAL))
def test_partial_studies_run_what_they_support_and_say_what_they_skipped(small_run, tmp_path, case):
    kwargs, reason = PARTIAL[case]
    run = _partial(small_run, tmp_path, **kwargs)
    out = tmp_path / "a"
    assert _analyze(run, out) == 0
    summary = json.loads((out / "analysis.json").read_text())
    assert any(reason in s for s in summary["skipped"]), summary["skipped"]
    assert (out / "response_means.parquet").exists()


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
    if not SEED.is_dir():
        pytest.skip(f"{SEED} is absent: the original study's data are not redistributed with the project")
    out = tmp_path_factory.mktemp("seed") / "qwen"
    import_study(sorted(SEED.glob("qwen3_30b_word_guess_steered_*.csv.gz")), out,
                 SHARED_DATA / "seed_selected_roles.csv")
    return Run(out)


def test_the_original_studys_sweeps_import_faithfully(qwen_run):
    """Every row of every file becomes one steered continuation: 121 roles x 9 magnitudes x 4 prompts per
    derivation, per-token log-probs whose mean is the study's bf16-rounded average."""
    tokens = duckdb.connect().execute(
        f"SELECT derivation, count(DISTINCT response_id || magnitude) AS n, count(*) AS toks, "
        f"count(DISTINCT layers) AS layer_sets FROM {qwen_run.relation_sql('tokens')} GROUP BY derivation",
        qwen_run.params("tokens")).df()
    assert len(tokens) == 6 and (tokens["n"] == 121 * 9 * 4).all() and (tokens["layer_sets"] == 1).all()
    raw = pd.read_csv(SEED / "qwen3_30b_word_guess_steered_avg_response.csv.gz")
    assert tokens.set_index("derivation").loc["role_minus_assistant_response", "toks"] == sum(
        len(json.loads(x)) for x in raw["first_100_response_log_probs"])
    wg = qwen_run.read("word_guess")
    assert len(wg) == 6 * len(raw) and set(wg["prompt"]) == {"p1", "p2", "p3", "p4"}
    first = raw.iloc[:4]  # the first block: the four prompts in order
    got = wg[(wg.role == first.role_name.iloc[0]) & (wg.derivation == "role_minus_assistant_response")
             & (wg.magnitude == 0)].sort_values("prompt")["log_prob"]
    want = [sum(json.loads(x)) for x in first["first_100_response_log_probs"]]
    assert got.tolist() == pytest.approx(want)
    manifest = qwen_run.manifest
    assert manifest["steered_layers"] == ["26,30,34,38"] and "as given" in manifest["magnitude_units"]


def test_a_steering_only_study_is_analysed_with_the_studys_formula(qwen_run, tmp_path):
    out = tmp_path / "a"
    result = analyze(qwen_run, out, AnalyzeOptions(formula="log_prob ~ magnitude * group + (1 | role)", n_boot=100,
                                                   umap=False, quiet=True))
    assert any("gap curves" in s for s in result.skipped)
    sd = pd.read_csv(out / "slope_differences.csv")
    delta = sd[sd.method.str.startswith("delta")]
    assert len(delta) == 12 and delta["converged"].all()
    assert (delta["formula"] == "log_prob ~ magnitude * group + (1 | role)").all()
    wg = pd.read_csv(out / "word_guess.csv")
    assert set(wg["prompt"]) == {"p1", "p2", "p3", "p4", "all"}
    assert (wg.loc[wg.magnitude == 0, "mean_rise"] == 0).all()


def _sweep_copy(tmp_path, edit) -> str:
    src = SEED / "qwen3_30b_word_guess_steered_avg_response.csv.gz"
    if not src.exists():
        pytest.skip(f"{src} is absent")
    lines = gzip.decompress(src.read_bytes()).decode().splitlines(keepends=True)
    lines = edit(lines)
    out = tmp_path / "x_word_guess_steered_avg_response.csv"
    out.write_text("".join(lines))
    return str(out)


@pytest.mark.parametrize("case,column,line", [
    ("a cell that is not a list", "first_100_response_log_probs", 3),
    ("layers in an unknown format", "steered_layers", 3),
    ("a block without its four prompts", "role_name", 2),
])
def test_bad_study_files_name_the_file_column_and_line(tmp_path, capsys, case, column, line):
    def edit(lines):
        if case == "a cell that is not a list":
            lines[2] = lines[2].replace('"[-', '"{-', 1)
        elif case == "layers in an unknown format":
            lines[2] = lines[2].replace("np.int64(26)", "layer26", 1)
        else:
            del lines[4]
        return lines

    path = _sweep_copy(tmp_path, edit)
    out = tmp_path / "run"
    assert main(["import", path, "--roles", str(SHARED_DATA / "seed_selected_roles.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert path in err and f"'{column}'" in err and f"(line {line})" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "run.importing").exists()


def test_line_numbers_stay_right_after_quoted_newlines(tmp_path, capsys):
    def edit(lines):
        header, rows = lines[0], lines[1:9]
        rows[0] = rows[0].replace("steering_introspection", '"steering\nintrospection"', 1)
        rows[5] = rows[5].replace('"[-', '"{-', 1)  # record 6 starts on line 8 (one quoted newline above)
        return [header, *rows]

    path = _sweep_copy(tmp_path, edit)
    assert main(["import", path, "--roles", str(SHARED_DATA / "seed_selected_roles.csv"), "--out",
                 str(tmp_path / "run")]) == 2
    assert "row 6 (line 8)" in capsys.readouterr().err


def test_gemma_responses_import_and_labels_attach(tmp_path, capsys):
    src = SEED / "gemma3_27b_responses.csv.gz"
    if not src.exists():
        pytest.skip(f"{src} is absent")
    out = tmp_path / "gemma"
    assert main(["import", str(src), "--roles", str(SHARED_DATA / "seed_selected_roles.csv"), "--out", str(out)]) == 0
    run = Run(out)
    responses = run.read("responses")
    assert len(responses) == 6300 and responses["n_tokens"].isna().all() and not run.has("tokens")
    raw = pd.read_csv(src)
    judge = raw[["role", "task", "sample_idx"]].iloc[:50].assign(
        deny=["yes", "no"] * 25, ai=[1, 0, 0, 0, 1] * 10)
    judge.to_csv(tmp_path / "judge.csv", index=False)
    assert main(["labels", "import", str(tmp_path / "judge.csv"), "--run", str(out), "--id-columns",
                 "role,task,sample_idx", "--columns", "denies_experience=deny,claims_ai=ai", "--method",
                 "study-judge"]) == 0
    labels = run.read("labels")
    assert len(labels) == 100 and labels.groupby("classifier")["label"].sum().to_dict() == {
        "claims_ai": 20, "denies_experience": 25}
    # labels whose ids match no response are refused, naming the row
    judge.assign(task="no-such-task").to_csv(tmp_path / "bad.csv", index=False)
    assert main(["labels", "import", str(tmp_path / "bad.csv"), "--run", str(out), "--id-columns",
                 "role,task,sample_idx", "--columns", "denies_experience=deny"]) == 2
    assert "matches no response" in capsys.readouterr().err
    result = analyze(run, tmp_path / "a", AnalyzeOptions(n_boot=100, umap=False, quiet=True))
    assert any("tokens" in s for s in result.skipped) and "denial_rates_by_group.csv" in result


def test_responses_as_json_lines_import_like_the_csv(tmp_path):
    src = SEED / "gemma3_27b_responses.csv.gz"
    if not src.exists():
        pytest.skip(f"{src} is absent")
    raw = pd.read_csv(src, keep_default_na=False).iloc[:40]
    raw.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    raw.to_csv(tmp_path / "r.csv", index=False)
    a = import_study([tmp_path / "r.jsonl"], tmp_path / "a", SHARED_DATA / "seed_selected_roles.csv")
    b = import_study([tmp_path / "r.csv"], tmp_path / "b", SHARED_DATA / "seed_selected_roles.csv")
    pd.testing.assert_frame_equal(a.read("responses"), b.read("responses"))
    assert a.read("responses")["text"].tolist() == raw["text"].tolist()


@pytest.mark.parametrize("bad", ["a value that is not a number", "a positive log-prob"])
def test_flat_csv_line_numbers_stay_right_after_quoted_newlines(flat, tmp_path, capsys, bad):
    """A role name holding two newlines: an error on data row 6 sits two lines lower for every row of that
    role above it (rows_before > 0 here, so a plain row + 2 would be wrong)."""
    tokens, roles = flat
    df = pd.read_csv(tokens)
    odd = "odd\nrole\nname"
    first = df.role.iloc[1]
    df.loc[df.role == first, "role"] = odd  # every row of that role now holds two newlines
    rows_before = int((df.index[:5].isin(df.index[df.role == odd])).sum())
    assert rows_before > 0
    if bad == "a value that is not a number":
        df["log_prob"] = df["log_prob"].astype(object)
        df.loc[5, "log_prob"] = "n/a"
    else:
        df.loc[5, "log_prob"] = 0.5
    df.to_csv(tmp_path / "t.csv", index=False)
    r = pd.read_csv(roles)
    r.loc[r.role == first, "role"] = odd
    r.to_csv(tmp_path / "r.csv", index=False)
    assert main(["validate", str(tmp_path / "t.csv"), "--roles-csv", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert f"row 6 (line {6 + 1 + 2 * rows_before})" in err, err
