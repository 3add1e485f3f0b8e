"""BM25 (bm25s) as the sparse alternative to the dense index: same Searcher interface, no embedder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from searchr1.io import atomic_dir
from searchr1.retrieval.base import Hit
from searchr1.retrieval.passages import PassageStore

STOPWORDS = "en"


def build_bm25(store: PassageStore, out: Path, chunk: int = 100_000) -> None:
    """Tokenise every passage and save the bm25s index into `out` (atomically).

    bm25s keeps the token ids of the whole corpus in memory while indexing; fine for the tiny
    corpus, and for wiki-18 it wants tens of GB of RAM (the dense index is the default there).
    """
    import bm25s

    texts: list[str] = []
    for lo in range(0, len(store), chunk):
        texts.extend(store.contents(lo, min(len(store), lo + chunk)))
    tokens = bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=True)
    del texts
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=True)
    with atomic_dir(out) as tmp:
        retriever.save(str(tmp), show_progress=False)


class BM25Searcher:
    """Lexical search; passages with no query term in common are not returned (as pyserini does)."""

    def __init__(self, folder: Path, store: PassageStore):
        import bm25s

        if not (Path(folder) / "params.index.json").is_file():
            raise FileNotFoundError(f"{folder}: bm25s index missing; rebuild the index with kind=bm25")
        self.retriever = bm25s.BM25.load(str(folder), mmap=True)
        self.store = store

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        return self.search_mixed(queries, [topk] * len(queries))

    def search_mixed(self, queries: Sequence[str], topks: Sequence[int]) -> list[list[Hit]]:
        import bm25s

        out: list[list[Hit]] = [[] for _ in queries]
        if not queries:
            return out
        tokens = bm25s.tokenize(list(queries), stopwords=STOPWORDS, show_progress=False, return_ids=False)
        topks_arr = np.asarray(topks)
        for k in np.unique(topks_arr):
            sel = np.flatnonzero(topks_arr == k)
            kk = int(min(k, len(self.store)))
            rows, scores = self.retriever.retrieve([tokens[i] for i in sel], k=kk, show_progress=False)
            docs = self.store.docs(rows)
            for j, qi in enumerate(sel):
                out[qi] = [{"document": docs[j * kk + r], "score": float(scores[j, r])}
                           for r in range(kk) if scores[j, r] > 0]
        return out
