"""benchmarks/bench_vllm_generator.py: what it refuses before it loads anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("loops", ["batched,streamed", "turns"])
def test_an_unknown_loop_is_refused_by_name(loops):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_vllm_generator.py"), "--loops", loops],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2  # argparse's usage error, before any model or engine is loaded
    assert "--loops: unknown" in out.stderr and "'batched' and/or 'continuous'" in out.stderr
