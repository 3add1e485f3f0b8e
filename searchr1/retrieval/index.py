"""Build a self-contained index directory from corpus shards.

out_dir/
  passages.arrow      id + contents in index row order (the searcher needs nothing else)
  embeddings/         per-shard vectors, resumable (see embeddings.py); absent for a prebuilt index
  index.faiss | bm25/ the index; with retrieval.index.shards > 1, index.faiss/ is a folder of flat
                      shards (resumable per shard, searched as one faiss.IndexShards)
  index_meta.json     written last: its presence means the directory is complete

`out_dir` survives a killed run; calling `build_index` again reuses the passages copy and every
finished embedding shard, and returns at once if the index with the same settings is already there.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from searchr1.io import write_json_atomic
from searchr1.retrieval.config import RetrievalConfig
from searchr1.retrieval.embedder import Embedder, load_embedder
from searchr1.retrieval.embeddings import Embeddings, embed_corpus, embedder_identity
from searchr1.retrieval.faiss_index import (
    build_faiss,
    effective_nlist,
    exact_topk,
    flat_index_rows,
    recall_at_k,
    set_search_params,
    write_flat_shards,
    write_index,
)
from searchr1.retrieval.passages import PASSAGES_FILE, PassageStore, copy_passages, find_shards, fingerprint
from searchr1.retrieval.prebuilt import install_prebuilt
from searchr1.retrieval.searcher import BM25_DIR, INDEX_FILE, META_FILE
from searchr1.tracking import MetricsLogger, null_logger

EMB_DIR = "embeddings"
PASSAGES_META = "passages.json"
PREBUILT_JOINED = ".prebuilt-joined.faiss"  # a prebuilt index before it is split into shards
# Settings that do not change the built index: read at search time (load_searcher), or only checks.
SEARCH_TIME_KEYS = {"hnsw_ef_search", "ivf_nprobe", "use_gpu", "gpu_fp16", "gpu_shards", "recall_probe_queries",
                    "keep_embeddings", "prebuilt_check_rows"}


def build_identity(cfg: RetrievalConfig, corpus_key: str) -> dict[str, Any]:
    index = cfg.index.model_dump(mode="json", exclude=SEARCH_TIME_KEYS)
    if cfg.index.kind == "bm25":
        return {"corpus": corpus_key, "index": index}
    return {"corpus": corpus_key, "index": index, "embedder": embedder_identity(cfg.embedder)}


def build_index(passages_dir: Path, out_dir: Path, cfg: RetrievalConfig,
                log_metrics: MetricsLogger = null_logger, *, embedder: Embedder | None = None) -> dict[str, float]:
    """Embed the corpus and build the configured index in `out_dir`; returns numbers for MLflow.

    `passages_dir` is a corpus stage directory (holding passages/part-*.parquet) or that passages folder.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = find_shards(passages_dir)
    corpus_key = fingerprint(shards)
    identity = build_identity(cfg, corpus_key)
    meta_path = out_dir / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("identity") == identity:
            return meta["summary"]
        meta_path.unlink()  # another config: this directory is no longer a finished index

    store = _ensure_passages(shards, out_dir, corpus_key)
    n = len(store)
    if n == 0:
        raise ValueError(f"{passages_dir}: the corpus shards hold no passages")
    summary: dict[str, float] = {"passages": float(n)}
    meta: dict[str, Any] = {"kind": cfg.index.kind, "count": n, "corpus": corpus_key, "identity": identity,
                            "faiss_version": faiss.__version__}

    if cfg.index.kind == "bm25":
        from searchr1.retrieval.bm25 import build_bm25

        t0 = time.perf_counter()
        build_bm25(store, out_dir / BM25_DIR)
        summary["index_seconds"] = time.perf_counter() - t0
    else:
        _build_dense(store, out_dir, cfg, corpus_key, identity, embedder, log_metrics, summary, meta)

    summary["build_seconds"] = time.perf_counter() - t_start
    summary["passages_per_s"] = n / summary["build_seconds"]
    meta["summary"] = summary
    write_json_atomic(meta_path, meta)  # last: marks the directory complete
    log_metrics({f"index/{k}": v for k, v in summary.items()}, None)
    return summary


def _build_dense(store: PassageStore, out_dir: Path, cfg: RetrievalConfig, corpus_key: str,
                 identity: dict[str, Any], embedder: Embedder | None, log_metrics: MetricsLogger,
                 summary: dict[str, float], meta: dict[str, Any]) -> None:
    """Vectors (embedded here, or a prebuilt index) into out_dir/index.faiss: one file, or a folder of shards."""
    n, icfg = len(store), cfg.index
    loaded = [embedder] if embedder is not None else []

    def get_embedder() -> Embedder:  # loaded on first use: a fully resumed flat build never needs it
        if not loaded:
            loaded.append(load_embedder(cfg.embedder))
        return loaded[0]

    index_path = out_dir / INDEX_FILE
    _clear_other_layout(index_path, sharded=icfg.shards > 1)
    if icfg.prebuilt is not None:
        t0 = time.perf_counter()
        joined = index_path if icfg.shards == 1 else out_dir / PREBUILT_JOINED
        index, meta["prebuilt"] = install_prebuilt(icfg.prebuilt, icfg.prebuilt_revision, joined, store,
                                                   get_embedder, icfg.prebuilt_check_rows)
        dim = int(index.d)
        if "check_min_cosine" in meta["prebuilt"]:
            summary["prebuilt_check_min_cosine"] = meta["prebuilt"]["check_min_cosine"]
        if icfg.shards > 1:
            summary["reused_index_shards"] = float(
                write_flat_shards(index_path, flat_index_rows(index), n, dim, icfg.shards, identity))
            del index  # unmaps the joined file before it goes
            joined.unlink()
        summary["index_seconds"] = time.perf_counter() - t0
    else:
        # an injected embedder runs here; otherwise embed_corpus loads one, or a pool per retrieval.embedder.devices
        emb, stats = embed_corpus(store, out_dir / EMB_DIR, cfg.embedder, corpus_key,
                                  embedder if embedder is not None else get_embedder, log_metrics)
        summary.update(stats)
        dim = emb.dim
        t0 = time.perf_counter()
        if icfg.shards > 1:
            summary["reused_index_shards"] = float(
                write_flat_shards(index_path, emb.row_range, n, dim, icfg.shards, identity))
        else:
            index = build_faiss(emb, icfg)
            if icfg.kind == "ivfpq":
                meta["ivf_nlist"] = effective_nlist(icfg, n)
            if icfg.kind in ("hnsw", "ivfpq"):
                set_search_params(index, icfg)
                summary[f"recall_at_{cfg.topk}"] = measure_recall(index, emb, store, get_embedder(), cfg)
            write_index(index, index_path)
        summary["index_seconds"] = time.perf_counter() - t0
        if not icfg.keep_embeddings:
            shutil.rmtree(out_dir / EMB_DIR)
    summary["dims"] = float(dim)
    meta.update(embedder=embedder_identity(cfg.embedder), dims=dim, shards=icfg.shards)


def _clear_other_layout(index_path: Path, sharded: bool) -> None:
    """index.faiss is a file (one index) or a folder (shards): remove the other one left by an earlier build."""
    if sharded and index_path.is_file():
        index_path.unlink()
    elif not sharded and index_path.is_dir():
        shutil.rmtree(index_path)


def _ensure_passages(shards: list[Path], out_dir: Path, corpus_key: str) -> PassageStore:
    """Copy the passages into out_dir once per corpus; a matching copy from a killed run is reused."""
    marker = out_dir / PASSAGES_META
    if not (marker.is_file() and json.loads(marker.read_text()).get("corpus") == corpus_key
            and (out_dir / PASSAGES_FILE).is_file()):
        n = copy_passages(shards, out_dir / PASSAGES_FILE)
        write_json_atomic(marker, {"corpus": corpus_key, "count": n, "shards": [p.name for p in shards]})
    return PassageStore(out_dir / PASSAGES_FILE)


def probe_queries(store: PassageStore, count: int, seed: int = 0) -> list[str]:
    """Query-like probes for recall: titles of random passages (wiki-18 contents start '"Title"\\n')."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(store), size=min(count, len(store)), replace=False)
    return [d["contents"].split("\n", 1)[0].strip().strip('"') or d["contents"][:80] for d in store.docs(rows)]


def measure_recall(index, emb: Embeddings, store: PassageStore, embedder: Embedder, cfg: RetrievalConfig) -> float:
    """recall@topk of `index` against exact search, on title probes encoded as queries."""
    k = int(min(cfg.topk, emb.rows))
    queries = embedder.encode_queries(probe_queries(store, cfg.index.recall_probe_queries))
    _, found = index.search(queries, k)
    return recall_at_k(found, exact_topk(emb, queries, k))
