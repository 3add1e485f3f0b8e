"""Pick the GRPO engine from the config: TRL in-process on CPU, or verl on GPUs behind our retrieval server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from searchr1.config import PipelineConfig
from searchr1.tracking import MetricsLogger, null_logger


def train(init_path: Path | str, train_data_dir: Path, index_dir: Path, cfg: PipelineConfig, work_dir: Path,
          log_metrics: MetricsLogger = null_logger) -> dict[str, Any]:
    """Train from `init_path`; checkpoints land in work_dir/checkpoints/ and a rerun resumes from the last one."""
    if cfg.training.engine == "trl":
        from searchr1.retrieval.searcher import load_searcher
        from searchr1.training.grpo import train_grpo

        # In-process search: no HTTP hop per tool call on a 2-core machine.
        return train_grpo(init_path, train_data_dir, load_searcher(index_dir, cfg.retrieval), cfg, work_dir,
                          log_metrics=log_metrics)

    from searchr1.retrieval.server import running_server
    from searchr1.training.verl_launch import launch_verl, render_verl

    # verl's search tool speaks Search-R1's HTTP API, so it gets the real server for the whole run.
    with running_server(index_dir, cfg.retrieval, port=cfg.retrieval.server.port) as url:
        plan = render_verl(cfg, train_data_dir, url, work_dir)
        return launch_verl(plan, log_metrics)
