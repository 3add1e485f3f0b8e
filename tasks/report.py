"""Stage: the run report (Markdown + HTML), logged to MLflow and published as a Prefect artifact."""


import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from searchr1.corpus.build import load_question_sets
from searchr1.evaluation.hops import hop_section
from searchr1.stage_cache import StageOutput
from searchr1.summaries import ReportSummary, read_summary
from searchr1.tracking import committed_metrics, experiment_url, run_url
from tasks._stage import PipelineContext, run_stage


def _train_metrics(train: StageOutput) -> pd.DataFrame | None:
    rows = committed_metrics(train.path)
    # a resumed run may log a step twice (the one it was killed in): keep the last value
    return pd.DataFrame(rows).groupby("step", as_index=False).last() if rows else None


@task(name="report", cache_policy=NONE)
def report_task(ctx: PipelineContext, stages: dict[str, StageOutput]) -> StageOutput:
    from searchr1 import report

    parent = ctx.tracker.parent
    # base URL from $SEARCHR1_MLFLOW_UI / $MLFLOW_PORT (searchr1.tracking.ui_url)
    links = {"pipeline run": parent.url, "all runs": experiment_url(ctx.tracker.experiment_id)}
    for r in ctx.tracker.child_runs():
        links[r.data.tags.get("searchr1.stage", r.info.run_name)] = run_url(r.info.experiment_id, r.info.run_id)

    def build(work, run):
        ev = stages["evaluate"].path
        questions = load_question_sets(stages["questions"].path, ctx.cfg.questions.eval_benchmarks, "test")
        hops = hop_section(ev / "rollouts", questions, work)
        paths = report.build_report(
            work, config=ctx.cfg.model_dump(mode="json"),
            stages={name: read_summary(name, s.summary) for name, s in stages.items()},
            results_md=ev / "results.md", results_png=ev / "results.png",
            analysis_dir=stages["reflection"].path, train_metrics=_train_metrics(stages["train"]),
            mlflow_links=links, hops=hops)
        for path in paths.values():
            run.log_artifact(path)
            parent.log_artifact(path, "report")
        create_markdown_artifact(paths["md"].read_text(), key="report",
                                 description="reproduce-search-r1 run report")
        return ReportSummary.of({}, files={k: v.name for k, v in paths.items()})  # names in the stage folder

    # The report links this pipeline run's MLflow runs, so it is keyed by the run id too.
    return run_stage(ctx, "report", config_paths=[], upstream=list(stages.values()),
                     build=build,
                     extra_key={"pipeline_run_id": ctx.tracker.pipeline_run_id})
