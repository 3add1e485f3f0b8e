"""What a person sees of a run: names, progress lines, headline metrics, MLflow links, a quiet log."""

from __future__ import annotations

import builtins
import dis
import sys

import pandas as pd
import pytest

from flows import quiet
from searchr1.tracking import Progress, experiment_url, headline_metrics, run_label, run_url, short_id


def test_run_labels_shorten_flow_run_uuids_only():
    assert short_id("7e94430d-4dde-4c45-99ca-c6ebfbbe49cd") == "7e94430d"
    assert short_id("nightly-2026-12-01") == "nightly-2026-12-01"
    assert run_label("tiny", "7e94430d-4dde-4c45-99ca-c6ebfbbe49cd") == "tiny-7e94430d"


def test_mlflow_links_follow_the_configured_ui(monkeypatch):
    monkeypatch.delenv("SEARCHR1_MLFLOW_UI", raising=False)
    monkeypatch.setenv("MLFLOW_PORT", "5055")
    assert experiment_url("3").startswith("http://127.0.0.1:5055/#/experiments/3/runs?workflowType=machine_learning")
    monkeypatch.setenv("SEARCHR1_MLFLOW_UI", "https://mlflow.example.org/")
    assert run_url("3", "abc").startswith("https://mlflow.example.org/#/experiments/3/runs/abc?")


def test_progress_lines_are_rate_limited_and_give_an_eta(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr("searchr1.tracking.time.monotonic", lambda: clock["t"])
    lines: list[str] = []
    progress = Progress("train", every_s=30, out=lines.append)
    progress.total = 10
    for step in range(1, 11):
        clock["t"] = 10.0 * step  # 10 s per step
        progress.update(step, {"reward/mean": 0.5, "perf/tokens": 100.0, "loss": 0.25})
    assert lines[0] == "train: step 1/10 reward/mean=0.5 loss=0.25"
    # the first step, then one line per 30 s (steps 4, 7), and the last step whenever it comes
    assert [line.split()[2] for line in lines] == ["1/10", "4/10", "7/10", "10/10"]
    assert lines[1] == "train: step 4/10 (40%) reward/mean=0.5 loss=0.25, 10.0 s/step, ETA 1m00s"
    assert lines[-1].startswith("train: step 10/10 (100%)") and "ETA" not in lines[-1]
    progress.update(11, {"loss": 0.1})  # past the announced total: still rate-limited
    assert len(lines) == 4


def test_headline_metrics_read_the_last_checkpoint(tmp_path):
    ev, refl = tmp_path / "evaluate", tmp_path / "reflection"
    ev.mkdir()
    refl.mkdir()
    rows = []
    for step, em in ((0, 0.0), (12, 0.5)):
        for bench, value in (("single_hop", em), ("bridge", em / 2), ("average", 3 * em / 4)):
            rows.append({"checkpoint": f"step-{step}", "step": step, "method": "search_agent", "benchmark": bench,
                         "metric": "em", "value": value, "n": 4})
        rows.append({"checkpoint": f"step-{step}", "step": step, "method": "search_agent", "benchmark": "average",
                     "metric": "search_calls", "value": 1.0 + step, "n": 8})
    rows.append({"checkpoint": "step-0", "step": 0, "method": "rag", "benchmark": "average", "metric": "em",
                 "value": 0.9, "n": 8})
    pd.DataFrame(rows).to_parquet(ev / "results.parquet")
    pd.DataFrame({"checkpoint": ["step-0", "step-12"], "step": [0, 12], "ratio": [0.0, 0.125],
                  "score": [0.0, 0.375]}).to_parquet(refl / "checkpoints.parquet")
    assert headline_metrics(ev, refl) == {
        "headline/em/single_hop": 0.5, "headline/em/bridge": 0.25, "headline/em/average": 0.375,
        "headline/search_calls_per_question": 13.0, "headline/checkpoint_step": 12.0,
        "headline/reflective_phrase_ratio": 0.125}
    assert headline_metrics(ev, None)["headline/em/average"] == 0.375  # before the reflection stage ran
    assert headline_metrics(tmp_path / "missing", None) == {}


def test_dill_keeps_its_bytecode_listing_out_of_a_patched_print(monkeypatch):
    """Prefect's log_prints sends every print aimed at sys.stdout to the run log; dill disassembles into
    a captured sys.stdout to find a function's globals. With flows.quiet installed, nothing reaches the
    log and dill still finds the globals."""
    import dill.detect

    logged: list[str] = []
    real_print = builtins.print

    def log_prints(*args, **kwargs):  # what prefect.logging.loggers.print_as_log routes to the log
        if kwargs.get("file") in (None, sys.stdout, sys.stderr):
            logged.append(" ".join(map(str, args)))
        else:
            real_print(*args, **kwargs)

    def uses_globals():
        return pd.DataFrame, pytest.fail

    monkeypatch.setattr(builtins, "print", log_prints)
    monkeypatch.setattr(dill.detect, "dis", dis)  # dill as shipped
    assert dill.detect.nestedglobals(uses_globals) == []  # its capture came back empty...
    assert any("LOAD_GLOBAL" in line for line in logged)  # ...because the listing went to the log
    logged.clear()
    quiet.quiet_dill()
    assert set(dill.detect.nestedglobals(uses_globals)) == {"pd", "pytest"}
    assert logged == []


def test_saved_view_shows_headline_columns_and_expands_recent_parents(tmp_path):
    import json

    from searchr1.tracking import EXPERIMENT_KIND, VIEW_TAG, PipelineTracker

    config = {"run": {"name": "tiny"}, "notes": "a note"}
    parents = []
    for run_id in ("v-1", "v-2"):
        tracker = PipelineTracker(tmp_path, "reproduce-search-r1", run_id)
        parents.append(tracker.open(config, "digest").run_id)
        tracker.log_headline({"headline/em/bridge": 0.5, "headline/em/average": 0.25,
                              "headline/search_calls_per_question": 1.0})
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert EXPERIMENT_KIND.items() <= tags.items()
    view = json.loads(tags[VIEW_TAG])
    assert view["selectedColumns"] == ["metrics.`headline/em/average`", "metrics.`headline/search_calls_per_question`",
                                       "metrics.`headline/em/bridge`"]  # each column once, average first
    assert view["columnOrder"][-3:] == view["selectedColumns"]
    assert set(view["columnWidths"]) == set(view["selectedColumns"])
    run = tracker.client.get_run(parents[1])
    assert run.info.run_name == "tiny-v-2" and run.data.metrics["headline/em/average"] == 0.25


def test_stage_times_table_lists_each_stage_with_its_share_of_the_wall():
    from flows.run_artifacts import stage_rows, stage_times_text

    ledger = [{"time": 1.0, "stage": "corpus", "key": "k1", "status": "cached"},
              {"time": 2.0, "stage": "index", "key": "k2", "status": "started"},
              {"time": 3.0, "stage": "index", "key": "k2", "status": "ran", "seconds": 30.0},
              {"time": 4.0, "stage": "train", "key": "k3", "status": "started"},
              {"time": 9.0, "stage": "train", "key": "k3", "status": "failed", "seconds": 5.0, "error": "boom"}]
    text = stage_times_text(stage_rows(ledger, ["corpus", "index", "train", "report"], since=0.0), 60.0)
    lines = text.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["corpus", "index", "train", "wall"]  # report never ran
    assert lines[1].split()[1:3] == ["cached", "0.0"]
    assert lines[2].split()[1:] == ["ran", "30.0", "50%"]
    assert lines[3].split()[1:] == ["failed", "5.0", "8%"]
    assert lines[4].split()[1] == "60.0"
