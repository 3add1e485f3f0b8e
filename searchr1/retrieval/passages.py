"""The passages an index points into: read from corpus shards, kept beside the index as one Arrow file.

Row i of the index is row i of `passages.arrow`. The file is memory-mapped, so a 21M-passage corpus
costs page cache, not Python objects, and a lookup of k rows is one `take`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from searchr1.io import atomic_file
from searchr1.retrieval.base import Doc

PASSAGES_FILE = "passages.arrow"
SCHEMA = pa.schema([("id", pa.string()), ("contents", pa.string())])


class CorpusFormatError(ValueError):
    """A corpus shard that is not {"id": string, "contents": string} rows."""


def find_shards(passages_dir: Path) -> list[Path]:
    """`part-*.parquet` in `passages_dir`, or in `passages_dir/passages` (a corpus stage directory)."""
    passages_dir = Path(passages_dir)
    if (passages_dir / "passages").is_dir():
        passages_dir = passages_dir / "passages"
    shards = sorted(passages_dir.glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{passages_dir}: no part-*.parquet corpus shards found")
    return shards


def check_shard(path: Path) -> int:
    """Row count of a shard after checking it has string columns `id` and `contents`."""
    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise CorpusFormatError(f"{path}: not a readable parquet file ({exc})") from None
    schema = meta.schema_arrow
    for col in ("id", "contents"):
        if col not in schema.names:
            raise CorpusFormatError(f"{path}: missing column {col!r}; expected columns 'id' and 'contents', "
                                    f"got {schema.names}")
        if not (pa.types.is_string(schema.field(col).type) or pa.types.is_large_string(schema.field(col).type)):
            raise CorpusFormatError(f"{path}: column {col!r} has type {schema.field(col).type}, expected string")
    return meta.metadata.num_rows


def fingerprint(shards: Sequence[Path]) -> str:
    """Content hash of the shards: embeddings made from other passages are never reused."""
    h = hashlib.sha256()
    for path in shards:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


def copy_passages(shards: Sequence[Path], dest: Path) -> int:
    """Stream the shards into one Arrow file at `dest` (atomically); returns the row count."""
    n = 0
    with atomic_file(dest) as tmp, pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, SCHEMA) as writer:
        for path in shards:
            check_shard(path)
            for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=["id", "contents"]):
                table = pa.Table.from_batches([batch]).cast(SCHEMA)
                nulls = table.column("id").null_count + table.column("contents").null_count
                if nulls:
                    raise CorpusFormatError(f"{path}: rows {n}..{n + table.num_rows}: {nulls} null id/contents")
                writer.write_table(table)
                n += table.num_rows
    return n


class PassageStore:
    """Read-only, memory-mapped passages in index row order."""

    def __init__(self, path: Path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: passages file missing; rebuild the index")
        self.path = Path(path)
        self.table = ipc.open_file(pa.memory_map(str(path), "r")).read_all()

    def __len__(self) -> int:
        return self.table.num_rows

    def contents(self, start: int, stop: int) -> list[str]:
        return self.table.column("contents").slice(start, stop - start).to_pylist()

    def docs(self, rows: np.ndarray) -> list[Doc]:
        """Documents for row numbers (any shape, flattened), in that order."""
        taken = self.table.take(pa.array(np.asarray(rows, dtype=np.int64).ravel()))
        return [{"id": i, "contents": c}
                for i, c in zip(taken.column("id").to_pylist(), taken.column("contents").to_pylist(), strict=True)]
