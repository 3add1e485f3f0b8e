"""MLflow tracking: one parent run per pipeline run id, one child run per stage.

Everything goes through an explicit `MlflowClient` and run ids rather than MLflow's fluent
"active run" stack, which is thread-local and would break under Prefect's task threads. A stage's
child run is found again by (stage, cache key) when a failed pipeline is resumed, so a training
run that restarts from a checkpoint continues the same metric series; each attempt bumps a tag.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from searchr1.cache import atomic_file

# Library code reports metrics through this callable and never needs to know about MLflow runs:
# log_metrics({"reward/mean": 0.4}, step)
MetricsLogger = Callable[[Mapping[str, float], "int | None"], None]

PIPELINE_TAG = "searchr1.pipeline_run_id"
STAGE_TAG = "searchr1.stage"
KEY_TAG = "searchr1.stage_key"
FLOW_RUNS_TAG = "prefect.flow_run_ids"
_MAX_PARAM_CHARS = 6000
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential")


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Never send a credential to the tracking store, whatever config key carries it."""
    return {k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in params.items()}


def null_logger(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Default when no tracking is wanted (tests, ad-hoc runs)."""


class TrackingError(RuntimeError):
    pass


def tracking_uri(artifacts_dir: Path) -> str:
    return f"sqlite:///{Path(artifacts_dir).resolve() / 'mlflow.db'}"


def _client(artifacts_dir: Path):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    Path(artifacts_dir).mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(artifacts_dir))


def experiment_id(client, name: str, artifacts_dir: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (Path(artifacts_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def _quote(value: str) -> str:
    return value.replace("'", "")


class StageRun:
    """A child run; callable as a MetricsLogger."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def __call__(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_metrics(metrics, step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(batch), 900):  # MLflow caps a batch at 1000 entries
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k[:250], str(v)[:_MAX_PARAM_CHARS]) for k, v in redact(params).items()]
        for i in range(0, len(batch), 90):  # MLflow caps params per batch at 100
            self.client.log_batch(self.run_id, params=batch[i:i + 90])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
            self.client.log_artifact(self.run_id, str(p))

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    @property
    def url_path(self) -> str:
        run = self.client.get_run(self.run_id)
        return f"#/experiments/{run.info.experiment_id}/runs/{self.run_id}"


class PipelineTracker:
    """The parent run of one pipeline run id; re-attached when that id is resumed."""

    def __init__(self, artifacts_dir: Path, experiment: str, pipeline_run_id: str):
        self.client = _client(artifacts_dir)
        self.experiment_id = experiment_id(self.client, experiment, artifacts_dir)
        self.pipeline_run_id = pipeline_run_id
        self.parent: StageRun | None = None

    def _find(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=500)

    def open(self, config: Mapping[str, Any], config_digest: str, flow_run_id: str | None = None,
             flow_run_url: str | None = None) -> StageRun:
        found = [r for r in self._find(f"tags.`{PIPELINE_TAG}` = '{_quote(self.pipeline_run_id)}'")
                 if r.data.tags.get("mlflow.parentRunId") is None]
        if found:
            run = found[0]
            old = run.data.tags.get("searchr1.config_digest")
            if old and old != config_digest:
                raise TrackingError(
                    f"pipeline run id {self.pipeline_run_id!r} was started with a different config "
                    f"(digest {old} vs {config_digest}); resume it with the same config or use a new id")
            self.parent = StageRun(self.client, run.info.run_id)
            self.client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.pipeline_run_id,
                                         tags={PIPELINE_TAG: self.pipeline_run_id,
                                               "searchr1.config_digest": config_digest})
            self.parent = StageRun(self.client, run.info.run_id)
            from searchr1.config import flatten

            self.parent.log_params(flatten(config))
            self.parent.log_dict(config, "config.json")
        if flow_run_id:
            ids = self.client.get_run(self.parent.run_id).data.tags.get(FLOW_RUNS_TAG, "")
            ids = [i for i in ids.split(",") if i]
            if flow_run_id not in ids:
                ids.append(flow_run_id)
            self.parent.set_tags({FLOW_RUNS_TAG: ",".join(ids), "prefect.flow_run_id": flow_run_id})
        if flow_run_url:
            self.parent.set_tags({"prefect.flow_run_url": flow_run_url})
        return self.parent

    def stage(self, stage: str, key: str) -> StageRun:
        """The child run for (stage, key): re-opened on a retry, created the first time."""
        assert self.parent is not None, "open() the pipeline run first"
        found = self._find(f"tags.`mlflow.parentRunId` = '{self.parent.run_id}' and "
                           f"tags.`{STAGE_TAG}` = '{stage}' and tags.`{KEY_TAG}` = '{key}'")
        if found:
            run = found[0]
            attempts = int(run.data.tags.get("searchr1.attempts", "1")) + 1
            self.client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=stage,
                                         tags={"mlflow.parentRunId": self.parent.run_id, STAGE_TAG: stage,
                                               KEY_TAG: key, PIPELINE_TAG: self.pipeline_run_id})
            attempts = 1
        child = StageRun(self.client, run.info.run_id)
        child.set_tags({"searchr1.attempts": attempts})
        return child

    def child_runs(self) -> list:
        assert self.parent is not None
        return self._find(f"tags.`mlflow.parentRunId` = '{self.parent.run_id}'")


COMMITTED_FILE = "metrics.jsonl"  # in a training stage's folder: one row per checkpointed step


def read_jsonl_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def committed_metrics(work_dir: Path) -> list[dict]:
    """The metric rows a training run committed (those its checkpoints cover), oldest first."""
    return read_jsonl_rows(Path(work_dir) / COMMITTED_FILE)


class CommittedMetrics:
    """A MetricsLogger that forwards a step's metrics only once a checkpoint covers that step.

    A resumed training run restarts from its last complete checkpoint and recomputes the steps after
    it; forwarding them immediately would put two values for one step into MLflow. Pending steps
    wait in `pending` (a jsonl file in the stage's work dir); on resume the uncommitted ones are
    dropped, and `finish()` forwards the rest when training has completed. Committed steps are also
    appended to `committed` (the series the report plots).
    """

    def __init__(self, sink: MetricsLogger, work_dir: Path, committed_step: Callable[[], int]):
        self.sink, self.committed_step = sink, committed_step
        self.pending, self.committed = Path(work_dir) / "metrics.pending.jsonl", Path(work_dir) / COMMITTED_FILE
        self._rows = read_jsonl_rows(self.pending)
        done = self.committed_step()
        self._rows = [r for r in self._rows if r["step"] <= done]  # computed by an attempt that did not commit
        self._flush(done)

    def __call__(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._rows.append({"step": int(step or 0), **{k: float(v) for k, v in metrics.items()}})
        self._flush(self.committed_step())

    def finish(self) -> None:
        self._flush(float("inf"))

    def _flush(self, upto: float) -> None:
        ready = [r for r in self._rows if r["step"] <= upto]
        if ready:
            with self.committed.open("a", encoding="utf-8") as fh:
                for r in ready:
                    self.sink({k: v for k, v in r.items() if k != "step"}, r["step"])
                    fh.write(json.dumps(r) + "\n")
        self._rows = [r for r in self._rows if r["step"] > upto]
        with atomic_file(self.pending) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self._rows))
