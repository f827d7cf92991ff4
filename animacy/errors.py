"""One error type for bad input: it names the file, the column and the first bad row."""

from __future__ import annotations

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
