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

from searchr1.io import atomic_file, file_lock
from searchr1.schema import AGENT, AVERAGE, flatten

# Library code reports metrics through this callable and never needs to know about MLflow runs:
# log_metrics({"reward/mean": 0.4}, step)
MetricsLogger = Callable[[Mapping[str, float], "int | None"], None]

PIPELINE_TAG = "searchr1.pipeline_run_id"
STAGE_TAG = "searchr1.stage"
KEY_TAG = "searchr1.stage_key"
FLOW_RUNS_TAG = "prefect.flow_run_ids"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
# Older MLflow 3 UIs read this tag to open an experiment on its runs table; 3.17's UI decides from its
# `workflowType` (URL parameter, then browser storage), which the links below set.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_ENV = "SEARCHR1_MLFLOW_UI"
# A view of the runs table that the UI loads from an experiment tag when a link names its key (what its
# "Share" button writes): the headline metric columns, readable, newest runs first. (Which rows are
# expanded is not part of a shared view: a parent run's stage runs open with its + button.)
VIEW_KEY = "searchr1-headline"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
_VIEW_FIRST_COLUMNS = ("attributes.`Run Name`", "runDateAndNestInfo", "duration")  # the table's own column ids
EMPTY_VIEW = json.dumps({"orderByKey": "attributes.start_time", "orderByAsc": False, "selectedColumns": []})
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


def ui_url() -> str:
    """Where people browse MLflow (`make mlflow-ui`): $SEARCHR1_MLFLOW_UI, else 127.0.0.1:$MLFLOW_PORT (5000)."""
    url = os.environ.get(UI_ENV) or f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT') or 5000}"
    return url.rstrip("/")


def experiment_url(experiment_id: str) -> str:
    """The experiment's runs table, in the saved view that shows the headline metrics (3.17's UI opens a new
    experiment on its GenAI overview otherwise, and its runs table shows no metric column by default)."""
    return (f"{ui_url()}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_url()}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def short_id(pipeline_run_id: str) -> str:
    """A flow-run UUID shortened to its first 8 hex digits; a chosen id (`--run-id nightly`) is kept whole."""
    head, _, rest = pipeline_run_id.partition("-")
    is_uuid = len(pipeline_run_id) == 36 and len(head) == 8 and all(c in "0123456789abcdef-" for c in pipeline_run_id)
    return head if is_uuid and rest else pipeline_run_id


def run_label(profile: str, pipeline_run_id: str) -> str:
    """`<profile>-<short id>`: the Prefect flow run's and the MLflow parent run's name."""
    return f"{profile}-{short_id(pipeline_run_id)}"


def _client(artifacts_dir: Path):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    Path(artifacts_dir).mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(artifacts_dir))


def experiment_id(client, name: str, artifacts_dir: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if not EXPERIMENT_KIND.items() <= exp.tags.items():  # made by an older version of this module
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(exp.experiment_id, key, value)
        if VIEW_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, VIEW_TAG, EMPTY_VIEW)
        return exp.experiment_id
    location = (Path(artifacts_dir).resolve() / "mlartifacts").as_uri()
    # the saved view exists from the start, so experiment_url's link works before any headline is logged
    return client.create_experiment(name, artifact_location=location, tags={**EXPERIMENT_KIND, VIEW_TAG: EMPTY_VIEW})


def _quote(value: str) -> str:
    return value.replace("'", "")


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class Progress:
    """One readable line per stretch of steps for the run log: a 20-minute training stage otherwise shows
    nothing between its start and end lines (its tqdm bar goes to the terminal, not to the log)."""

    HEADLINE = ("loss", "reward/mean", "kl", "em")  # metric names (or name endings) worth a line

    def __init__(self, label: str, every_s: float | None = None, out: Callable[[str], None] | None = None):
        self.label = label
        self.every_s = float(os.environ.get("SEARCHR1_PROGRESS_SECONDS", 30)) if every_s is None else every_s
        self.out = out or (lambda line: print(line, flush=True))  # prints reach the Prefect log (log_prints)
        self.total: int | None = None
        self._t0 = time.monotonic()
        self._first_step: int | None = None
        self._last_line = -math.inf

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        now = time.monotonic()
        if self._first_step is None:
            self._first_step, self._t0 = step, now  # time per step from here: the first may include loading
            self._last_line = now
            self.out(f"{self.label}: step {step}{f'/{self.total}' if self.total else ''} {self._values(metrics)}")
            return
        last = step == self.total  # printed whatever the rate; a run longer than announced stays limited
        if now - self._last_line < self.every_s and not last:
            return
        self._last_line = now
        per_step = (now - self._t0) / max(1, step - self._first_step)
        where = f"step {step}/{self.total} ({100 * step / self.total:.0f}%)" if self.total else f"step {step}"
        eta = f", ETA {_duration(per_step * (self.total - step))}" if self.total and step < self.total else ""
        self.out(f"{self.label}: {where} {self._values(metrics)}, {per_step:.1f} s/step{eta}")

    def _values(self, metrics: Mapping[str, float]) -> str:
        picked = [k for k in metrics if any(k == h or k.endswith("/" + h) for h in self.HEADLINE)][:4]
        picked = picked or list(metrics)[:3]
        return " ".join(f"{k}={metrics[k]:.4g}" for k in picked)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class StageRun:
    """A child run; callable as a MetricsLogger. With a `progress` label, per-step metrics also print a
    progress line at most every SEARCHR1_PROGRESS_SECONDS (30 s)."""

    def __init__(self, client, run_id: str, progress: str | None = None):
        self.client, self.run_id = client, run_id
        self.progress = Progress(progress) if progress else None

    def __call__(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_metrics(metrics, step)

    def expect_steps(self, total: int) -> None:
        """The number of steps this stage will log, for the progress line's percentage and ETA."""
        if self.progress is not None:
            self.progress.total = int(total)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = _finite(metrics)
        batch = [Metric(k, v, now, step or 0) for k, v in values.items()]
        for i in range(0, len(batch), 900):  # MLflow caps a batch at 1000 entries
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])
        if self.progress is not None and step and values:
            self.progress.update(int(step), values)

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
    def url(self) -> str:
        """This run's page in the MLflow UI (see ui_url)."""
        return run_url(self.client.get_run(self.run_id).info.experiment_id, self.run_id)


class PipelineTracker:
    """The parent run of one pipeline run id; re-attached when that id is resumed."""

    def __init__(self, artifacts_dir: Path, experiment: str, pipeline_run_id: str):
        # two first runs on a new sqlite store race on creating its tables: one creates, the other waits
        with file_lock(Path(artifacts_dir) / "mlflow.db.lock"):
            self.client = _client(artifacts_dir)
            self.experiment_id = experiment_id(self.client, experiment, artifacts_dir)
        self.pipeline_run_id = pipeline_run_id
        self.parent: StageRun | None = None

    def _find(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=500)

    def open(self, config: Mapping[str, Any], config_digest: str, flow_run_id: str | None = None,
             flow_run_url: str | None = None, config_source: str | None = None) -> StageRun:
        """The parent run, named `<profile>-<short id>`, with a description that says what ran and from where."""
        profile = str(config.get("run", {}).get("name", "run"))
        label = run_label(profile, self.pipeline_run_id)
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
            self.client.update_run(run.info.run_id, status="RUNNING", name=label)
        else:
            run = self.client.create_run(self.experiment_id, run_name=label,
                                         tags={PIPELINE_TAG: self.pipeline_run_id,
                                               "searchr1.config_digest": config_digest})
            self.parent = StageRun(self.client, run.info.run_id)
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
        self.parent.set_tags({NOTE_TAG: describe(label, self.pipeline_run_id, config, config_source, flow_run_url)})
        return self.parent

    def log_headline(self, metrics: Mapping[str, float]) -> None:
        """The few numbers the runs table shows for a pipeline run (see headline_metrics)."""
        assert self.parent is not None, "open() the pipeline run first"
        self.parent.log_metrics(metrics)
        self._update_view(metrics)

    def _update_view(self, metrics: Mapping[str, float]) -> None:
        """Add these metrics' columns to the saved view (every pipeline run's headline keys, one column each)."""
        tags = self.client.get_experiment(self.experiment_id).tags
        try:
            old = json.loads(tags.get(VIEW_TAG, "{}"))
        except json.JSONDecodeError:
            old = {}
        names = {c[len("metrics.`"):-1] for c in old.get("selectedColumns", []) if c.startswith("metrics.`")}
        columns = [f"metrics.`{k}`" for k in sorted(names | set(metrics), key=_headline_order)]
        view = {"orderByKey": "attributes.start_time", "orderByAsc": False, "selectedColumns": columns,
                # the UI applies widths only to columns named in columnOrder; wide enough for the whole name
                "columnOrder": [*_VIEW_FIRST_COLUMNS, *columns],
                "columnWidths": {c: int(6.5 * (len(c) - len("metrics.``"))) + 30 for c in columns}}
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, json.dumps(view, separators=(",", ":")))

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
        child = StageRun(self.client, run.info.run_id, progress=stage)
        child.set_tags({"searchr1.attempts": attempts})
        return child

    def child_runs(self) -> list:
        assert self.parent is not None
        return self._find(f"tags.`mlflow.parentRunId` = '{self.parent.run_id}'")


def _headline_order(name: str) -> tuple[int, str]:
    """Average exact match first, then searches and reflection, the checkpoint, then EM per benchmark."""
    rank = 0 if name.endswith("/em/average") else 3 if "/em/" in name else 2 if name.endswith("checkpoint_step") else 1
    return rank, name


def describe(label: str, pipeline_run_id: str, config: Mapping[str, Any], config_source: str | None,
             flow_run_url: str | None) -> str:
    """The parent run's description (Markdown): what ran, from which config, where to follow it."""
    lines = [f"**{label}**: reproduce-search-r1, profile `{config.get('run', {}).get('name', '?')}`"
             + (f" from `{config_source}`" if config_source else "") + ".", "",
             f"- pipeline run id: `{pipeline_run_id}` (resume: `searchr1 run --run-id {pipeline_run_id}`)"]
    policy = config.get("policy", {}).get("model")
    if policy:
        lines.append(f"- policy: `{policy}`; engine: `{config.get('training', {}).get('engine', '?')}`")
    if flow_run_url:
        lines.append(f"- Prefect flow run: {flow_run_url}")
    lines.append("- child runs: one per stage that was built (cached stages reuse an earlier run's)")
    if config.get("notes"):
        lines += ["", str(config["notes"])]
    return "\n".join(lines)


def headline_metrics(evaluate_dir: Path | None, reflection_dir: Path | None) -> dict[str, float]:
    """What a pipeline run scored, for its MLflow parent run: held-out exact match of the search agent at
    the last evaluated checkpoint per benchmark and on average, its search calls per question, and the
    reflective-phrase ratio of that checkpoint's rollouts."""
    import pandas as pd

    out: dict[str, float] = {}
    results = Path(evaluate_dir) / "results.parquet" if evaluate_dir else None
    step = None
    if results is not None and results.is_file():
        df = pd.read_parquet(results)
        agent = df[df["method"] == AGENT]
        if len(agent):
            step = int(agent["step"].max())
            last = agent[agent["step"] == step]
            for row in last[last["metric"] == "em"].itertuples():
                out[f"headline/em/{row.benchmark}"] = float(row.value)
            calls = last[(last["metric"] == "search_calls") & (last["benchmark"] == AVERAGE)]
            if len(calls):
                out["headline/search_calls_per_question"] = float(calls["value"].iloc[0])
            out["headline/checkpoint_step"] = float(step)
    table = Path(reflection_dir) / "checkpoints.parquet" if reflection_dir else None
    if table is not None and table.is_file():
        ck = pd.read_parquet(table)
        if len(ck) and "ratio" in ck:
            row = ck[ck["step"] == step] if step is not None and (ck["step"] == step).any() else \
                ck.sort_values("step").tail(1)
            out["headline/reflective_phrase_ratio"] = float(row["ratio"].iloc[0])
    return _finite(out)


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
        # progress lines follow the steps as they happen, not the checkpoints that commit them
        self.progress: Progress | None = getattr(sink, "progress", None)
        if self.progress is not None:
            sink.progress = None
        self.pending, self.committed = Path(work_dir) / "metrics.pending.jsonl", Path(work_dir) / COMMITTED_FILE
        self._rows = read_jsonl_rows(self.pending)
        done = self.committed_step()
        self._rows = [r for r in self._rows if r["step"] <= done]  # computed by an attempt that did not commit
        self._flush(done)

    def __call__(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._rows.append({"step": int(step or 0), **{k: float(v) for k, v in metrics.items()}})
        if self.progress is not None and step:
            self.progress.update(int(step), _finite(metrics))
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
