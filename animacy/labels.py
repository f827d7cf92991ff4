"""Labels in a run folder: one place that stores them (replacing one method's rows, keeping the others),
and the import of labels made elsewhere (a study's judge, hand coding) from any table.

    animacy labels import judge.csv --run RUN --id-columns role,task,sample_idx --method study-judge

`--id-columns` names the table's columns that identify a response: one column holding the run's
`response_id`, or three matching the run's (role, task_id, replicate) in that order. Every label column
(`denies_experience`, `claims_ai`, after `--columns` renaming) must hold 0/1, true/false or yes/no.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from animacy.errors import ConfigError, DataError
from animacy.run import Run
from animacy.schema import LABELS
from animacy.tables import read_table
from animacy.writers import write_table

_LABEL_TEXT = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}


def label_value(value: object) -> int | None:
    """0 or 1 for a label written as a boolean, 0/1 or yes/no (as a value or as text); None for anything
    else (0.9, 'maybe', a missing value): the one rule for labels read from a table or from a judge."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return _LABEL_TEXT.get(str(value).strip().lower())


def store_labels(run: Run, new: pd.DataFrame, table: str = "labels") -> pd.DataFrame:
    """Write `new` into the run's labels table (or another table of rows by `method`, such as
    trait_scores), replacing earlier rows of its method(s) and keeping the others' (atomic)."""
    if run.has(table):
        old = run.read(table)
        new = pd.concat([old[~old["method"].isin(new["method"].unique())], new], ignore_index=True)
    write_table(new, table, run.path)
    return new


def import_labels(table: str | Path, run: Run, id_columns: list[str], method: str,
                  mapping: dict[str, str] | None = None) -> pd.DataFrame:
    """Attach the labels in `table` to the run's responses; every row must match a response."""
    df = read_table(table, mapping)
    for c in id_columns:
        if c not in df.columns:
            raise DataError(table, f"has no id column '{c}' (columns: {', '.join(map(str, df.columns[:30]))})",
                            column=c)
    present = [lab for lab in LABELS if lab in df.columns]
    if not present:
        raise DataError(table, f"has no label column; expected one of {', '.join(LABELS)} "
                        "(rename with --columns denies_experience=your_column)")
    responses = run.read("responses", ["response_id", "role", "task_id", "replicate"])
    if len(id_columns) == 1:
        ids = df[id_columns[0]].astype(str)
    elif len(id_columns) == 3:
        key = responses.assign(replicate=responses["replicate"].astype(str)).set_index(
            ["role", "task_id", "replicate"])["response_id"]
        wanted = pd.MultiIndex.from_arrays([df[c].astype(str) for c in id_columns])
        ids = pd.Series(key.reindex(wanted).to_numpy(), index=df.index)
    else:
        raise ConfigError("--id-columns", "give one column (response_id) or three (role, task, replicate)")
    unknown = ~ids.isin(set(responses["response_id"]))
    if unknown.any():
        i = int(np.argmax(unknown.to_numpy()))
        raise DataError(table, f"this row matches no response of {run.path} ({unknown.sum():,} rows match none)",
                        column=id_columns[0], row=i, value=df[id_columns[0]].iloc[i], csv_line=True)
    rows = []
    for lab in present:
        value = df[lab].map(label_value).astype(float)
        bad = value.isna() & df[lab].notna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise DataError(table, "is not a label (0/1, true/false or yes/no)", column=lab, row=i,
                            value=df[lab].iloc[i], csv_line=True)
        keep = value.notna()
        rows.append(pd.DataFrame({"response_id": ids[keep], "classifier": lab, "method": method,
                                  "label": value[keep].astype("int64"), "score": np.nan}))
    new = pd.concat(rows, ignore_index=True)
    dup = new.duplicated(["response_id", "classifier"])
    if dup.any():
        raise DataError(table, f"labels response {new.loc[dup, 'response_id'].iloc[0]} twice",
                        column=id_columns[0])
    return store_labels(run, new)
