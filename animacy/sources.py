"""Open what a user points at: a run folder, or a flat per-token CSV (+ optional roles CSV)."""

from __future__ import annotations

from pathlib import Path

from animacy.errors import DataError
from animacy.flatcsv import import_flat_csv
from animacy.run import Run


def open_source(path: str | Path, workdir: str | Path, roles_csv: str | Path | None = None) -> Run:
    """A validated Run. A CSV is imported (streamed, checked) into `workdir` first."""
    path = Path(path)
    if path.is_dir():
        if roles_csv is not None:
            raise DataError(roles_csv, "a roles CSV goes with a flat tokens CSV; a run folder has its own roles")
        run = Run(path)
    elif path.suffix.lower() in (".csv", ".txt") or path.exists():
        if path.suffix.lower() not in (".csv", ".txt"):
            raise DataError(path, "is neither a run folder nor a .csv file")
        run = import_flat_csv(path, workdir, roles_csv)
    else:
        raise DataError(path, "does not exist")
    run.validate()
    return run
