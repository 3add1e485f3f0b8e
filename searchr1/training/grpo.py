"""GRPO with the search tool on CPU: TRL's `GRPOTrainer(tools=[search])`, our reward, our checkpoints.

What TRL does for us: samples `group_size` multi-turn completions per prompt, runs the `search`
tool between turns, masks the tool's text out of the loss (`tool_mask`), computes log-probs only
for completion tokens (`logits_to_keep`), group-normalised advantages and the KL term.
What this module adds:
- the reward: Search-R1's exact match on the LAST `<answer>` (+ an optional format term, off by
  default), which also records every rollout as a ROLLOUT_SCHEMA row per step;
- per-step metrics (reward, EM, KL, lengths, search calls, invalid calls, reflective-phrase
  ratio, tokens/s, seconds/step) through `log_metrics`, numbered by the trainer's global step;
- checkpoints as HF folders at `work_dir/checkpoints/step-XXXXXX/`, written by the Trainer under a
  staging name (with optimizer, scheduler and RNG state) and renamed into place when complete;
- resume: a new call with the same `work_dir` continues from the last complete checkpoint and
  keeps the same step numbers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from searchr1 import faults
from searchr1.agent.trace import Segment, write_rollouts
from searchr1.retrieval.base import Searcher
from searchr1.rewards import extract_answer, score
from searchr1.tracking import MetricsLogger, committed_metrics, null_logger
from searchr1.training.checkpoints import COMPLETE_MARKER, checkpoints_dir, latest_checkpoint, step_name
from searchr1.training.data import read_trl_rows
from searchr1.training.search_tool import ToolStats, make_search_tool

ROLLOUTS_DIR = "rollouts"
STAGING_DIR = ".trainer"  # the Trainer writes checkpoint-N here; we rename it into checkpoints/


# ---------------------------------------------------------------- rollouts and reward


def completion_segments(messages: Sequence[Mapping[str, Any]]) -> list[Segment]:
    """TRL's parsed completion (assistant / tool messages) as who-wrote-what segments.

    An assistant turn that called the tool is shown the way the chat template renders it, so
    `response` reads as the model's actual output.
    """
    out: list[Segment] = []
    for m in messages:
        if m.get("role") == "tool":
            out.append({"role": "tool", "text": str(m.get("content", ""))})
            continue
        text = str(m.get("content") or "")
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            text += "\n<tool_call>\n" + json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")}) \
                    + "\n</tool_call>"
        out.append({"role": "assistant", "text": text})
    return out


def rollout_stats(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts for one completion: searches, invalid calls (unparsable `<tool_call>` or a tool error), queries."""
    calls = invalid = turns = 0
    queries: list[str] = []
    for m in messages:
        if m.get("role") == "tool":
            if str(m.get("content", "")).startswith("{'error'"):
                invalid += 1
            continue
        turns += 1
        # TRL leaves a malformed call in the text instead of parsing it
        invalid += str(m.get("content") or "").count("<tool_call>")
        for call in m.get("tool_calls") or []:
            calls += 1
            args = call.get("function", call).get("arguments") or {}
            q = args.get("query_list") if isinstance(args, dict) else None
            queries += [str(x) for x in q] if isinstance(q, list) else ([str(q)] if q else [])
    return {"search_calls": calls, "invalid_calls": invalid, "turns": turns, "queries": queries}


class SearchR1Reward:
    """The reward function TRL calls once per generation batch (= once per step here).

    Returns exact match (+ `format_reward` for a well-formed but wrong `<answer>`), and as a side
    effect writes that step's rollouts and keeps its rollout-level metrics for the step logger.
    """

    __name__ = "exact_match"  # TRL names the reward column after it

    def __init__(self, work_dir: Path, format_reward: float, tokenizer, eos_token_ids: Sequence[int]):
        self.rollouts_dir = Path(work_dir) / ROLLOUTS_DIR
        self.format_reward = format_reward
        self.tokenizer = tokenizer
        self.eos = set(eos_token_ids)
        self.pending: dict[int, dict[str, float]] = {}

    def __call__(self, prompts, completions, completion_ids=None, golden_answers=None, question_id=None,
                 benchmark=None, question=None, trainer_state=None, **_: Any) -> list[float]:
        step = (trainer_state.global_step if trainer_state is not None else 0) + 1
        rewards, rows = [], []
        for i, messages in enumerate(completions):
            segments = completion_segments(messages)
            own = "".join(s["text"] for s in segments if s["role"] == "assistant")
            pred = extract_answer(own)
            s = score(pred, golden_answers[i])
            stats = rollout_stats(messages)
            ids = completion_ids[i] if completion_ids is not None else []
            if pred is not None:
                stop = "answer"
            elif ids and ids[-1] not in self.eos:
                stop = "max_tokens"
            else:
                stop = "max_turns" if stats["search_calls"] else "no_action"
            rewards.append(s["em"] if s["em"] else (self.format_reward if pred is not None else 0.0))
            rows.append({
                "checkpoint": "train", "step": step, "method": "search_agent", "benchmark": benchmark[i],
                "question_id": question_id[i], "question": question[i] if question else "",
                "golden_answers": list(golden_answers[i]), "prediction": pred or "", **s,
                "turns": stats["turns"], "search_calls": stats["search_calls"],
                "invalid_calls": stats["invalid_calls"], "queries": stats["queries"], "doc_ids": [],
                "segments": segments, "response": "".join(x["text"] for x in segments),
                "gen_tokens": len(self.tokenizer(own, add_special_tokens=False)["input_ids"]),
                "stop_reason": stop})
        write_rollouts(rows, self.rollouts_dir / f"{step_name(step)}.parquet")
        self.pending[step] = step_metrics(rows)
        return rewards


def step_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Rollout-level numbers for one step (TRL logs reward/KL/lengths itself)."""
    from searchr1.reflection.detect import reflective_ratio

    n = len(rows)
    em = [r["em"] for r in rows]
    return {
        "em": sum(em) / n,
        "f1": sum(r["f1"] for r in rows) / n,
        "search/calls_per_rollout": sum(r["search_calls"] for r in rows) / n,
        "search/rollouts_with_search": sum(r["search_calls"] > 0 for r in rows) / n,
        "search/invalid_calls_per_rollout": sum(r["invalid_calls"] for r in rows) / n,
        "answer_rate": sum(r["prediction"] != "" for r in rows) / n,
        "response/gen_tokens": statistics.mean(r["gen_tokens"] for r in rows),
        "reflection/ratio": reflective_ratio([r["segments"] for r in rows]),
    }


# ---------------------------------------------------------------- trainer pieces


def _trainer_classes():
    """Imported lazily: TRL pulls in torch/transformers, which `list_checkpoints` users do not need."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class StepLogger(TrainerCallback):
        """Per-step metrics, named for humans, through `log_metrics` at the trainer's global step."""

        RENAME = {"reward": "reward/mean", "reward_std": "reward/std", "kl": "kl", "loss": "loss",
                  "entropy": "entropy", "learning_rate": "lr", "frac_reward_zero_std": "reward/frac_zero_std_groups",
                  "completions/mean_length": "response/length_mean", "completions/max_length": "response/length_max",
                  "completions/clipped_ratio": "response/clipped_ratio",
                  "tools/call_frequency": "tools/calls_per_rollout",
                  "tools/failure_frequency": "tools/failure_rate", "grad_norm": "grad_norm"}

        def __init__(self, reward: SearchR1Reward, log_metrics: MetricsLogger, tool_stats: ToolStats):
            self.reward, self.log_metrics, self.tool_stats = reward, log_metrics, tool_stats
            self.t0 = 0.0
            self.tokens0 = 0
            self.timing: dict[int, dict[str, float]] = {}
            self.history: list[dict[str, float]] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen
            self.tool_stats.reset()

        def on_step_end(self, args, state, control, **kw):
            seconds = time.perf_counter() - self.t0
            tokens = state.num_input_tokens_seen - self.tokens0
            self.timing[state.global_step] = {"perf/seconds_per_step": seconds, "perf/tokens": tokens,
                                              "perf/tokens_per_s": tokens / seconds if seconds else math.nan,
                                              "perf/search_seconds": self.tool_stats.seconds}
            if state.global_step >= state.max_steps:
                control.should_save = True  # always leave a checkpoint of the last step
            faults.point("train.after_step")

        def on_log(self, args, state, control, logs=None, **kw):
            step = state.global_step
            if step == 0 or "train_runtime" in (logs or {}):
                return  # the summary line at the end of train()
            metrics = {new: float(logs[old]) for old, new in self.RENAME.items() if old in (logs or {})}
            metrics.update(self.reward.pending.pop(step, {}))
            metrics.update(self.timing.pop(step, {}))
            self.log_metrics(metrics, step)
            self.history.append({"step": step, **metrics})

    class CheckpointingGRPOTrainer(GRPOTrainer):
        """Publishes each Trainer checkpoint atomically as `checkpoints/step-XXXXXX/`."""

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)  # -> <output_dir>/checkpoint-<step>, model + optimizer + RNG
            faults.point("train.mid_checkpoint")  # written but not yet published
            step = self.state.global_step
            staged = Path(self.args.output_dir) / f"checkpoint-{step}"
            marker = {"step": step, "time": time.time(),
                      "log": [h for h in self.state.log_history if h.get("step") == step]}
            (staged / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, default=str))
            final = checkpoints_dir(Path(self.args.output_dir).parent) / step_name(step)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)

    return StepLogger, CheckpointingGRPOTrainer


def grpo_args(cfg, work_dir: Path, **overrides: Any):
    """TRL's GRPOConfig from ours. `overrides` lets the benchmark compare against TRL's defaults."""
    from trl import GRPOConfig as TRLConfig

    g, agent = cfg.training.grpo, cfg.agent
    kwargs: dict[str, Any] = dict(
        output_dir=str(Path(work_dir) / STAGING_DIR),
        max_steps=g.steps,
        per_device_train_batch_size=g.prompts_per_step * g.group_size,  # counted in completions
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=g.group_size,
        learning_rate=g.learning_rate,
        lr_scheduler_type="constant_with_warmup",  # Search-R1: constant lr after a warmup ratio
        warmup_ratio=g.warmup_ratio,
        beta=g.kl_coef,
        temperature=g.temperature,
        top_p=1.0,
        max_completion_length=g.max_completion_length,
        max_tool_calling_iterations=max(agent.max_turns - 1, 1),
        bf16=g.bf16,
        gradient_checkpointing=g.gradient_checkpointing,
        use_cpu=g.device == "cpu",
        save_strategy="steps",
        save_steps=g.save_every,
        save_only_model=False,  # optimizer, scheduler and RNG state, for resume
        logging_steps=1,
        report_to="none",
        seed=cfg.run.seed,
        data_seed=cfg.run.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    kwargs.update(overrides)
    return TRLConfig(**kwargs)


def load_for_training(policy_path: Path | str, cfg):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=cfg.policy.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # Weights stay float32 for the optimizer; `grpo.bf16` only switches on autocast.
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32,
                                                 trust_remote_code=cfg.policy.trust_remote_code)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def train_grpo(policy_path: Path | str, train_data_dir: Path, searcher: Searcher, cfg, work_dir: Path,
               log_metrics: MetricsLogger = null_logger, *, trl_overrides: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """Run (or resume) GRPO; returns a summary with the checkpoints written and the last step's metrics."""
    from datasets import Dataset

    if cfg.agent.prompt_style != "tool_call":
        raise NotImplementedError(
            f"agent.prompt_style={cfg.agent.prompt_style!r}: the TRL engine trains the tool_call style "
            f"(the `search_r1` tag style needs TRL's experimental rollout_func; use the verl engine for it)")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work_dir / STAGING_DIR, ignore_errors=True)  # a killed run's half-written checkpoint
    resume = latest_checkpoint(work_dir)
    if resume and resume[0] >= cfg.training.grpo.steps:
        # Killed after the last checkpoint: HF's Trainer, resumed at max_steps, would train one step more.
        return {"engine": "trl", "steps": resume[0], "resumed_from_step": resume[0], "seconds": 0.0,
                "checkpoints": [str(p) for _, p in _published(work_dir)],
                "last": (committed_metrics(work_dir) or [{}])[-1], "history": []}
    rows = read_trl_rows(train_data_dir)
    model, tok = load_for_training(policy_path, cfg)
    stats = ToolStats()
    tool = make_search_tool(searcher, cfg.agent.topk, cfg.agent.max_obs_tokens, tok,
                            cfg.agent.max_queries_per_call, cfg.agent.max_query_chars, stats)
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    reward = SearchR1Reward(work_dir, cfg.training.grpo.format_reward, tok, [e for e in eos if e is not None])
    StepLogger, Trainer = _trainer_classes()
    logger = StepLogger(reward, log_metrics, stats)
    args = grpo_args(cfg, work_dir, **dict(trl_overrides or {}))
    trainer = Trainer(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tok, tools=[tool], callbacks=[logger])
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
    ckpts = [str(p) for _, p in _published(work_dir)]
    last = logger.history[-1] if logger.history else {}
    return {"engine": "trl", "steps": trainer.state.global_step, "resumed_from_step": resume[0] if resume else 0,
            "seconds": time.perf_counter() - t0, "checkpoints": ckpts, "last": last,
            "history": logger.history}


def _published(work_dir: Path):
    from searchr1.training.checkpoints import list_checkpoints

    return list_checkpoints(work_dir)
