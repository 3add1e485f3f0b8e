"""Stage: embed the corpus and build the retrieval index."""

from prefect import task
from prefect.cache_policies import NONE

from searchr1.cache import StageOutput
from tasks._stage import PipelineContext, run_stage


@task(name="index", cache_policy=NONE)
def index_task(ctx: PipelineContext, corpus: StageOutput) -> StageOutput:
    from searchr1.retrieval import index

    def build(work, run):
        summary = index.build_index(corpus.path / "passages", work, ctx.cfg.retrieval, log_metrics=run)
        for meta in sorted(work.glob("*.json")):  # index metadata: embedder, dims, count, recall
            run.log_artifact(meta)
        return summary

    return run_stage(ctx, "index", config_paths=["retrieval.embedder", "retrieval.index"], upstream=[corpus],
                     sources=["searchr1.retrieval"],
                     build=build, resumable=True)
