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
from typing import Any

from prefect import get_run_logger
from prefect.states import Completed, State

from searchr1 import faults
from searchr1.config import PipelineConfig
from searchr1.schema import flatten
from searchr1.stage_cache import StageDir, StageOutput, source_digest, stage_key
from searchr1.summaries import StageSummary
from searchr1.tracking import PipelineTracker, StageRun

# Embedder settings that change how fast vectors are made, never which: in no cache key, so tuning
# throughput on a new machine does not rebuild an index that took hours.
EMBEDDER_THROUGHPUT = frozenset({"batch_size", "num_threads", "devices", "num_workers"})
# Index settings that shape the build's checks or what stays on disk, not what a search returns.
INDEX_NOT_SEARCH = frozenset({"recall_probe_queries", "keep_embeddings", "prebuilt_check_rows"})


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


def embedder_key(cfg: PipelineConfig) -> dict[str, Any]:
    """The embedder settings that decide the vectors (of passages at build time, of queries at search time)."""
    return cfg.retrieval.embedder.model_dump(mode="json", exclude=EMBEDDER_THROUGHPUT)


def searcher_key(cfg: PipelineConfig, *, server: bool = False) -> dict[str, Any]:
    """What a stage that searches the index depends on beyond the index's own key (an upstream key).

    server: the stage queries our retrieval server (verl training); its host and port only locate it.
    """
    out = {"embedder": embedder_key(cfg),
           "index": cfg.retrieval.index.model_dump(mode="json", exclude=INDEX_NOT_SEARCH)}
    if server:
        out["server"] = cfg.retrieval.server.model_dump(mode="json", exclude={"host", "port"})
    return out


def location_free(ctx: PipelineContext, path: Path | str) -> str:
    """A model path as a cache key holds it: relative to the artifacts folder when it lies inside, so a
    moved or copied artifacts folder keeps every key (the folders under it carry their own digests);
    a hub id or a path outside stays as given."""
    p = Path(path)
    if p.exists():
        try:
            return p.resolve().relative_to(Path(ctx.root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def run_stage(ctx: PipelineContext, stage: str, *, config_paths: Sequence[str],
              upstream: Iterable[StageOutput], build: Callable[[Path, StageRun], StageSummary],
              resumable: bool = False, extra_key: Mapping[str, Any] | None = None) -> StageOutput | State:
    """Return the finished output of `stage`, building it only if no complete copy exists (a reused
    output comes wrapped in a `Cached` state: see _reuse).

    The key covers the config slice (`config_paths` + `extra_key`: only values that change the
    output), the upstream keys, and the source of every first-party module that the module defining
    `build` can import. Runs of the same key take turns: a second one waits for the first to publish,
    then reuses its output.
    """
    logger = get_run_logger()
    upstream = list(upstream)
    cfg_slice = {**ctx.cfg.slice(*config_paths), **(extra_key or {})}
    key = stage_key(stage, cfg_slice, {u.stage: u.key for u in upstream}, source_digest([build.__module__]))
    sd = StageDir(ctx.root, stage, key)
    if sd.is_complete():
        return _reuse(ctx, sd, logger, {})
    waited: list[float] = []

    def waiting() -> None:
        waited.append(time.monotonic())
        logger.info("%s: another run is building %s; waiting for it", stage, key)

    with sd.lock(on_wait=waiting):
        note = {"waited_s": round(time.monotonic() - waited[0], 2)} if waited else {}  # for the ledger
        if sd.is_complete():  # the run we waited for published it
            return _reuse(ctx, sd, logger, note)
        return _build(ctx, sd, cfg_slice, upstream, build, resumable, logger, note)


def _reuse(ctx: PipelineContext, sd: StageDir, logger, note: Mapping[str, Any]) -> State:
    """The stored output as Prefect's Completed state named "Cached": the task returning it shows as
    Cached in the UI, and its caller still receives the StageOutput."""
    out = sd.load()
    logger.info("%s: cached (%s), skipping", sd.stage, sd.final)
    _ledger(ctx, {"stage": sd.stage, "key": sd.key, "status": "cached", **note})
    ctx.tracker.parent.set_tags({f"stage.{sd.stage}.key": sd.key, f"stage.{sd.stage}.status": "cached"})
    return Completed(data=out, name="Cached", message=f"reused {sd.final}")


def _build(ctx: PipelineContext, sd: StageDir, cfg_slice: Mapping[str, Any], upstream: list[StageOutput],
           build: Callable[[Path, StageRun], StageSummary], resumable: bool, logger,
           note: Mapping[str, Any]) -> StageOutput:
    stage, key = sd.stage, sd.key
    tags = {f"stage.{stage}.key": key}
    run = ctx.tracker.stage(stage, key)
    run.log_params({f"config.{k}": json.dumps(v, sort_keys=True, default=str)[:5000] for k, v in cfg_slice.items()})
    run.set_tags({f"upstream.{u.stage}": u.key for u in upstream})
    logger.info("%s: building %s (resumable=%s)", stage, sd.work, resumable)
    _ledger(ctx, {"stage": stage, "key": key, "status": "started", **note})  # a SIGKILL leaves only this line
    t0 = time.time()
    try:
        with sd.building(resumable=resumable) as work:
            typed = build(work, run)
            if not isinstance(typed, StageSummary) or typed.STAGE != stage:
                raise TypeError(f"{stage}: build returned {type(typed).__name__}; expected the "
                                f"{stage!r} summary type from searchr1.summaries")
            summary = typed.to_json()
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
