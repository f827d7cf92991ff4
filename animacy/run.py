"""A run folder: the manifest and the contract's tables, each one Parquet file or a folder of parts.

```
RUN/manifest.json
RUN/roles.parquet  RUN/responses.parquet  RUN/word_guess.parquet  RUN/labels.parquet
RUN/tokens/part-*.parquet  RUN/activations/part-*.parquet        (partitioned, big)
RUN/vectors/vectors.safetensors  RUN/vectors/index.parquet
```
Small tables are read into pandas; big ones are only ever queried through DuckDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from animacy.errors import DataError
from animacy.provenance import file_sha256
from animacy.schema import TABLES
from animacy.validate import Source, check_reference, quote, validate_source

MANIFEST = "manifest.json"
JOBS = "_jobs"  # the collector's done markers, one per job
VECTORS_DIR = "vectors"
VECTORS_FILE = "vectors.safetensors"
REQUIRED_TABLES = ("roles", "responses")


def describe_missing(missing: list[str], shown: int = 6) -> str:
    """'3 of the planned jobs (score-0002, steer-0001, vectors)' style text."""
    more = f", and {len(missing) - shown} more" if len(missing) > shown else ""
    return f"{len(missing)} planned job{'s' if len(missing) != 1 else ''} ({', '.join(missing[:shown])}{more})"


def connect(threads: int | None = None, memory_limit: str = "1GB", temp_dir: str | None = None):
    """A DuckDB connection with a memory cap, so that big aggregates spill instead of growing."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{memory_limit}'")
    with contextlib.suppress(duckdb.InvalidInputException):  # in Jupyter without ipywidgets DuckDB refuses
        con.execute("SET enable_progress_bar=false")
    con.execute("SET temp_directory = $dir", {"dir": temp_dir or tempfile.gettempdir() + "/animacy-duckdb"})
    con.execute("SET preserve_insertion_order=false")
    if threads:
        con.execute(f"SET threads={int(threads)}")
    return con


def table_path(root: Path, name: str) -> Path:
    """Where a single-file table lives (`vectors_index` sits inside the vectors folder)."""
    if name == "vectors_index":
        return root / VECTORS_DIR / "index.parquet"
    return root / f"{name}.parquet"


@dataclass
class Run:
    """A run folder on disk. `display` overrides how tables are named in errors (for CSV imports)."""

    path: Path
    display: dict[str, tuple[str, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_dir():
            raise DataError(self.path, "is not a run folder (no such directory)")

    @cached_property
    def manifest(self) -> dict:
        p = self.path / MANIFEST
        if not p.exists():
            raise DataError(self.path, f"has no {MANIFEST}; is this a run folder?")
        try:
            manifest = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(p, f"is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict):
            raise DataError(p, f"holds a JSON {type(manifest).__name__}, not an object; a run's manifest is an "
                            "object with its config, model and provenance")
        return manifest

    def missing_jobs(self) -> list[str] | None:
        """The collection jobs the manifest planned that are not done ([] for a complete run), from the
        manifest and the run's done markers; None where no plan is recorded (imported and simulated runs are
        written whole)."""
        jobs = self.manifest.get("jobs")
        if not isinstance(jobs, dict) or not isinstance(jobs.get("planned"), list):
            return None
        markers = self.path / JOBS
        done = set(jobs.get("done") or []) | ({p.stem for p in markers.glob("*.done")} if markers.is_dir() else set())
        return [j for j in jobs["planned"] if j not in done]

    def check_complete(self, allow_incomplete: bool = False) -> list[str]:
        """Refuse a run whose collection did not finish, naming the missing jobs, unless `allow_incomplete`;
        returns the missing jobs (what every output of an allowed incomplete run must say)."""
        missing = self.missing_jobs() or []
        if missing and not allow_incomplete:
            raise DataError(self.path, f"is an incomplete run: {describe_missing(missing)} not done. Resume the "
                            "collection (animacy collect run CONFIG --out RUN), or pass --allow-incomplete to "
                            "analyse what is there", column="jobs")
        return missing

    def files(self, name: str) -> list[Path]:
        single = table_path(self.path, name)
        if single.exists():
            return [single]
        folder = self.path / name
        if folder.exists() and not folder.is_dir():
            raise DataError(folder, f"is a file, but the {name} table is a folder of Parquet parts (or {name}.parquet)")
        if folder.is_dir():
            if not os.access(folder, os.R_OK | os.X_OK):
                raise DataError(folder, "cannot be read (permission denied), so its table cannot be checked")
            return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        return []

    def has(self, name: str) -> bool:
        return bool(self.files(name))

    def source(self, name: str) -> Source:
        files = self.files(name)
        if not files:
            raise DataError(self.path, f"has no {name} table (expected {name}.parquet or {name}/part-*.parquet)")
        if name in self.display:
            shown, csv = self.display[name]
            return Source.of(files, [shown] * len(files), csv=csv)
        return Source.of(files)

    def read(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Read a small table into pandas (never call this on `tokens`: use `relation`)."""
        cols = "*" if columns is None else ", ".join(quote(c) for c in columns)
        with duckdb.connect() as con:
            return con.execute(f"SELECT {cols} FROM {self.relation_sql(name)}", self.params(name)).df()

    def relation_sql(self, name: str) -> str:
        """A DuckDB table expression over a table's parts (for out-of-core queries); the file list is a
        query parameter: run the query with `params` of every table it names."""
        return f"read_parquet(${self.source(name).param}, union_by_name=true)"

    def params(self, *names: str) -> dict[str, list[str]]:
        """The query parameters (file lists) of the tables `names`, for `con.execute(sql, params)`."""
        out: dict[str, list[str]] = {}
        for name in names:
            out |= self.source(name).params
        return out

    def check_files(self) -> None:
        """Every file the collector recorded in the manifest (`files`: path -> SHA-256, written by its
        finished jobs) is there with those bytes: a part removed or damaged after it was written is an error
        naming it, never a table silently short of its rows or holding changed values."""
        files = self.manifest.get("files") if (self.path / MANIFEST).exists() else None
        if files is not None and not (isinstance(files, dict) and all(isinstance(d, str) for d in files.values())):
            raise DataError(self.path / MANIFEST, "has a 'files' entry that is not a map of file paths to SHA-256 "
                            "digests; the manifest was edited or damaged")
        for rel, digest in (files or {}).items():
            path = self.path / rel
            if not path.is_file():
                raise DataError(path, "is missing, but the manifest lists it as written by a finished collection "
                                "job; the run folder is incomplete",
                                hint="Copy the whole run folder again, or restore the file.")
            if file_sha256(path) != digest:
                raise DataError(path, f"has changed since the collector wrote it (its SHA-256 is not the "
                                f"{digest[:12]}... the manifest records): the file is damaged or was edited",
                                hint="Copy it again from the original run folder.")

    def validate(self, con: duckdb.DuckDBPyConnection | None = None, keys: bool = True) -> None:
        """Check the files the collector recorded, every table present against the contract, then the
        references between them."""
        self.check_files()
        con = con or connect()
        for name in REQUIRED_TABLES:
            if not self.has(name):
                self.source(name)  # raises the clear error
        present = [n for n in TABLES if self.has(n)]
        for name in present:
            validate_source(con, TABLES[name], self.source(name), keys=keys)
        for name in present:
            for column, targets in TABLES[name].references.items():
                parents = [(self.source(t), c) for t, c in (x.split(".") for x in targets.split("|")) if self.has(t)]
                if parents:
                    check_reference(con, TABLES[name], self.source(name), column, parents)
        if self.read("roles", ["role"]).empty:
            raise DataError(self.source("roles").display[0], "has no rows; the roles table needs at least one role")

    def load_vectors(self) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """The vector index and the tensors it points into (read with numpy: no torch)."""
        from safetensors.numpy import load_file

        index = self.read("vectors_index")
        path = self.path / VECTORS_DIR / VECTORS_FILE
        if not path.exists():
            raise DataError(path, "is missing; the vectors index points into it")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type for every bad file
            raise DataError(path, f"could not be read ({exc}); the file is damaged or truncated",
                            hint="Restore it, or derive the vectors again (animacy collect run resumes).") from exc
        bad = sorted(name for name, t in tensors.items() if not np.isfinite(t).all())
        if bad:
            raise DataError(path, f"tensor '{bad[0]}' holds a NaN or infinite value; derive the vectors again")
        missing = sorted(set(index["tensor"]) - set(tensors))
        if missing:
            raise DataError(path, f"lacks tensor '{missing[0]}' named in the vectors index", column="tensor")
        return index, tensors

