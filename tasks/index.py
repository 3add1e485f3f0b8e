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

    # Search-time settings (efSearch, nprobe, GPU placement) do not change what is built.
    built = ctx.cfg.retrieval.index.model_dump(mode="json", exclude=index.SEARCH_TIME_KEYS)
    return run_stage(ctx, "index", config_paths=["retrieval.embedder"], upstream=[corpus], extra_key={"index": built},
                     sources=["searchr1.retrieval"],
                     build=build, resumable=True)
