"""Stage: how reflective phrases relate to the score, across checkpoints and training steps."""

from prefect import task
from prefect.cache_policies import NONE

from searchr1.stage_cache import StageOutput
from searchr1.summaries import ReflectionSummary
from tasks._stage import PipelineContext, run_stage


@task(name="reflection", cache_policy=NONE)
def reflection_task(ctx: PipelineContext, evaluation: StageOutput, train: StageOutput) -> StageOutput:
    from searchr1.reflection import analysis
    from searchr1.reflection.lexicon import load_lexicon

    def build(work, run):
        summary = analysis.analyse(evaluation.path, train.path, ctx.cfg.reflection, work, log_metrics=run)
        for png in sorted(work.glob("*.png")):
            run.log_artifact(png, "plots")
        return ReflectionSummary.of(summary)

    return run_stage(ctx, "reflection", config_paths=["reflection"], upstream=[evaluation, train],
                     build=build,
                     # the lexicon is data, not code: an edited phrase list must invalidate the analysis
                     extra_key={"lexicon": load_lexicon(ctx.cfg.reflection.lexicon_file).digest()})
