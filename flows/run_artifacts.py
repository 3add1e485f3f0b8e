"""What a flow run shows in Prefect besides its log: links to its MLflow parent run and its report, and
a table of its stages (status and time), read from the stage ledger (artifacts/runs/<id>/stages.jsonl)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_table_artifact

from searchr1.ledger import LEDGER, read_ledger


def stage_rows(ledger: Sequence[dict[str, Any]], stages: Sequence[str], since: float = 0.0) -> list[dict[str, Any]]:
    """One row per stage, in DAG order: its last status in this pipeline run, the seconds it took, and how
    many attempts this flow run (records after `since`) and the pipeline run as a whole made."""
    rows = []
    for stage in stages:
        recs = [r for r in ledger if r.get("stage") == stage]
        if not recs:
            continue
        ends = [r for r in recs if r["status"] != "started"]
        last = recs[-1]
        # a "started" record with nothing after it: the process building it died (SIGKILL, OOM)
        status = last["status"] if last["status"] != "started" else "interrupted"
        if last["status"] == "started" and last["time"] >= since:
            status = "running"
        ran = [r for r in ends if r["status"] == "ran"]
        rows.append({
            "stage": stage,
            "status": status,
            "seconds": round(ran[-1]["seconds"], 1) if status == "ran" and ran else
            (round(last.get("seconds", 0.0), 1) if status == "failed" else 0.0),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"])),
            "attempts_this_flow_run": sum(1 for r in recs if r["time"] >= since and r["status"] != "started"),
            "attempts_total": len(ends),
            "key": last.get("key", "")[:12],
            "error": last.get("error", "")[:200] if status == "failed" else "",
        })
    return rows


def stage_times_text(rows: Sequence[dict[str, Any]], wall_seconds: float) -> str:
    """The run's stages as a console table (what `make run` prints last): status, seconds, share of the wall."""
    lines = [f"{'stage':>11}  {'status':<11} {'seconds':>8}  share"]
    for r in rows:
        share = f"{100 * r['seconds'] / wall_seconds:4.0f}%" if wall_seconds > 0 and r["seconds"] else ""
        lines.append(f"{r['stage']:>11}  {r['status']:<11} {r['seconds']:8.1f}  {share}")
    lines.append(f"{'wall':>11}  {'':<11} {wall_seconds:8.1f}  (this flow run, Prefect and MLflow included)")
    return "\n".join(lines)


def publish(run_dir: Path, stages: Sequence[str], since: float, mlflow_url: str | None,
            report: Path | None, label: str) -> None:
    """Link artifacts (MLflow parent run, report) and the stage table of this flow run."""
    if mlflow_url:
        create_link_artifact(mlflow_url, link_text=f"MLflow parent run {label}", key="mlflow-run",
                             description="Parameters, metrics and artifacts of this pipeline run, one child "
                                         "run per stage built (start the UI with `make mlflow-ui`)")
    if report is not None and report.is_file():
        create_link_artifact(report.resolve().as_uri(), link_text=str(report), key="report-file",
                             description="The run report (self-contained HTML); `searchr1 report open` prints it")
    rows = stage_rows(read_ledger(Path(run_dir) / LEDGER), stages, since)
    if rows:
        create_table_artifact(rows, key="stages", description=f"Stages of {label}: status and seconds "
                              f"(cached = reused from an earlier run; from {Path(run_dir) / LEDGER})")
