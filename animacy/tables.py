"""Read a table a user points at, whatever its form: CSV, gzip-compressed CSV or Parquet (one file or a
folder of parts), told apart by their bytes, not their names; and rename its columns on request.

>>> import pandas as pd, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.data"
>>> pd.DataFrame({"word": ["sock"], "x": [1.0]}).to_parquet(p)
>>> read_table(p, parse_columns("role=word")).columns.tolist()
['role', 'x']
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pandas as pd

from animacy.errors import ConfigError, DataError

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


def kind(path: str | Path) -> str:
    """'parquet', 'gzip' (a gzip-compressed text file), 'csv', or 'folder' (Parquet parts)."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise DataError(path, "does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head == PARQUET_MAGIC:
        return "parquet"
    return "csv"


def parse_columns(text: str | None) -> dict[str, str]:
    """'role=word,group=category' -> {'word': 'role', 'category': 'group'} (old name -> new name)."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise ConfigError("--columns", f"'{item}' is not new=old (e.g. role=word)")
        new, old = (s.strip() for s in item.split("=", 1))
        if not new or not old:
            raise ConfigError("--columns", f"'{item}' is not new=old (e.g. role=word)")
        out[old] = new
    return out


def rename(df: pd.DataFrame, mapping: dict[str, str], path: str | Path) -> pd.DataFrame:
    """Apply a --columns mapping; a mapping from a column the table lacks is an error naming it."""
    for old in mapping:
        if old not in df.columns:
            raise DataError(path, f"has no column '{old}' to map (--columns {mapping[old]}={old}); "
                            f"its columns are {', '.join(map(str, df.columns[:30]))}", column=old)
    return df.rename(columns=mapping)


def read_table(path: str | Path, mapping: dict[str, str] | None = None) -> pd.DataFrame:
    """A whole table in pandas (for response-level tables; per-token tables go through DuckDB)."""
    path = Path(path)
    k = kind(path)
    try:
        if k == "folder":
            parts = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
            if not parts:
                raise DataError(path, "is a folder without Parquet parts (*.parquet)")
            df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        elif k == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, compression="gzip" if k == "gzip" else None, encoding="utf-8-sig")
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})",
                        hint="Save it as UTF-8 CSV or Parquet.") from exc
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(path, f"cannot be read as {k}: {exc}") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(path, f"cannot be read as a table ({k}): {str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # pyarrow's errors for damaged Parquet have many types
        if type(exc).__module__.startswith("pyarrow"):
            raise DataError(path, f"is damaged Parquet: {str(exc).splitlines()[0]}") from exc
        raise
    if df.empty:
        raise DataError(path, "has no data rows")
    return rename(df, mapping or {}, path)
