"""The real data: wiki-18 passages and the seven QA benchmarks, from the hub or from local files.

Both arrive as JSON lines in the formats Search-R1 and FlashRAG use, so a local copy of the same
format goes through exactly the same validation as a hub download.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from searchr1 import faults
from searchr1.corpus.jsonl import PASSAGE_FIELDS, QUESTION_FIELDS, DataError, ReadStats, read_jsonl
from searchr1.io import atomic_file

PASSAGE_SCHEMA = pa.schema([("id", pa.string()), ("contents", pa.string())])

# The split Search-R1 evaluates each benchmark on (FlashRAG has no public test split for these three).
EVAL_SPLIT = {"nq": "test", "triviaqa": "test", "popqa": "test", "bamboogle": "test",
              "hotpotqa": "dev", "2wikimultihopqa": "dev", "musique": "dev"}


def hub_download(repo_id: str, filename: str) -> Path:
    """One file of a hub dataset repo (resumable, cached by huggingface_hub)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))


def write_passage_shards(rows: Iterable[dict], out_dir: Path, shard_rows: int, desc: str = "passages") -> int:
    """Stream rows into out_dir/part-NNNNN.parquet; finished shards of an earlier attempt are kept.

    A shard is written to a temp name and renamed, so an existing part file is always complete and a
    restart only re-reads (not re-writes) the rows before the first missing shard.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    buf: list[dict] = []
    shard = total = 0

    def flush() -> None:
        nonlocal shard
        path = out_dir / f"part-{shard:05d}.parquet"
        if not path.exists():
            with atomic_file(path) as tmp:
                pq.write_table(pa.Table.from_pylist(buf, schema=PASSAGE_SCHEMA), tmp)
        shard += 1
        buf.clear()
        faults.point("corpus.after_shard")

    for row in tqdm(rows, desc=desc, unit=" rows", mininterval=2.0):
        buf.append({"id": row["id"], "contents": row["contents"]})
        total += 1
        if len(buf) == shard_rows:
            flush()
    if buf:
        flush()
    return total


def iter_wiki18(path: Path, on_bad_line: Literal["error", "skip"], stats: ReadStats,
                max_passages: int | None = None) -> Iterator[dict]:
    for i, row in enumerate(read_jsonl(path, PASSAGE_FIELDS, on_bad_line, stats)):
        if max_passages is not None and i >= max_passages:
            return
        yield row


def read_questions(path: Path, on_bad_line: Literal["error", "skip"] = "error",
                   stats: ReadStats | None = None) -> list[dict]:
    """A FlashRAG benchmark file: {"id", "question", "golden_answers", optional "metadata"}."""
    return list(read_jsonl(path, QUESTION_FIELDS, on_bad_line, stats))


def benchmark_file(name: str, split: str, local_dir: Path | None, hub_repo_id: str) -> Path:
    """Local `<dir>/<name>/<split>.jsonl` when configured, else FlashRAG_datasets on the hub."""
    if local_dir is not None:
        path = Path(local_dir) / name / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: benchmark file not found (questions.local_dir is set, so the hub "
                            f"is not used); expected FlashRAG jsonl for {name}/{split}")
        return path
    return hub_download(hub_repo_id, f"{name}/{split}.jsonl")
