"""Seconds per GRPO step and training tokens/s, same data, model and rollouts per step.

Baseline ("trl-tools", the default): TRL's built-in multi-turn tool loop, `GRPOTrainer(tools=[search])`, as
`train_grpo` ran before rollouts moved to the evaluation loop (per-turn re-tokenisation, no KV cache across
turns, completion budget 384 tokens, max_turns-1 tool iterations). Ours ("searchr1"): `train_grpo`, whose
rollouts are the evaluation agent loop (`run_agent`, KV cache kept across turns) under the agent protocol.

Baseline ("trl-default"): GRPOConfig as TRL ships it (bf16 autocast off on CPU, lr 1e-6, no KL term,
no max_tool_calling_iterations limit, linear schedule, gradient checkpointing on) with only what the
run needs set: batch shape, group size, completion length, the tool, CPU. Ours ("searchr1"):
`grpo_args(cfg)` in fp32, and again with bf16 autocast. Both run `--steps` steps from the
same policy on the same prompts; each configuration runs in the same process one after the other,
and we quote the median step (the first is dropped: it warms caches).

    python benchmarks/bench_grpo_step.py --steps 4 --prompts 2 --group 4 --max-completion 128 \
        --policy artifacts/cache/warm-start/<key>/model
    python benchmarks/bench_grpo_step.py --compare bf16   # fp32 vs bf16 autocast, with log-prob drift
    python benchmarks/bench_grpo_step.py --compare trl-default   # our settings vs TRL's GRPOConfig defaults
    python benchmarks/bench_grpo_step.py --compare vllm-rollouts --steps 3 --prompts 4 --group 4 \
        --max-completion 1024 --policy <warm start>/model   # rollouts by vLLM-CPU vs by the trained model
    python benchmarks/bench_grpo_step.py --compare micro-batches --steps 2 --prompts 4 --group 4 \
        --max-completion 1024 --policy <warm start>/model   # one checkpointed pass vs length-sorted micro-batches
    python benchmarks/bench_grpo_step.py --compare shared-prefix --steps 2 --prompts 4 --group 4 \
        --max-completion 1024 --policy <warm start>/model   # TRL's log-prob function vs completion_logps
                                                            # (both: tiny.yaml's micro-batches, vLLM rollouts)
    python benchmarks/bench_grpo_step.py --compare spare-groups --steps 3 --prompts 4 --group 4 \
        --max-completion 1024 --policy <warm start>/model   # refill rounds one after another vs 2 spare groups
                                                            # in the first batch (both: vLLM rollouts, 2 rounds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(label: str, cfg, policy, data_dir: Path, searcher, overrides: dict) -> dict:
    from searchr1.training.grpo import train_grpo

    with tempfile.TemporaryDirectory(prefix=f"bench-grpo-{label}-") as tmp:
        res = train_grpo(policy, data_dir, searcher, cfg, Path(tmp), trl_overrides=overrides)
    hist = res["history"][1:] or res["history"]  # the first step also warms caches: drop it when we can
    sec = statistics.median(h["perf/seconds_per_step"] for h in hist)
    tps = statistics.median(h["perf/tokens_per_s"] for h in hist)
    roll = [h["perf/rollout_seconds"] for h in hist if "perf/rollout_seconds" in h]
    gen = f", rollouts {statistics.median(roll):6.1f} s of it" if roll else ""
    # the trainer's share (log-probs, loss, backward, optimiser): what --compare micro-batches changes
    train = [h["perf/seconds_per_step"] - h.get("perf/rollout_seconds", 0.0) for h in res["history"]]
    print(f"{label:>12}: median {sec:7.1f} s/step{gen}, {tps:7.1f} tokens/s over {len(hist)} step(s); "
          f"trainer s per step {', '.join(f'{t:.1f}' for t in train)}")
    return {"sec": sec, "tps": tps, "train": statistics.median(train)}


def run_trl_tool_loop(cfg, policy, data_dir: Path, searcher) -> dict:
    """The baseline: the same GRPO settings, rollouts by TRL's own tool loop over a function tool."""
    import time

    from datasets import Dataset

    from searchr1.agent.protocol import AgentProtocol
    from searchr1.training.data import read_trl_rows
    from searchr1.training.grpo import grpo_args, load_for_training

    proto = AgentProtocol.from_config(cfg.agent)
    model, tok = load_for_training(policy, cfg)

    def search(query_list: list[str]):
        """Search a Wikipedia passage index and return the most relevant passages.

        Args:
            query_list: Fully-formed semantic queries.
        """
        return proto.observation(searcher.search(proto.queries_from_arguments({"query_list": query_list}),
                                                 proto.topk), tok)

    def exact_match(prompts, completions, golden_answers, **_):
        own = ["".join(str(m.get("content") or "") for m in c if m.get("role") == "assistant") for c in completions]
        return [proto.reward(text, g) for text, g in zip(own, golden_answers, strict=True)]

    rows = [{**r, "prompt": proto.messages(r["prompt"])} for r in read_trl_rows(data_dir)]
    steps: list[float] = []

    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            steps.append(time.perf_counter() - self.t0)

    from trl import GRPOTrainer

    with tempfile.TemporaryDirectory(prefix="bench-grpo-trl-tools-") as tmp:
        args = grpo_args(cfg, Path(tmp), max_completion_length=384, max_tool_calling_iterations=cfg.agent.max_turns - 1,
                         shuffle_dataset=False, save_strategy="no")
        trainer = GRPOTrainer(model=model, reward_funcs=[exact_match], args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok, tools=[search], callbacks=[Timer()])
        trainer.train()
    hist = steps[1:] or steps
    sec = statistics.median(hist)
    print(f"{'trl-tools':>12}: median {sec:7.1f} s/step over {len(hist)} step(s)")
    return {"sec": sec, "tps": float("nan")}


def logprob_drift(policy: Path, traces: list, tools) -> str:
    """How far bf16 autocast moves the trained tokens' log-probs from fp32, on real warm-start traces.

    PPO/GRPO clips the ratio exp(logp_new - logp_old) at 1 +/- 0.2, so a drift well under 0.2 is harmless.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.training.warmstart import IGNORE, tokenize_trace

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    diffs = []
    for messages in traces:
        ids, labels = tokenize_trace(tok, messages, tools)
        x, y = torch.tensor([ids]), torch.tensor(labels[1:])
        keep = y != IGNORE
        lp = {}
        for bf16 in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=x).logits[0, :-1].float()
            lp[bf16] = logits.log_softmax(-1)[keep].gather(-1, y[keep, None])[:, 0]
        diffs.append((lp[True] - lp[False]).abs())
    d = torch.cat(diffs)
    return (f"bf16 vs fp32 log-prob of {d.numel()} trained tokens in {len(traces)} traces: "
            f"median |diff| {d.median():.4f}, p99 {d.quantile(0.99):.4f}, max {d.max():.4f} "
            f"(PPO clip range: 0.2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-completion", type=int, default=96)
    ap.add_argument("--compare", choices=["trl-tools", "trl-default", "bf16", "vllm-rollouts", "micro-batches",
                                                "shared-prefix", "spare-groups"],
                    default="trl-tools")
    ap.add_argument("--policy", type=Path, default=None,
                    help="HF folder to start from, e.g. a warm-start stage's model/ (it calls the tool, so the "
                         "steps include searches); default: the profile's base policy")
    args = ap.parse_args()

    from searchr1.config import load_config
    from searchr1.corpus.synthetic import build_questions, build_world, render_passages
    from searchr1.models import resolve_policy
    from searchr1.training.data import build_train_data
    from searchr1.training.search_tool import WordOverlapSearcher

    shape = [f"training.grpo.steps={args.steps}", f"training.grpo.save_every={args.steps}",
             f"training.grpo.prompts_per_step={args.prompts}", f"training.grpo.group_size={args.group}",
             f"agent.max_response_tokens={args.max_completion}"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*shape, "training.grpo.rollout_generator=transformers"])
    world_cfg = cfg.corpus.synthetic
    world = build_world(world_cfg)
    searcher = WordOverlapSearcher([p for _, p in render_passages(world, world_cfg.seed)])
    train = {k: v["train"][:16] for k, v in build_questions(world, world_cfg).items()}
    policy = args.policy or resolve_policy(cfg.policy, ROOT / "artifacts")
    with tempfile.TemporaryDirectory(prefix="bench-grpo-data-") as tmp:
        build_train_data(train, cfg, Path(tmp))
        if args.compare == "trl-tools":
            base = run_trl_tool_loop(cfg, policy, Path(tmp), searcher)
            ours = {"searchr1": run("searchr1", cfg, policy, Path(tmp), searcher, {})}
        elif args.compare == "trl-default":
            from trl import GRPOConfig

            d = GRPOConfig(output_dir=tmp, use_cpu=True, bf16=False)  # only its defaults are read
            base = run("trl-default", cfg, policy, Path(tmp), searcher, {
                "learning_rate": d.learning_rate, "lr_scheduler_type": d.lr_scheduler_type,
                "warmup_ratio": d.warmup_ratio, "beta": d.beta,
                "disable_dropout": d.disable_dropout, "top_p": d.top_p,
                "gradient_checkpointing": d.gradient_checkpointing})
            ours = {"searchr1": run("searchr1", cfg, policy, Path(tmp), searcher, {"bf16": False}),
                    "searchr1+bf16": run("searchr1+bf16", cfg, policy, Path(tmp), searcher, {"bf16": True})}
        elif args.compare == "micro-batches":  # step 1's rollouts are the same in both (same seed, same weights)
            base = run("one-pass", cfg, policy, Path(tmp), searcher, {"gradient_checkpointing": True})
            micro = load_config(ROOT / "configs" / "tiny.yaml", [*shape, "training.grpo.rollout_generator=transformers",
                                                                  f"training.grpo.micro_batch_size={args.group}"])
            ours = {"micro-batches": run("micro-batches", micro, policy, Path(tmp), searcher,
                                         {"gradient_checkpointing": False})}
        elif args.compare == "shared-prefix":  # the same vLLM rollouts at step 1; only the scoring differs
            vllm = [*shape, "training.grpo.rollout_generator=vllm"]
            trl_cfg = load_config(ROOT / "configs" / "tiny.yaml", [*vllm, "training.grpo.shared_prefix=false"])
            base = run("trl-logprobs", trl_cfg, policy, Path(tmp), searcher, {})
            ours = {"shared-prefix": run("shared-prefix", load_config(ROOT / "configs" / "tiny.yaml", vllm), policy,
                                         Path(tmp), searcher, {})}
        elif args.compare == "spare-groups":  # different draws: compare the rollout seconds, not the updates
            vllm = [*shape, "training.grpo.rollout_generator=vllm"]
            base = run("refill-rounds", load_config(ROOT / "configs" / "tiny.yaml", vllm), policy, Path(tmp),
                       searcher, {})
            spare_cfg = load_config(ROOT / "configs" / "tiny.yaml", [*vllm, "training.grpo.spare_groups=2"])
            ours = {"spare-groups": run("spare-groups", spare_cfg, policy, Path(tmp), searcher, {})}
        elif args.compare == "vllm-rollouts":
            base = run("transformers", cfg, policy, Path(tmp), searcher, {})
            vllm_cfg = load_config(ROOT / "configs" / "tiny.yaml", [*shape, "training.grpo.rollout_generator=vllm"])
            ours = {"vllm": run("vllm", vllm_cfg, policy, Path(tmp), searcher, {})}
        else:
            from transformers import AutoTokenizer

            from searchr1.agent.prompts import tools_for
            from searchr1.training.warmstart import build_traces

            traces, _ = build_traces(train, searcher, AutoTokenizer.from_pretrained(policy), cfg, 16)
            print(logprob_drift(policy, traces, tools_for("tool_call")))
            base = run("fp32", cfg, policy, Path(tmp), searcher, {"bf16": False})
            ours = {"bf16": run("bf16", cfg, policy, Path(tmp), searcher, {"bf16": True})}
    for label, r in ours.items():
        baseline = {"trl-tools": "TRL's tool loop", "trl-default": "TRL defaults", "bf16": "fp32",
                    "vllm-rollouts": "rollouts by the trained model (transformers)",
                    "micro-batches": "one checkpointed pass over the step's rollouts",
                    "shared-prefix": "TRL's log-prob function (fused LM head)",
                    "spare-groups": "refill rounds one after another"}[args.compare]
        print(f"ratio {label} vs {baseline}: {base['sec'] / r['sec']:.2f}x seconds/step, "
              f"{r['tps'] / base['tps']:.2f}x tokens/s, {base['train'] / r['train']:.2f}x trainer seconds/step")


if __name__ == "__main__":
    main()
