"""Corpus embeddings as resumable shards: embeddings/part-00000.npy holds rows [0, shard_rows), and so on.

Each shard is written to a temp name and renamed, so a file that exists is complete. A restarted
build skips every shard already on disk and starts at the first missing one. `manifest.json`
records what the vectors were made from (corpus fingerprint, embedder settings, shard size); if any
of it changed, the old shards are deleted rather than mixed with new ones.
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


def embed_corpus(store: PassageStore, emb_dir: Path, cfg: EmbedderConfig, corpus_key: str, embedder,
                 log_metrics: MetricsLogger = null_logger) -> tuple[Embeddings, dict[str, float]]:
    """Embed every passage, shard by shard, resuming after a kill. Returns the shards and timing stats.

    `embedder` is an Embedder or a zero-argument callable returning one (called only if a shard
    is missing, so a fully resumed run never loads the model).
    """
    n, step = len(store), cfg.shard_rows
    n_shards = max(1, -(-n // step))
    wanted = {"corpus": corpus_key, "embedder": embedder_identity(cfg), "shard_rows": step, "rows": n}
    manifest_path = emb_dir / MANIFEST
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("identity") != wanted:
            shutil.rmtree(emb_dir)  # other passages or another model: nothing here is reusable
            manifest = {}
    emb_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = manifest.get("seconds", {})
    dim = manifest.get("dim")
    todo = [i for i in range(n_shards) if not shard_path(emb_dir, i).is_file()]
    done_rows = n - sum(min(step, n - i * step) for i in todo)

    if todo:
        model = embedder if hasattr(embedder, "encode_passages") else embedder()
        dim = model.dim
        bar = tqdm(total=n, initial=done_rows, unit="passage", desc="embed", dynamic_ncols=True, smoothing=0.1)
        for i in todo:
            lo, hi = i * step, min(n, (i + 1) * step)
            t0 = time.perf_counter()
            vecs = model.encode_passages(store.contents(lo, hi), progress=bar)
            _save_atomic(shard_path(emb_dir, i), vecs)
            seconds[str(i)] = time.perf_counter() - t0
            write_json_atomic(manifest_path, {"identity": wanted, "dim": dim, "seconds": seconds})
            log_metrics({"index/embed_passages_per_s": (hi - lo) / seconds[str(i)],
                         "index/embedded_rows": float(hi)}, i)
        bar.close()
    elif not manifest_path.is_file() or dim is None:
        raise RuntimeError(f"{emb_dir}: shards present but {MANIFEST} missing; delete the folder and rebuild")

    embed_seconds = float(sum(seconds.values()))
    stats = {"embed_seconds": embed_seconds, "embed_passages_per_s": n / embed_seconds if embed_seconds else 0.0,
             "resumed_shards": float(n_shards - len(todo))}
    return Embeddings(tuple(shard_path(emb_dir, i) for i in range(n_shards)), n, int(dim)), stats


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save(name) would add ".npy"
        np.save(fh, np.ascontiguousarray(arr, dtype=np.float32))
