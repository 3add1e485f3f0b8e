"""GRPO training (TRL on CPU, verl on GPUs) and the optional supervised warm start."""

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator, model_validator

from searchr1.precision import resolve_bf16
from searchr1.schema import Section


def _prefix_needs_full_activations(section: str):
    """The after-validator of a trainer section with `shared_prefix` and `gradient_checkpointing`."""
    def check(self):
        if self.shared_prefix and self.gradient_checkpointing:
            raise ValueError(f"training.{section}.shared_prefix needs training.{section}.gradient_checkpointing: "
                             "false (HF's checkpointed layers drop the shared prefix's cache); set one of them false")
        return self

    return check


class WarmStartConfig(Section):
    enabled: bool = False
    n_examples: PositiveInt = 512
    epochs: PositiveInt = 1
    learning_rate: PositiveFloat = 5e-5
    # "linear": decays from learning_rate to 0 over the warm start's steps (the usual end of a supervised run);
    # "constant": every step at learning_rate, so the last few batches decide where the policy stops.
    lr_schedule: Literal["constant", "linear"] = "constant"
    batch_size: PositiveInt = 8
    # Every trace opens with the same ~300 tokens (system prompt, tool schema): computed once per batch, their
    # keys and values shared by the rows, gradients included (benchmarks/bench_warm_start.py). Same loss up to
    # float summation order. Needs gradient_checkpointing off: HF drops a cache passed to a checkpointed layer.
    shared_prefix: bool = True
    # Recomputes each layer's activations in the backward pass: ~1/4 more compute for less memory, which a
    # 135M policy at batch 8 does not need (a few GB without it)
    gradient_checkpointing: bool = False
    # bf16 autocast (weights and optimiser stay fp32); "auto": on where the machine computes bf16 natively
    # (searchr1.precision), resolved when the config is read.
    bf16: bool | Literal["auto"] = False
    # Share of traces that check their last hop with a second search and say so in a reflective phrase ("Wait, let
    # me verify ..."): a behaviour GRPO can then raise or lower. The report states the rate used.
    verify_rate: float = Field(0.0, ge=0, le=1)
    # Traces per round of the suites' interleave, by suite (default 1 each): {"compositional": 2} gives two
    # three-hop traces for every one of each other suite. A suite the policy rarely solves gives GRPO only flat
    # groups; more of its traces buys a start RL can improve, at the others' share of the fixed n_examples.
    skill_weights: dict[str, PositiveInt] = Field(default_factory=dict)

    _auto_bf16 = field_validator("bf16", mode="before")(resolve_bf16)
    _prefix_check = model_validator(mode="after")(_prefix_needs_full_activations("warm_start"))


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
    # Taken off a right answer whose text holds a malformed search call (a named deviation; Search-R1's EM-only
    # runs: 0). EM alone never sees such a call when the answer is right, so a step that garbles the call's JSON
    # is reinforced as long as the answers hold. Search-R1's format variant (`qa_em_format`) scores a right answer
    # in an invalid sequence 1 - structure_format_score (0.2 in its scripts). AgentProtocol.reward applies it.
    invalid_call_penalty: float = Field(0.0, ge=0, le=1)
    # DAPO's dynamic sampling (Search-R1 has none): up to this many extra draws per step replace the groups
    # whose rollouts all got the same reward (no advantage, nothing learnt) with fresh questions' groups that
    # did not. Costs generation only; the trained batch keeps its size. TRL engine only.
    refill_rounds: int = Field(0, ge=0)
    # Fresh questions' groups sampled in the step's first batch besides its own (DAPO's oversampling): they replace
    # flat groups before any refill round, so the rollouts of a step are one batch, not one after another. Costs
    # their generation even when no group is flat. TRL engine only.
    spare_groups: int = Field(0, ge=0)
    # Who samples the rollouts (TRL engine): "transformers" = the model being trained, in this process;
    # "vllm" = a vLLM engine, with agent.vllm's settings, on each step's current weights: on CPU one engine takes
    # them in place (VLLMGenerator.load_weights: a fresh engine's outputs), on a GPU an engine is opened per step
    # and closed before the update (its memory is the trainer's). vLLM's draws are seeded by (run.seed, step, refill
    # round), so a rerun or a resumed run samples the same rollouts.
    rollout_generator: Literal["transformers", "vllm"] = "transformers"
    rollout_kv_cache_gib: PositiveFloat = 2.0  # CPU vLLM's KV cache beside the trainer's memory (16 rows: ~0.8)
    # verl turns a failed tool call into the tool's text and trains on: above this share of failed search
    # calls in a step the run stops (the TRL engine's own loop stops at the first failure).
    max_tool_error_rate: float = Field(0.05, ge=0, le=1)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # Search-R1: 0.285 of the steps, then constant
    # verl's (and HF's) linear warmup trains the first step at learning rate 0: over Search-R1's 1005 steps one
    # step, over 5 a checkpoint equal to the one before it. True: the same ramp one step on (`grpo.warmup_factor`).
    warmup_first_step_moves: bool = False
    # bf16 autocast (weights stay fp32). On a Zen 4 CPU (avx512_bf16): 1.21x tokens/s per GRPO step, median
    # log-prob drift 0.003 vs fp32 (benchmarks/bench_grpo_step.py --compare bf16). "auto": on where the machine
    # computes bf16 natively (searchr1.precision; a CPU without it emulates bf16, slower than fp32).
    bf16: bool | Literal["auto"] = False
    device: Literal["cpu", "auto"] = "cpu"  # "auto" lets TRL pick a GPU when there is one
    # SmolLM2-135M, fp32, 8 x 800 tokens in one pass: peak RSS 4.2 GB with it, 12.0 GB without (two such runs
    # side by side on 24 GB were OOM-killed); micro_batch_size 4 fits without it, ~1/4 less compute.
    gradient_checkpointing: bool = False
    # GRPO's log-probs by `training.prefix.completion_logps`: the rows' common first tokens (system prompt,
    # tool schema) computed once per pass and only the loss's tokens through the LM head (TRL's fused head
    # projects every position on CPU). Same log-probs up to float summation order (tests/test_grpo_prefix.py).
    # Needs gradient_checkpointing off; a model whose head scales its logits falls back to TRL's function.
    shared_prefix: bool = True
    # Rollouts per forward/backward pass (TRL engine), at most: a step's prompts_per_step x group_size rollouts
    # are trained in equal micro-batches of rows of neighbouring length (the largest divisor of the step's
    # rollouts not above this), each cut to its own longest row, gradients summed into one update. None: the
    # whole step in one pass.
    micro_batch_size: PositiveInt | None = None

    _auto_bf16 = field_validator("bf16", mode="before")(resolve_bf16)
    _prefix_check = model_validator(mode="after")(_prefix_needs_full_activations("grpo"))

    @property
    def reward_terms(self) -> dict[str, float]:
        """`AgentProtocol.reward`'s keyword arguments: the named deviations from Search-R1's exact match."""
        return {"format_reward": self.format_reward, "invalid_call_penalty": self.invalid_call_penalty}

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def micro_batches(self) -> int:
        """Forward/backward passes per step (equal ones: TRL splits a step's rollouts evenly)."""
        rows = self.rollouts_per_step
        cap = min(self.micro_batch_size or rows, rows)
        return rows // max(d for d in range(1, cap + 1) if rows % d == 0)


class VerlConfig(Section):
    """verl 0.9.1's GRPO run, as Search-R1 trained (Qwen2.5-3B, 8 GPUs).

    Defaults are Search-R1's values (its `train_grpo.sh`, and the defaults of its own verl fork's
    `ppo_trainer.yaml` that the script keeps) wherever verl 0.9.1 has the same knob. The learning rate,
    KL coefficient, group size, temperature, top-p, steps and save interval live in `grpo`; the turn
    budget, per-turn cap and observation length in `agent` (the agent protocol's budgets). Every
    rendered value that differs from Search-R1 must be named in `deviations` with its reason
    (`searchr1.training.verl_plugins.search_r1_reference` holds Search-R1's values; rendering refuses
    an unnamed difference).
    """

    n_gpus_per_node: PositiveInt = 8
    nnodes: PositiveInt = 1
    ray_address: str | None = None  # None = start a local Ray; "auto" or host:port joins a cluster (RAY_ADDRESS)
    rollout_engine: Literal["vllm", "sglang"] = "vllm"
    train_batch_size: PositiveInt = 512  # prompts per step
    val_batch_size: PositiveInt = 256
    # verl 0.9.1 counts this in prompts and multiplies it by rollout.n; Search-R1's fork counted samples
    # (256 of 512 x 5 = 2,560: 10 optimizer updates per step). 512 / 10 is not whole, and the samples of an
    # update must split evenly over the GPUs, so: 64 prompts (320 samples), 8 updates per step.
    ppo_mini_batch_size: PositiveInt = 64
    ppo_micro_batch_size_per_gpu: PositiveInt = 8  # Search-R1: ppo_micro_batch_size=64 over 8 GPUs
    log_prob_micro_batch_size_per_gpu: PositiveInt = 8  # throughput only
    ppo_epochs: PositiveInt = 1
    max_prompt_length: PositiveInt = 4096
    max_model_len: PositiveInt = 15000  # vLLM context: prompt + the whole multi-turn response
    lr_warmup_steps_ratio: float = Field(0.285, ge=0, lt=1)
    kl_loss_type: str = "low_var_kl"
    entropy_coeff: NonNegativeFloat = 0.001  # Search-R1's ppo_trainer.yaml (train_grpo.sh keeps it)
    clip_ratio: PositiveFloat = 0.2
    grad_clip: PositiveFloat = 1.0
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1)
    tensor_model_parallel_size: PositiveInt = 1
    gradient_checkpointing: bool = True
    param_offload: bool = False  # actor params + optimizer in CPU RAM (memory only; Search-R1: true)
    ref_param_offload: bool = True
    test_freq: int = 50
    val_before_train: bool = False  # evaluation is its own stage here
    total_epochs: PositiveInt = 15  # total_training_steps (grpo.steps) stops first
    # verl's own loggers: "mlflow" writes into the train stage's MLflow run (MLFLOW_RUN_ID); the console
    # lines are still read for the stage's committed metric series (the report's curves).
    logger: tuple[str, ...] = ("console", "mlflow")
    # name (a row of search_r1_reference.SEARCH_R1) -> why this run differs from Search-R1 there
    deviations: dict[str, str] = {}
    check_deviations: bool = True  # refuse to render a difference from Search-R1 that `deviations` does not explain
    extra_overrides: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _fits(self) -> "VerlConfig":
        if self.train_batch_size % self.ppo_mini_batch_size:
            raise ValueError(f"training.verl.ppo_mini_batch_size ({self.ppo_mini_batch_size}) must divide "
                             f"training.verl.train_batch_size ({self.train_batch_size}): verl pads the batch otherwise")
        if self.max_model_len <= self.max_prompt_length:
            raise ValueError(f"training.verl.max_model_len ({self.max_model_len}) leaves no room for a response "
                             f"after max_prompt_length ({self.max_prompt_length})")
        for name, reason in self.deviations.items():
            if not str(reason).strip():
                raise ValueError(f"training.verl.deviations.{name}: give the reason for the deviation")
        return self


class TrainingConfig(Section):
    engine: Literal["trl", "verl"] = "trl"
    warm_start: WarmStartConfig = WarmStartConfig()
    grpo: GRPOConfig = GRPOConfig()
    verl: VerlConfig = VerlConfig()

    @model_validator(mode="after")
    def _batches(self) -> "TrainingConfig":
        if self.engine == "verl" and self.grpo.refill_rounds:
            raise ValueError("training.grpo.refill_rounds: the TRL engine's option; with engine 'verl' set it to 0")
        if self.engine == "verl" and self.grpo.warmup_first_step_moves:
            raise ValueError("training.grpo.warmup_first_step_moves: the TRL engine's option (verl's warmup is "
                             "training.verl.lr_warmup_steps_ratio, first step at lr 0); with engine 'verl' set it "
                             "to false")
        if self.grpo.save_every > self.grpo.steps:
            raise ValueError(f"grpo.save_every ({self.grpo.save_every}) > grpo.steps "
                             f"({self.grpo.steps}): no checkpoint would be written")
        return self
