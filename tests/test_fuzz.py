"""Damaged copies of `data/example`: every file truncated, bit-flipped or removed in turn. The CLI either
succeeds cleanly or exits 2 with one paragraph and no traceback, leaving nothing partial in the output
folder. `validate` runs on every copy; `analyze` on every copy that validates. A file the collector
recorded in the manifest with its SHA-256 (every part of a collected table, the vectors) is never
analysed damaged or missing: that is exit 2, naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from animacy.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example"
FILES = sorted(str(p.relative_to(EXAMPLE)) for p in EXAMPLE.rglob("*") if p.is_file())
RECORDED = set(json.loads((EXAMPLE / "manifest.json").read_text())["files"])


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    rng = np.random.default_rng(len(data))
    for i in rng.integers(0, len(data), 16):
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))


DAMAGE = {"truncated": _truncate, "bit-flipped": _flip, "removed": Path.unlink}


@pytest.mark.parametrize("how", sorted(DAMAGE))
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_example_run_fails_cleanly_or_analyses_cleanly(name, how, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    shutil.copytree(EXAMPLE, run)
    DAMAGE[how](run / name)
    capsys.readouterr()
    code = main(["validate", str(run)])  # an exception escaping main is the traceback a user would see
    if code == 0:
        code = main(["analyze", str(run), "--out", str(out), "--no-umap", "--n-boot", "20", "--quiet",
                     "--formula", "log_prob ~ magnitude + (1 | role)"])
    err = capsys.readouterr().err
    assert code in (0, 2), f"exit {code}: {err}"
    if name in RECORDED:  # a file the collector recorded with its checksum: never analysed damaged
        assert code == 2 and name in err, err
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("animacy: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert not out.exists() or not any(out.iterdir()), "an error left partial output"
    elif out.exists():
        listed = json.loads((out / "analysis.json").read_text())["tables"]
        assert {p.name for p in out.iterdir()} == {*listed, "analysis.json"}
