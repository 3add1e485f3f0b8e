"""Two runs of one config at once, on a fresh artifacts folder: each stage is built once (the second run
waits on the stage's lock, then reuses it), MLflow's store is created once, both runs finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from searchr1.stage_cache import StageDir

PROJECT = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "questions", "index", "train-data")
SMALL = ["corpus.synthetic.n_people=40", "corpus.synthetic.n_places=10", "corpus.synthetic.n_organisations=8",
         "corpus.synthetic.n_works=20", "corpus.synthetic.questions_per_skill=20"]
WAITING = "another run is building"


def _start(artifacts: Path, run_id: str, env: dict, log: Path, *extra: str, until: str = "train-data"
           ) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.reproduce", "--config", "configs/tiny.yaml", "--until", until,
           "--run-id", run_id, *SMALL, f"run.artifacts_dir={artifacts}", *extra]
    return subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(procs: dict[str, subprocess.Popen], logs: Path) -> None:
    for run_id, proc in procs.items():
        rc = proc.wait(timeout=600)
        assert rc == 0, f"run {run_id} exited {rc}:\n{(logs / f'{run_id}.log').read_text()[-4000:]}"


def _ledger(artifacts: Path, run_id: str) -> list[dict]:
    path = artifacts / "runs" / run_id / "stages.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_runs_of_one_config_at_once_build_each_stage_once(prefect_server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    logs = tmp_path / "logs"
    logs.mkdir()

    # A run elsewhere tells us the corpus stage's key (keys do not depend on the artifacts folder).
    probe = {"probe": _start(tmp_path / "probe", "probe", env, logs / "probe.log", until="corpus")}
    _finish(probe, logs)
    corpus_key = next(r["key"] for r in _ledger(tmp_path / "probe", "probe") if r["stage"] == "corpus")

    # Hold the corpus stage's lock until both runs are blocked on it, so they really do meet there;
    # past it they race through questions, index and train-data on their own.
    artifacts = tmp_path / "artifacts"
    with StageDir(artifacts, "corpus", corpus_key).lock():
        procs = {r: _start(artifacts, r, env, logs / f"{r}.log") for r in ("a", "b")}
        deadline = time.time() + 300
        while not all(WAITING in (logs / f"{r}.log").read_text() for r in procs):
            assert time.time() < deadline, "the runs never reached the corpus stage's lock"
            assert all(p.poll() is None for p in procs.values()), (logs / "a.log").read_text()[-3000:]
            time.sleep(0.5)
    _finish(procs, logs)

    rows = {r: _ledger(artifacts, r) for r in procs}
    assert not [row for rs in rows.values() for row in rs if row["status"] == "failed"]
    ran = Counter(row["stage"] for rs in rows.values() for row in rs if row["status"] == "ran")
    assert ran == Counter(STAGES)  # every stage built exactly once across both runs
    assert all(rs[0]["stage"] == "corpus" and rs[0]["waited_s"] > 0 for rs in rows.values())
    keys = {r: {row["stage"]: row["key"] for row in rs if row["status"] in ("ran", "cached")} for r, rs in rows.items()}
    assert keys["a"] == keys["b"] and set(keys["a"]) == set(STAGES)  # the same outputs
    for stage, key in keys["a"].items():
        assert StageDir(artifacts, stage, key).is_complete()
        assert [p.name for p in (artifacts / "cache" / stage).iterdir() if p.is_dir()] == [key]  # no .work left

    # Embedder throughput settings change no output: a third run reuses every stage.
    third = {"c": _start(artifacts, "c", env, logs / "c.log", "retrieval.embedder.batch_size=7",
                         "retrieval.embedder.num_threads=1")}
    _finish(third, logs)
    assert [(r["stage"], r["status"]) for r in _ledger(artifacts, "c")] == [(s, "cached") for s in STAGES]
