"""The flat CSV form people share, both ways (and the same table in Parquet, read).

Reading streams the CSV in chunks (never whole), checks encoding, delimiter, header and types, and
writes it as Parquet inside a run folder, after which the same out-of-core validator checks values
and keys and reports rows by CSV line. A flat table in Parquet is streamed by its row groups and typed
the same way, without a text round trip. Writing (`export`) is one DuckDB COPY over the run's tables.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from animacy.atomic import atomic_path, write_json, write_parquet
from animacy.errors import DataError
from animacy.run import MANIFEST, Run, connect, table_path
from animacy.schema import (
    ARROW_TYPES,
    CONTROL_GROUP,
    FLAT_COLUMN_ORDER,
    FLAT_TOKENS,
    RESPONSE_ID_SQL,
    ROLES,
    SCHEMA_VERSION,
    Table,
)
from animacy.validate import Source, check_key, check_values, csv_line, missing_column_error, quote

CHUNK_ROWS = 1_000_000
_BLOCK = 1 << 23


def check_text_file(path: Path, shown: str | None = None) -> list[str]:
    """Fail clearly on a missing or empty file, non-UTF-8 bytes (with the line) or a non-comma
    delimiter; return the header's column names. Errors name `shown` (default: the path)."""
    try:
        return _check_text_file(path)
    except DataError as exc:
        if shown is not None:
            exc.path = shown
        raise


def _check_text_file(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(path, "does not exist")
    if path.stat().st_size == 0:
        raise DataError(path, "is empty (0 bytes); expected a header line and data rows")
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                line = lines + block[: exc.start].count(b"\n") + 1
                raise DataError(
                    path, f"is not UTF-8: byte 0x{block[exc.start]:02x} on line {line} cannot be decoded",
                    hint="Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
                ) from exc
            lines += block.count(b"\n")
    with open(path, encoding="utf-8-sig") as fh:
        header = fh.readline().rstrip("\r\n")
    if not header.strip():
        raise DataError(path, "has an empty first line; expected a header of column names")
    if "," not in header:
        for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
            if sep in header:
                raise DataError(
                    path, f"looks {name}-delimited; animacy reads comma-separated CSV",
                    hint="Re-save it with commas as the delimiter.",
                )
    return [c.strip() for c in header.split(",")]


def _as_kind(chunk: pd.DataFrame, name: str, kind: str, path: Path, offset: int,
             newlines: list[tuple[int, int]]) -> pa.Array:
    """Convert one column of a chunk to the contract kind as an Arrow array (empty cells are null; the
    text 'nan' stays NaN so that the value check can name it); the first value that will not convert
    is an error with its row and line."""
    s = chunk[name]
    empty = s.isna().to_numpy()
    if kind == "str":
        return pa.array(s.to_numpy(dtype=object), pa.string(), mask=empty)
    if kind == "bool":
        m = s.str.strip().str.lower().map({"true": True, "false": False, "1": True, "0": False})
        bad = ~empty & m.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(path, "is not true/false", column=name, row=offset + i, value=s.iloc[i],
                            line=csv_line(offset + i, newlines))
        return pa.array(m.fillna(False).to_numpy(dtype=bool), pa.bool_(), mask=empty)
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    bad = ~empty & np.isnan(num) & ~s.str.strip().str.lower().isin(["nan", "inf", "-inf"]).to_numpy()
    if kind == "int":
        bad |= ~np.isnan(num) & (num % 1 != 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            path, f"has a value that is not {'an integer' if kind == 'int' else 'a number'}",
            column=name, row=offset + i, value=s.iloc[i], line=csv_line(offset + i, newlines),
        )
    if kind == "int":
        return pa.array(np.nan_to_num(num).astype(np.int64), pa.int64(), mask=empty)
    return pa.array(num, pa.float64(), mask=empty)


def _contract_kinds(names: list[str], table: Table, rename: dict[str, str], shown: str) -> dict[str, str]:
    """The contract's kind of each of a source's columns it names (after renaming); a required column the
    source lacks is an error naming it."""
    header = [rename.get(c, c) for c in names]
    for col in table.columns:
        if col.required and col.name not in header:
            raise missing_column_error(shown, table, col.name, header)
    return {c.name: c.kind for c in table.columns if c.name in header}


def read_csv_chunks(
    path: Path, table: Table, chunk_rows: int = CHUNK_ROWS, rename: dict[str, str] | None = None,
    shown: str | None = None, newlines: list[tuple[int, int]] | None = None, header: list[str] | None = None,
) -> Iterator[pa.Table]:
    """Stream a CSV as Arrow tables typed by the contract (extra columns: numbers where they parse as
    numbers throughout, else text), after renaming columns by `rename`. Raises on a missing column or
    a value of the wrong type. Rows whose quoted fields hold newlines are appended to `newlines` as
    (row, count), so that line numbers stay right after them. `header`: what `check_text_file` returned
    for the file, where the caller has already checked it (it reads the whole file)."""
    newlines = [] if newlines is None else newlines
    rename = rename or {}
    shown = shown or str(path)
    kinds = _contract_kinds(check_text_file(path, shown) if header is None else header, table, rename, shown)
    offset = 0
    reader = pd.read_csv(
        path, chunksize=chunk_rows, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig",
    )
    try:
        for chunk in reader:
            chunk.columns = [rename.get(c.strip(), c.strip()) for c in chunk.columns]
            text_cols = [c for c in chunk.columns if kinds.get(c, "str") == "str"]  # numbers hold no newlines
            inside = sum((chunk[c].str.count("\n").fillna(0).to_numpy(dtype=np.int64) for c in text_cols),
                         np.zeros(len(chunk), dtype=np.int64))
            newlines += [(offset + int(i), int(inside[i])) for i in np.flatnonzero(inside)]
            arrays = {}
            for name in chunk.columns:
                if name in kinds:
                    arrays[name] = _as_kind(chunk, name, kinds[name], shown, offset, newlines)
                else:
                    num = pd.to_numeric(chunk[name], errors="coerce")
                    arrays[name] = pa.array(num if num.notna().sum() == chunk[name].notna().sum()
                                            else chunk[name], from_pandas=True)
            offset += len(chunk)
            yield pa.table(arrays)
    except pd.errors.ParserError as exc:
        raise DataError(shown, f"could not be parsed as CSV ({exc})") from exc
    if offset == 0:
        raise DataError(shown, "has a header but no data rows")


def _unreadable(f: Path, files: list[Path], shown: str, exc: Exception) -> DataError:
    """A Parquet file that cannot be read: named as the user gave it, or the part, where there are several."""
    return DataError(f if len(files) > 1 else shown, f"cannot be read as Parquet: {str(exc).splitlines()[0]}",
                     hint="Restore the file, or export the table again.")


def parquet_header(files: list[Path], shown: str) -> list[str]:
    """The union of the Parquet files' column names, in first-seen order; a file that is not Parquet (or
    is damaged) is an error naming it."""
    header: list[str] = []
    for f in files:
        try:
            names = pq.read_schema(f).names
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(f, files, shown, exc) from exc
        header += [n for n in names if n not in header]
    return header


def read_parquet_chunks(files: list[Path], table: Table, chunk_rows: int = CHUNK_ROWS,
                        rename: dict[str, str] | None = None, shown: str | None = None) -> Iterator[pa.Table]:
    """Stream Parquet files (one table, its parts in order) as Arrow tables typed by the contract, as
    `read_csv_chunks` does for a CSV: columns renamed by `rename`, a column missing from some parts null
    there, a contract column already of its kind cast without a round trip through text, and one of another
    type converted value by value, its first value that will not convert an error with its row."""
    rename = rename or {}
    shown = shown or str(files[0])
    header = [rename.get(c, c) for c in parquet_header(files, shown)]
    kinds = _contract_kinds(header, table, rename={}, shown=shown)
    offset = 0
    for f in files:
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=chunk_rows):
                batch = pa.Table.from_batches([batch]).rename_columns([rename.get(c, c) for c in batch.schema.names])
                arrays = {}
                for name in header:
                    column = (batch.column(name).combine_chunks() if name in batch.column_names
                              else pa.nulls(batch.num_rows))
                    arrays[name] = _arrow_as_kind(column, name, kinds[name], shown, offset) if name in kinds else column
                offset += batch.num_rows
                yield pa.table(arrays)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(f, files, shown, exc) from exc
    if offset == 0:
        raise DataError(shown, "has no data rows")


def _arrow_as_kind(column: pa.Array, name: str, kind: str, shown: str, offset: int) -> pa.Array:
    """A Parquet column as the contract kind: cast where its type is already that kind (an integer kind
    from floats only where every value is whole), else converted from its text by `_as_kind`, as a CSV's."""
    t = column.type
    if pa.types.is_dictionary(t):
        column, t = column.cast(t.value_type), t.value_type
    if pa.types.is_null(t):
        fits = True
    elif kind == "str":
        fits = pa.types.is_string(t) or pa.types.is_large_string(t)
    elif kind == "bool":
        fits = pa.types.is_boolean(t)
    elif kind == "float":
        fits = pa.types.is_integer(t) or pa.types.is_floating(t)
    else:  # int: integers, or floats that are all whole (a NaN is not)
        fits = pa.types.is_integer(t) or (pa.types.is_floating(t) and pc.all(
            pc.equal(column, pc.floor(column)), skip_nulls=True).as_py() is not False)
    if fits:
        return column.cast(ARROW_TYPES[kind])
    values = column.to_pylist()
    text = pd.DataFrame({name: pd.Series([None if v is None else str(v) for v in values], dtype=object)})
    return _as_kind(text, name, kind, shown, offset, [])


def read_roles_csv(path: Path, rename: dict[str, str] | None = None) -> pd.DataFrame:
    """A roles CSV: `role` plus rating columns; `group` and `is_control` are optional here."""
    table = Table("roles CSV", tuple(c for c in ROLES.columns if c.name == "role")
                  + tuple(type(c)(c.name, c.kind, required=False) for c in ROLES.columns if c.name != "role"),
                  key=("role",), description="roles and ratings")
    df = pa.concat_tables(list(read_csv_chunks(path, table, rename=rename))).to_pandas()
    dup = df["role"].duplicated()
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise DataError(path, "duplicate role", column="role", row=i, value=df["role"].iloc[i], csv_line=True)
    return df


def import_flat_csv(csv: str | Path, out: str | Path, roles_csv: str | Path | None = None,
                    rename: dict[str, str] | None = None, shown: str | Path | None = None,
                    lines: bool = True) -> Run:
    """Turn a flat per-token CSV (+ optional roles CSV with ratings and groups) into a validated run folder.
    `rename` maps the files' column names to the contract's; errors name `shown` (the file the user gave,
    when `csv` is a decompressed copy) and, where `lines`, the CSV line.

    Arrow parses and types the CSV (`_arrow_csv_chunks`); a file it will not take as it stands (a value
    not of its column's kind, spaces around a number, `1.0` for an integer, ...) is read again by the
    careful reader (`read_csv_chunks`), which takes what it can and names the first value it cannot."""
    csv, shown, rename = Path(csv), str(shown or csv), rename or {}
    header = check_text_file(csv, shown)
    newlines: list[tuple[int, int]] = []
    try:
        chunks = _arrow_csv_chunks(csv, header, FLAT_TOKENS, rename, shown, newlines)
        return _import_flat(chunks, header, Path(out), roles_csv, rename, shown, lines, newlines)
    except _NotAsItStands:
        newlines.clear()
        chunks = read_csv_chunks(csv, FLAT_TOKENS, rename=rename, shown=shown, newlines=newlines, header=header)
        return _import_flat(chunks, header, Path(out), roles_csv, rename, shown, lines, newlines)


class _NotAsItStands(Exception):
    """Arrow would not take the CSV as it stands: the careful reader reads it."""


def _arrow_csv_chunks(path: Path, names: list[str], table: Table, rename: dict[str, str], shown: str,
                      newlines: list[tuple[int, int]]) -> Iterator[pa.Table]:
    """The contract's columns of a CSV (`names`: its header), parsed and typed by Arrow block by block, as
    `read_csv_chunks` types them; rows whose quoted fields hold newlines are appended to `newlines`. Raises
    `_NotAsItStands` where Arrow will not convert a value (the careful reader then names it)."""
    kinds = _contract_kinds(names, table, rename, shown)
    types = {n: ARROW_TYPES[kinds[rename.get(n, n)]] if rename.get(n, n) in kinds else pa.string() for n in names}
    options = (pacsv.ReadOptions(block_size=1 << 24), pacsv.ParseOptions(newlines_in_values=True),
               pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True,
                                    true_values=["true", "True", "TRUE", "1"],
                                    false_values=["false", "False", "FALSE", "0"]))
    offset = 0
    try:
        reader = pacsv.open_csv(path, *options)
        if reader.schema.names != names or len(set(names)) != len(names):  # spaces, a BOM, a name twice
            raise _NotAsItStands
        for batch in reader:
            text = [batch.column(i) for i, n in enumerate(names) if types[n] == pa.string()]
            inside = sum((pc.fill_null(pc.count_substring(c, "\n"), 0).to_numpy(zero_copy_only=False) for c in text),
                         np.zeros(batch.num_rows, dtype=np.int64))
            newlines += [(offset + int(i), int(inside[i])) for i in np.flatnonzero(inside)]
            offset += batch.num_rows
            yield pa.table({rename.get(n, n): batch.column(i) for i, n in enumerate(names)
                            if rename.get(n, n) in kinds})
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise _NotAsItStands from exc
    if offset == 0:
        raise DataError(shown, "has a header but no data rows")


def import_flat_parquet(files: list[Path], out: str | Path, roles_csv: str | Path | None = None,
                        rename: dict[str, str] | None = None, shown: str | Path | None = None) -> Run:
    """The same for a flat per-token table in Parquet (a file, or a folder's parts in order), read as
    Parquet: no text round trip; errors name the row (0-based in the parts' order, shown 1-based)."""
    shown, rename = str(shown or files[0]), rename or {}
    chunks = read_parquet_chunks(files, FLAT_TOKENS, rename=rename, shown=shown)
    return _import_flat(chunks, parquet_header(files, shown), Path(out), roles_csv, rename, shown, False, [])


def _import_flat(chunks: Iterator[pa.Table], header: list[str], out: Path, roles_csv: str | Path | None,
                 rename: dict[str, str], shown: str, lines: bool, newlines: list[tuple[int, int]]) -> Run:
    """The flat table's typed chunks, checked and written as a run folder (tokens, responses, roles);
    `header` is the source's own column names (before renaming)."""
    out.mkdir(parents=True, exist_ok=True)
    flat = out / "_flat.parquet"
    writer = None
    with atomic_path(flat) as tmp:
        try:
            for chunk in chunks:
                present = [c.name for c in FLAT_TOKENS.columns if c.name in chunk.column_names]
                batch = chunk.select(present)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, FLAT_TOKENS.arrow_schema(present))
                writer.write_table(batch)
        finally:
            if writer is not None:
                writer.close()
    src = Source.of([flat], [shown], csv=lines, newlines=newlines)
    con = connect()
    present = pq.read_schema(flat).names
    check_values(con, FLAT_TOKENS, src, present)
    check_key(con, FLAT_TOKENS, src, present)
    ratings = read_roles_csv(Path(roles_csv), rename) if roles_csv is not None else None
    if "group" in present:
        _check_one_group_per_role(con, src, shown)
    elif ratings is None or "group" not in ratings:
        raise DataError(shown, "has no 'group' column, and no roles CSV with one was given (--roles-csv)",
                        column="group")
    unused = sorted(set(rename) - set(header) - (set(check_text_file(Path(roles_csv)))
                                                 if roles_csv is not None else set()))
    if unused:
        raise DataError(shown, f"has no column '{unused[0]}' to map (--columns {rename[unused[0]]}={unused[0]})",
                        column=unused[0])

    rid = "response_id" if "response_id" in present else RESPONSE_ID_SQL
    rel = f"(SELECT *, {rid} AS _rid FROM read_parquet($flat))"
    params = {"flat": str(flat)}
    token_cols = ", ".join(f"{quote(c)}" for c in ("condition", "derivation", "magnitude", "tau", "layers",
                                                     "token_index", "token_id", "log_prob") if c in present)
    _copy(con, f"SELECT _rid AS response_id, {token_cols} FROM {rel}", table_path(out, "tokens"), params)
    _copy(con, f"""SELECT _rid AS response_id, any_value(role) AS role, any_value(task_id) AS task_id,
                   any_value(replicate) AS replicate, NULL::BIGINT AS seed, NULL::VARCHAR AS text,
                   (max(token_index) + 1)::BIGINT AS n_tokens, NULL::VARCHAR AS finish_reason
                   FROM {rel} GROUP BY _rid""", table_path(out, "responses"), params)
    group = 'any_value("group")' if "group" in present else "NULL::VARCHAR"
    roles = con.execute(f'SELECT role, {group} AS "group" FROM {rel} GROUP BY role ORDER BY role', params).df()
    if ratings is not None:
        roles = _merge_ratings(roles, ratings, Path(roles_csv), groups_from_roles="group" not in present)
    if "is_control" not in roles:
        roles["is_control"] = roles["group"] == CONTROL_GROUP
    roles["is_control"] = roles["is_control"].astype(bool)
    write_parquet(roles, table_path(out, "roles"))
    flat.unlink()
    write_json({"kind": "imported", "schema_version": SCHEMA_VERSION,
                "source": shown, "roles_csv": str(roles_csv) if roles_csv else None,
                "columns": rename}, out / MANIFEST)
    display = {"tokens": (shown, lines), "responses": (shown, lines), "roles": (str(roles_csv or shown), False)}
    return Run(out, display=display)


def _check_one_group_per_role(con, src: Source, csv: str) -> None:
    hit = con.execute(
        f"""SELECT min(_ord) FROM {src.sql()} t JOIN (
              SELECT role FROM {src.sql()} GROUP BY role HAVING count(DISTINCT "group") > 1) USING (role)
            WHERE t."group" <> (SELECT first("group" ORDER BY _ord) FROM {src.sql()} s WHERE s.role = t.role)""",
        src.params).fetchone()[0]
    if hit is not None:
        _, row = src.locate(hit)
        raise DataError(csv, "this role appears with a second group; a role belongs to one group",
                        column="group", row=row, line=src.line(row))


def _merge_ratings(roles: pd.DataFrame, ratings: pd.DataFrame, path: Path, groups_from_roles: bool) -> pd.DataFrame:
    """The tokens' roles with the roles CSV's ratings (and its groups, where the tokens table has none)."""
    missing = sorted(set(roles["role"]) - set(ratings["role"]))
    if missing:
        raise DataError(path, f"has no row for role '{missing[0]}', which the tokens table uses "
                        f"({len(missing)} roles missing)", column="role")
    if groups_from_roles:
        roles = roles.drop(columns="group")
        if ratings["group"].isna().any():
            i = int(np.argmax(ratings["group"].isna().to_numpy()))
            raise DataError(path, "has no group for this role", column="group", row=i, csv_line=True)
    else:
        ratings = ratings.drop(columns=[c for c in ("group",) if c in ratings])
    return roles.merge(ratings, on="role", how="left")


def _copy(con, query: str, target: Path, params: dict) -> None:
    with atomic_path(target) as tmp:
        con.execute(f"COPY ({query}) TO $target (FORMAT parquet, COMPRESSION zstd)", params | {"target": str(tmp)})


def export_flat_csv(run: Run, out: str | Path, roles_out: str | Path | None = None) -> list[Path]:
    """Write the run's tokens as the flat CSV (joined to responses and roles), its roles table with
    ratings as a second CSV keyed by role, its monitored projections (if any) joined to responses or
    conversation turns as a third (`<out>.projections.csv`), and its conversations (if any: every turn's
    user message and answer) as a fourth (`<out>.conversations.csv`). Out of core; atomic. Returns the
    files written."""
    out = Path(out)
    roles_out = Path(roles_out) if roles_out else out.with_name(out.stem + ".roles.csv")
    con = connect()
    tok_cols = [c for c in pq.read_schema(run.files("tokens")[0]).names]
    cols = []
    for c in FLAT_COLUMN_ORDER:
        if c in ("role", "task_id", "replicate"):
            cols.append(f"r.{c}")
        elif c == "group":
            cols.append('g."group"')
        elif c in tok_cols:
            cols.append(f"t.{quote(c)}")
    query = (f"SELECT {', '.join(cols)} FROM {run.relation_sql('tokens')} t "
             f"JOIN {run.relation_sql('responses')} r USING (response_id) "
             f"JOIN {run.relation_sql('roles')} g ON g.role = r.role")
    with atomic_path(out) as tmp:
        con.execute(f"COPY ({query}) TO $target (FORMAT csv, HEADER true)",
                    run.params("tokens", "responses", "roles") | {"target": str(tmp)})
    with atomic_path(roles_out) as tmp:
        con.execute(f"COPY (SELECT * FROM {run.relation_sql('roles')} ORDER BY role) TO $target (FORMAT csv, HEADER)",
                    run.params("roles") | {"target": str(tmp)})
    written = [out, roles_out]
    conversations = run.has("conversations")
    if run.has("projections"):
        target = out.with_name(out.stem + ".projections.csv")
        query = (f"SELECT r.role, r.task_id, r.replicate, NULL::VARCHAR AS conversation_id, p.* "
                 f"FROM {run.relation_sql('projections')} p JOIN {run.relation_sql('responses')} r USING (response_id)")
        names = ["projections", "responses"]
        if conversations:  # a conversation turn's projections carry its conversation instead of a task
            query += (f" UNION ALL SELECT c.role, NULL, c.replicate, c.conversation_id, p.* "
                      f"FROM {run.relation_sql('projections')} p "
                      f"JOIN {run.relation_sql('conversations')} c USING (response_id, turn)")
            names.append("conversations")
        with atomic_path(target) as tmp:
            con.execute(f"COPY ({query}) TO $target (FORMAT csv, HEADER)", run.params(*names) | {"target": str(tmp)})
        written.append(target)
    if conversations:
        target = out.with_name(out.stem + ".conversations.csv")
        with atomic_path(target) as tmp:
            drop = "EXCLUDE (token_ids) " if "token_ids" in pq.read_schema(run.files("conversations")[0]).names else ""
            con.execute(f"COPY (SELECT * {drop}FROM {run.relation_sql('conversations')} "
                        "ORDER BY conversation_id, turn) TO $target (FORMAT csv, HEADER)",
                        run.params("conversations") | {"target": str(tmp)})
        written.append(target)
    return written
