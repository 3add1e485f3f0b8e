"""Stage: passages (synthetic world or wiki-18) as parquet shards."""

from prefect import task
from prefect.cache_policies import NONE

from searchr1.corpus import build
from searchr1.stage_cache import StageOutput
from searchr1.summaries import CorpusSummary
from tasks._stage import PipelineContext, run_stage


@task(name="corpus", cache_policy=NONE)
def corpus_task(ctx: PipelineContext) -> StageOutput:
    return run_stage(ctx, "corpus", config_paths=["corpus"], upstream=[],
                     build=lambda work, run: CorpusSummary.of(build.build_corpus(ctx.cfg, work)), resumable=True)
