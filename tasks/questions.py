"""Stage: train and evaluation questions in FlashRAG format."""

from prefect import task
from prefect.cache_policies import NONE

from searchr1.corpus import build
from searchr1.stage_cache import StageOutput
from searchr1.summaries import QuestionsSummary
from tasks._stage import PipelineContext, run_stage


@task(name="questions", cache_policy=NONE)
def questions_task(ctx: PipelineContext) -> StageOutput:
    # Synthetic questions are drawn from the same world as the corpus, hence corpus.synthetic.
    return run_stage(ctx, "questions", config_paths=["corpus.synthetic", "questions", "run.seed"], upstream=[],
                     build=lambda work, run: QuestionsSummary.of(build.build_question_sets(ctx.cfg, work)))
