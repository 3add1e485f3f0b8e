"""The `reproduce-search-r1` flow: corpus → index → train data → (warm start) → GRPO → evaluate every
checkpoint → reflective-phrase analysis → report. Orchestration only; every stage is a task in tasks/.

Run it: `python -m flows.reproduce --config configs/tiny.yaml [key.sub=value ...]`, or through a
deployment: `prefect deployment run reproduce-search-r1/tiny`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from searchr1.config import PipelineConfig, digest, load_config
from searchr1.models import check_available, resolve_policy
from searchr1.tracking import PipelineTracker
from tasks._stage import PipelineContext
from tasks.corpus import corpus_task
from tasks.evaluate import evaluate_task
from tasks.index import index_task
from tasks.questions import questions_task
from tasks.reflection import reflection_task
from tasks.report import report_task
from tasks.train import train_task
from tasks.train_data import train_data_task
from tasks.warm_start import warm_start_task

PROJECT = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "questions", "index", "train-data", "warm-start", "train", "evaluate", "reflection", "report")


def _resolve(path: str) -> Path:
    """Relative paths mean the project folder, wherever the flow runs (a deployment's cwd may differ)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else PROJECT / p


def prepare(config: str, overrides: list[str]) -> PipelineConfig:
    cfg = load_config(_resolve(config), overrides)
    check_available(cfg.policy.model)
    check_available(cfg.retrieval.embedder.model)
    artifacts = cfg.run.artifacts_dir
    if not artifacts.is_absolute():
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"artifacts_dir": PROJECT / artifacts})})
    return cfg


@flow(name="reproduce-search-r1", log_prints=True)
def reproduce(config: str = "configs/tiny.yaml", overrides: list[str] | None = None,
              pipeline_run_id: str | None = None, until: str = "report") -> dict[str, str]:
    """Run (or resume) the whole pipeline; returns {stage: output directory}.

    pipeline_run_id: stages, MLflow parent run and resume state are attached to it; defaults to this
    Prefect flow run's id, which `prefect flow-run retry` keeps.
    until: stop after this stage (e.g. "index" to only prepare retrieval).
    """
    if until not in STAGES:
        raise ValueError(f"until={until!r}: expected one of {', '.join(STAGES)}")
    cfg = prepare(config, overrides or [])  # a bad config fails here, before any stage runs
    logger = get_run_logger()
    run_id = pipeline_run_id or str(flow_run.id or "local")
    tracker = PipelineTracker(cfg.run.artifacts_dir, cfg.run.experiment, run_id)
    cfg_json = cfg.model_dump(mode="json")
    parent = tracker.open(cfg_json, digest(cfg_json), flow_run_id=str(flow_run.id) if flow_run.id else None,
                          flow_run_url=flow_run.ui_url)
    ctx = PipelineContext(cfg, tracker, cfg.run.artifacts_dir / "runs" / run_id)
    logger.info("pipeline run %s (MLflow parent run %s), artifacts in %s", run_id, parent.run_id,
                cfg.run.artifacts_dir)
    done: dict = {}

    def finished(name: str, output) -> bool:
        done[name] = output
        return name == until

    try:
        if finished("corpus", corpus_task(ctx)) or finished("questions", questions_task(ctx)):
            return _paths(done, parent)
        if finished("index", index_task(ctx, done["corpus"])):
            return _paths(done, parent)
        if finished("train-data", train_data_task(ctx, done["questions"])):
            return _paths(done, parent)
        policy = resolve_policy(cfg.policy, cfg.run.artifacts_dir)
        start = None
        if cfg.training.warm_start.enabled:
            start = warm_start_task(ctx, policy, done["questions"], done["index"])
            done["warm-start"] = start
        if until == "warm-start" or finished("train", train_task(ctx, policy, done["train-data"], done["index"],
                                                                 start)):
            return _paths(done, parent)
        if finished("evaluate", evaluate_task(ctx, policy, done["questions"], done["index"], done["train"])):
            return _paths(done, parent)
        if finished("reflection", reflection_task(ctx, done["evaluate"], done["train"])):
            return _paths(done, parent)
        report = report_task(ctx, dict(done))
        done["report"] = report
        print(f"Report: {report.path / 'report.html'}")
        return _paths(done, parent)
    except BaseException:
        parent.end("FAILED")
        raise


def _paths(done: dict, parent) -> dict[str, str]:
    parent.end("FINISHED")
    return {name: str(out.path) for name, out in done.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the reproduce-search-r1 flow locally.")
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--run-id", default=None, help="pipeline run id to resume (default: a new one)")
    ap.add_argument("--until", default="report", choices=STAGES)
    ap.add_argument("overrides", nargs="*", help="key.sub=value")
    args = ap.parse_args(argv)
    from searchr1.config import ConfigError
    from searchr1.corpus.jsonl import DataError
    from searchr1.models import ModelNotFoundError

    try:
        prepare(args.config, args.overrides)  # refuse a bad config with one clear message, before Prefect starts
        result = reproduce(config=args.config, overrides=args.overrides, pipeline_run_id=args.run_id,
                           until=args.until)
    except (ConfigError, DataError, ModelNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in result.items():
        print(f"{name:>11}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
