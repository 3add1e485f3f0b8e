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
    gradient_checkpointing: bool = True  # same trade as GRPOConfig's: a third of the memory, same speed
    # Share of traces that check one hop with a second search and say so in a reflective phrase ("Wait, let
    # me verify ..."): a behaviour GRPO can then raise or lower. The report states the rate used.
    verify_rate: float = Field(0.0, ge=0, le=1)


class GRPOConfig(Section):
    steps: PositiveInt = 20
    prompts_per_step: PositiveInt = 4
    group_size: int = Field(4, ge=2)  # GRPO needs >= 2 completions per prompt for an advantage
    learning_rate: PositiveFloat = 1e-6
    kl_coef: NonNegativeFloat = 0.001
    temperature: PositiveFloat = 1.0
    top_p: float = Field(1.0, gt=0, le=1)  # Search-R1's ppo_trainer.yaml: 0.95
    save_every: PositiveInt = 10
    format_reward: NonNegativeFloat = 0.0  # Search-R1 uses EM only
    # verl turns a failed tool call into the tool's text and trains on: above this share of failed search
    # calls in a step the run stops (the TRL engine's own loop stops at the first failure).
    max_tool_error_rate: float = Field(0.05, ge=0, le=1)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # Search-R1: 0.285 of the steps, then constant
    # bf16 autocast (weights stay fp32). On this Zen 4 CPU (avx512_bf16): 1.21x tokens/s per GRPO step,
    # median log-prob drift 0.003 vs fp32 (benchmarks/bench_grpo_step.py --compare bf16). Off by default:
    # a CPU without native bf16 emulates it, and the tiny run's learning was only measured in fp32.
    bf16: bool = False
    device: Literal["cpu", "auto"] = "cpu"  # "auto" lets TRL pick a GPU when there is one
    # SmolLM2-135M, fp32, 8 x 800 tokens: peak RSS 4.2 GB with it, 12.0 GB without; a step took 38.0 vs
    # 37.7 s (median, alternating rounds). Without it two runs side by side on 24 GB were OOM-killed.
    gradient_checkpointing: bool = True


class VerlConfig(Section):
    """verl's Search-R1 GRPO setup for Qwen2.5-3B-Instruct.

    Sources (read via the search tool): PeterGriffinJin/Search-R1 `train_grpo.sh` (S) and volcengine/verl
    `examples/sglang_multiturn/search_r1_like/run_qwen2.5-3b_instruct_search_multiturn.sh` (V); the
    learning rate, KL coefficient, group size, temperature, steps and save interval live in `grpo`.
    """

    n_gpus_per_node: PositiveInt = 8  # S, V: trainer.n_gpus_per_node=8
    nnodes: PositiveInt = 1  # S, V
    ray_address: str | None = None  # None = start a local Ray; "auto" or host:port joins a cluster (RAY_ADDRESS)
    rollout_engine: Literal["vllm", "sglang"] = "vllm"  # S: rollout.name=vllm (V uses sglang)
    train_batch_size: PositiveInt = 512  # S, V: data.train_batch_size=512
    val_batch_size: PositiveInt = 256  # S, V: data.val_batch_size=256
    ppo_mini_batch_size: PositiveInt = 256  # S, V: actor.ppo_mini_batch_size=256
    ppo_micro_batch_size_per_gpu: PositiveInt = 8  # V: actor.ppo_micro_batch_size_per_gpu=8 (S: 64 over 8 GPUs)
    log_prob_micro_batch_size_per_gpu: PositiveInt = 8  # V: rollout/ref log_prob_micro_batch_size_per_gpu=8
    max_prompt_length: PositiveInt = 4096  # S, V: data.max_prompt_length=4096
    max_response_length: PositiveInt = 3000  # V: whole multi-turn response (S: 500 per turn, max_turns=2)
    max_model_len: PositiveInt = 15000  # V: rollout.max_model_len=15000
    lr_warmup_steps_ratio: float = Field(0.285, ge=0, lt=1)  # S, V: actor.optim.lr_warmup_steps_ratio=0.285
    kl_loss_type: str = "low_var_kl"  # S, V: actor.use_kl_loss=true, kl_loss_type=low_var_kl
    entropy_coeff: NonNegativeFloat = 0.0  # V: actor.entropy_coeff=0
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1)  # S: 0.6 (V: 0.5)
    tensor_model_parallel_size: PositiveInt = 1  # S, V
    gradient_checkpointing: bool = True  # S, V: model.enable_gradient_checkpointing=true
    param_offload: bool = False  # V: actor fsdp param/optimizer offload False (S: true, on 80 GB A100s)
    ref_param_offload: bool = True  # S, V: ref.fsdp_config.param_offload=True
    max_assistant_turns: PositiveInt | None = None  # None = agent.max_turns (V: 2, which allows ONE search; #3008)
    # verl cuts tool text by characters (default 256, which truncates the passages: verl #3008);
    # Search-R1's max_obs_length=500 tokens is ~2000 characters.
    max_tool_response_length: PositiveInt = 2048
    tool_parser_format: Literal["hermes"] = "hermes"  # verl #3008: "qwen" never parses Qwen2.5's <tool_call>
    test_freq: int = 50  # S, V: trainer.test_freq=50
    val_before_train: bool = False  # V: False (S: true); evaluation is its own stage here
    total_epochs: PositiveInt = 15  # S: trainer.total_epochs=15 (total_training_steps=1005 stops first)
    logger: tuple[str, ...] = ("console",)  # console lines are parsed and streamed to MLflow by launch_verl
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
