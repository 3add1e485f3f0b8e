"""The rollout record shared by evaluation, training logs and the reflection analysis.

One row per (checkpoint, method, benchmark, question). `segments` keeps who wrote each piece of
the response: "assistant" text is the model's own, "tool" text is retrieved and must never be
counted as model behaviour (nor trained on).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from searchr1.io import atomic_file

Role = Literal["assistant", "tool"]
StopReason = Literal["answer", "max_turns", "max_tokens", "no_action"]


class Segment(TypedDict):
    role: Role
    text: str


class Question(TypedDict, total=False):
    id: str
    question: str
    golden_answers: list[str]
    metadata: dict[str, Any]


ROLLOUT_SCHEMA = pa.schema([
    ("checkpoint", pa.string()),      # "base" or "step-000010"
    ("step", pa.int64()),             # training step of the checkpoint; 0 for the base model
    ("method", pa.string()),          # search_agent | direct | rag
    ("benchmark", pa.string()),
    ("question_id", pa.string()),
    ("question", pa.string()),
    ("golden_answers", pa.list_(pa.string())),
    ("prediction", pa.string()),      # "" when no <answer> was given
    ("em", pa.float64()),
    ("f1", pa.float64()),
    ("contains", pa.float64()),
    ("turns", pa.int64()),
    ("search_calls", pa.int64()),
    ("invalid_calls", pa.int64()),
    ("queries", pa.list_(pa.string())),
    ("doc_ids", pa.list_(pa.string())),
    ("segments", pa.list_(pa.struct([("role", pa.string()), ("text", pa.string())]))),
    ("response", pa.string()),        # all segments joined, as the model saw them
    ("gen_tokens", pa.int64()),       # tokens the model generated (tool text excluded)
    ("stop_reason", pa.string()),
])


def write_rollouts(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    """Write rows with ROLLOUT_SCHEMA atomically (temp file + rename)."""
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=ROLLOUT_SCHEMA)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def read_rollouts(paths: Iterable[Path]) -> pa.Table:
    tables = [pq.read_table(p, schema=ROLLOUT_SCHEMA) for p in paths]
    return pa.concat_tables(tables) if tables else ROLLOUT_SCHEMA.empty_table()


def model_text(segments: Iterable[Mapping[str, str]]) -> str:
    """Only what the model wrote: the text reflective phrases are counted in."""
    return "".join(s["text"] for s in segments if s["role"] == "assistant")
