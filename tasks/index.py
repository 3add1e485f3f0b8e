"""Stage: embed the corpus and build the retrieval index."""

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from searchr1.config import PipelineConfig
from searchr1.stage_cache import StageOutput
from searchr1.summaries import IndexSummary
from tasks._stage import PipelineContext, embedder_key, run_stage


def index_key(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings that decide the index: the embedder's, and the index's build-time ones."""
    from searchr1.retrieval.index import SEARCH_TIME_KEYS  # efSearch, nprobe, GPU placement: not built in

    return {"retrieval.embedder": embedder_key(cfg),
            "retrieval.index": cfg.retrieval.index.model_dump(mode="json", exclude=SEARCH_TIME_KEYS)}


@task(name="index", cache_policy=NONE)
def index_task(ctx: PipelineContext, corpus: StageOutput) -> StageOutput:
    from searchr1.retrieval import index

    def build(work, run):
        summary = index.build_index(corpus.path / "passages", work, ctx.cfg.retrieval, log_metrics=run)
        for meta in sorted(work.glob("*.json")):  # index metadata: embedder, dims, count, recall
            run.log_artifact(meta)
        return IndexSummary.of(summary, kind=ctx.cfg.retrieval.index.kind)

    return run_stage(ctx, "index", config_paths=[], upstream=[corpus], build=build, resumable=True,
                     extra_key=index_key(ctx.cfg))
