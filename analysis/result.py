"""One analysis result: the tidy tables `analyze` made and its summary, saved to and loaded from a folder.

```
OUT/analysis.json              the summary, and a manifest of every table written (file, rows, columns)
OUT/<name>.csv                 small tidy tables
OUT/<name>.parquet             the two aggregates of the tokens table
```
An analysis folder belongs to one source. Saving into a folder that holds another source's analysis, or
anything that is not an analysis, is refused; saving the same source again replaces the whole folder at
once, so tables of an older analysis never sit beside a newer one's.

>>> import tempfile, pandas as pd
>>> from animacy.analysis.result import Analysis
>>> out = tempfile.mkdtemp() + "/analysis"
>>> a = Analysis({"source": "runs/demo"}, {"slopes.csv": pd.DataFrame({"role": ["cat"], "slope": [0.5]})})
>>> _ = a.save(out)
>>> b = Analysis.load(out)
>>> sorted(b), b["slopes.csv"]["slope"].tolist(), b.summary["source"]
(['slopes.csv'], [0.5], 'runs/demo')
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from animacy.atomic import write_csv, write_json, write_parquet
from animacy.errors import DataError

MANIFEST = "analysis.json"
FORMAT = 1


class Analysis(Mapping):
    """Tables by file name (`"mixed_fixed.csv"`, `"response_means.parquet"`, …) and the summary.

    Loaded tables are read on first use, so opening a large analysis to draw one figure is cheap."""

    def __init__(self, summary: dict, tables: Mapping[str, pd.DataFrame] | None = None, path: Path | None = None):
        self.summary = summary
        self.path = path
        self._tables: dict[str, pd.DataFrame | None] = dict(tables or {})

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            raise KeyError(name)
        if self._tables[name] is None:
            p = self.path / name
            try:
                self._tables[name] = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
            except FileNotFoundError as exc:
                raise DataError(p, f"is listed in {MANIFEST} but missing; rerun animacy analyze") from exc
        return self._tables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    @property
    def skipped(self) -> list[str]:
        return self.summary.get("skipped", [])

    def save(self, out: str | Path) -> Path:
        """Write every table and the manifest into `out` (refused if it holds another source's analysis)."""
        out = Path(out).resolve()
        claim(out, self.summary.get("source"))
        work = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            manifest = {}
            for name, table in self.items():
                if name.endswith(".parquet"):
                    write_parquet(table, work / name, metadata={"source": self.summary.get("source")})
                else:
                    write_csv(table, work / name)
                manifest[name] = {"rows": len(table), "columns": [str(c) for c in table.columns]}
            summary = {**self.summary, "format": FORMAT, "tables": manifest}
            write_json(json.loads(json.dumps(summary, default=str)), work / MANIFEST)
            _swap(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.path = out
        return out

    @classmethod
    def load(cls, path: str | Path) -> Analysis:
        """An analysis folder written by `save` (its tables are read when first used)."""
        path = Path(path)
        p = path / MANIFEST
        if not p.is_file():
            raise DataError(path, f"is not an analysis folder (no {MANIFEST}); make one with animacy analyze")
        try:
            summary = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(p, f"is not valid JSON ({exc})") from exc
        if not isinstance(summary, dict) or not isinstance(summary.get("tables"), dict):
            raise DataError(p, "is not an analysis manifest (no 'tables' object)", column="tables")
        missing = [n for n in summary["tables"] if not (path / n).is_file()]
        if missing:
            raise DataError(path / missing[0], f"is listed in {MANIFEST} but missing; rerun animacy analyze")
        return cls(summary, dict.fromkeys(summary["tables"]), path)


def claim(out: Path, source: str | None) -> None:
    """Refuse `out` unless it is absent, empty, or an analysis of the same `source`."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(out, "exists and is not a folder; choose another output folder")
    if not any(out.iterdir()):
        return
    p = out / MANIFEST
    if not p.is_file():
        raise DataError(out, f"already holds files and no {MANIFEST}, so it is not an earlier analysis; choose an "
                        "empty or new output folder (nothing was written)")
    try:
        earlier = json.loads(p.read_text()).get("source")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        earlier = None
    if earlier != source:
        raise DataError(out, f"holds the analysis of {earlier or 'an unknown source'}, not of {source}; choose "
                        "another output folder, or remove that one (nothing was written)")


def _swap(new: Path, out: Path) -> None:
    """Put the folder `new` at `out`, replacing an earlier analysis there whole."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
