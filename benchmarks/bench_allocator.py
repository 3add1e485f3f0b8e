"""Benchmark: the process's memory allocator, on the tiny profile's warm-start steps.

A CPU training step allocates and frees the same large activations every step (attention scores, MLP
activations: tens to hundreds of MB each). glibc's malloc serves anything above 32 MB with a fresh mmap and
unmaps it on free, so every step faults every such page in again (4 KB at a time) and the kernel zeroes it:
measured during `make run`'s warm start, 12% of the process's CPU time was system time, ~30k minor faults a
second. Each variant runs the same `--steps` warm-start steps (tiny.yaml's: shared prefix, bf16 where native)
from the same weights in a fresh child process, since the allocator is chosen when a process starts:

  glibc           the baseline: the environment as a user's shell has it (no GLIBC_TUNABLES, no LD_PRELOAD)
  glibc-thp       GLIBC_TUNABLES=glibc.malloc.hugetlb=1: malloc asks for transparent huge pages (2 MB faults)
  glibc-thp-heap  the same, the mmap threshold fixed at its 32 MB maximum and the heap never trimmed
  jemalloc        LD_PRELOAD of the libjemalloc searchr1.allocator finds; jemalloc-keep: never decays, THP
  mimalloc        the same with libmimalloc; mimalloc-keep: no purge, huge pages (what searchr1 run preloads);
                  mimalloc-1s: a 1 s purge delay; mimalloc-lazy: purges by MADV_FREE, not decommit

The rounds run the variants round-robin (a host's drift falls on all of them); each child's first step is
dropped (warm-up) and the median over rounds of the rest's total is quoted, with the minor page faults and system
CPU seconds per step, and every variant's losses are checked against the baseline's (an allocator must not
change a single bit). Measured 2026-12-08 on a 2-core Xeon (AMX), rounds interleaved: mimalloc-keep 1.29x and
1.22x (two runs of two rounds); mimalloc as it ships 0.73x (it purges freed pages: 285k faults a step), and so
does a 1 s purge delay (mimalloc-1s 0.74x); mimalloc-lazy (purges by MADV_FREE) 1.15x; glibc-thp 0.96-1.15x;
jemalloc-keep 1.11x at 18.9 GB.

    python benchmarks/bench_allocator.py [--steps 6] [--repeats 2] [--variants glibc,mimalloc-keep,glibc-thp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from searchr1.allocator import MIMALLOC_OPTIONS, find_preload  # noqa: E402


def child(config: Path, policy: Path | None, steps: int) -> None:
    """Train `steps` warm-start steps in this process; one JSON line on stdout."""
    import torch
    from bench_warm_start import load_workload

    from searchr1.training.warmstart import train_step, trainable_policy

    path, pad_id, examples, batches, ws = load_workload(config, policy, steps)
    torch.manual_seed(0)
    model, opt = trainable_policy(path, ws)
    secs, losses, faults, sys_s = [], [], [], []
    for idx in batches:
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        loss, _ = train_step(model, opt, [examples[i] for i in idx], pad_id, shared_prefix=ws.shared_prefix,
                             bf16=ws.bf16)
        after = resource.getrusage(resource.RUSAGE_SELF)
        secs.append(time.perf_counter() - t0)
        losses.append(loss)
        faults.append(after.ru_minflt - before.ru_minflt)
        sys_s.append(after.ru_stime - before.ru_stime)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps({"secs": secs, "losses": losses, "faults": faults, "sys": sys_s,
                                  "peak_gb": peak_gb}), flush=True)


# name: (library to preload or None, extra environment)
_THP = "glibc.malloc.hugetlb=1"
VARIANTS: dict[str, tuple[str | None, dict[str, str]]] = {
    "glibc": (None, {}),
    "glibc-thp": (None, {"GLIBC_TUNABLES": _THP}),
    # the mmap threshold fixed at its 32 MB maximum and the heap never trimmed: below 32 MB no mmap at all
    "glibc-thp-heap": (None, {"GLIBC_TUNABLES": f"{_THP}:glibc.malloc.mmap_threshold=33554432:"
                                                "glibc.malloc.trim_threshold=17179869184"}),
    "jemalloc": ("jemalloc", {}),
    "jemalloc-keep": ("jemalloc", {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always"}),
    "mimalloc": ("mimalloc", {}),
    "mimalloc-keep": ("mimalloc", MIMALLOC_OPTIONS),  # what searchr1.allocator preloads
    "mimalloc-1s": ("mimalloc", {**MIMALLOC_OPTIONS, "MIMALLOC_PURGE_DELAY": "1000"}),
    "mimalloc-lazy": ("mimalloc", {"MIMALLOC_PURGE_DECOMMITS": "0", "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}),
}


def variant_env(name: str) -> dict[str, str] | None:
    """The child's environment for a variant; None when its library is not on this machine."""
    strip = ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF", "MIMALLOC_PURGE_DECOMMITS", *MIMALLOC_OPTIONS)
    env = {k: v for k, v in os.environ.items() if k not in strip}
    library, extra = VARIANTS[name]
    if library is None:
        return {**env, **extra}
    lib = find_preload(library)
    return None if lib is None else {**env, "LD_PRELOAD": str(lib), **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="steps per variant; the first is dropped")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--policy", type=Path, default=None, help="an HF folder (default: the config's policy)")
    ap.add_argument("--variants", default="glibc,mimalloc-keep,glibc-thp", help="baseline: the first")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the variants, interleaved")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.config, args.policy, args.steps)
    print(f"machine at start: load average {os.getloadavg()} on {os.cpu_count()} cores")
    names = []
    for name in args.variants.split(","):
        if variant_env(name) is None:
            print(f"{name}: skipped, its library is not on this machine")
        else:
            names.append(name)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(args.repeats):  # round-robin, so that a host's drift falls on every variant alike
        for name in names:
            cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--config", str(args.config)]
            if args.policy:
                cmd += ["--policy", str(args.policy)]
            out = subprocess.run(cmd, env=variant_env(name), capture_output=True, text=True, check=False)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if out.returncode or line is None:
                sys.exit(f"{name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(line.removeprefix("RESULT ")))
            print(f"  round {rep + 1} {name:>14}: s/step {', '.join(f'{x:.1f}' for x in runs[name][-1]['secs'])}",
                  flush=True)
    base_name = names[0]
    base_total = statistics.median(sum(r["secs"][1:]) for r in runs[base_name])
    for name in names:
        rs = runs[name]
        total = statistics.median(sum(r["secs"][1:]) for r in rs)
        same = all(r["losses"] == runs[base_name][0]["losses"] for r in rs)
        faults = statistics.median(f for r in rs for f in r["faults"][1:])
        sys_s = statistics.median(x for r in rs for x in r["sys"][1:])
        print(f"{name:>14}: median {total:6.1f} s for steps 2-{args.steps}   RATIO vs {base_name} "
              f"{base_total / total:5.2f}x   minor faults/step {faults:>9,.0f}   sys s/step {sys_s:5.2f}   "
              f"peak RSS {max(r['peak_gb'] for r in rs):.1f} GB   losses {'identical' if same else 'DIFFERENT'}")
    print(f"machine at end: load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
