"""FAISS indexes over unit vectors (inner product = cosine): flat (exact), HNSW, IVF-PQ; CPU or GPU.

GPU is a config value, not another code path: the same CPU index is built, saved and loaded, and
`to_gpu` clones it onto every visible GPU (sharded or replicated) for search. IVF-PQ training
runs its k-means on GPU when asked. faiss-cpu has no GPU functions; asking for GPU there is a
clear error, never a silent fallback.

A flat index can also be saved in shards (`retrieval.index.shards`): a folder of flat indexes over
consecutive row ranges, written one at a time (a killed build keeps the finished ones) and searched
as one `faiss.IndexShards`. CPU and GPU share that path; `place_shard` alone decides where each
shard lives.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from searchr1.io import atomic_file
from searchr1.retrieval.config import IndexConfig
from searchr1.retrieval.embeddings import MANIFEST, Embeddings, resumable_dir

log = logging.getLogger(__name__)
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
# rows [lo, hi) of the vectors being indexed, as consecutive float32 pieces
RowSource = Callable[[int, int], Iterable[np.ndarray]]


def gpu_count() -> int:
    """GPUs faiss can use: 0 for faiss-cpu (no GPU functions) or a machine without GPUs."""
    if not all(hasattr(faiss, name) for name in ("StandardGpuResources", "get_num_gpus", "index_cpu_to_all_gpus")):
        return 0
    return int(faiss.get_num_gpus())


def require_gpu() -> int:
    n = gpu_count()
    if n == 0:
        why = ("this faiss build has no GPU support (faiss-cpu); install faiss-gpu"
               if not hasattr(faiss, "StandardGpuResources") else "faiss sees no GPU")
        raise RuntimeError(f"retrieval.index.use_gpu is true but {why}; set retrieval.index.use_gpu=false")
    return n


def to_gpu(index: faiss.Index, cfg: IndexConfig) -> faiss.Index:
    """Clone a CPU index onto all GPUs: sharded (each GPU holds 1/n of the rows) or replicated."""
    ngpu = require_gpu()
    if isinstance(index, faiss.IndexHNSW):
        # faiss has no GPU HNSW; the graph search stays on CPU (query encoding still uses the GPU).
        log.warning("HNSW index has no faiss GPU implementation; searching it on CPU")
        return index
    co = faiss.GpuMultipleClonerOptions()
    co.shard = cfg.gpu_shards
    co.useFloat16 = cfg.gpu_fp16
    return faiss.index_cpu_to_all_gpus(index, co=co, ngpu=ngpu)


def effective_nlist(cfg: IndexConfig, rows: int) -> int:
    return max(1, min(cfg.ivf_nlist, rows // MIN_POINTS_PER_LIST))


def new_index(cfg: IndexConfig, dim: int, rows: int) -> faiss.Index:
    """An empty index of the configured kind (IVF-PQ still needs `train`)."""
    if cfg.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        return index
    if cfg.kind == "ivfpq":
        if dim % cfg.pq_m:
            raise ValueError(f"retrieval.index.pq_m={cfg.pq_m} must divide the embedding size {dim}")
        if rows < 2 ** cfg.pq_nbits:
            raise ValueError(f"retrieval.index.kind=ivfpq needs at least 2**pq_nbits={2 ** cfg.pq_nbits} passages "
                             f"to train, the corpus has {rows}; use kind=flat for a corpus this small")
        quantizer = faiss.IndexFlatIP(dim)
        return faiss.IndexIVFPQ(quantizer, dim, effective_nlist(cfg, rows), cfg.pq_m, cfg.pq_nbits,
                                faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"retrieval.index.kind={cfg.kind!r} is not a FAISS index kind")


def build_faiss(emb: Embeddings, cfg: IndexConfig, seed: int = 0) -> faiss.Index:
    """Train if needed, then add the shards one at a time (memory: the index plus one shard)."""
    index = new_index(cfg, emb.dim, emb.rows)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(emb.rows, size=min(emb.rows, cfg.train_rows), replace=False))
        if cfg.use_gpu:
            require_gpu()
            # k-means on GPU: the standard faiss trick is a GPU flat index as the clustering index
            ivf = faiss.extract_index_ivf(index)
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(emb.dim))
        index.train(emb.rows_at(sample))
    with tqdm(total=emb.rows, unit="vec", desc=f"index {cfg.kind}", dynamic_ncols=True) as bar:
        for _, chunk in emb.chunks():
            index.add(np.ascontiguousarray(chunk, dtype=np.float32))
            bar.update(chunk.shape[0])
    return index


def set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    """Search-time knobs come from config at load, so they can change without a rebuild."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.hnsw_ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = cfg.ivf_nprobe


def exact_topk(emb: Embeddings, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row ids by brute force over the shards (what a flat index would return)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start, chunk in emb.chunks():
        d, i = faiss.knn(queries, np.ascontiguousarray(chunk, dtype=np.float32), min(k, chunk.shape[0]),
                         metric=faiss.METRIC_INNER_PRODUCT)
        if d.shape[1] < k:  # a last shard smaller than k: pad with "nothing"
            pad = k - d.shape[1]
            d = np.hstack([d, np.full((len(d), pad), -np.inf, dtype=d.dtype)])
            i = np.hstack([i, np.full((len(i), pad), -1, dtype=i.dtype)])
        heap.add_result(d, np.where(i >= 0, i + start, -1))
    heap.finalize()
    return heap.I


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate search also returned."""
    k = exact.shape[1]
    hits = [len(set(f[f >= 0].tolist()) & set(e[e >= 0].tolist())) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / k) if hits else 0.0


def write_index(index: faiss.Index, path: Path) -> None:
    with atomic_file(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: Path, cfg: IndexConfig) -> faiss.Index:
    """A saved index: one file, or a folder of flat shards (see `write_flat_shards`)."""
    if path.is_dir():
        return read_flat_shards(path, cfg)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FAISS index missing; rebuild the index")
    index = faiss.read_index(str(path))
    set_search_params(index, cfg)
    return to_gpu(index, cfg) if cfg.use_gpu else index


def shard_file(folder: Path, j: int) -> Path:
    return folder / f"shard-{j:05d}.faiss"


def shard_ranges(rows: int, shards: int) -> list[tuple[int, int]]:
    """Consecutive, near-equal row ranges, one per shard: shard j holds global ids [lo, hi)."""
    return [(j * rows // shards, (j + 1) * rows // shards) for j in range(shards)]


def flat_index_rows(index: faiss.Index, piece: int = 1_000_000) -> RowSource:
    """Rows of a flat index (e.g. a prebuilt one, memory-mapped) in pieces of `piece` rows."""
    def rows(lo: int, hi: int) -> Iterable[np.ndarray]:
        for a in range(lo, hi, piece):
            yield index.reconstruct_n(a, min(hi, a + piece) - a)
    return rows


def write_flat_shards(folder: Path, source: RowSource, rows: int, dim: int, shards: int,
                      identity: dict[str, Any]) -> int:
    """Save rows [0, rows) as `shards` flat inner-product indexes in `folder`; returns how many were reused.

    Each shard file is written atomically and skipped when already there, so a killed build
    resumes per shard; `identity` (what the rows were made from) guards against reusing shards of
    another build. Memory: one shard at a time.
    """
    if shards > rows:
        raise ValueError(f"retrieval.index.shards={shards} but there are only {rows} passages; use fewer shards")
    resumable_dir(folder, {"build": identity, "shards": shards, "rows": rows, "dim": dim})
    reused = 0
    for j, (lo, hi) in enumerate(shard_ranges(rows, shards)):
        path = shard_file(folder, j)
        if path.is_file():
            reused += 1
            continue
        index = faiss.IndexFlatIP(dim)
        for piece in source(lo, hi):
            index.add(np.ascontiguousarray(piece, dtype=np.float32))
        write_index(index, path)
    return reused


def place_shard(index: faiss.Index, j: int, cfg: IndexConfig, resources: dict[int, Any]) -> faiss.Index:
    """Where shard j is searched: GPU j % n_gpus when retrieval.index.use_gpu, else host memory as it is.

    `resources` holds one StandardGpuResources per GPU, shared by the shards on it (each one
    reserves scratch memory, so one per shard would waste it).
    """
    if not cfg.use_gpu:
        return index
    gpu = j % require_gpu()
    if gpu not in resources:
        resources[gpu] = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    co.useFloat16 = cfg.gpu_fp16
    return faiss.index_cpu_to_gpu(resources[gpu], gpu, index, co)


def read_flat_shards(folder: Path, cfg: IndexConfig) -> faiss.Index:
    """The shards of `folder` as one faiss.IndexShards whose ids are global row numbers."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: missing; {folder} is not a finished sharded index, rebuild it")
    layout = json.loads(manifest_path.read_text())["identity"]
    paths = [shard_file(folder, j) for j in range(layout["shards"])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: shard file(s) {missing} missing of {len(paths)}; rebuild the index")
    # GPUs search their shards in parallel threads; on CPU each flat search already uses every core
    combined = faiss.IndexShards(int(layout["dim"]), cfg.use_gpu, True)
    resources: dict[int, Any] = {}
    for j, path in enumerate(paths):
        combined.add_shard(place_shard(faiss.read_index(str(path)), j, cfg, resources))
    if combined.ntotal != layout["rows"]:
        raise ValueError(f"{folder}: shards hold {combined.ntotal} vectors, manifest says {layout['rows']}; rebuild")
    combined.referenced_objects.extend(resources.values())  # must outlive the GPU shards (add_shard made the list)
    return combined
