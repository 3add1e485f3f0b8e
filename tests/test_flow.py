"""The flow: stages cached by content, a failed run resumed without redoing finished stages, one
MLflow parent run per pipeline run id, and the deployment path through a real Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.reproduce import reproduce
from searchr1.tracking import PIPELINE_TAG, PipelineTracker

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # flows on a Prefect server, subprocesses
SMALL = ["corpus.synthetic.n_people=40", "corpus.synthetic.n_places=10", "corpus.synthetic.n_organisations=8",
         "corpus.synthetic.n_works=20", "corpus.synthetic.questions_per_skill=20"]


def ledger(artifacts: Path, run_id: str) -> list[dict]:
    path = artifacts / "runs" / run_id / "stages.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def statuses(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["stage"], r["status"]) for r in rows if r["status"] != "started"]


def test_same_config_recomputes_nothing_and_training_change_reuses_data(prefect_server, tmp_path):
    over = SMALL + [f"run.artifacts_dir={tmp_path}"]
    first = reproduce(overrides=over, pipeline_run_id="a", until="questions")
    second = reproduce(overrides=over, pipeline_run_id="b", until="questions")
    third = reproduce(overrides=over + ["training.grpo.learning_rate=3e-6"], pipeline_run_id="c", until="questions")
    assert first == second == third
    assert statuses(ledger(tmp_path, "a")) == [("corpus", "ran"), ("questions", "ran")]
    assert statuses(ledger(tmp_path, "b")) == [("corpus", "cached"), ("questions", "cached")]
    assert statuses(ledger(tmp_path, "c")) == [("corpus", "cached"), ("questions", "cached")]
    # a corpus change is a new corpus
    fourth = reproduce(overrides=over + ["corpus.synthetic.seed=7"], pipeline_run_id="d", until="corpus")
    assert fourth["corpus"] != first["corpus"]


def test_failed_stage_is_resumed_without_redoing_finished_ones(prefect_server, tmp_path, monkeypatch):
    over = SMALL + [f"run.artifacts_dir={tmp_path}"]
    monkeypatch.setenv("SEARCHR1_FAULT", "questions.before_publish:raise")
    with pytest.raises(Exception, match="injected failure at questions.before_publish"):
        reproduce(overrides=over, pipeline_run_id="r1", until="questions")
    # nothing half-built looks finished: only the .work folder exists for the failed stage
    assert not list((tmp_path / "cache" / "questions").glob("*/_manifest.json"))
    monkeypatch.delenv("SEARCHR1_FAULT")
    reproduce(overrides=over, pipeline_run_id="r1", until="questions")
    rows = statuses(ledger(tmp_path, "r1"))
    assert rows == [("corpus", "ran"), ("questions", "failed"), ("corpus", "cached"), ("questions", "ran")]
    tracker = PipelineTracker(tmp_path, "reproduce-search-r1", "r1")
    parents = [r for r in tracker.client.search_runs([tracker.experiment_id], f"tags.`{PIPELINE_TAG}` = 'r1'")
               if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = tracker.client.search_runs([tracker.experiment_id],
                                          f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    attempts = {r.data.tags["searchr1.stage"]: r.data.tags["searchr1.attempts"] for r in children}
    assert attempts == {"corpus": "1", "questions": "2"}  # one child per stage, its retry re-opened it


def _api(url: str, path: str, body: dict) -> list[dict]:
    import httpx

    r = httpx.post(f"{url}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def test_prefect_and_mlflow_show_the_pipeline(prefect_server, tmp_path):
    """Flow run and MLflow parent run named <profile>-<id>, reused stages in the Cached state, a link to
    MLflow and a stage table on every run (cached or not), and a bad `until` refused before any stage."""
    from searchr1.tracking import EXPERIMENT_KIND, NOTE_TAG

    over = SMALL + [f"run.artifacts_dir={tmp_path}"]
    reproduce(overrides=over, pipeline_run_id="show-1", until="questions")
    reproduce(overrides=over, pipeline_run_id="show-2", until="questions")
    for run_id, state in (("show-1", "Completed"), ("show-2", "Cached")):
        (run,) = _api(prefect_server, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"tiny-{run_id}"]}}})
        tasks = _api(prefect_server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        assert sorted((t["task_key"].split("-")[0], t["state"]["name"]) for t in tasks) == [
            ("corpus_task", state), ("questions_task", state)]
        artifacts = {a["key"]: a for a in _api(prefect_server, "/artifacts/filter",
                                               {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})}
        assert {"mlflow-run", "stages"} <= set(artifacts)
        assert "/#/experiments/" in artifacts["mlflow-run"]["data"]
        table = artifacts["stages"]["data"]
        rows = json.loads(table) if isinstance(table, str) else table
        assert [(r["stage"], r["status"]) for r in rows] == [("corpus", "ran" if state == "Completed" else "cached"),
                                                             ("questions", "ran" if state == "Completed" else "cached")]
    tracker = PipelineTracker(tmp_path, "reproduce-search-r1", "show-2")
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert EXPERIMENT_KIND.items() <= experiment.tags.items()
    (parent,) = [r for r in tracker.client.search_runs([tracker.experiment_id], f"tags.`{PIPELINE_TAG}` = 'show-2'")
                 if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "tiny-show-2"
    assert "show-2" in parent.data.tags[NOTE_TAG] and "configs/tiny.yaml" in parent.data.tags[NOTE_TAG]

    with pytest.raises(Exception, match="until"):
        reproduce(overrides=over, pipeline_run_id="show-3", until="evalute")
    assert not (tmp_path / "runs" / "show-3").exists()


def test_bad_config_fails_before_any_stage(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flows.reproduce", f"run.artifacts_dir={tmp_path}",
                           "training.grpo.group_size=1"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "key 'training.grpo.group_size' = 1" in proc.stderr
    assert not (tmp_path / "cache").exists()


def _wait_for_deployment(client_url: str, name: str, timeout: float = 90) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        r = httpx.get(f"{client_url}/deployments/name/{name}")
        if r.status_code == 200:
            return
        time.sleep(1)
    raise TimeoutError(f"deployment {name} did not appear")


def _wait_for_terminal(api_url: str, flow_run_id: str, timeout: float = 240) -> str:
    """Poll the server (the retry has set the run back to Scheduled: only the retry can complete it)."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        state = httpx.get(f"{api_url}/flow_runs/{flow_run_id}").json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} did not finish")


def test_deployment_run_and_flow_run_retry(prefect_server, tmp_path):
    """`prefect deployment run reproduce-search-r1/tiny` through a served deployment, then a failed
    run resumed with `prefect flow-run retry`."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server,
           "SEARCHR1_FAULT": f"questions.before_publish:raise:{tmp_path / 'fired'}"}
    server = subprocess.Popen([sys.executable, "-m", "flows.deploy"], cwd=PROJECT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_deployment(prefect_server, "reproduce-search-r1/tiny")
        params = json.dumps(SMALL + [f"run.artifacts_dir={tmp_path}"])
        cli = [sys.executable, "-m", "prefect"]
        out = subprocess.run(cli + ["deployment", "run", "reproduce-search-r1/tiny", "--param", f"overrides={params}",
                                    "--param", "until=questions", "--watch", "--watch-timeout", "240"],
                             env=env, cwd=PROJECT, capture_output=True, text=True, timeout=300)
        assert "Failed" in out.stdout + out.stderr, out.stdout + out.stderr
        flow_run_id = next(line.split()[-1] for line in out.stdout.splitlines() if "UUID" in line)
        retry = subprocess.run(cli + ["flow-run", "retry", flow_run_id], env=env, cwd=PROJECT,
                               capture_output=True, text=True, timeout=60)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        state = _wait_for_terminal(prefect_server, flow_run_id)
        assert state == "COMPLETED", state
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = statuses(ledger(tmp_path, flow_run_id))
    assert rows == [("corpus", "ran"), ("questions", "failed"), ("corpus", "cached"), ("questions", "ran")]
