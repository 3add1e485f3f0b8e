"""What each stage hands on: one typed summary per stage, written by its task and read by the report.

A summary declares the fields a stage always reports and that readers may rely on; whatever else the
library reported (timings, engine-specific counts) rides along as extra fields, shown in the report's
fact tables and logged as MLflow metrics but never read by name. Paths are relative to the stage's
folder: a stage is built in `<key>.work/` and renamed on publish, so an absolute path would go stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError


class SummaryError(ValueError):
    """A stage summary without a field its type requires, or with a value of the wrong type."""


class StageSummary(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    STAGE: ClassVar[str]

    @classmethod
    def of(cls, reported: Mapping[str, Any], **known: Any) -> Self:
        """The library's `reported` dict plus what the task `known`s itself (the task wins on a clash)."""
        try:
            return cls.model_validate({**reported, **known})
        except ValidationError as exc:
            problems = "; ".join(f"'{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors())
            raise SummaryError(f"{cls.STAGE} stage summary ({cls.__name__}): {problems} "
                               f"(got keys {sorted({**reported, **known})})") from None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, declared and extra fields side by side (what the stage manifest stores)."""
        return self.model_dump(mode="json")


class CorpusSummary(StageSummary):
    STAGE = "corpus"
    source: Literal["synthetic", "wiki18"]
    passages: int
    shards: int
    skipped_lines: int


class QuestionsSummary(StageSummary):
    STAGE = "questions"
    source: str
    questions: int
    counts: dict[str, int]  # "<benchmark>/<split>" -> questions written
    skipped_lines: int


class IndexSummary(StageSummary):
    STAGE = "index"
    kind: Literal["flat", "hnsw", "ivfpq", "bm25"]
    passages: int
    build_seconds: float


class TrainDataSummary(StageSummary):
    STAGE = "train-data"
    train_rows: int
    val_rows: int
    prompt_style: str
    per_benchmark: dict[str, int]


class WarmStartSummary(StageSummary):
    STAGE = "warm-start"
    steps: int
    model: str = "model"  # the fine-tuned model's folder
    traces: int = 0
    verify_rate: float = 0.0  # share of the traces that check a hop after a reflective phrase
    check_probability: float | None = None  # the trained policy's mean P("Wait") where the traces check or go on


class TrainSummary(StageSummary):
    STAGE = "train"
    engine: Literal["trl", "verl"]
    init: str  # the model training started from: the policy, or the warm-started model
    warm_started: bool
    last_step: int  # of the last complete checkpoint (0: none)
    checkpoints: list[str]  # checkpoint folders, oldest first


class EvaluateSummary(StageSummary):
    STAGE = "evaluate"
    results: str = "results.parquet"
    checkpoints: list[str]
    methods: list[str]
    benchmarks: list[str]
    search_agent_average_em: dict[int, float]  # step -> average exact match


class ReflectionSummary(StageSummary):
    STAGE = "reflection"
    n_checkpoints: int
    verdict: str  # across checkpoints: how the reflective-phrase ratio relates to the score
    figures: list[str]


class ReportSummary(StageSummary):
    STAGE = "report"
    files: dict[str, str]  # "md", "html", "png:<name>" -> file name


SUMMARIES: dict[str, type[StageSummary]] = {cls.STAGE: cls for cls in (
    CorpusSummary, QuestionsSummary, IndexSummary, TrainDataSummary, WarmStartSummary, TrainSummary,
    EvaluateSummary, ReflectionSummary, ReportSummary)}


def read_summary(stage: str, data: Mapping[str, Any]) -> StageSummary:
    """A published stage's summary (its manifest's JSON) as its typed class."""
    if stage not in SUMMARIES:
        raise SummaryError(f"no summary type for stage {stage!r}; expected one of {sorted(SUMMARIES)}")
    return SUMMARIES[stage].of(data)
