"""Benchmark: seconds per warm-start step, same policy, same traces, same batches.

Baseline ("checkpointed"): the warm start as it ran before training.warm_start.shared_prefix: gradient
checkpointing on, every row through the whole model. Candidates: "plain" (checkpointing off) and
"shared-prefix" (checkpointing off, the rows' common first tokens, the system prompt and tool schema, computed
once per batch: the default), and "shared-prefix-bf16" (the same under bf16 autocast: training.warm_start.bf16,
on where the CPU has native bf16). Each starts from the same weights (a fresh model), trains --steps steps on the
same batches of the tiny profile's traces (the synthetic world, the real tokenizer and template), one after
the other in this process; the first step is dropped (warm-up) and the median of the rest is quoted. Also
prints the largest difference of each step's loss from the baseline's (the same function of the weights, up
to float summation order).

    python benchmarks/bench_warm_start.py [--steps 5] [--config configs/tiny.yaml] [--policy DIR]
    python benchmarks/bench_warm_start.py --variants shared-prefix,shared-prefix-bf16   # bf16 against fp32
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name: (gradient checkpointing, shared prefix, bf16 autocast)
    "checkpointed": (True, False, False),
    "plain": (False, False, False),
    "shared-prefix": (False, True, False),
    "shared-prefix-bf16": (False, True, True),
}


class Workload(NamedTuple):
    """The tiny profile's warm-start batches: what every variant here (and bench_allocator.py) trains on."""
    path: Path | str
    pad_id: int
    examples: list[tuple[list[int], list[int]]]
    batches: list[list[int]]
    ws: Any  # the config's training.warm_start section


def load_workload(config: Path, policy: Path | None, steps: int) -> Workload:
    """`steps` batches of the tiny profile's traces (the synthetic world, the real tokenizer and template)."""
    from transformers import AutoTokenizer

    from searchr1.agent.prompts import tools_for
    from searchr1.config import load_config
    from searchr1.corpus.synthetic import build_questions, build_world, render_passages
    from searchr1.models import resolve_policy
    from searchr1.training.search_tool import WordOverlapSearcher
    from searchr1.training.warmstart import build_traces, length_batches, tokenize_trace

    cfg = load_config(config)
    ws = cfg.training.warm_start
    path = policy or resolve_policy(cfg.policy, ROOT / "artifacts")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    world_cfg = cfg.corpus.synthetic
    world = build_world(world_cfg)
    questions = {k: v["train"] for k, v in build_questions(world, world_cfg).items()}
    searcher = WordOverlapSearcher([p for _, p in render_passages(world, world_cfg.seed)])
    traces, _ = build_traces(questions, searcher, tok, cfg, ws.batch_size * steps)
    tools = tools_for("tool_call")
    examples = [tokenize_trace(tok, t, tools) for t in traces]
    batches = length_batches([len(ids) for ids, _ in examples], ws.batch_size, random.Random(0))[:steps]
    print(f"{len(examples)} traces, mean {statistics.mean(len(i) for i, _ in examples):.0f} tokens, batches of "
          f"{ws.batch_size}, {len(batches)} steps, policy {path}")
    return Workload(path, tok.pad_token_id, examples, batches, ws)


def main() -> None:
    import torch

    from searchr1.training.warmstart import train_step, trainable_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant; the first is dropped")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--policy", type=Path, default=None, help="an HF folder (default: the config's policy)")
    ap.add_argument("--variants", default="checkpointed,plain,shared-prefix",
                    help=f"of {', '.join(VARIANTS)}; baseline: the first")
    args = ap.parse_args()
    print(f"machine at start: load average {os.getloadavg()} on {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")
    path, pad_id, examples, batches, ws = load_workload(args.config, args.policy, args.steps)

    results: dict[str, dict] = {}
    for name in args.variants.split(","):
        checkpointing, shared, bf16 = VARIANTS[name]
        torch.manual_seed(0)
        model, opt = trainable_policy(path, ws.model_copy(update={"gradient_checkpointing": checkpointing,
                                                                  "shared_prefix": shared}))
        secs, losses, tokens = [], [], []
        for idx in batches:
            t0 = time.perf_counter()
            loss, k = train_step(model, opt, [examples[i] for i in idx], pad_id, shared_prefix=shared,
                                 bf16=bf16)
            secs.append(time.perf_counter() - t0)
            losses.append(loss)
            tokens.append(k)
        timed = secs[1:] or secs
        results[name] = {"sec": statistics.median(timed), "tps": statistics.median(
            t / s for t, s in zip(tokens[1:] or tokens, timed, strict=True)), "losses": losses}
        print(f"  {name:>14}: s/step {', '.join(f'{s:.1f}' for s in secs)}", flush=True)
        del model, opt

    base_name = next(iter(results))
    base = results[base_name]
    for name, r in results.items():
        drift = max(abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=True))
        print(f"{name:>14}: median {r['sec']:6.2f} s/step, {r['tps']:7.1f} tokens/s   "
              f"RATIO vs {base_name} {base['sec'] / r['sec']:5.2f}x   max |loss - {base_name}'s| {drift:.2e}")
    print(f"machine at end: load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
