"""Corpus embeddings as resumable shards: embeddings/part-00000.npy holds rows [0, shard_rows), and so on.

Each shard is written to a temp name and renamed, so a file that exists is complete. A restarted
build skips every shard already on disk and embeds only the missing ones. `manifest.json`
records what the vectors were made from (corpus fingerprint, embedder settings, shard size); if any
of it changed, the old shards are deleted rather than mixed with new ones.

Shards are also the unit of work: with `retrieval.embedder.devices` set, a pool of worker processes
(one per device, see embed_pool.py) embeds whole shards in parallel; this process only keeps the
manifest and the progress bar.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from searchr1.io import atomic_file, write_json_atomic
from searchr1.retrieval.config import EmbedderConfig
from searchr1.retrieval.passages import PassageStore
from searchr1.tracking import MetricsLogger, null_logger

MANIFEST = "manifest.json"


def embedder_identity(cfg: EmbedderConfig) -> dict[str, Any]:
    """The settings that change the vectors (batch size and device do not, beyond float noise)."""
    return cfg.model_dump(mode="json", include={"model", "passage_prefix", "query_prefix", "pooling",
                                                 "normalize", "max_length"})


@dataclass(frozen=True)
class Embeddings:
    """Finished shards of one corpus, read lazily (memory-mapped)."""

    paths: tuple[Path, ...]
    rows: int
    dim: int

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, array) per shard, memory-mapped so a big corpus is never all in RAM."""
        start = 0
        for path in self.paths:
            arr = np.load(path, mmap_mode="r")
            yield start, arr
            start += arr.shape[0]

    def row_range(self, lo: int, hi: int) -> Iterator[np.ndarray]:
        """Rows [lo, hi) as consecutive pieces (at most one per shard), without gathering them."""
        for start, arr in self.chunks():
            a, b = max(lo, start), min(hi, start + arr.shape[0])
            if a < b:
                yield arr[a - start:b - start]

    def rows_at(self, rows: np.ndarray) -> np.ndarray:
        """Gather arbitrary rows (sorted internally) as one float32 array, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for start, arr in self.chunks():
            hit = (rows >= start) & (rows < start + arr.shape[0])
            if hit.any():
                out[hit] = arr[rows[hit] - start]
        return out


def shard_path(emb_dir: Path, i: int) -> Path:
    return emb_dir / f"part-{i:05d}.npy"


def resumable_dir(folder: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a folder of resumable parts, made for `identity`.

    A folder made for anything else (or with no manifest, so of unknown origin) is emptied first:
    its parts are never mixed with new ones. The manifest is written before any part, so a part on
    disk always has one.
    """
    path = folder / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("identity") != identity:
        if folder.exists():
            shutil.rmtree(folder)
        manifest = {"identity": identity}
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # half-written parts of a killed writer (see cache.atomic_file)
        stale.unlink()
    write_json_atomic(path, manifest)
    return manifest


def shard_bounds(i: int, step: int, n: int) -> tuple[int, int]:
    return i * step, min(n, (i + 1) * step)


def embed_shard(model, store: PassageStore, emb_dir: Path, i: int, step: int, progress=None) -> float:
    """Embed corpus shard i and write it atomically; returns the seconds it took."""
    lo, hi = shard_bounds(i, step, len(store))
    t0 = time.perf_counter()
    _save_atomic(shard_path(emb_dir, i), model.encode_passages(store.contents(lo, hi), progress=progress))
    return time.perf_counter() - t0


def embed_corpus(store: PassageStore, emb_dir: Path, cfg: EmbedderConfig, corpus_key: str, embedder,
                 log_metrics: MetricsLogger = null_logger) -> tuple[Embeddings, dict[str, float]]:
    """Embed every passage, shard by shard, resuming after a kill. Returns the shards and timing stats.

    `embedder` is an Embedder (used here, whatever `cfg.devices` says) or a zero-argument callable
    returning one: called only if a shard is missing and `cfg.devices` is empty, so a fully
    resumed run never loads the model. With `cfg.devices`, worker processes load their own.
    """
    n, step = len(store), cfg.shard_rows
    n_shards = max(1, -(-n // step))
    wanted = {"corpus": corpus_key, "embedder": embedder_identity(cfg), "shard_rows": step, "rows": n}
    manifest = resumable_dir(emb_dir, wanted)
    seconds: dict[str, float] = manifest.get("seconds", {})
    workers: dict[str, str] = manifest.get("workers", {})  # which device embedded each shard
    dim = manifest.get("dim")
    todo = [i for i in range(n_shards) if not shard_path(emb_dir, i).is_file()]

    if todo:
        done_rows = n - sum(hi - lo for lo, hi in (shard_bounds(i, step, n) for i in todo))
        bar = tqdm(total=n, initial=done_rows, unit="passage", desc="embed", dynamic_ncols=True, smoothing=0.1)
        if hasattr(embedder, "encode_passages") or not cfg.devices:
            finished = _embed_here(store, emb_dir, step, todo, embedder, bar)
        else:
            from searchr1.retrieval.embed_pool import embed_in_pool

            finished = embed_in_pool(store.path, emb_dir, cfg, todo, bar)
        for i, secs, dim, worker in finished:  # in completion order, which a pool does not fix
            seconds[str(i)], workers[str(i)] = secs, worker
            write_json_atomic(emb_dir / MANIFEST, {"identity": wanted, "dim": dim, "seconds": seconds,
                                                   "workers": workers})
            lo, hi = shard_bounds(i, step, n)
            done_rows += hi - lo
            log_metrics({"index/embed_passages_per_s": (hi - lo) / secs, "index/embedded_rows": float(done_rows)}, i)
        bar.close()
    if dim is None:  # every shard was already there but the run that wrote the last one died before the manifest
        dim = int(np.load(shard_path(emb_dir, 0), mmap_mode="r").shape[1])

    embed_seconds = float(sum(seconds.values()))  # summed over shards: device-seconds when a pool runs them
    stats = {"embed_seconds": embed_seconds, "embed_passages_per_s": n / embed_seconds if embed_seconds else 0.0,
             "resumed_shards": float(n_shards - len(todo))}
    return Embeddings(tuple(shard_path(emb_dir, i) for i in range(n_shards)), n, int(dim)), stats


def _embed_here(store: PassageStore, emb_dir: Path, step: int, todo: list[int], embedder,
                bar) -> Iterator[tuple[int, float, int, str]]:
    """The shards in `todo`, one after another in this process: (shard, seconds, dim, worker) as each is written."""
    model = embedder if hasattr(embedder, "encode_passages") else embedder()
    where = f"in-process ({getattr(model, 'device', 'unknown device')})"
    for i in todo:
        yield i, embed_shard(model, store, emb_dir, i, step, progress=bar), int(model.dim), where


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save(name) would add ".npy"
        np.save(fh, np.ascontiguousarray(arr, dtype=np.float32))
