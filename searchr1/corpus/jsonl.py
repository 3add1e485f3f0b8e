"""Validated JSON-lines reading: every bad line is an error naming file:line, or counted and skipped."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal


class DataError(ValueError):
    """Input data that cannot be used; the message starts with file:line."""


@dataclass
class ReadStats:
    path: str
    rows: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # first words of each reason -> count

    def skip(self, reason: str) -> None:
        self.skipped += 1
        kind = reason.split(":")[0]
        self.reasons[kind] = self.reasons.get(kind, 0) + 1


class _SeenIds:
    """Ids seen so far. wiki-18's ids are 0..21M as strings: a bitmap holds them in ~3 MB where a set
    of strings would take ~1.5 GB; any other id falls back to a set."""

    def __init__(self) -> None:
        self.bits = bytearray()
        self.other: set[str] = set()

    def add(self, key: str) -> bool:
        """Record `key`; False if it was already there."""
        if key.isdigit() and len(key) < 10 and (key == "0" or key[0] != "0"):
            n = int(key)
            byte, bit = divmod(n, 8)
            if byte >= len(self.bits):
                self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
            if self.bits[byte] >> bit & 1:
                return False
            self.bits[byte] |= 1 << bit
            return True
        if key in self.other:
            return False
        self.other.add(key)
        return True


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _is_list_of_str(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# field -> (check, description of what is expected)
PASSAGE_FIELDS: Mapping[str, tuple[Any, str]] = {
    "id": (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "a string or integer"),
    "contents": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
}
QUESTION_FIELDS: Mapping[str, tuple[Any, str]] = {
    "id": (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "a string or integer"),
    "question": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "golden_answers": (lambda v: _is_list_of_str(v) and len(v) > 0, "a non-empty list of strings"),
}


def _check(line: bytes, fields: Mapping[str, tuple[Any, str]]) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: byte {exc.start} is 0x{line[exc.start]:02x}") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(row, dict):
        raise ValueError(f"bad record: expected a JSON object, got {type(row).__name__}")
    for name, (ok, expected) in fields.items():
        if name not in row:
            raise ValueError(f"missing field: '{name}' (expected {expected})")
        if not ok(row[name]):
            raise ValueError(f"wrong type: '{name}' is {row[name]!r:.60}, expected {expected}")
    row["id"] = str(row["id"])
    return row


def read_jsonl(path: Path, fields: Mapping[str, tuple[Any, str]],
               on_bad_line: Literal["error", "skip"] = "error",
               stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Yield validated rows of a .jsonl or .jsonl.gz file, streaming in bounded memory.

    Duplicate ids are an error too: a retriever or a scorer would silently mix two records.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    stats = stats if stats is not None else ReadStats(str(path))
    seen = _SeenIds()
    with _open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = _check(line.rstrip(b"\r\n"), fields)
                if not seen.add(row["id"]):
                    raise ValueError(f"duplicate id: {row['id']!r} already seen earlier in the file")
            except ValueError as exc:
                if on_bad_line == "error":
                    raise DataError(f"{path}:{lineno}: {exc}") from None
                stats.skip(str(exc))
                continue
            stats.rows += 1
            yield row
    if stats.rows == 0:
        raise DataError(f"{path}: no valid rows (read {stats.skipped} bad ones); expected at least one record")
