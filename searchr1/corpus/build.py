"""The corpus and questions stages: write passages as parquet shards and questions as FlashRAG jsonl."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchr1.corpus import synthetic
from searchr1.corpus.jsonl import DataError, ReadStats
from searchr1.corpus.sources import (
    EVAL_SPLIT,
    benchmark_file,
    hub_download,
    iter_wiki18,
    read_questions,
    write_passage_shards,
)
from searchr1.io import atomic_file

if TYPE_CHECKING:  # a type hint only: corpus sections are part of the pipeline config, not the other way
    from searchr1.config import PipelineConfig

PASSAGES = "passages"


def build_corpus(cfg: PipelineConfig, out_dir: Path) -> dict[str, Any]:
    """Passages as out_dir/passages/part-*.parquet ({"id","contents"}); returns counts for tracking."""
    c = cfg.corpus
    shards = out_dir / PASSAGES
    if c.source == "synthetic":
        world = synthetic.build_world(c.synthetic)
        rows = [p for _, p in synthetic.render_passages(world, c.synthetic.seed)]
        n = write_passage_shards(rows, shards, c.wiki18.shard_rows, desc="synthetic passages")
        return {"source": "synthetic", "passages": n, "shards": len(list(shards.glob("part-*.parquet"))),
                "skipped_lines": 0, "entities": len(world.people) + len(world.places) + len(world.orgs)
                + len(world.works)}
    path = c.wiki18.local_path or hub_download(c.wiki18.repo_id, c.wiki18.filename)
    stats = ReadStats(str(path))
    n = write_passage_shards(iter_wiki18(Path(path), c.on_bad_line, stats, c.wiki18.max_passages),
                             shards, c.wiki18.shard_rows, desc="wiki-18")
    return {"source": "wiki18", "file": str(path), "passages": n,
            "shards": len(list(shards.glob("part-*.parquet"))), "skipped_lines": stats.skipped,
            "skip_reasons": stats.reasons}


def _subsample(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    if limit is None or len(rows) <= limit:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def _write_jsonl(rows: Sequence[dict], path: Path) -> None:
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_question_sets(cfg: PipelineConfig, out_dir: Path) -> dict[str, Any]:
    """out_dir/<benchmark>/{train,test}.jsonl in FlashRAG format; "test" is the split we evaluate on."""
    q = cfg.questions
    counts: dict[str, int] = {}
    skipped = 0
    if q.source == "synthetic":
        suites = synthetic.build_questions(synthetic.build_world(cfg.corpus.synthetic), cfg.corpus.synthetic)
        plan = [(name, "train", suites[name]["train"]) for name in q.train_benchmarks]
        plan += [(name, "test", suites[name]["test"]) for name in q.eval_benchmarks]
    else:
        plan = []
        for names, split_of, ours in ((q.train_benchmarks, lambda _: "train", "train"),
                                      (q.eval_benchmarks, EVAL_SPLIT.__getitem__, "test")):
            for name in names:
                stats = ReadStats(name)
                path = benchmark_file(name, split_of(name), q.local_dir, q.hub_repo_id)
                plan.append((name, ours, read_questions(path, q.on_bad_line, stats)))
                skipped += stats.skipped
    for name, split, rows in plan:
        limit = q.max_train_questions if split == "train" else q.max_eval_questions
        rows = _subsample(rows, limit, cfg.run.seed)
        if not rows:
            raise DataError(f"questions: {name}/{split} has no questions; expected at least one")
        _write_jsonl(rows, out_dir / name / f"{split}.jsonl")
        counts[f"{name}/{split}"] = len(rows)
    return {"source": q.source, "counts": counts, "questions": sum(counts.values()), "skipped_lines": skipped}


def load_question_sets(questions_dir: Path, names: Sequence[str], split: str) -> dict[str, list[dict]]:
    """{benchmark: [Question, ...]} as the questions stage wrote them."""
    return {name: read_questions(Path(questions_dir) / name / f"{split}.jsonl") for name in names}
