"""Stage: score every checkpoint (and the base model) on every benchmark, plus the baselines."""

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from searchr1.corpus.build import load_question_sets
from searchr1.stage_cache import StageOutput
from searchr1.summaries import EvaluateSummary, TrainSummary
from tasks._stage import PipelineContext, run_stage, searcher_key


@task(name="evaluate", cache_policy=NONE)
def evaluate_task(ctx: PipelineContext, policy_path: Path | str, questions: StageOutput, index: StageOutput,
                  train: StageOutput) -> StageOutput:
    from searchr1.evaluation import evaluate, results
    from searchr1.retrieval.searcher import load_searcher
    from searchr1.training.checkpoints import list_checkpoints

    cfg = ctx.cfg

    def build(work, run):
        ckpts = evaluate.scored_checkpoints(list_checkpoints(train.path), cfg.evaluation.checkpoints)
        if cfg.evaluation.include_base:
            ckpts = [(0, policy_path)] + ckpts
        test = load_question_sets(questions.path, cfg.questions.eval_benchmarks, "test")
        trained = TrainSummary.of(train.summary)
        init = ("warm-start", trained.init) if trained.warm_started else None  # the policy RL started from
        summary = evaluate.evaluate_checkpoints(ckpts, test, load_searcher(index.path, cfg.retrieval), cfg, work,
                                                log_metrics=run, init=init)
        tables = results.results_table(work / "results.parquet", work, reference=cfg.questions.source == "flashrag")
        for path in tables.values():
            run.log_artifact(path)
        create_markdown_artifact(tables["markdown"].read_text(), key="results",
                                 description="Exact match per benchmark")
        return EvaluateSummary.of(summary, results="results.parquet")  # relative: `work` is renamed on publish

    # The agent searches with agent.topk (retrieval.topk only sets the index's recall probe).
    return run_stage(ctx, "evaluate", config_paths=["evaluation", "agent", "questions.eval_benchmarks",
                                                    "questions.source", "policy"],
                     upstream=[questions, index, train], build=build, resumable=True,
                     extra_key={"retrieval": searcher_key(ctx.cfg)})
