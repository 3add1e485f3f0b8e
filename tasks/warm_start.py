"""Stage: optional supervised warm start on search traces (tiny profile only; see DESIGN.md)."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from searchr1.agent.config import protocol_paths
from searchr1.corpus.build import load_question_sets
from searchr1.stage_cache import StageOutput
from searchr1.summaries import WarmStartSummary
from tasks._stage import PipelineContext, location_free, run_stage, searcher_key


@task(name="warm-start", cache_policy=NONE)
def warm_start_task(ctx: PipelineContext, policy_path: Path | str, questions: StageOutput,
                    index: StageOutput) -> StageOutput:
    from searchr1.retrieval.searcher import load_searcher
    from searchr1.training import warmstart

    def build(work, run):
        ws = ctx.cfg.training.warm_start
        run.expect_steps(-(-ws.n_examples // ws.batch_size) * ws.epochs)  # at most; fewer if traces are dropped
        train = load_question_sets(questions.path, ctx.cfg.questions.train_benchmarks, "train")
        searcher = load_searcher(index.path, ctx.cfg.retrieval)
        summary = warmstart.warm_start(policy_path, train, searcher, ctx.cfg, work, log_metrics=run)
        return WarmStartSummary.of(summary, model="model")  # relative: `work` is renamed on publish

    return run_stage(ctx, "warm-start",
                     config_paths=["training.warm_start", "policy", *protocol_paths(), "run.seed"],
                     upstream=[questions, index], build=build,
                     extra_key={"policy_path": location_free(ctx, policy_path), "retrieval": searcher_key(ctx.cfg)})
