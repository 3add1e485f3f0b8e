"""Stage: optional supervised warm start on search traces (tiny profile only; see DESIGN.md)."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from searchr1.cache import StageOutput
from searchr1.corpus.build import load_question_sets
from tasks._stage import PipelineContext, run_stage


@task(name="warm-start", cache_policy=NONE)
def warm_start_task(ctx: PipelineContext, policy_path: Path | str, questions: StageOutput,
                    index: StageOutput) -> StageOutput:
    from searchr1.retrieval.searcher import load_searcher
    from searchr1.training import warmstart

    def build(work, run):
        train = load_question_sets(questions.path, ctx.cfg.questions.train_benchmarks, "train")
        searcher = load_searcher(index.path, ctx.cfg.retrieval)
        return warmstart.warm_start(policy_path, train, searcher, ctx.cfg, work, log_metrics=run)

    return run_stage(ctx, "warm-start",
                     config_paths=["training.warm_start", "policy", "agent", "retrieval.topk", "run.seed"],
                     upstream=[questions, index], sources=["searchr1.training.warmstart", "searchr1.agent.prompts"],
                     build=build, extra_key={"policy_path": str(policy_path)})
