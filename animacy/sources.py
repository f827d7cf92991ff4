"""Open what a user points at: a run folder, or a flat per-token table (CSV, CSV.gz, Parquet, or a folder
of Parquet parts; told apart by their bytes) with an optional roles CSV, columns renamed on request."""

from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path

from animacy.errors import DataError
from animacy.flatcsv import import_flat_csv, import_flat_parquet
from animacy.run import MANIFEST, Run
from animacy.tables import kind, parse_columns


def _gunzip(path: Path, workdir: Path) -> Path:
    """A plain copy of a gzip-compressed CSV."""
    target = workdir / "_source.csv"
    try:
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"is a damaged gzip file ({exc})") from exc
    return target


def _parquet_files(path: Path, k: str) -> list[Path]:
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith(".")) if k == "folder" else [path]
    if not files:
        raise DataError(path, "is a folder with neither a manifest.json (a run folder) nor Parquet parts")
    return files


def open_source(path: str | Path, workdir: str | Path, roles_csv: str | Path | None = None,
                columns: str | None = None) -> Run:
    """A validated Run. A flat table is imported (streamed, checked) into `workdir` first."""
    path, workdir = Path(path), Path(workdir)
    if not path.exists():
        raise DataError(path, "does not exist")
    run_like = path.is_dir() and any((path / f).exists() for f in (MANIFEST, "roles.parquet", "responses.parquet"))
    if run_like:
        if roles_csv is not None or columns:
            raise DataError(roles_csv or path, "a roles CSV and --columns go with a flat table; a run folder has "
                            "its own roles and the contract's column names")
        run = Run(path)
        run.manifest  # noqa: B018 -- a run folder without its manifest is refused here, naming the file
    else:
        k = kind(path)
        if k in ("parquet", "folder"):
            run = import_flat_parquet(_parquet_files(path, k), workdir, roles_csv, parse_columns(columns), shown=path)
        else:
            csv = path if k == "csv" else _gunzip(path, workdir)
            run = import_flat_csv(csv, workdir, roles_csv, parse_columns(columns), shown=path)
    run.validate()
    return run
