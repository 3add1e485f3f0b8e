"""Search-R1's GRPO hyperparameters, and the rendered verl run held against them.

Values from PeterGriffinJin/Search-R1 (HEAD a14dc3a): `train_grpo.sh` ("sh"), and the defaults of its
own verl fork's `verl/trainer/config/ppo_trainer.yaml` that the script keeps ("yaml"). Each row says
where the rendered run has the value: a verl override key, a field of the agent protocol the agent
loop runs (`agent:<field>`), or a value derived from the overrides (`derived:<name>`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from searchr1 import markdown


@dataclass(frozen=True)
class Reference:
    name: str
    search_r1: Any
    source: str  # where Search-R1 sets it
    where: str   # where the rendered run has it


A, R = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout."
SEARCH_R1: tuple[Reference, ...] = (
    Reference("base model", "Qwen/Qwen2.5-3B", "sh BASE_MODEL (the -Instruct runs are commented alternatives)",
              "actor_rollout_ref.model.path"),
    Reference("prompt style", "search_r1", "the <search>/<information> prompt of scripts/data_process/nq_search.py",
              "agent:style"),
    Reference("prompts per step", 512, "sh data.train_batch_size", "data.train_batch_size"),
    Reference("validation batch", 256, "sh data.val_batch_size", "data.val_batch_size"),
    Reference("max prompt tokens", 4096, "sh data.max_prompt_length", "data.max_prompt_length"),
    Reference("shuffle training data", True, "sh data.shuffle_train_dataloader", "data.shuffle"),
    Reference("advantage estimator", "grpo", "sh algorithm.adv_estimator", "algorithm.adv_estimator"),
    Reference("KL in reward", False, "fork: with use_kl_loss the reward gets no KL penalty",
              "algorithm.use_kl_in_reward"),
    Reference("rollouts per prompt", 5, "sh rollout.n_agent", R + "n"),
    Reference("temperature", 1.0, "sh rollout.temperature", R + "temperature"),
    Reference("top-p", 0.95, "yaml rollout.top_p", R + "top_p"),
    Reference("top-k", -1, "yaml rollout.top_k", R + "top_k"),
    Reference("search rounds", 2, "sh max_turns (then one final turn without search)", "derived:search rounds"),
    Reference("tokens per turn", 500, "sh data.max_response_length", "agent:max_new_tokens"),
    Reference("observation tokens", 500, "sh data.max_obs_length", "agent:max_obs_tokens"),
    Reference("passages per query", 3, "sh retriever.topk", "agent:topk"),
    Reference("format reward", 0.0, "fork's qa_em compute_score(format_score=0)",
              "+reward.custom_reward_function.reward_kwargs.format_reward"),
    Reference("invalid-call penalty", 0.0, "fork's qa_em: EM only (its qa_em_format takes structure_format_score "
              "off a right answer in an invalid sequence)",
              "+reward.custom_reward_function.reward_kwargs.invalid_call_penalty"),
    Reference("learning rate", 1e-6, "sh actor.optim.lr", A + "optim.lr"),
    Reference("warm-up ratio", 0.285, "sh actor.optim.lr_warmup_steps_ratio", A + "optim.lr_warmup_steps_ratio"),
    Reference("LR schedule", "constant", "yaml actor.optim.warmup_style", A + "optim.lr_scheduler_type"),
    Reference("KL loss", True, "sh actor.use_kl_loss", A + "use_kl_loss"),
    Reference("KL coefficient", 0.001, "sh actor.kl_loss_coef", A + "kl_loss_coef"),
    Reference("KL estimator", "low_var_kl", "sh actor.kl_loss_type", A + "kl_loss_type"),
    Reference("entropy coefficient", 0.001, "yaml actor.entropy_coeff", A + "entropy_coeff"),
    Reference("clip ratio", 0.2, "yaml actor.clip_ratio", A + "clip_ratio"),
    Reference("gradient clip", 1.0, "yaml actor.grad_clip", A + "optim.clip_grad"),
    Reference("PPO epochs", 1, "yaml actor.ppo_epochs", A + "ppo_epochs"),
    Reference("shuffle mini-batches", False, "yaml actor.shuffle", A + "shuffle"),
    Reference("loss aggregation", "token-mean", "fork: masked mean over the mini-batch's tokens", A + "loss_agg_mode"),
    Reference("samples per update", 256, "sh actor.ppo_mini_batch_size (samples; the fork multiplies by n=1)",
              "derived:samples per update"),
    Reference("updates per step", 10, "512 x 5 samples / 256", "derived:updates per step"),
    Reference("micro-batch per GPU", 8, "sh actor.ppo_micro_batch_size=64 over 8 GPUs",
              A + "ppo_micro_batch_size_per_gpu"),
    Reference("gradient checkpointing", True, "sh model.enable_gradient_checkpointing",
              "actor_rollout_ref.model.enable_gradient_checkpointing"),
    Reference("remove padding", True, "sh model.use_remove_padding", "actor_rollout_ref.model.use_remove_padding"),
    Reference("actor offload", True, "sh actor.fsdp_config.param_offload/optimizer_offload",
              A + "fsdp_config.param_offload"),
    Reference("reference offload", True, "sh ref.fsdp_config.param_offload",
              "actor_rollout_ref.ref.fsdp_config.param_offload"),
    Reference("rollout engine", "vllm", "sh rollout.name", R + "name"),
    Reference("tensor parallel", 1, "sh rollout.tensor_model_parallel_size", R + "tensor_model_parallel_size"),
    Reference("GPU memory for vLLM", 0.6, "sh rollout.gpu_memory_utilization", R + "gpu_memory_utilization"),
    Reference("validate before training", True, "sh +trainer.val_before_train", "trainer.val_before_train"),
    Reference("training steps", 1005, "sh trainer.total_training_steps", "trainer.total_training_steps"),
    Reference("epochs", 15, "sh trainer.total_epochs", "trainer.total_epochs"),
    Reference("save every", 100, "sh trainer.save_freq", "trainer.save_freq"),
    Reference("validate every", 50, "sh trainer.test_freq", "trainer.test_freq"),
    Reference("GPUs per node", 8, "sh trainer.n_gpus_per_node", "trainer.n_gpus_per_node"),
    Reference("nodes", 1, "sh trainer.nnodes", "trainer.nnodes"),
)
NAMES = frozenset(r.name for r in SEARCH_R1)


@dataclass(frozen=True)
class Compared:
    ref: Reference
    rendered: Any
    reason: str | None  # the config's stated reason, when it differs

    @property
    def same(self) -> bool:
        return same_value(self.ref.search_r1, self.rendered)


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def typed(value: str) -> Any:
    """An override's value as hydra types it (YAML, plus floats such as 1e-06 that YAML 1.1 reads as text)."""
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def rendered_values(overrides: list[str], protocol: Mapping[str, Any]) -> dict[str, Any]:
    """Each reference row's value in a rendered run (overrides parsed as hydra would type them)."""
    ov = {}
    for item in overrides:
        key, _, value = item.partition("=")
        ov[key] = typed(value)
    n, prompts, mini = ov[R + "n"], ov["data.train_batch_size"], ov[A + "ppo_mini_batch_size"]
    derived = {"search rounds": int(protocol["max_turns"]) - 1,  # the last turn cannot search
               "samples per update": mini * n,  # verl 0.9.1 counts ppo_mini_batch_size in prompts
               "updates per step": prompts * n // (mini * n) * int(ov.get(A + "ppo_epochs", 1))}
    out = {}
    for ref in SEARCH_R1:
        kind, _, name = ref.where.partition(":")
        if kind == "agent" and name:
            out[ref.name] = protocol[name]
        elif kind == "derived" and name:
            out[ref.name] = derived[name]
        elif ref.where in ov:
            out[ref.name] = ov[ref.where]
        else:
            raise KeyError(f"the rendered run has no {ref.where!r} (reference row {ref.name!r})")
    return out


def compare(overrides: list[str], protocol: Mapping[str, Any], deviations: Mapping[str, str]) -> list[Compared]:
    values = rendered_values(overrides, protocol)
    return [Compared(ref, values[ref.name], deviations.get(ref.name)) for ref in SEARCH_R1]


def problems(rows: list[Compared], deviations: Mapping[str, str]) -> list[str]:
    """Differences without a stated reason, and stated deviations that are not (or no longer) one."""
    out = [f"{r.ref.name}: Search-R1 {r.ref.search_r1!r} ({r.ref.source}), this run {r.rendered!r}; "
           f"say why under training.verl.deviations" for r in rows if not r.same and not r.reason]
    out += [f"training.verl.deviations.{name}: not a row of the Search-R1 reference table"
            for name in deviations if name not in NAMES]
    out += [f"training.verl.deviations.{r.ref.name}: this run has Search-R1's value ({r.rendered!r})"
            for r in rows if r.same and r.reason]
    return out


def markdown_table(rows: list[Compared]) -> str:
    return markdown.table(["hyperparameter", "Search-R1", "rendered verl run", "why different"],
                          [(r.ref.name, r.ref.search_r1, r.rendered, "" if r.same else r.reason) for r in rows]) + "\n"
