"""One writer per table of the contract: a DataFrame in, the table's Arrow types out (columns the
contract does not name are kept as they are), written atomically where the run folder keeps it.

>>> import pandas as pd, tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> path = write_table(pd.DataFrame({"role": ["sock"], "group": ["g"], "is_control": [0], "anim_mental": [1.5]}),
...                    "roles", root)
>>> import pyarrow.parquet as pq; str(pq.read_schema(path).field("is_control").type)
'bool'
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from animacy.atomic import write_parquet
from animacy.run import table_path
from animacy.schema import ARROW_TYPES, TABLES


def to_arrow(df: pd.DataFrame | pa.Table, name: str) -> pa.Table:
    """The contract's table `name` as Arrow: its columns first, in its order and types, then the rest.
    An Arrow table (a fast writer's: narrow integers, dictionary strings) is cast to the same types."""
    table = TABLES[name]
    if isinstance(df, pa.Table):
        own = [c for c in table.columns if c.name in df.column_names]
        rest = [c for c in df.column_names if c not in table.names]
        return pa.table({**{c.name: df[c.name].cast(ARROW_TYPES[c.kind]) for c in own},
                         **{c: df[c] for c in rest}})
    fields, arrays = [], []
    for col in table.columns:
        if col.name not in df.columns:
            continue
        kind = ARROW_TYPES[col.kind]
        values = df[col.name]
        if col.kind in ("int", "bool") and values.isna().any():
            values = values.astype("object").where(values.notna(), None)
        arrays.append(pa.array(values.tolist() if col.kind in ("vector", "ids") else values, type=kind,
                               from_pandas=True))
        fields.append(pa.field(col.name, kind))
    for c in df.columns:
        if c not in table.names:
            arr = pa.array(df[c], from_pandas=True)
            arrays.append(arr)
            fields.append(pa.field(str(c), arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_table(df: pd.DataFrame, name: str, root: str | Path, part: str | None = None,
                metadata: dict | None = None) -> Path:
    """Write `df` as table `name` of the run folder `root` (as `name/part.parquet` when `part` is given)."""
    root = Path(root)
    target = root / name / f"{part}.parquet" if part else table_path(root, name)
    return write_parquet(to_arrow(df, name), target, metadata)
