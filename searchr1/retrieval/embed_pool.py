"""Corpus embedding on several devices: one spawned worker process per device, shards as the unit of work.

Each worker loads the embedder once and says so; when all are ready (so a device that cannot load
fails the run before any work, and no worker starts alone) the shard numbers go into a shared
queue, which the workers drain: a fast GPU simply takes more shards. A worker writes each shard itself (atomically, like
the single-process path), so a killed run keeps every finished shard and the next run embeds only
the missing ones, on however many devices it is then given. The parent process only collects
(shard, seconds, dim) as they finish and advances the progress bar.

Processes are spawned, not forked: a forked child of a process that has touched CUDA cannot use
it, and the parent may be a Prefect worker thread with live state that must not be copied.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from searchr1.retrieval.config import EmbedderConfig

POLL_SECONDS = 2.0  # how often the parent checks for a worker that died without a word (OOM kill, segfault)


def resolve_devices(devices: Sequence[str] | str) -> list[str]:
    """`retrieval.embedder.devices` as a list of torch devices; "all_gpus" = one entry per GPU torch sees."""
    if devices != "all_gpus":
        return list(devices)
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise RuntimeError("retrieval.embedder.devices is 'all_gpus' but torch sees no GPU; "
                           "list devices (e.g. [cpu]) or set devices: []")
    return [f"cuda:{i}" for i in range(n)]


def worker_threads(cfg: EmbedderConfig, n_workers: int) -> int:
    """torch threads per worker: the configured number, else the cores split evenly (no oversubscription)."""
    return cfg.num_threads or max(1, (os.cpu_count() or 1) // n_workers)


class _QueueProgress:
    """A tqdm-like `update(n)` that reports rows to the parent, which owns the real bar."""

    def __init__(self, results: Any):
        self.results = results

    def update(self, n: int) -> None:
        self.results.put(("rows", n))


def _worker(cfg_data: dict[str, Any], device: str, slot: int, threads: int, store_path: str, emb_dir: str,
            tasks: Any, results: Any) -> None:
    """Process entry point: load the embedder on `device`, embed shards from `tasks` until a None arrives."""
    key = f"retrieval.embedder.devices[{slot}]"
    try:
        import torch

        from searchr1.retrieval.embedder import Embedder, pick_device
        from searchr1.retrieval.embeddings import embed_shard
        from searchr1.retrieval.passages import PassageStore

        torch.set_num_threads(threads)
        if pick_device(device, key).startswith("cuda:"):
            torch.cuda.set_device(device)  # else stray allocations open a context on GPU 0 in every worker
        cfg = EmbedderConfig.model_validate({**cfg_data, "device": device, "devices": []})
        model = Embedder(cfg, device_key=key)
        store = PassageStore(Path(store_path))
        progress = _QueueProgress(results)
        results.put(("ready", slot))
        while (i := tasks.get()) is not None:
            secs = embed_shard(model, store, Path(emb_dir), i, cfg.shard_rows, progress=progress)
            results.put(("done", i, secs, int(model.dim), f"{device}#{slot}"))
    except BaseException as exc:  # report everything, KeyboardInterrupt included: the parent decides
        results.put(("error", slot, f"{key}={device!r}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def embed_in_pool(store_path: Path, emb_dir: Path, cfg: EmbedderConfig, todo: Sequence[int],
                  progress=None) -> Iterator[tuple[int, float, int, str]]:
    """Embed shards `todo` on every device of `cfg.devices`; yields (shard, seconds, dim, worker) as each is written.

    The first worker error stops the pool (the others are terminated; shards they finished stay)
    and is raised here, naming the device.
    """
    devices = resolve_devices(cfg.devices)
    if not devices:
        raise ValueError("embed_in_pool needs retrieval.embedder.devices (a list of devices or 'all_gpus')")
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    threads = worker_threads(cfg, len(devices))
    cfg_data = cfg.model_dump(mode="json")
    procs = [ctx.Process(target=_worker, name=f"embed-{slot}-{device}", daemon=True,
                         args=(cfg_data, device, slot, threads, str(store_path), str(emb_dir), tasks, results))
             for slot, device in enumerate(devices)]
    for p in procs:
        p.start()
    remaining, ready = set(todo), 0
    polled_after_exit = False
    try:
        while remaining:
            try:
                msg = results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                _raise_if_crashed(procs, devices, remaining)
                if all(p.exitcode is not None for p in procs):
                    if polled_after_exit:
                        raise RuntimeError(f"all embedding workers exited with shards {sorted(remaining)} "
                                           f"not done") from None
                    polled_after_exit = True  # one more poll: a last message may still be in the pipe
                continue
            if msg[0] == "rows":
                if progress is not None:
                    progress.update(msg[1])
            elif msg[0] == "ready":
                ready += 1
                if ready == len(procs):
                    for i in todo:
                        tasks.put(i)
                    for _ in procs:
                        tasks.put(None)  # one stop signal per worker, after all the work
            elif msg[0] == "done":
                remaining.discard(msg[1])
                yield msg[1], msg[2], msg[3], msg[4]
            else:
                raise RuntimeError(f"embedding worker failed: {msg[2]}")
    finally:
        for p in procs:
            if p.is_alive() and remaining:
                p.terminate()
        for p in procs:
            p.join()


def _raise_if_crashed(procs: Sequence[Any], devices: Sequence[str], remaining: set[int]) -> None:
    """A worker that died without reporting (OOM kill, segfault) fails the pool, naming its device."""
    for slot, p in enumerate(procs):
        if p.exitcode not in (None, 0):
            raise RuntimeError(f"embedding worker retrieval.embedder.devices[{slot}]={devices[slot]!r} died "
                               f"with exit code {p.exitcode} (killed: out of memory?); shards not done: "
                               f"{sorted(remaining)}. Finished shards are kept; rerun to resume")
