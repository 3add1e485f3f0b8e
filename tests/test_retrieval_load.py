"""A short, bounded run of the load test: 64 clients, mixed good/bad requests and hang-ups."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from load_retrieval_server import run  # noqa: E402


@pytest.mark.slow
def test_server_under_mixed_load_has_no_5xx_and_no_crossed_answers(tmp_path):
    r = run(clients=64, seconds=8, max_requests=600, passages=200, work=tmp_path)
    assert r["good"] > 0 and r["bad"] > 0 and r["hangups"] > 0
    assert r["5xx"] == 0
    assert r["bad_not_4xx"] == 0
    assert r["mixed_up"] == 0
    assert r["healthy_after"]
