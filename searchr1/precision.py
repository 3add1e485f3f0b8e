"""bf16 where this machine computes it natively: the `auto` of `agent.vllm.dtype`, `training.grpo.bf16` and
`training.warm_start.bf16`, resolved when the config is read so that cache keys name what ran.

Search-R1 trains and samples in bf16 on GPUs. On a CPU, bf16 pays only with native instructions
(AVX512-BF16 or AMX-BF16); elsewhere oneDNN emulates it, slower than fp32 — so `auto` means fp32 there.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this machine multiplies bf16 matrices natively: a CPU with one of BF16_CPU_FLAGS, or a CUDA GPU
    that supports bf16 (torch is imported only when the CPU has no such flag)."""
    try:
        flags = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        flags = ""
    if any(re.search(rf"\b{f}\b", flags) for f in BF16_CPU_FLAGS):
        return True
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_bf16(value: object) -> object:
    """A `bf16: auto | true | false` setting: "auto" as a bool; anything else as given, for the field to check."""
    return native_bf16() if value == "auto" else value
