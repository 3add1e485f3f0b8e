"""Which checkpoints and baselines are scored."""

from typing import Literal

from searchr1.schema import Section


class EvaluationConfig(Section):
    checkpoints: Literal["all", "last"] = "all"
    include_base: bool = True  # the untrained policy as step 0
    baselines: tuple[Literal["direct", "rag"], ...] = ("direct", "rag")
    # Search-R1 compares against baselines of the untrained model; "all" also runs them per checkpoint.
    baselines_at: Literal["base", "all"] = "base"
