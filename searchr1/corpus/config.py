"""Where passages and questions come from."""

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from searchr1.schema import Section


class SyntheticWorldConfig(Section):
    """A fictional world: entities with typed relations, so answers can only come from retrieval."""

    seed: int = 0
    n_people: PositiveInt = 400
    n_places: PositiveInt = 80
    n_organisations: PositiveInt = 60
    n_works: PositiveInt = 200
    passages_per_entity: PositiveInt = 2
    questions_per_skill: PositiveInt = 300
    test_fraction: float = Field(0.25, gt=0, lt=1)
    # Share of people who get a namesake: a second person whose surname differs by one letter, with the same
    # occupation but another birthplace, year and employer. A search for one then often ranks the other first,
    # so reading the retrieved name carefully (and checking it) can matter. 0 keeps the world as it was.
    namesake_fraction: float = Field(0.0, ge=0, le=1)


class Wiki18Config(Section):
    """wiki-18 as Search-R1 / FlashRAG ship it: jsonl(.gz) of {"id", "contents"}."""

    repo_id: str = "PeterJinGo/wiki-18-corpus"
    filename: str = "wiki-18.jsonl.gz"
    local_path: Path | None = None  # a local jsonl/jsonl.gz of the same format skips the hub
    shard_rows: PositiveInt = 500_000
    max_passages: PositiveInt | None = None


class CorpusConfig(Section):
    source: Literal["synthetic", "wiki18"] = "synthetic"
    synthetic: SyntheticWorldConfig = SyntheticWorldConfig()
    wiki18: Wiki18Config = Wiki18Config()
    on_bad_line: Literal["error", "skip"] = "error"


BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
SKILLS = ("single_hop", "bridge", "comparison", "compositional")


class QuestionsConfig(Section):
    """Evaluation and training questions, FlashRAG format {"id", "question", "golden_answers"}."""

    source: Literal["synthetic", "flashrag"] = "synthetic"
    hub_repo_id: str = "RUC-NLPIR/FlashRAG_datasets"
    local_dir: Path | None = None  # <dir>/<benchmark>/<split>.jsonl, read instead of the hub
    eval_benchmarks: tuple[str, ...] = SKILLS
    train_benchmarks: tuple[str, ...] = SKILLS
    max_eval_questions: PositiveInt | None = None  # per benchmark; None = all
    max_train_questions: PositiveInt | None = None
    on_bad_line: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _known_names(self) -> "QuestionsConfig":
        known = SKILLS if self.source == "synthetic" else BENCHMARKS
        for field in ("eval_benchmarks", "train_benchmarks"):
            for name in getattr(self, field):
                if name not in known:
                    raise ValueError(f"{field}: unknown benchmark {name!r} for source "
                                     f"{self.source!r}; expected one of {', '.join(known)}")
        return self
