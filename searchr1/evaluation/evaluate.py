"""The evaluation stage: every checkpoint × every method × every benchmark, resumable.

Each finished (checkpoint, method, benchmark) is one parquet file of whole rollouts under
`out_dir/rollouts/<checkpoint>/<method>__<benchmark>.parquet`, written atomically; a rerun skips
the files already there, so a killed evaluation loses at most the (checkpoint, method) it was
generating (its suites run as one batch).
The results are rebuilt from those files at the end, in long form:
(checkpoint, step, method, benchmark, metric, value, n), with "average" as a macro average over
benchmarks (each benchmark counts once, as the paper averages its seven).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from searchr1 import faults
from searchr1.agent.generators import Generator, can_swap, close_generator, make_generator, return_freed_memory
from searchr1.agent.rollout import run_agent, run_baseline, summarize_rows
from searchr1.agent.trace import ROLLOUT_SCHEMA, Question, write_rollouts
from searchr1.evaluation.config import scored_count
from searchr1.io import atomic_file
from searchr1.retrieval.base import Searcher
from searchr1.schema import AGENT, AVERAGE, BASE_CHECKPOINT
from searchr1.tracking import MetricsLogger, null_logger

if TYPE_CHECKING:
    from searchr1.config import PipelineConfig

METRICS = ("em", "f1", "contains", "mean_turns", "search_calls", "invalid_call_rate", "format_failure_rate")


def checkpoint_name(step: int) -> str:
    return BASE_CHECKPOINT if step == 0 else f"step-{step:06d}"


def scored_checkpoints(checkpoints: Sequence[tuple[int, Path | str]], choice: str | int
                       ) -> list[tuple[int, Path | str]]:
    """`evaluation.checkpoints` applied to a run's (step, path) checkpoints: all of them, the last, or the last N."""
    ordered = sorted(checkpoints, key=lambda c: c[0])
    return ordered[len(ordered) - scored_count(len(ordered), choice):]


def rollout_path(out_dir: Path, checkpoint: str, method: str, benchmark: str) -> Path:
    return Path(out_dir) / "rollouts" / checkpoint / f"{method}__{benchmark}.parquet"


def methods_of(cfg: PipelineConfig) -> list[str]:
    return [AGENT, *cfg.evaluation.baselines]


def run_method(method: str, questions: Sequence[Question], generator: Generator, searcher: Searcher,
               cfg: PipelineConfig, *, progress: bool = True, desc: str = "") -> list:
    if method == AGENT:
        return run_agent(questions, generator, searcher, cfg.agent, progress=progress, desc=desc or AGENT)
    return run_baseline(method, questions, generator, searcher, cfg.agent, progress=progress)


def baselines_here(name: str, step: int, init: tuple[str, Path | str] | None, where: str) -> bool:
    """Whether the baselines run on this model under `evaluation.baselines_at`."""
    if where == "all":
        return True
    if step != 0:
        return False
    return where == "base" or init is None or name == init[0]


def _validate(checkpoints: Sequence[tuple[int, Path | str]], questions: Mapping[str, Sequence[Question]]) -> None:
    steps = [s for s, _ in checkpoints]
    if len(set(steps)) != len(steps):
        raise ValueError(f"evaluate_checkpoints: duplicate training steps in {steps}")
    for bench, qs in questions.items():
        if "__" in bench or "/" in bench:
            raise ValueError(f"benchmark name {bench!r}: must not contain '__' or '/' (used in file names)")
        for i, q in enumerate(qs):
            missing = [k for k in ("question", "golden_answers") if k not in q]
            if missing:
                raise ValueError(f"benchmark {bench!r}, question #{i} (id {q.get('id')!r}): missing {missing}")


def results_rows(rollout_tables: Mapping[tuple[str, int, str, str], list[dict]]) -> list[dict[str, Any]]:
    """Long-form rows from {(checkpoint, step, method, benchmark): rollout rows}, averages included."""
    out: list[dict[str, Any]] = []
    per_group: dict[tuple[str, int, str], list[tuple[dict[str, float], int]]] = {}
    for (ckpt, step, method, bench), rows in sorted(rollout_tables.items(), key=lambda kv: (kv[0][1], kv[0][2:])):
        summary = summarize_rows(rows)
        n = len(rows)
        per_group.setdefault((ckpt, step, method), []).append((summary, n))
        out += [{"checkpoint": ckpt, "step": step, "method": method, "benchmark": bench, "metric": m,
                 "value": float(summary.get(m, 0.0)), "n": n} for m in METRICS]
    for (ckpt, step, method), items in per_group.items():
        items = [(s, n) for s, n in items if n > 0]
        if not items:
            continue
        total = sum(n for _, n in items)
        out += [{"checkpoint": ckpt, "step": step, "method": method, "benchmark": AVERAGE, "metric": m,
                 "value": sum(s[m] for s, _ in items) / len(items), "n": total} for m in METRICS]
    return out


def _write_parquet_atomic(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["checkpoint", "step", "method", "benchmark", "metric", "value", "n"])
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)


def evaluate_checkpoints(checkpoints: list[tuple[int, Path | str]], questions: Mapping[str, Sequence[Question]],
                         searcher: Searcher, cfg: PipelineConfig, out_dir: Path,
                         log_metrics: MetricsLogger = null_logger, progress: bool = True,
                         init: tuple[str, Path | str] | None = None) -> dict[str, Any]:
    """Score every (training step, HF folder) checkpoint with the search agent and the baselines.

    `init` = (label, folder): the policy RL started from when it is not the base model (the warm-started
    policy), scored at step 0 beside the base so that the RL gain is measured against it; the
    baselines run on every step-0 model, so with a warm start they show what retrieval alone gives.
    `cfg` is the PipelineConfig (agent, policy and evaluation sections are used).
    Returns {"results": path, "checkpoints": [...], "computed": n, "skipped": n,
             "search_agent_average_em": {step: em}}.
    """
    out_dir = Path(out_dir)
    _validate(checkpoints, questions)
    methods = methods_of(cfg)
    computed = skipped = 0
    tables: dict[tuple[str, int, str, str], list[dict]] = {}
    models = [(checkpoint_name(step), step, path) for step, path in sorted(checkpoints, key=lambda c: c[0])]
    if init is not None:
        if init[0] in {m[0] for m in models}:
            raise ValueError(f"evaluate_checkpoints: init label {init[0]!r} collides with a checkpoint name")
        models.insert(sum(step == 0 for _, step, _ in models), (init[0], 0, init[1]))
    generator: Generator | None = None
    loaded: Path | str | None = None  # the policy the generator holds
    try:
        for name, step, path in models:
            at_step = methods if baselines_here(name, step, init, cfg.evaluation.baselines_at) else [AGENT]
            for method in at_step:
                todo = {bench: qs for bench, qs in questions.items()
                        if not rollout_path(out_dir, name, method, bench).is_file()}
                skipped += len(questions) - len(todo)
                if todo:
                    if loaded != path:  # load the model only when something is left to do
                        if can_swap(generator, path):
                            generator.load_weights(path)  # type: ignore[union-attr]
                        else:
                            close_generator(generator)
                            generator = None
                            gc.collect()  # the last model is freed before the next one loads
                            return_freed_memory()  # the trainers' freed heap: an engine opens 8x slower over it
                            generator = make_generator(path, cfg.agent, cfg.policy, greedy=True)
                        loaded = path
                    # every suite left in one call: a batch of 256 rows keeps vLLM's continuous batching busy
                    # where four batches of 64 each wait for their slowest row (resume is still per file)
                    pooled = [q for qs in todo.values() for q in qs]
                    rollouts = run_method(method, pooled, generator, searcher, cfg, progress=progress,
                                          desc=f"{name} {method} ({len(todo)} suites)")
                    lo = 0
                    for bench, qs in todo.items():
                        part, lo = rollouts[lo:lo + len(qs)], lo + len(qs)
                        write_rollouts([r.to_row(name, step, method, bench) for r in part],
                                       rollout_path(out_dir, name, method, bench))
                        computed += 1
                        faults.point("evaluate.after_pair")
                for bench in questions:
                    target = rollout_path(out_dir, name, method, bench)
                    tables[(name, step, method, bench)] = pq.read_table(target, schema=ROLLOUT_SCHEMA).to_pylist()
    finally:
        # one engine for every checkpoint (vLLM swaps the weights in place); closed on an error too, so that a
        # retry in this process can open the next in-process engine
        close_generator(generator)
        del generator
        gc.collect()
    rows = results_rows(tables)
    for name, step, _ in models:  # MLflow series are per step: the init model's go under its own prefix
        prefix = "eval" if name == checkpoint_name(step) else f"eval-{name}"
        metrics = {f"{prefix}/{r['method']}/{r['benchmark']}/{r['metric']}": r["value"] for r in rows
                   if r["checkpoint"] == name}
        log_metrics(metrics, step)
    results = out_dir / "results.parquet"
    _write_parquet_atomic(rows, results)
    agent_em = {r["step"]: r["value"] for r in rows  # base and trained checkpoints (the init is not a step)
                if r["method"] == AGENT and r["benchmark"] == AVERAGE and r["metric"] == "em"
                and r["checkpoint"] == checkpoint_name(r["step"])}
    return {"results": str(results), "checkpoints": [name for name, _, _ in models],
            "methods": methods, "benchmarks": list(questions), "computed": computed, "skipped": skipped,
            "search_agent_average_em": agent_em}
