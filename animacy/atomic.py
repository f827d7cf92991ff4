"""Writers that never leave half a file: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(data: pd.DataFrame | pa.Table, target: str | Path, metadata: dict | None = None) -> Path:
    """Write a DataFrame or Arrow table to Parquet atomically, with optional JSON metadata in the schema."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta[b"animacy"] = json.dumps(metadata, default=str).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(target)


def write_json(obj: object, target: str | Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(target)


def write_csv(df: pd.DataFrame, target: str | Path) -> Path:
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)
    return Path(target)
