"""Stage: GRPO with the search tool; checkpoints every N steps; resumes from the last complete one."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from searchr1.cache import StageOutput
from searchr1.tracking import CommittedMetrics
from searchr1.training.checkpoints import list_checkpoints
from tasks._stage import PipelineContext, run_stage


@task(name="train", cache_policy=NONE)
def train_task(ctx: PipelineContext, policy_path: Path | str, train_data: StageOutput,
               index: StageOutput, start: StageOutput | None) -> StageOutput:
    from searchr1.training import train as training

    init = start.path / "model" if start is not None else policy_path

    def build(work, run):
        def committed() -> int:
            done = list_checkpoints(work)
            return done[-1][0] if done else 0

        log = CommittedMetrics(run, work, committed)  # no step is logged twice across a resume
        summary = training.train(init, train_data.path, index.path, ctx.cfg, work, log_metrics=log)
        log.finish()
        return summary

    upstream = [train_data, index] + ([start] if start is not None else [])
    return run_stage(ctx, "train", config_paths=["training", "agent", "policy", "retrieval", "run.seed"],
                     upstream=upstream, sources=["searchr1.training", "searchr1.agent", "searchr1.rewards"],
                     build=build, resumable=True, extra_key={"init": str(init)})
