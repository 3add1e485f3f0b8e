"""The shell every stage task shares: cache key, cache hit, MLflow child run, atomic publish.

The stage directory under artifacts/cache/ is the source of truth for "finished": Prefect's own
result cache would report a hit even after someone deleted the artifacts it points to, so tasks
run with `cache_policy=NONE` and this module decides, from the disk, what to skip.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect import get_run_logger

from searchr1 import faults
from searchr1.cache import StageDir, StageOutput, source_digest, stage_key
from searchr1.config import PipelineConfig, flatten
from searchr1.tracking import PipelineTracker, StageRun


@dataclass
class PipelineContext:
    cfg: PipelineConfig
    tracker: PipelineTracker
    run_dir: Path  # artifacts/runs/<pipeline_run_id>/

    @property
    def root(self) -> Path:
        return self.cfg.run.artifacts_dir


def _ledger(ctx: PipelineContext, record: Mapping[str, Any]) -> None:
    """One line per stage attempt in runs/<id>/stages.jsonl: what ran, what was reused, how long."""
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.run_dir / "stages.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": time.time(), "pid": os.getpid(), **record}) + "\n")


def run_stage(ctx: PipelineContext, stage: str, *, config_paths: Sequence[str],
              upstream: Iterable[StageOutput], sources: Iterable[ModuleType | str],
              build: Callable[[Path, StageRun], dict[str, Any]], resumable: bool = False,
              extra_key: Mapping[str, Any] | None = None) -> StageOutput:
    """Return the finished output of `stage`, building it only if no complete copy exists."""
    logger = get_run_logger()
    upstream = list(upstream)
    cfg_slice = {**ctx.cfg.slice(*config_paths), **(extra_key or {})}
    key = stage_key(stage, cfg_slice, {u.stage: u.key for u in upstream}, source_digest(sources))
    sd = StageDir(ctx.root, stage, key)
    tags = {f"stage.{stage}.key": key}
    if sd.is_complete():
        out = sd.load()
        logger.info("%s: cached (%s), skipping", stage, sd.final)
        _ledger(ctx, {"stage": stage, "key": key, "status": "cached"})
        ctx.tracker.parent.set_tags({**tags, f"stage.{stage}.status": "cached"})
        return out

    run = ctx.tracker.stage(stage, key)
    run.log_params({f"config.{k}": json.dumps(v, sort_keys=True, default=str)[:5000] for k, v in cfg_slice.items()})
    run.set_tags({f"upstream.{u.stage}": u.key for u in upstream})
    logger.info("%s: building %s (resumable=%s)", stage, sd.work, resumable)
    _ledger(ctx, {"stage": stage, "key": key, "status": "started"})  # a SIGKILL leaves only this line
    t0 = time.time()
    try:
        with sd.building(resumable=resumable) as work:
            summary = build(work, run)
            faults.point(f"{stage}.before_publish")
            out = sd.publish(summary, {"config": cfg_slice, "upstream": [u.ref for u in upstream]})
    except BaseException as exc:
        _ledger(ctx, {"stage": stage, "key": key, "status": "failed", "error": repr(exc)[:500],
                      "seconds": time.time() - t0})
        run.end("FAILED")
        raise
    seconds = time.time() - t0
    run.log_metrics({f"{stage}/seconds": seconds, **_numbers(summary, stage)})
    run.log_dict(summary, "summary.json")
    run.end("FINISHED")
    _ledger(ctx, {"stage": stage, "key": key, "status": "ran", "seconds": seconds})
    ctx.tracker.parent.set_tags({**tags, f"stage.{stage}.status": "ran"})
    logger.info("%s: done in %.1fs -> %s", stage, seconds, out.path)
    return out


def _numbers(summary: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of a summary, for MLflow metrics."""
    return {f"{prefix}/{k.replace('.', '/')}": float(v) for k, v in flatten(summary).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
