"""GRPO training (TRL on CPU, verl on GPUs) and the optional supervised warm start."""

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from searchr1.schema import Section


class WarmStartConfig(Section):
    enabled: bool = False
    n_examples: PositiveInt = 512
    epochs: PositiveInt = 1
    learning_rate: PositiveFloat = 5e-5
    batch_size: PositiveInt = 8


class GRPOConfig(Section):
    steps: PositiveInt = 20
    prompts_per_step: PositiveInt = 4
    group_size: int = Field(4, ge=2)  # GRPO needs >= 2 completions per prompt for an advantage
    learning_rate: PositiveFloat = 1e-6
    kl_coef: NonNegativeFloat = 0.001
    temperature: PositiveFloat = 1.0
    max_completion_length: PositiveInt = 256
    save_every: PositiveInt = 10
    format_reward: NonNegativeFloat = 0.0  # Search-R1 uses EM only
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # Search-R1: 0.285 of the steps, then constant
    bf16: bool = False  # autocast on CPU: measured slower than fp32 on 2 cores (benchmarks/bench_grpo_step.py)
    device: Literal["cpu", "auto"] = "cpu"  # "auto" lets TRL pick a GPU when there is one


class VerlConfig(Section):
    n_gpus_per_node: PositiveInt = 8
    nnodes: PositiveInt = 1
    ray_address: str | None = None  # None = start a local Ray; "auto" or host:port joins a cluster
    rollout_engine: Literal["vllm", "sglang"] = "vllm"
    train_batch_size: PositiveInt = 512
    ppo_mini_batch_size: PositiveInt = 256
    ppo_micro_batch_size_per_gpu: PositiveInt = 8
    max_prompt_length: PositiveInt = 4096
    max_response_length: PositiveInt = 3000
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1)
    tensor_model_parallel_size: PositiveInt = 1
    total_epochs: PositiveInt = 1
    extra_overrides: tuple[str, ...] = ()


class TrainingConfig(Section):
    engine: Literal["trl", "verl"] = "trl"
    warm_start: WarmStartConfig = WarmStartConfig()
    grpo: GRPOConfig = GRPOConfig()
    verl: VerlConfig = VerlConfig()

    @model_validator(mode="after")
    def _batches(self) -> "TrainingConfig":
        if self.grpo.save_every > self.grpo.steps:
            raise ValueError(f"grpo.save_every ({self.grpo.save_every}) > grpo.steps "
                             f"({self.grpo.steps}): no checkpoint would be written")
        return self
