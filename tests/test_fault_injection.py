"""SIGKILL inside stages, resume, nothing lost: the data stages of the chain (the whole chain, with
training and evaluation, is `python -m flows.fault_injection`; its table is in the closing note)."""

from __future__ import annotations

import json

import pytest

from flows.fault_injection import redone_seconds, run_chain, stage_fingerprints


@pytest.mark.slow
def test_kills_in_data_stages_resume_to_the_reference_result(prefect_server, tmp_path, monkeypatch):
    # the attempts report to the session's Prefect server: each would otherwise start (and lose, when killed)
    # a temporary one, ~20 s apiece; the stages, locks and ledger under test are the same either way
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    points = ["corpus.after_shard", "questions.before_publish", "index.before_publish"]
    s = run_chain(tmp_path, points, until="train-data")
    assert [k["fired"] for k in s["kills"]] == [True, True, True]
    assert [k["exit"] for k in s["kills"]] == [-9, -9, -9]  # a real SIGKILL each time
    assert [k["killed_stage"] for k in s["kills"]] == ["corpus", "questions", "index"]
    # what finished before a kill is reused, never recomputed
    assert s["kills"][1]["cached_on_entry"] == [] and s["kills"][1]["recomputed"] == ["corpus"]
    assert s["kills"][2]["cached_on_entry"] == ["corpus"] and s["kills"][2]["recomputed"] == ["questions"]
    assert all(not k["complete_looking_leftovers"] for k in s["kills"])
    assert s["final_exit"] == 0 and s["reference_exit"] == 0
    assert s["equal_to_reference"] == {"corpus": True, "questions": True, "index": True, "train-data": True}
    assert s["stage_runs_total"] == 4  # each stage completed exactly once across all attempts
    assert s["mlflow"]["parent_runs"] == 1
    # the index was killed after its shards and FAISS file were written: the resume reuses them
    assert s["kills"][2]["redone_seconds"] is not None and s["kills"][2]["redone_seconds"] < 5


def test_redone_seconds_is_the_first_rebuild_after_the_kill():
    ledger = [{"time": 1.0, "stage": "index", "status": "ran", "seconds": 9.0},      # an earlier run
              {"time": 5.0, "stage": "index", "status": "started"},
              {"time": 7.0, "stage": "corpus", "status": "ran", "seconds": 2.0},
              {"time": 8.0, "stage": "index", "status": "ran", "seconds": 0.25},
              {"time": 9.0, "stage": "index", "status": "ran", "seconds": 4.0}]
    assert redone_seconds(ledger, "index", killed_at=4.0) == 0.2
    assert redone_seconds(ledger, "train", killed_at=4.0) is None


def test_fingerprints_ignore_provenance_paths_but_not_content(tmp_path):
    for root, score in ((tmp_path / "a", 0.5), (tmp_path / "b", 0.5), (tmp_path / "c", 0.25)):
        out = root / "cache" / "reflection" / "k1"
        out.mkdir(parents=True)
        (out / "_manifest.json").write_text("{}")
        (out / "analysis.json").write_text(json.dumps({"inputs": {"eval_dir": str(root / "cache" / "evaluate")},
                                                       "r": score}))
    a, b, c = (stage_fingerprints(tmp_path / x) for x in "abc")
    assert a == b and a != c
