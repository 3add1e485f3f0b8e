"""Stage: training prompts in verl's parquet layout and as a TRL dataset."""

from prefect import task
from prefect.cache_policies import NONE

from searchr1.corpus.build import load_question_sets
from searchr1.stage_cache import StageOutput
from searchr1.summaries import TrainDataSummary
from tasks._stage import PipelineContext, run_stage


@task(name="train-data", cache_policy=NONE)
def train_data_task(ctx: PipelineContext, questions: StageOutput) -> StageOutput:
    from searchr1.training import data

    def build(work, run):
        train = load_question_sets(questions.path, ctx.cfg.questions.train_benchmarks, "train")
        return TrainDataSummary.of(data.build_train_data(train, ctx.cfg, work))

    return run_stage(ctx, "train-data", config_paths=["agent.prompt_style", "questions.train_benchmarks", "run.seed"],
                     upstream=[questions], build=build)
