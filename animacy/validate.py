"""Validate Parquet tables against the contract, out of core.

Structure (columns, dtypes) comes from the Parquet footers; values are checked in one DuckDB pass per
table that finds, for every rule, the first offending row in file order. Errors name the file, the
column and that row.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from animacy.errors import DataError
from animacy.schema import SQL_IN, Column, Table

_ROW_BITS = 40  # row order across parts: file index << 40 | row within file


@dataclass(frozen=True)
class Source:
    """The Parquet parts of one table, and how to name them in errors (a CSV converted to Parquet is
    reported as the CSV it came from, with line numbers). `newlines` lists (row, newlines inside that
    row's quoted fields) for a CSV that has any, so that the line of every later row stays right."""

    files: tuple[Path, ...]
    display: tuple[str, ...]
    csv: bool = False
    newlines: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, files: Sequence[Path], display: Sequence[str] | None = None, csv: bool = False,
           newlines: Sequence[tuple[int, int]] = ()) -> Source:
        files = tuple(Path(f) for f in files)
        return cls(files, tuple(display) if display else tuple(str(f) for f in files), csv, tuple(newlines))

    def line(self, row: int) -> int | None:
        """The CSV line where data row `row` (0-based) starts; None for Parquet."""
        if not self.csv:
            return None
        return csv_line(row, self.newlines)

    @property
    def param(self) -> str:
        """The name of the query parameter that carries this table's file list (paths never enter SQL)."""
        return "files_" + hashlib.sha1("\0".join(map(str, self.files)).encode()).hexdigest()[:12]

    @property
    def params(self) -> dict[str, list[str]]:
        return {self.param: [str(f) for f in self.files]}

    def sql(self) -> str:
        """A DuckDB table expression over the parts with an `_ord` column giving file order; run it with
        `params` (or those of every source in the query)."""
        return (
            f"(SELECT *, ((list_position(${self.param}, filename) - 1)::BIGINT << {_ROW_BITS}) + file_row_number "
            f"AS _ord FROM read_parquet(${self.param}, filename=true, file_row_number=true, union_by_name=true))"
        )

    def locate(self, ord_: int) -> tuple[str, int]:
        return self.display[ord_ >> _ROW_BITS], ord_ & ((1 << _ROW_BITS) - 1)


def csv_line(row: int, newlines: Sequence[tuple[int, int]] = ()) -> int:
    """Line of data row `row` in a CSV with a header line, given the rows before it whose quoted fields
    hold newlines."""
    return row + 2 + sum(n for r, n in newlines if r < row)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _kind_ok(kind: str, t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return True
    if kind == "str":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if kind == "int":
        return pa.types.is_integer(t)
    if kind == "float":
        return pa.types.is_floating(t) or pa.types.is_integer(t)
    if kind == "bool":
        return pa.types.is_boolean(t)
    if kind in ("vector", "ids"):
        is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
        check = pa.types.is_floating if kind == "vector" else pa.types.is_integer
        return is_list and check(t.value_type)
    raise ValueError(kind)


def missing_column_error(path: str, table: Table, missing: str, present: Sequence[str]) -> DataError:
    close = difflib.get_close_matches(missing, present, n=1, cutoff=0.6)
    hint = f"Is '{close[0]}' a misspelling of '{missing}'?" if close else ""
    return DataError(
        path,
        f"the {table.name} table needs a column '{missing}', which is missing "
        f"(required: {', '.join(table.required)})",
        column=missing,
        hint=hint or None,
    )


def check_structure(table: Table, source: Source) -> list[str]:
    """Check every part's footer: readable, required columns present, dtypes right. Returns the
    contract columns present in all parts."""
    present: list[str] | None = None
    for path, shown in zip(source.files, source.display):
        try:
            schema = pq.read_schema(path)
            pq.ParquetFile(path).metadata  # noqa: B018  (reads the footer: fails on a truncated file)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise DataError(
                shown, f"is not a readable Parquet file ({exc}); it may be truncated by an interrupted copy",
                hint="Re-copy or re-export it.",
            ) from exc
        names = schema.names
        for col in table.columns:
            if col.name not in names:
                if col.required:
                    raise missing_column_error(shown, table, col.name, names)
                continue
            t = schema.field(col.name).type
            if not _kind_ok(col.kind, t):
                raise DataError(shown, f"has type {t} but the contract says {col.kind}", column=col.name)
        here = [c.name for c in table.columns if c.name in names]
        present = here if present is None else [c for c in present if c in here]
    return present or []


def _value_rules(table: Table, present: Sequence[str]) -> list[tuple[str, str, str]]:
    """(column, SQL that is true on a bad row, message) for each value rule."""
    rules: list[tuple[str, str, str]] = []
    cols: list[Column] = [c for c in table.columns if c.name in present]
    for c in cols:
        q = quote(c.name)
        if not c.nullable:
            rules.append((c.name, f"{q} IS NULL", "is empty; this column may not have missing values"))
        if c.kind == "float":
            rules.append((c.name, f"{q} IS NOT NULL AND NOT isfinite({q})", "is NaN or infinite"))
        if c.kind == "vector":
            each = f"list_transform({q}, lambda x: x IS NULL OR NOT isfinite(x))"
            rules.append((c.name, f"{q} IS NOT NULL AND list_bool_or({each})",
                          "holds a missing, NaN or infinite value (the model's activations overflowed, or the file "
                          "is damaged)"))
        if c.allowed:
            rules.append((
                c.name, f"{q} IS NOT NULL AND {q} NOT IN {SQL_IN(c.allowed)}",
                f"is not an allowed value (allowed: {', '.join(c.allowed)})",
            ))
        if c.check:
            rules.append((c.name, f"{q} IS NOT NULL AND NOT ({c.check})", c.check_message))
    for rc in table.row_checks:
        needed = [c.name for c in table.columns if c.name in rc.bad]
        if all(n in present for n in needed):
            rules.append((rc.column, rc.bad, rc.message))
    return rules


def check_values(con: duckdb.DuckDBPyConnection, table: Table, source: Source, present: Sequence[str]) -> None:
    """One pass: the first bad row of every rule; raise on the earliest one in file order."""
    rules = _value_rules(table, present)
    if not rules:
        return
    sel = ", ".join(f"min(CASE WHEN {bad} THEN _ord END)" for _, bad, _ in rules)
    firsts = con.execute(f"SELECT {sel} FROM {source.sql()}", source.params).fetchone()
    hits = [(o, i) for i, o in enumerate(firsts) if o is not None]
    if not hits:
        return
    ord_, i = min(hits)
    column, _, message = rules[i]
    value = con.execute(f"SELECT {quote(column)} FROM {source.sql()} WHERE _ord = {ord_}", source.params).fetchone()[0]
    shown, row = source.locate(ord_)
    raise DataError(shown, message, column=column, row=row, value=value, line=source.line(row))


_MAX_POSITIONS = 1 << 16  # widest position range the bitmap test takes (8 KB per group)


def _positions_unique(con: duckdb.DuckDBPyConnection, table: Table, source: Source, key: list[str]) -> bool:
    """True when no key repeats, decided exactly and fast for keys that end in an integer position
    (tokens: a response's cell, then token_index): per cell, a bitmap of the positions seen has as many
    bits set as the cell has rows. False when it cannot tell, or when some key repeats."""
    last = table.key[-1]
    if key[-1] != quote(last) or table.column(last).kind != "int" or len(key) < 2:
        return False
    lo, hi = con.execute(f"SELECT min({key[-1]}), max({key[-1]}) FROM {source.sql()}", source.params).fetchone()
    if lo is None or hi - lo + 1 > _MAX_POSITIONS:
        return False
    bad = con.execute(
        f"""SELECT count(*) FROM (SELECT count(*) AS n,
                   bit_count(bitstring_agg(({key[-1]} - {int(lo)})::INTEGER, 0, {int(hi - lo)})) AS seen
            FROM {source.sql()} GROUP BY {', '.join(key[:-1])}) WHERE n <> seen""", source.params).fetchone()[0]
    return bad == 0


def check_key(con: duckdb.DuckDBPyConnection, table: Table, source: Source, present: Sequence[str]) -> None:
    """No two rows may share a key; report the first row that repeats an earlier one. Keys ending in a
    position are checked by bitmaps first (seconds on 90M rows); otherwise, or to find the repeated row,
    the grouping keeps only keys with counts (it spills to disk on big tables)."""
    key = [quote(k) for k in table.key if k in present]
    if _positions_unique(con, table, source, key):
        return
    cols = ", ".join(key)
    same = " AND ".join(f"t.{k} IS NOT DISTINCT FROM d.{k}" for k in key)  # NULL keys match too
    hit = con.execute(
        f"""WITH t AS (SELECT {cols}, _ord FROM {source.sql()}),
                 d AS (SELECT {cols} FROM t GROUP BY ALL HAVING count(*) > 1)
            SELECT _ord FROM (
              SELECT t._ord, row_number() OVER (PARTITION BY {', '.join('t.' + k for k in key)} ORDER BY t._ord) AS k
              FROM t SEMI JOIN d ON {same})
            WHERE k = 2 ORDER BY _ord LIMIT 1""", source.params).fetchone()
    if hit is None:
        return
    ord_ = hit[0]
    shown, row = source.locate(ord_)
    raise DataError(
        shown,
        f"duplicate key: another row has the same ({', '.join(k for k in table.key if k in present)})",
        column=table.key[-1] if table.key[-1] in present else table.key[0],
        row=row,
        line=source.line(row),
        hint="A resumed run or a concatenation may have written a row twice.",
    )


def check_reference(
    con: duckdb.DuckDBPyConnection, table: Table, source: Source, column: str, parents: list[tuple[Source, str]]
) -> None:
    """Every value of `column` must exist in one of the parent tables (e.g. tokens.response_id in responses;
    a projection's response in responses or conversations)."""
    q = quote(column)
    keys = " UNION ".join(f"SELECT DISTINCT {quote(col)} AS k FROM {parent.sql()}" for parent, col in parents)
    params = source.params
    for parent, _ in parents:
        params = params | parent.params
    hit = con.execute(f"SELECT min(t._ord) FROM {source.sql()} t ANTI JOIN ({keys}) r ON t.{q} = r.k",
                      params).fetchone()[0]
    if hit is None:
        return
    value = con.execute(f"SELECT {q} FROM {source.sql()} WHERE _ord = {hit}", source.params).fetchone()[0]
    shown, row = source.locate(hit)
    where = " or ".join(parent.display[0] for parent, _ in parents)
    raise DataError(
        shown, f"refers to a {parents[0][1]} that {where} does not have",
        column=column, row=row, value=value, line=source.line(row),
    )


def validate_source(
    con: duckdb.DuckDBPyConnection, table: Table, source: Source, *, keys: bool = True
) -> list[str]:
    """Structure, values and (optionally) key uniqueness of one table. Returns the present columns."""
    present = check_structure(table, source)
    try:
        check_values(con, table, source, present)
        if keys:
            check_key(con, table, source, present)
    except (duckdb.BinderException, duckdb.ParserException, duckdb.CatalogException):
        raise  # a bug in a query, not in the data
    except duckdb.Error as exc:
        raise unreadable(source, exc) from exc
    return present


def unreadable(source: Source, exc: Exception) -> DataError:
    """The error for a table DuckDB could not read: each file is read in full to find the damaged one."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for f, shown in zip(source.files, source.display):
        try:
            pq.read_table(f)
        except Exception as file_exc:  # any failure to decode names this file
            first = str(file_exc).strip().splitlines()
            return DataError(shown, f"could not be read: {first[0] if first else reason}",
                             hint="The file is damaged; restore or regenerate it.")
    return DataError(source.display[0], f"could not be read: {reason}",
                     hint="A file of this table is damaged; restore or regenerate it.")
