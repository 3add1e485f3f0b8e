"""Stage: score every checkpoint (and the base model) on every benchmark, plus the baselines."""

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from searchr1.cache import StageOutput
from searchr1.corpus.build import load_question_sets
from tasks._stage import PipelineContext, run_stage


@task(name="evaluate", cache_policy=NONE)
def evaluate_task(ctx: PipelineContext, policy_path: Path | str, questions: StageOutput, index: StageOutput,
                  train: StageOutput) -> StageOutput:
    from searchr1.evaluation import evaluate, results
    from searchr1.retrieval.searcher import load_searcher
    from searchr1.training.checkpoints import list_checkpoints

    cfg = ctx.cfg

    def build(work, run):
        ckpts = list_checkpoints(train.path)
        if cfg.evaluation.checkpoints == "last":
            ckpts = ckpts[-1:]
        if cfg.evaluation.include_base:
            ckpts = [(0, policy_path)] + ckpts
        test = load_question_sets(questions.path, cfg.questions.eval_benchmarks, "test")
        summary = evaluate.evaluate_checkpoints(ckpts, test, load_searcher(index.path, cfg.retrieval), cfg, work,
                                                log_metrics=run)
        tables = results.results_table(work / "results.parquet", work, reference=cfg.questions.source == "flashrag")
        for path in tables.values():
            run.log_artifact(path)
        create_markdown_artifact(tables["markdown"].read_text(), key="results",
                                 description="Exact match per benchmark")
        return summary

    return run_stage(ctx, "evaluate", config_paths=["evaluation", "agent", "questions", "retrieval.topk", "policy"],
                     upstream=[questions, index, train], sources=["searchr1.evaluation", "searchr1.agent",
                                                                  "searchr1.rewards"],
                     build=build, resumable=True)
