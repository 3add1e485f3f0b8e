"""Stage: GRPO with the search tool; checkpoints every N steps; resumes from the last complete one."""

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from searchr1.cache import StageOutput
from tasks._stage import PipelineContext, run_stage


def _recording(run, path: Path):
    """Log to MLflow and keep a local copy of the series (the report reads it without MLflow)."""

    def log(metrics, step=None):
        run.log_metrics(metrics, step)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    return log


@task(name="train", cache_policy=NONE)
def train_task(ctx: PipelineContext, policy_path: Path | str, train_data: StageOutput,
               index: StageOutput, start: StageOutput | None) -> StageOutput:
    from searchr1.training import train as training

    init = start.path / "model" if start is not None else policy_path

    def build(work, run):
        return training.train(init, train_data.path, index.path, ctx.cfg, work,
                           log_metrics=_recording(run, work / "metrics.jsonl"))

    upstream = [train_data, index] + ([start] if start is not None else [])
    return run_stage(ctx, "train", config_paths=["training", "agent", "policy", "retrieval", "run.seed"],
                     upstream=upstream, sources=["searchr1.training", "searchr1.agent", "searchr1.rewards"],
                     build=build, resumable=True, extra_key={"init": str(init)})
