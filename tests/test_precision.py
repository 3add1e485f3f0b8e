"""`auto` precision: bf16 only where the machine computes it natively, resolved when the config is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchr1 import precision
from searchr1.config import config_from_dict

AUTO = {"agent": {"vllm": {"dtype": "auto"}}, "training": {"grpo": {"bf16": "auto"}, "warm_start": {"bf16": "auto"}}}


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("flags", "native"), [("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True),
                                               ("avx512f", False), ("avx512_bf16x", False)])
def test_native_bf16_reads_the_cpu_flags(tmp_path, flags, native, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.native_bf16.__wrapped__(_cpuinfo(tmp_path, flags)) is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_when_the_config_is_read(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    for module in ("searchr1.agent.config", "searchr1.training.config"):
        monkeypatch.setattr(f"{module}.native_bf16", lambda: native, raising=False)
    cfg = config_from_dict(AUTO)
    assert cfg.agent.vllm.dtype == ("bfloat16" if native else "policy")
    assert cfg.training.grpo.bf16 is native and cfg.training.warm_start.bf16 is native
    # the key of a stage names what ran, not "auto"
    assert "auto" not in str(cfg.model_dump(mode="json")["agent"]["vllm"]["dtype"])


def test_explicit_values_are_kept():
    cfg = config_from_dict({"agent": {"vllm": {"dtype": "float32"}}, "training": {"grpo": {"bf16": True}}})
    assert cfg.agent.vllm.dtype == "float32" and cfg.training.grpo.bf16 is True
