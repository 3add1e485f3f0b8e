"""Stage: GRPO with the search tool; checkpoints every N steps; resumes from the last complete one."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from searchr1.agent.config import EVALUATION_ONLY_FIELDS, agent_paths
from searchr1.stage_cache import StageOutput
from searchr1.summaries import TrainSummary, WarmStartSummary
from searchr1.tracking import CommittedMetrics
from searchr1.training.checkpoints import list_checkpoints
from tasks._stage import PipelineContext, location_free, run_stage, searcher_key


@task(name="train", cache_policy=NONE)
def train_task(ctx: PipelineContext, policy_path: Path | str, train_data: StageOutput,
               index: StageOutput, start: StageOutput | None) -> StageOutput:
    from searchr1.training import train as training

    init = start.path / WarmStartSummary.of(start.summary).model if start is not None else policy_path

    def build(work, run):
        run.expect_steps(ctx.cfg.training.grpo.steps)  # for the progress line's ETA

        def committed() -> int:
            done = list_checkpoints(work)
            return done[-1][0] if done else 0

        log = CommittedMetrics(run, work, committed)  # no step is logged twice across a resume
        summary = training.train(init, train_data.path, index.path, ctx.cfg, work, log_metrics=log)
        log.finish()
        done = list_checkpoints(work)  # the checkpoints on disk, named relative to the stage folder
        return TrainSummary.of(summary, engine=ctx.cfg.training.engine, init=str(init), warm_started=start is not None,
                               last_step=done[-1][0] if done else 0,
                               checkpoints=[str(path.relative_to(work)) for _, path in done])

    upstream = [train_data, index] + ([start] if start is not None else [])
    return run_stage(ctx, "train", upstream=upstream, build=build, resumable=True,
                     config_paths=["training", *agent_paths(exclude=EVALUATION_ONLY_FIELDS), "policy", "run.seed"],
                     extra_key={"init": location_free(ctx, init), "retrieval": searcher_key(ctx.cfg, server=True)})
