"""Which checkpoints and baselines are scored."""

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from searchr1.schema import Section


class EvaluationConfig(Section):
    checkpoints: Literal["all", "last"] | PositiveInt = Field(
        "all", description="the GRPO checkpoints scored: every one, the last, or the last N (an integer); the "
                           "base and the warm-started policy are scored whatever this says")
    include_base: bool = True  # the untrained policy as step 0
    baselines: tuple[Literal["direct", "rag"], ...] = ("direct", "rag")
    # Search-R1 compares against baselines of the untrained model ("base": every step-0 model, the base and the
    # warm-started policy); "init": only the policy RL starts from (the warm-started one when there is one: a
    # base model that never writes <answer> scores 0 in any baseline, which measures format, not retrieval);
    # "all" also runs them per checkpoint.
    baselines_at: Literal["base", "init", "all"] = "base"

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _one_choice(cls, value: object) -> object:
        # one message instead of pydantic's one per member of the union
        if value in ("all", "last") or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError("expected 'all', 'last' or a positive integer (the last N checkpoints)")


def scored_count(saved: int, choice: str | int) -> int:
    """How many of a run's `saved` GRPO checkpoints `evaluation.checkpoints` scores (the latest ones)."""
    if choice == "all":
        return saved
    return min(saved, 1 if choice == "last" else int(choice))  # EvaluationConfig has checked the choice
