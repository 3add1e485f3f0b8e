"""Small sample files in the real input formats, for tests and benchmarks.

`write_samples` generates them from the synthetic world, so a plain clone of the repository has
everything a test or benchmark needs: wiki-18 passages as jsonl and jsonl.gz (`{"id", "contents"}`,
contents = `"Title"\\ntext`) and a FlashRAG question file (`{"id", "question", "golden_answers"}`).
`reference_samples` opens externally supplied real samples (a folder laid out like the project's
shared reference data); both give a `SampleFiles`, so callers take either without a branch.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from searchr1.corpus import synthetic
from searchr1.corpus.config import SKILLS, SyntheticWorldConfig
from searchr1.corpus.jsonl import PASSAGE_FIELDS, QUESTION_FIELDS, read_jsonl

# Layout of the reference samples (real wiki-18 rows and NQ questions) relative to their folder.
REFERENCE_PASSAGES = Path("wiki18-format") / "flashrag_sample_1000.jsonl"
REFERENCE_QUESTIONS = Path("flashrag-format") / "nq_test_sample.jsonl"
# The benchmarks' `--data` option: the one switch from generated samples to the real ones.
DATA_ARG_HELP = "folder of the real reference samples (e.g. ../shared/data); default: generated passages"

# The default synthetic world renders this many passages; smaller samples scale it down.
_DEFAULT_WORLD = SyntheticWorldConfig()
_DEFAULT_PASSAGES = _DEFAULT_WORLD.n_places + 2 * (_DEFAULT_WORLD.n_people + _DEFAULT_WORLD.n_organisations
                                                   + _DEFAULT_WORLD.n_works)


@dataclass(frozen=True)
class SampleFiles:
    """Where a set of sample files lies and where it came from."""

    passages: Path  # wiki-18 jsonl
    questions: Path  # FlashRAG jsonl
    origin: Literal["generated", "reference"]
    passages_gz: Path | None = None  # the same passages gzip-compressed, when written

    def passage_rows(self, n: int | None = None) -> list[dict[str, Any]]:
        """The first n passages (all when None), read through the corpus loader's validation."""
        return list(islice(read_jsonl(self.passages, PASSAGE_FIELDS), n))

    def question_rows(self, n: int | None = None) -> list[dict[str, Any]]:
        return list(islice(read_jsonl(self.questions, QUESTION_FIELDS), n))


def _world_for(n_passages: int, seed: int) -> SyntheticWorldConfig:
    """A world rendering at least n_passages passages, with enough entities for every question skill."""
    scale = n_passages / _DEFAULT_PASSAGES * 1.05
    d = _DEFAULT_WORLD
    return SyntheticWorldConfig(
        seed=seed, n_people=max(12, round(d.n_people * scale)), n_places=max(4, round(d.n_places * scale)),
        n_organisations=max(4, round(d.n_organisations * scale)), n_works=max(6, round(d.n_works * scale)),
        questions_per_skill=20)


def generated_passages(n: int, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """n wiki-18-format passages and ~n/10 FlashRAG questions about the same invented world.

    Passages are shuffled (a sample of a real corpus mixes titles too) and renumbered "0".."n-1", as
    wiki-18's ids are; questions keep only the three FlashRAG fields, as the real benchmark files do.
    """
    cfg = _world_for(n, seed)
    while True:
        world = synthetic.build_world(cfg)
        rendered = [p for _, p in synthetic.render_passages(world, seed)]
        if len(rendered) >= n:
            break
        cfg = cfg.model_copy(update={"n_people": cfg.n_people * 2})
    rng = random.Random(seed)
    rng.shuffle(rendered)
    passages = [{"id": str(i), "contents": p["contents"]} for i, p in enumerate(rendered[:n])]
    suites = synthetic.build_questions(world, cfg)
    pool = [q for skill in SKILLS for split in ("test", "train") for q in suites[skill][split]]
    rng.shuffle(pool)
    questions = [{"id": f"test_{i}", "question": q["question"], "golden_answers": q["golden_answers"]}
                 for i, q in enumerate(pool)]
    return passages, questions


def _write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write under a temporary name first: a benchmark reusing its work folder never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
    os.replace(tmp, path)
    return path


def write_samples(out_dir: Path, n_passages: int = 1000, n_questions: int = 17, seed: int = 0) -> SampleFiles:
    """Generate sample files under out_dir (same seed and sizes, same bytes)."""
    if n_passages < 1 or n_questions < 1:
        raise ValueError(f"write_samples: n_passages={n_passages} and n_questions={n_questions} must be >= 1")
    passages, questions = generated_passages(n_passages, seed)
    if len(questions) < n_questions:
        raise ValueError(f"write_samples: n_questions={n_questions} but a world of {n_passages} passages "
                         f"yields only {len(questions)}")
    out_dir = Path(out_dir)
    return SampleFiles(passages=_write_jsonl(passages, out_dir / "wiki18-format" / "passages.jsonl"),
                       passages_gz=_write_jsonl(passages, out_dir / "wiki18-format" / "passages.jsonl.gz"),
                       questions=_write_jsonl(questions[:n_questions], out_dir / "flashrag-format" / "nq_test.jsonl"),
                       origin="generated")


def reference_samples(data_dir: Path) -> SampleFiles:
    """The real samples under data_dir; FileNotFoundError names every file that is missing."""
    data_dir = Path(data_dir)
    files = SampleFiles(passages=data_dir / REFERENCE_PASSAGES, questions=data_dir / REFERENCE_QUESTIONS,
                        origin="reference")
    missing = [str(p) for p in (files.passages, files.questions) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"reference samples not found: {', '.join(missing)} (expected the layout "
                                f"{REFERENCE_PASSAGES} and {REFERENCE_QUESTIONS} under {data_dir})")
    return files


def open_samples(data_dir: Path | None, work: Path, n_passages: int = 1000) -> SampleFiles:
    """The reference samples in data_dir when one is given, else generated ones under work/samples-<n>."""
    if data_dir is not None:
        return reference_samples(data_dir)
    return write_samples(Path(work) / f"samples-{n_passages}", n_passages=n_passages)
