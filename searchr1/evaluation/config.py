"""Which checkpoints and baselines are scored."""

from typing import Literal

from searchr1.schema import Section


class EvaluationConfig(Section):
    checkpoints: Literal["all", "last"] = "all"
    include_base: bool = True  # the untrained policy as step 0
    baselines: tuple[Literal["direct", "rag"], ...] = ("direct", "rag")
    # Search-R1 compares against baselines of the untrained model ("base": every step-0 model, the base and the
    # warm-started policy); "init": only the policy RL starts from (the warm-started one when there is one: a
    # base model that never writes <answer> scores 0 in any baseline, which measures format, not retrieval);
    # "all" also runs them per checkpoint.
    baselines_at: Literal["base", "init", "all"] = "base"
