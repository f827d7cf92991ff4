"""The table of bad inputs: each gives one clear paragraph naming file, column and row, exit status 2,
no traceback, and leaves no partial output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from animacy.analysis.mixed_r import environment_without_r
from animacy.cli import main


def _flat(small_run: Path, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    csv = tmp_path / "flat.csv"
    assert main(["export", str(small_run), "--csv", str(csv)]) == 0
    return csv, pd.read_csv(csv, keep_default_na=False, dtype=str)


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def _set(df: pd.DataFrame, row: int, col: str, value: str) -> pd.DataFrame:
    df = df.copy()
    df.loc[row, col] = value
    return df


CSV_CASES = {
    # name: (mutate(df, path) -> path, expected column, expected 1-based row or None, words in message)
    "missing column": (lambda df, p: _write(df.drop(columns="log_prob"), p), "log_prob", None, "missing"),
    "misspelt column": (lambda df, p: _write(df.rename(columns={"log_prob": "logprob"}), p), "log_prob", None,
                        "misspelling of 'log_prob'"),
    "wrong dtype": (lambda df, p: _write(_set(df, 7, "log_prob", "abc"), p), "log_prob", 8, "not a number"),
    "fractional integer": (lambda df, p: _write(_set(df, 3, "token_index", "1.5"), p), "token_index", 4,
                           "not an integer"),
    "NaN log-prob": (lambda df, p: _write(_set(df, 11, "log_prob", "nan"), p), "log_prob", 12, "NaN"),
    "inf log-prob": (lambda df, p: _write(_set(df, 12, "log_prob", "-inf"), p), "log_prob", 13, "infinite"),
    "positive log-prob": (lambda df, p: _write(_set(df, 20, "log_prob", "0.5"), p), "log_prob", 21, "<= 0"),
    "duplicate key": (lambda df, p: _write(pd.concat([df.iloc[:30], df.iloc[[5]], df.iloc[30:]]), p),
                      "token_index", 31, "duplicate key"),
    "unknown condition": (lambda df, p: _write(_set(df, 9, "condition", "steerd"), p), "condition", 10,
                          "not an allowed value"),
    "steered row without magnitude": (lambda df, p: _write(
        _set(df, int((df["condition"] == "steered").idxmax()), "magnitude", ""), p), "magnitude", None,
        "need both a derivation and a magnitude"),
    "role in two groups": (lambda df, p: _write(_set(df, 2, "group", "Low Mental, Low Physical"), p), "group", 3,
                           "second group"),
    "empty file": (lambda df, p: (p.write_bytes(b""), p)[1], None, None, "empty"),
    "header only": (lambda df, p: (p.write_text(",".join(df.columns) + "\n"), p)[1], None, None, "no data rows"),
    "semicolon delimiter": (lambda df, p: (df.to_csv(p, index=False, sep=";"), p)[1], None, None,
                            "semicolon-delimited"),
    "non-UTF-8 bytes": (lambda df, p: (_write(df, p),
                                       p.write_bytes(p.read_bytes().replace(b"hmhp-01", b"hm\xe9p-01", 1)), p)[2],
                        None, None, "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv(case, small_run, tmp_path, capsys):
    _csv, df = _flat(small_run, tmp_path)
    mutate, column, row, words = CSV_CASES[case]
    bad = mutate(df, tmp_path / "bad.csv")
    out = tmp_path / "analysis"
    capsys.readouterr()
    assert main(["analyze", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(bad) in err, err
    assert words in err, err
    if column:
        assert f"column '{column}'" in err, err
    if row:
        assert f"row {row} (line {row + 1})" in err, err
    assert len(err.strip().splitlines()) == 1, "the error is one paragraph"
    assert not out.exists() or not any(out.iterdir()), "no partial output"


def _copy_run(small_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    return run


def _rewrite_part(path: Path, change) -> None:
    t = pq.read_table(path).to_pandas()
    pq.write_table(pa.Table.from_pandas(change(t), preserve_index=False), path)


PARQUET_CASES = {
    "truncated parquet": (lambda run: (run / "tokens" / "part-00002.parquet").write_bytes(
        (run / "tokens" / "part-00002.parquet").read_bytes()[:500]), "part-00002.parquet", None, None, "truncated"),
    "positive log-prob in a part": (lambda run: _rewrite_part(
        run / "tokens" / "part-00003.parquet", lambda t: _set(t, 17, "log_prob", 0.25)),
        "part-00003.parquet", "log_prob", 18, "<= 0"),
    "wrong dtype in parquet": (lambda run: _rewrite_part(
        run / "tokens" / "part-00001.parquet", lambda t: t.assign(token_index=t["token_index"].astype(str))),
        "part-00001.parquet", "token_index", None, "contract says int"),
    "duplicate response_id": (lambda run: _rewrite_part(
        run / "responses.parquet", lambda t: pd.concat([t, t.iloc[[3]]], ignore_index=True)),
        "responses.parquet", "response_id", None, "duplicate key"),
    "unknown role": (lambda run: _rewrite_part(
        run / "responses.parquet", lambda t: _set(t, 4, "role", "ghost")),
        "responses.parquet", "role", 5, "does not have"),
    "missing manifest": (lambda run: (run / "manifest.json").unlink(), "run", None, None, "manifest.json"),
    "a table folder that is a file": (lambda run: (shutil.rmtree(run / "tokens"), (run / "tokens").write_text("x")),
                                      "tokens", None, None, "is a file"),
    "manifest not an object": (lambda run: (run / "manifest.json").write_text("[1, 2]"), "manifest.json", None, None,
                               "not an object"),
    "NaN inside an activation vector": (lambda run: _rewrite_part(
        run / "activations" / "part-00000.parquet", lambda t: t.assign(values=[
            [float("nan") if (i == 4 and j == 7) else x for j, x in enumerate(v)] for i, v in enumerate(t["values"])])),
        "part-00000.parquet", "values", 5, "NaN or infinite"),
}


def test_corrupt_bytes_in_the_middle_of_a_part_name_the_file(tmp_path, capsys):
    """A compressed page that no longer decodes (not the footer, which is checked first), in a run whose
    manifest records no checksums (made before runs recorded them, or written by other tools): the reader
    names the file. (With checksums, `check_files` names it first: tests/test_fuzz.py.)"""
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "example", run)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    part = run / "tokens" / "part-score-0003.parquet"
    data = bytearray(part.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    part.write_bytes(bytes(data))
    assert main(["analyze", str(run), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "part-score-0003.parquet: could not be read" in err and "Traceback" not in err, err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("case", sorted(PARQUET_CASES))
def test_bad_run_folder(case, small_run, tmp_path, capsys):
    run = _copy_run(small_run, tmp_path)
    mutate, file_part, column, row, words = PARQUET_CASES[case]
    mutate(run)
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert file_part in err and words in err, err
    if column:
        assert f"column '{column}'" in err, err
    if row:
        assert f"row {row}" in err, err
    assert not out.exists() or not any(out.iterdir())


def test_exit_status_and_debug_flag_in_a_real_process(small_run, tmp_path):
    """The console entry point exits 2 with no traceback; --debug shows one."""
    bad = tmp_path / "empty.csv"
    bad.write_text("")
    cmd = [sys.executable, "-m", "animacy.cli"]
    plain = subprocess.run([*cmd, "analyze", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                           env=environment_without_r())
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "empty" in plain.stderr
    debug = subprocess.run([*cmd, "--debug", "analyze", str(bad), "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, env=environment_without_r())
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_paths_with_quotes_reach_duckdb_as_parameters(small_run, tmp_path):
    """A path is never spliced into SQL: quotes, dollars and semicolons in folder names are just names."""
    odd = tmp_path / "it's a $run; DROP"
    shutil.copytree(small_run, odd)
    out = tmp_path / "o'ut"
    assert main(["analyze", str(odd), "--out", str(out), "--no-umap", "--n-boot", "20", "--quiet"]) == 0
    assert main(["export", str(odd), "--csv", str(tmp_path / "fl'at.csv")]) == 0
    assert main(["analyze", str(tmp_path / "fl'at.csv"), "--out", str(tmp_path / "b"), "--no-umap", "--n-boot", "20",
                 "--quiet"]) == 0


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KB tmpfs: writing anything sizeable to it runs out of space (root only; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill ({done.stderr.decode().strip() or 'not root'})")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_ends_in_exit_2_with_nothing_partial(small_run, full_disk, capsys):
    out = full_disk / "analysis"
    assert main(["analyze", str(small_run), "--out", str(out), "--no-umap", "--n-boot", "20", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err, err
    assert not any(full_disk.iterdir()), "no partial output or temporary files"
    assert main(["export", str(small_run), "--csv", str(full_disk / "flat.csv")]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err, err
    assert not any(full_disk.iterdir())
