"""In-process retrieval over a built index directory: no HTTP, for the CPU trainer and evaluation."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from searchr1.retrieval.base import Hit, Searcher
from searchr1.retrieval.config import RetrievalConfig
from searchr1.retrieval.embedder import Embedder, load_embedder
from searchr1.retrieval.embeddings import embedder_identity
from searchr1.retrieval.faiss_index import read_index
from searchr1.retrieval.passages import PASSAGES_FILE, PassageStore

INDEX_FILE = "index.faiss"
BM25_DIR = "bm25"
META_FILE = "index_meta.json"


class DenseSearcher:
    """Embed queries, search the FAISS index, look the rows up in the passage store.

    `search_mixed` takes a top-k per query so the server can answer a micro-batch of requests with
    different `topk` in one encoder call; each distinct k gets its own index search, so a result
    never depends on what else was in the batch.
    """

    def __init__(self, index, embedder: Embedder, store: PassageStore):
        if index.ntotal != len(store):
            raise ValueError(f"index has {index.ntotal} vectors but the passage store {store.path} has "
                             f"{len(store)} rows; rebuild the index")
        self.index, self.embedder, self.store = index, embedder, store
        self._lock = threading.Lock()  # torch + faiss calls from several threads would oversubscribe cores

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        return self.search_mixed(queries, [topk] * len(queries))

    def search_mixed(self, queries: Sequence[str], topks: Sequence[int]) -> list[list[Hit]]:
        if len(queries) != len(topks):
            raise ValueError(f"{len(queries)} queries but {len(topks)} topk values")
        if not queries:
            return []
        with self._lock:
            vecs = self.embedder.encode_queries(queries)
            return self.search_vectors(vecs, topks)

    def search_vectors(self, vecs: np.ndarray, topks: Sequence[int]) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in range(len(vecs))]
        topks_arr = np.asarray(topks)
        for k in np.unique(topks_arr):
            sel = np.flatnonzero(topks_arr == k)
            kk = int(min(k, self.index.ntotal))
            scores, rows = self.index.search(np.ascontiguousarray(vecs[sel]), kk)
            docs = self.store.docs(np.maximum(rows, 0))
            for j, qi in enumerate(sel):
                # IVF can find fewer than k rows (-1) when the probed lists are small
                out[qi] = [{"document": docs[j * kk + r], "score": float(scores[j, r])}
                           for r in range(kk) if rows[j, r] >= 0]
        return out


def read_meta(index_dir: Path) -> dict:
    path = Path(index_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {index_dir} is not a finished index (run build_index)")
    return json.loads(path.read_text())


def load_searcher(index_dir: Path, cfg: RetrievalConfig, embedder: Embedder | None = None) -> Searcher:
    """The searcher for an index built by `build_index`; refuses a config whose embedder differs."""
    index_dir = Path(index_dir)
    meta = read_meta(index_dir)
    store = PassageStore(index_dir / PASSAGES_FILE)
    if meta["kind"] == "bm25":
        from searchr1.retrieval.bm25 import BM25Searcher

        return BM25Searcher(index_dir / BM25_DIR, store)
    built_with = meta["embedder"]
    if built_with != embedder_identity(cfg.embedder):
        raise ValueError(f"{index_dir / META_FILE}: index was built with embedder {built_with}, but "
                         f"retrieval.embedder is {embedder_identity(cfg.embedder)}; rebuild or fix the config")
    index_cfg = cfg.index.model_copy(update={"kind": meta["kind"]})
    index = read_index(index_dir / INDEX_FILE, index_cfg)
    return DenseSearcher(index, embedder or load_embedder(cfg.embedder), store)
