"""One error type for bad input: it names the file, the column and the first bad row."""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DataError(Exception):
    """Bad input that the user can fix. The CLI prints it as one paragraph and exits 2.

    `row` is 0-based among data rows; it is shown 1-based, and for CSV files with the line
    number too (the header is line 1).
    """

    path: str | Path
    message: str
    column: str | None = None
    row: int | None = None
    value: object = None
    hint: str | None = None
    csv_line: bool = False
    line: int | None = None  # the physical line in a text file, where it is known exactly (quoted newlines)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [f"{self.path}"]
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.row is not None:
            loc = f"row {self.row + 1}"
            if self.line is not None:
                loc += f" (line {self.line})"
            elif self.csv_line:
                loc += f" (line {self.row + 2})"
            where.append(loc)
        text = ", ".join(where) + ": " + self.message
        if self.value is not None:
            text += f" (value: {self.value!r})"
        if not text.endswith("."):
            text += "."
        if self.hint:
            text += " " + self.hint
        return text


class ConfigError(DataError):
    """A bad option or configuration value (same one-paragraph form)."""


_QUOTED_PATH = re.compile(r"""["'](/[^"']+)["']""")


def from_io_failure(exc: BaseException) -> DataError | None:
    """The DataError for a failure of the machine or of a file rather than of the code: a file that cannot
    be read or decoded (DuckDB, Arrow), a full disk, a folder that cannot be read, memory running out.
    None for anything else (a bug keeps its traceback)."""
    import duckdb
    import pyarrow as pa

    if isinstance(exc, OSError):
        where = exc.filename or "a file"
        if exc.errno == errno.ENOSPC:
            return DataError(where, "could not be written: the disk is full. Free space, then run the command again "
                             "(nothing partial was kept)")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return DataError(where, "cannot be read or written: permission denied")
        if exc.errno == errno.ENOENT:
            return DataError(where, "does not exist")
        return DataError(where, f"could not be read or written ({exc.strerror or exc})")
    if isinstance(exc, duckdb.IOException | duckdb.InvalidInputException | pa.ArrowInvalid | pa.ArrowIOError):
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        found = _QUOTED_PATH.search(text)
        if "No space left" in text or "disk is full" in text.lower():
            return DataError(found.group(1) if found else "a file", "could not be written: the disk is full")
        return DataError(found.group(1) if found else "an input file", f"could not be read: {text}",
                         hint="The file is damaged or not what it claims to be; restore or regenerate it.")
    if isinstance(exc, duckdb.OutOfMemoryException | MemoryError):
        return DataError("this machine", f"ran out of memory ({exc}); use a machine with more memory or fewer "
                         "threads (DuckDB spills to its temp_directory where it can)")
    return None
