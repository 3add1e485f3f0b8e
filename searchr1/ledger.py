"""The stage ledger every pipeline run appends to (`tasks/_stage.py` writes it): artifacts/runs/<id>/stages.jsonl,
one JSON object a line — stage, key, status (started, ran, cached, failed), time, seconds. Read here, by every
tool that looks back at a run (report lookup, fault injection, the flow's stage table, GRPO streams)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LEDGER = "stages.jsonl"


def ledger_path(artifacts: Path | str, run_id: str) -> Path:
    return Path(artifacts) / "runs" / run_id / LEDGER


def read_ledger(path: Path | str) -> list[dict[str, Any]]:
    """The ledger's records in the order written; [] when the run has none yet. A line that is not JSON is named."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: expected one JSON object a line ({e})") from None
    return rows
