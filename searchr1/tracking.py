"""MLflow tracking: one parent run per pipeline run, one child run per stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping

# Library code reports metrics through this callable and never needs to know about MLflow runs:
# log_metrics({"reward/mean": 0.4}, step)
MetricsLogger = Callable[[Mapping[str, float], "int | None"], None]


def null_logger(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Default when no tracking is wanted (tests, ad-hoc runs)."""
