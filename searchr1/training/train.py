"""One entry point for the train stage: picks the engine from `training.engine`.

- "trl": in-process GRPO over the in-process searcher (CPU, the tiny profile);
- "verl": starts our retrieval server, renders and launches verl, merges each saved actor
  checkpoint into an HF folder at `work_dir/checkpoints/step-XXXXXX/` (the layout evaluation reads).
Both resume when called again with the same `work_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from searchr1.tracking import MetricsLogger, null_logger
from searchr1.training.checkpoints import COMPLETE_MARKER, checkpoints_dir, step_name


def train(init_model: Path | str, train_data_dir: Path, index_dir: Path, cfg, work_dir: Path,
          log_metrics: MetricsLogger = null_logger) -> dict[str, Any]:
    engine = cfg.training.engine
    if engine == "trl":
        from searchr1.retrieval.searcher import load_searcher
        from searchr1.training.grpo import train_grpo

        searcher = load_searcher(Path(index_dir), cfg.retrieval)
        summary = train_grpo(init_model, Path(train_data_dir), searcher, cfg, Path(work_dir), log_metrics)
        summary.pop("history", None)  # already in MLflow, one metric series per step
        return summary
    if engine == "verl":
        return _train_verl(init_model, Path(train_data_dir), Path(index_dir), cfg, Path(work_dir), log_metrics)
    raise ValueError(f"training.engine={engine!r}: expected 'trl' or 'verl'")


def _train_verl(init_model, train_data_dir: Path, index_dir: Path, cfg, work_dir: Path,
                log_metrics: MetricsLogger) -> dict[str, Any]:
    from searchr1.retrieval.server import running_server
    from searchr1.tracking import CommittedMetrics, tracking_uri
    from searchr1.training.verl_launch import (
        launch_verl,
        merge_checkpoint,
        mlflow_env,
        render_verl,
        verl_checkpoints,
    )

    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"model": str(init_model)})})
    plan_dir = work_dir / "verl"
    extra_env, sink = {}, log_metrics
    run_id = _mlflow_run_id(log_metrics)
    if "mlflow" in cfg.training.verl.logger and run_id:
        # verl's own mlflow logger writes every metric into this stage's run; the console lines then only
        # feed the stage's committed series (the report's curves), or MLflow would get each value twice
        extra_env = mlflow_env(tracking_uri(Path(cfg.run.artifacts_dir)), run_id)
        sink = CommittedMetrics(null_logger, work_dir, lambda: _last_step(plan_dir / "checkpoints"))
    with running_server(index_dir, cfg, port=cfg.retrieval.server.port) as url:  # the server's base URL
        plan = render_verl(cfg, train_data_dir, url, plan_dir)
        summary = launch_verl(plan, sink, extra_env)
    if isinstance(sink, CommittedMetrics):
        sink.finish()
    merged = []
    for step, actor in verl_checkpoints(plan.checkpoint_dir):
        target = checkpoints_dir(work_dir) / step_name(step)
        if (target / COMPLETE_MARKER).is_file():
            continue
        merge_checkpoint(actor, target)
        (target / COMPLETE_MARKER).write_text(json.dumps({"step": step, "source": str(actor)}))
        merged.append(str(target))
    return {**summary, "merged": merged, "mlflow_run_id": run_id if extra_env else None}


def _mlflow_run_id(log_metrics: MetricsLogger) -> str | None:
    """The MLflow run behind the stage's logger (a StageRun, possibly wrapped in CommittedMetrics)."""
    for obj in (log_metrics, getattr(log_metrics, "sink", None)):
        run_id = getattr(obj, "run_id", None)
        if isinstance(run_id, str):
            return run_id
    return None


def _last_step(checkpoint_dir: Path) -> int:
    from searchr1.training.verl_launch import verl_checkpoints

    done = verl_checkpoints(checkpoint_dir)
    return done[-1][0] if done else 0
