"""Markdown for every report the project writes: literal text and pipe tables.

Callers format their own cells (numbers, p-values, yes/no); this module only escapes text and lays out
the table, so every table in the project has the same shape:

    | a | b |
    |---|---|
    | 1 | 2 |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# backslash-escaped: otherwise they open tags, emphasis, code, links, images, headings or cell borders
SPECIAL = frozenset("\\`*_[]<>|#~&!")


def escape(text: object) -> str:
    """`text` shown literally, on one line (runs of whitespace, newlines included, become one space)."""
    return "".join("\\" + ch if ch in SPECIAL else ch for ch in " ".join(str(text).split()))


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A pipe table; cells are written as given (`str`), so escape or format them first. No final newline."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_table(df: pd.DataFrame, columns: Sequence[str] | None = None,
                cell: Callable[[str, Any], str] = lambda column, value: str(value)) -> str:
    """`table` over a DataFrame's rows; `cell(column, value)` formats each value (default: `str`)."""
    columns = list(df.columns) if columns is None else list(columns)
    # column by column, not iterrows(): a row of an all-numeric frame is one float Series, so ints read "16.000"
    values = [df[c].tolist() for c in columns]
    rows = ([cell(c, v[i]) for c, v in zip(columns, values, strict=True)] for i in range(len(df)))
    return table([str(c) for c in columns], rows)
