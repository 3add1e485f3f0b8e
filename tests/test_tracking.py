"""Committed metrics: a resumed training run never logs a step twice."""

from __future__ import annotations

import json

from searchr1.tracking import CommittedMetrics


def test_steps_wait_for_a_checkpoint_and_uncommitted_ones_are_dropped_on_resume(tmp_path):
    sent: list[tuple[int, float]] = []
    done = {"step": 0}

    def sink(metrics, step):
        sent.append((step, metrics["loss"]))

    log = CommittedMetrics(sink, tmp_path, lambda: done["step"])
    for step in (1, 2):
        log({"loss": float(step)}, step)
    assert sent == []  # no checkpoint yet
    done["step"] = 2
    log({"loss": 3.0}, 3)  # checkpoint 2 commits steps 1-2; step 3 waits
    assert sent == [(1, 1.0), (2, 2.0)]
    # killed here; the resumed attempt recomputes step 3 from checkpoint 2
    resumed = CommittedMetrics(sink, tmp_path, lambda: done["step"])
    resumed({"loss": 3.5}, 3)
    resumed.finish()
    assert sent == [(1, 1.0), (2, 2.0), (3, 3.5)]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
