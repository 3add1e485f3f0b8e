"""The per-step retrieval guard, in the one place verl 0.9.1 hands a whole step's trajectories to user code.

verl's loops turn a tool exception into the tool's text and train on; a run whose retriever is down
would train for a day without retrieval. The agent loop cannot stop it (it sees one trajectory, and an
exception there only marks the prompt group failed, which the sync trainer pads and trains on), the
reward function sees one sample, and verl's trainer has no per-step hook for user code. The replay
buffer does: the V1 trainer samples each step's batch from it (`trainer.v1.sampler.custom_sampler`),
before any log-prob, advantage or update is computed. This subclass reads the step's per-trajectory
counts (`search_calls`, `search_errors`, written by our agent loop), returns them as metrics (verl
logs them with the step: `search/calls`, `search/failed_calls`, `search/failed_share`,
`search/calls_per_rollout`) and raises `ToolFailureError` when the failed share passes
`max_tool_error_rate` (`trainer.v1.sampler.sampler_kwargs`): the step is not trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import transfer_queue as tq
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from searchr1.training.search_tool import ToolStats, check_tool_failures
from searchr1.training.verl_plugins.agent_loop import SEARCH_CALLS, SEARCH_ERRORS

BOUND_KEY = "max_tool_error_rate"


def search_step_stats(extra_fields: Iterable[Mapping[str, Any] | None]) -> tuple[ToolStats, int]:
    """(the step's search calls and failures, number of rollouts) from the trajectories' extra fields."""
    stats, rollouts = ToolStats(), 0
    for fields in extra_fields:
        rollouts += 1
        fields = fields or {}
        stats.calls += int(fields.get(SEARCH_CALLS) or 0)
        stats.errors += int(fields.get(SEARCH_ERRORS) or 0)
    return stats, rollouts


def search_metrics(stats: ToolStats, rollouts: int, prefix: str = "search") -> dict[str, float]:
    return {f"{prefix}/calls": float(stats.calls), f"{prefix}/failed_calls": float(stats.errors),
            f"{prefix}/failed_share": stats.error_rate,
            f"{prefix}/calls_per_rollout": stats.calls / rollouts if rollouts else 0.0}


class SearchCheckedReplayBuffer(ReplayBuffer):
    """verl's sync replay buffer, plus the search-failure guard on every sampled batch."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        kw = dict(self.sampler_kwargs or {})
        if BOUND_KEY not in kw:
            raise ValueError(f"trainer.v1.sampler.sampler_kwargs.{BOUND_KEY} is not set: rendered by "
                             f"searchr1.training.verl_launch from training.grpo.max_tool_error_rate")
        self.max_tool_error_rate = float(kw[BOUND_KEY])

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[Any, dict]:
        batch, metrics = super().sample(global_steps=global_steps, partition_id=partition_id, batch_size=batch_size)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        stats, rollouts = search_step_stats(data.pop("extra_fields").tolist())
        prefix = "search" if partition_id == "train" else f"{partition_id}/search"
        metrics = {**metrics, **search_metrics(stats, rollouts, prefix)}
        if stats.calls and stats.error_rate > self.max_tool_error_rate:
            _log_to_active_mlflow_run(metrics, global_steps)  # the trainer never logs this step
        check_tool_failures(stats, self.max_tool_error_rate, global_steps)
        return batch, metrics


def _log_to_active_mlflow_run(metrics: Mapping[str, float], step: int) -> None:
    """verl's mlflow logger runs in this process (the trainer's): put the failing step's counts in its run."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics(dict(metrics), step=step)
