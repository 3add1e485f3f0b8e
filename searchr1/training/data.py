"""Training prompts, written once for both engines.

- verl: its RL dataset layout (as verl's search_r1_like preprocessing writes it): `prompt` chat messages,
  `data_source` ("searchR1_<benchmark>", the prefix verl's reward router knows), `reward_model.ground_truth`
  = {"target": golden answers}, `extra_info` with the search tool's create kwargs, and `agent_name:
  tool_agent` on every row (without it verl's agent loop never calls the tool: verl issue #3008).
- TRL: one row per question with the question as `prompt`, the golden answers and where it came from;
  the rollout loop renders the prompt under the agent protocol, as evaluation does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from searchr1.agent.prompts import build_messages
from searchr1.agent.trace import Question
from searchr1.io import atomic_file

VERL_DIR, TRL_DIR = "verl", "trl"
TRAIN_FILE, VAL_FILE = "train.parquet", "val.parquet"
DATA_SOURCE_PREFIX = "searchR1_"
VAL_ROWS = 64  # verl validates on this small held-in sample (test_freq); real evaluation is its own stage


def _check(q: Question, bench: str, i: int) -> None:
    for key in ("id", "question", "golden_answers"):
        if key not in q:
            raise ValueError(f"train questions[{bench!r}][{i}]: missing key {key!r} (have {sorted(q)})")
    if not q["golden_answers"]:
        raise ValueError(f"train questions[{bench!r}][{i}] (id {q['id']}): golden_answers is empty")


def verl_row(q: Question, bench: str, index: int, split: str, style: str) -> dict[str, Any]:
    messages = build_messages(q["question"], style)
    golden = [str(g) for g in q["golden_answers"]]
    return {
        "data_source": DATA_SOURCE_PREFIX + bench,
        "prompt": messages,
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": golden}},
        "extra_info": {
            "index": index, "split": split, "question": q["question"], "question_id": q["id"],
            "need_tools_kwargs": True,
            "tools_kwargs": {"search": {"create_kwargs": {
                "ground_truth": {"target": golden}, "question": q["question"],
                "data_source": DATA_SOURCE_PREFIX + bench}}},
        },
        "agent_name": "tool_agent",
    }


def trl_row(q: Question, bench: str) -> dict[str, Any]:
    # `prompt` is the bare question: the rollout loop renders it under the agent protocol (like evaluation).
    return {"prompt": q["question"], "golden_answers": [str(g) for g in q["golden_answers"]],
            "question_id": q["id"], "question": q["question"], "benchmark": bench}


def _write(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with atomic_file(path) as tmp:
        pq.write_table(pa.Table.from_pylist(list(rows)), tmp)


def build_train_data(questions: Mapping[str, Sequence[Question]], cfg, out_dir: Path) -> dict[str, Any]:
    """Write out_dir/verl/{train,val}.parquet and out_dir/trl/train.parquet; return counts.

    Each suite is shuffled with `cfg.run.seed`, then the suites are dealt round-robin, so any run of
    consecutive rows holds every suite (the TRL engine reads them in order: each GRPO step then sees
    multi-hop questions, not a random draw that may hold none).
    """
    style = cfg.agent.prompt_style
    rng = random.Random(cfg.run.seed)
    decks = []
    for bench, items in questions.items():
        for i, q in enumerate(items):
            _check(q, bench, i)
        deck = [(bench, q) for q in items]
        rng.shuffle(deck)
        decks.append(deck)
    pairs = [deck[k] for k in range(max(map(len, decks), default=0)) for deck in decks if k < len(deck)]
    if not pairs:
        raise ValueError(f"no training questions in benchmarks {sorted(questions)}")
    out_dir = Path(out_dir)
    verl_train = [verl_row(q, b, i, "train", style) for i, (b, q) in enumerate(pairs)]
    val_pairs = pairs[:VAL_ROWS]
    verl_val = [verl_row(q, b, i, "val", style) for i, (b, q) in enumerate(val_pairs)]
    _write(verl_train, out_dir / VERL_DIR / TRAIN_FILE)
    _write(verl_val, out_dir / VERL_DIR / VAL_FILE)
    _write([trl_row(q, b) for b, q in pairs], out_dir / TRL_DIR / TRAIN_FILE)
    per_bench: dict[str, int] = {}
    for b, _ in pairs:
        per_bench[b] = per_bench.get(b, 0) + 1
    return {"train_rows": len(pairs), "val_rows": len(val_pairs), "prompt_style": style,
            "per_benchmark": per_bench}


def read_trl_rows(train_data_dir: Path) -> list[dict[str, Any]]:
    path = Path(train_data_dir) / TRL_DIR / TRAIN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TRL training data not found; run the train-data stage first")
    table = pq.read_table(path)
    need = {"prompt", "golden_answers", "question_id", "benchmark"}
    missing = need - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)} (have {table.column_names})")
    return table.to_pylist()
