"""The memory allocator of the processes that train and evaluate: mimalloc where it is installed.

glibc's malloc hands every allocation above 32 MB back to the kernel when it is freed, so a CPU training step,
which allocates and frees the same large activations every step (attention scores, MLP activations, logits),
faults each of their pages in again, 4 KB at a time: during the tiny run's warm start ~12% of the process's CPU
time went to system calls. mimalloc told to keep what it frees (no purge) and to use huge pages serves the next
step from warm pages: 1.29x a warm-start step (benchmarks/bench_allocator.py, two interleaved rounds; mimalloc
as it ships, purging freed pages, was 0.73x; so was a 1 s purge delay). The allocator does not touch the arithmetic:
the same losses bit for bit (the benchmark checks; a whole tiny run: every stage file). What it costs is memory
held: pages the trainer freed stay with the process, so the tiny run peaks at 22.8 GB instead of 18.7 (its
evaluation engine's KV cache comes on top), and neither glibc's malloc_trim nor mi_collect gives them back.

An allocator is chosen when a process starts, so the entry points that run the pipeline (`searchr1 run`,
`python -m flows.reproduce`, the processes `searchr1 serve` starts) re-execute themselves, or their children,
with it in LD_PRELOAD. SEARCHR1_ALLOCATOR picks it: mimalloc (the default; the `cmeel-mimalloc` wheel that
`make setup` installs, or Debian's libmimalloc2.0), jemalloc, or system (glibc's, no preload: on a machine with
less than 24 GB).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ENV = "SEARCHR1_ALLOCATOR"
DEFAULT = "mimalloc"
SYSTEM = "system"

# mimalloc's settings (a user's own values win): keep freed memory for reuse, back it with huge pages
MIMALLOC_OPTIONS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}

# Searched in order: a wheel in this environment (cmeel-mimalloc; ray's bundled jemalloc, which the verl-cpu
# extra installs), then the Debian/Ubuntu package's library.
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "mimalloc": ("{site}/cmeel.prefix/lib/libmimalloc.so", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
    "jemalloc": ("{site}/ray/core/libjemalloc.so", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
}


def find_preload(name: str) -> Path | None:
    """The shared library of allocator `name` ("mimalloc" or "jemalloc"), or None when it is not installed."""
    if name not in _CANDIDATES:
        raise ValueError(f"unknown allocator {name!r}: expected one of {', '.join(_CANDIDATES)}")
    sites = [p for p in sys.path if p.endswith("site-packages")]
    for pattern in _CANDIDATES[name]:
        for site in sites if "{site}" in pattern else [""]:
            path = Path(pattern.format(site=site))
            if path.is_file():
                return path
    return None


def chosen(env: Mapping[str, str] = os.environ) -> str:
    """The allocator SEARCHR1_ALLOCATOR names (default mimalloc), checked."""
    name = env.get(ENV, "") or DEFAULT
    if name != SYSTEM and name not in _CANDIDATES:
        raise ValueError(f"{ENV}={name!r}: expected one of {', '.join([*_CANDIDATES, SYSTEM])}")
    return name


def preload_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`env` with the chosen allocator first in LD_PRELOAD (and mimalloc's settings); unchanged for "system" or
    when the library is not installed (glibc's malloc is slower here, never wrong: a warning says so)."""
    out = dict(env)
    name = chosen(env)
    if name == SYSTEM:
        return out
    lib = find_preload(name)
    if lib is None:
        print(f"searchr1: {name} is not installed (`make setup` installs it); running on glibc's malloc, "
              f"slower for CPU training (set {ENV}={SYSTEM} to say that is meant)", file=sys.stderr)
        return out
    others = [p for p in out.get("LD_PRELOAD", "").split(":") if p and p != str(lib)]
    out["LD_PRELOAD"] = ":".join([str(lib), *others])
    if name == "mimalloc":
        out.update({k: v for k, v in MIMALLOC_OPTIONS.items() if k not in out})
    return out


def ensure_preloaded() -> None:
    """Re-execute this process (its own command line, `sys.orig_argv`) with the chosen allocator preloaded,
    unless it already is. Call it before anything heavy is imported; it returns only when there is nothing to do
    (already preloaded, "system", or not installed)."""
    env = preload_env()
    if env.get("LD_PRELOAD", "") == os.environ.get("LD_PRELOAD", ""):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
