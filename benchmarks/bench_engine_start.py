"""Benchmark: seconds to open and close one in-process vLLM-CPU engine, or to swap a checkpoint into one.

A tiny run puts a new policy into vLLM at each of its 5 GRPO steps and 7 evaluated checkpoints. Three
comparisons, each run in one process with its baseline:

- `--compare kv-sizes` (default): baseline the KV cache tiny.yaml sized before (8 GiB); candidates the sizes in
  --kv-gib. Engines alternate (baseline, candidates, baseline, ...) on the same model, so each size sees the same
  machine state.
- `--compare after-training`: the flow trains (warm start, each GRPO step) and opens engines in one process.
  Each round first trains `--train-steps` warm-start steps (random tokens, the traces' batch and `--tokens`
  length) on a fresh copy of the policy, then opens and closes one engine; baseline: over the heap the trainer
  freed (the code before `return_freed_memory`); candidate: after `return_freed_memory` (glibc's malloc_trim),
  as the evaluation now does before each checkpoint's engine. Rounds alternate baseline and candidate.

- `--compare swap`: baseline: a fresh engine per checkpoint (open, then close: the code before session 26);
  candidate: `VLLMGenerator.load_weights` into one engine held open (what GRPO and the evaluation now do). Before
  each switch the process trains `--train-steps` warm-start steps on a policy it keeps, as a GRPO step's trainer
  does beside its engine. The baseline's rounds run first, then the candidate's (one in-process engine at a time).

A first engine (imports, first load) is opened and dropped. Prints each variant's median open and close seconds
and the ratio of the baseline's open+close to each candidate's.

    python benchmarks/bench_engine_start.py --policy <warm start>/model [--rounds 3] [--kv-gib 6,4]
    python benchmarks/bench_engine_start.py --policy <warm start>/model --compare after-training --train-steps 1
    python benchmarks/bench_engine_start.py --policy <warm start>/model --compare swap --train-steps 1
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def open_close(path, agent, policy) -> tuple[float, float]:
    """(seconds to open, seconds to close and collect) one engine on `path`."""
    from searchr1.agent.generators import close_generator, make_generator

    t0 = time.perf_counter()
    gen = make_generator(path, agent, policy)
    t1 = time.perf_counter()
    close_generator(gen)
    del gen
    gc.collect()
    return t1 - t0, time.perf_counter() - t1


def kv_sizes(args, cfg, path) -> dict[str, list[tuple[float, float]]]:
    sizes = [args.baseline_gib, *(float(x) for x in args.kv_gib.split(","))]
    times: dict[str, list[tuple[float, float]]] = {f"{s:g} GiB": [] for s in sizes}
    for _ in range(args.rounds):
        for size, label in zip(sizes, times, strict=True):
            agent = cfg.agent.model_copy(update={"vllm": cfg.agent.vllm.model_copy(update={"cpu_kv_cache_gib": size})})
            times[label].append(open_close(path, agent, cfg.policy))
    return times


def after_training(args, cfg, path) -> dict[str, list[tuple[float, float]]]:
    from searchr1.agent.generators import return_freed_memory
    from searchr1.training.warmstart import trainable_policy

    ws = cfg.training.warm_start
    rng = random.Random(0)
    times: dict[str, list[tuple[float, float]]] = {"no trim": [], "malloc_trim": []}
    for _ in range(args.rounds):
        for label in times:
            model, opt = trainable_policy(path, ws)
            _train(model, opt, ws, args.train_steps, args.tokens, rng)
            del model, opt
            gc.collect()
            held = rss_gib()
            if label == "malloc_trim":
                return_freed_memory()
            times[label].append(open_close(path, cfg.agent, cfg.policy))
            print(f"{label}: held {held:.1f} GiB after training; open {times[label][-1][0]:.2f} s", flush=True)
    return times


def _train(model, opt, ws, steps: int, tokens: int, rng: random.Random) -> None:
    """`steps` warm-start steps on random tokens (the traces' batch size, `tokens` long, the last quarter trained)."""
    from searchr1.training.warmstart import IGNORE, train_step

    for _ in range(steps):
        batch = [([rng.randrange(1000, 40000) for _ in range(tokens)],
                  [rng.randrange(1000, 40000) if i > tokens * 3 // 4 else IGNORE for i in range(tokens)])
                 for _ in range(ws.batch_size)]
        train_step(model, opt, batch, 0, shared_prefix=False, bf16=bool(ws.bf16))


def swap(args, cfg, path) -> dict[str, list[tuple[float, float]]]:
    from searchr1.agent.generators import close_generator, make_generator
    from searchr1.training.warmstart import trainable_policy

    ws = cfg.training.warm_start
    rng = random.Random(0)
    vllm = cfg.agent.vllm.model_copy(update={"cpu_kv_cache_gib": cfg.training.grpo.rollout_kv_cache_gib})
    agent = cfg.agent.model_copy(update={"vllm": vllm})  # GRPO's engine: the one that lives beside a trainer
    model, opt = trainable_policy(path, ws)  # the trainer, alive beside the engine as in a GRPO step
    times: dict[str, list[tuple[float, float]]] = {"fresh engine": [], "load_weights": []}
    for _ in range(args.rounds):
        _train(model, opt, ws, args.train_steps, args.tokens, rng)
        times["fresh engine"].append(open_close(path, agent, cfg.policy))
        print(f"fresh engine: open + close {sum(times['fresh engine'][-1]):.2f} s", flush=True)
    gen = make_generator(path, agent, cfg.policy)
    try:
        for _ in range(args.rounds):
            _train(model, opt, ws, args.train_steps, args.tokens, rng)
            t0 = time.perf_counter()
            gen.load_weights(path)
            times["load_weights"].append((time.perf_counter() - t0, 0.0))
            print(f"load_weights: {times['load_weights'][-1][0]:.2f} s", flush=True)
    finally:
        close_generator(gen)
    return times


def main() -> None:
    from searchr1.config import load_config
    from searchr1.models import resolve_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=None, help="an HF folder (default: the config's policy)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--compare", choices=("kv-sizes", "after-training", "swap"), default="kv-sizes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-gib", type=float, default=8.0, help="kv-sizes: the baseline's KV cache")
    ap.add_argument("--kv-gib", default="6", help="kv-sizes: comma-separated candidate sizes")
    ap.add_argument("--train-steps", type=int, default=2,
                    help="after-training, swap: warm-start steps before each engine")
    ap.add_argument("--tokens", type=int, default=800, help="after-training, swap: tokens per training row")
    args = ap.parse_args()
    print(f"machine at start: load average {os.getloadavg()} on {os.cpu_count()} cores")
    cfg = load_config(args.config, ["agent.generator=vllm"])
    path = args.policy or resolve_policy(cfg.policy, ROOT / "artifacts")
    print(f"dropped first engine (imports, first load): {open_close(path, cfg.agent, cfg.policy)[0]:.1f} s")
    times = {"kv-sizes": kv_sizes, "after-training": after_training, "swap": swap}[args.compare](args, cfg, path)
    baseline = next(iter(times))
    base = statistics.median(o + c for o, c in times[baseline])
    print(f"\n{args.compare:>16} {'open s':>8} {'close s':>8} {'vs baseline':>12}")
    for label, runs in times.items():
        total = statistics.median(o + c for o, c in runs)
        shown = "baseline" if label == baseline else f"{base / total:.2f}x"
        print(f"{label:>16} {statistics.median(o for o, _ in runs):>8.2f} "
              f"{statistics.median(c for _, c in runs):>8.2f} {shown:>12}")


if __name__ == "__main__":
    main()
