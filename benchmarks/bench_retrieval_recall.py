"""Recall@3 of HNSW and IVF-PQ against the exact flat index, on ~20k passages with the real embedder.

Corpus: 1,000 seed passages (generated ones, or with `--data` the real wiki-18 sample) plus
filler passages ('"Title"\\ntext', text from a word-bigram chain trained on the seed passages,
~45 words each, so it embeds like prose and costs less than real passages). Embeddings go through
`build_index` into a persistent work directory, so a second run (or a run after a kill) reuses
them. Queries: titles, "who is <title>" and short text spans from seed and filler passages,
encoded as queries. For each index kind the
script prints recall@3 vs flat (exact top-3 by brute force), search throughput and size, at the
config's defaults and a small sweep of the search-time knob.

    python benchmarks/bench_retrieval_recall.py [--passages 20000] [--queries 1000] [--threads 1] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: the box is shared

from searchr1.corpus.samples import DATA_ARG_HELP, open_samples  # noqa: E402
from searchr1.retrieval.config import IndexConfig, RetrievalConfig  # noqa: E402
from searchr1.retrieval.embedder import load_embedder  # noqa: E402
from searchr1.retrieval.embeddings import Embeddings  # noqa: E402
from searchr1.retrieval.faiss_index import (  # noqa: E402
    build_faiss,
    effective_nlist,
    exact_topk,
    recall_at_k,
    set_search_params,
)
from searchr1.retrieval.index import EMB_DIR, build_index  # noqa: E402


def filler_passages(real: list[dict], n: int, seed: int = 0) -> list[dict]:
    """Synthetic wiki-style passages from a word-bigram chain over the real ones (deterministic)."""
    rng = np.random.default_rng(seed)
    follow: dict[str, list[str]] = {}
    starts: list[str] = []
    for r in real:
        words = re.findall(r"\S+", r["contents"].split("\n", 1)[-1])
        if words:
            starts.append(words[0])
        for a, b in zip(words, words[1:], strict=False):
            follow.setdefault(a, []).append(b)
    vocab = sorted({w for w in follow if w[:1].isupper() and w.isalpha()})
    def pick(options: list[str]) -> str:  # rng.choice(list) copies the list into an array every call
        return options[int(rng.integers(len(options)))]

    out = []
    for i in range(n):
        title = " ".join(pick(vocab) for _ in range(int(rng.integers(1, 4))))
        w = pick(starts)
        words = [w]
        for _ in range(int(rng.integers(35, 55))):
            w = pick(follow[w]) if w in follow else pick(starts)
            words.append(w)
        out.append({"id": f"filler-{i}", "contents": f'"{title}"\n{title} ' + " ".join(words)})
    return out


def queries_from(rows: list[dict], n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(rows), size=n, replace=False):
        title, _, text = rows[i]["contents"].partition("\n")
        words = text.split()
        kind = len(out) % 3
        if kind == 0:
            out.append(title.strip('"'))
        elif kind == 1:
            out.append(f"who is {title.strip(chr(34))}")
        else:
            s = int(rng.integers(max(1, len(words) - 6)))
            out.append(" ".join(words[s:s + 6]))
    return out


def timed_search(index, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    _, ids = index.search(q, k)
    return ids, len(q) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--passages", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch threads for embedding (1 is best on a busy box)")
    p.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "recall")
    p.add_argument("--data", type=Path, default=None, help=DATA_ARG_HELP)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    samples = open_samples(a.data, a.work)
    real = samples.passage_rows()
    rows = real + filler_passages(real, max(0, a.passages - len(real)))
    corpus = a.work / f"corpus-{samples.origin}-{len(rows)}" / "passages"
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        for i in range(0, len(rows), 5000):
            pq.write_table(pa.Table.from_pylist(rows[i:i + 5000]), corpus / f"part-{i // 5000:05d}.parquet")
    cfg = RetrievalConfig()
    out = a.work / f"index-{samples.origin}-{len(rows)}"
    summary = build_index(corpus.parent, out, cfg)  # flat; embeddings kept under out/embeddings
    emb_paths = tuple(sorted((out / EMB_DIR).glob("part-*.npy")))
    emb = Embeddings(emb_paths, int(summary["passages"]), int(summary["dims"]))
    print(f"corpus: {len(real)} {samples.origin} + {len(rows) - len(real)} filler = {emb.rows} passages, "
          f"{emb.dim} dims; "
          f"embedding {summary['embed_passages_per_s']:.1f} passages/s ({a.threads} torch thread(s))")

    embedder = load_embedder(cfg.embedder)
    qtexts = queries_from(real, a.queries // 2) + queries_from(rows[len(real):], a.queries - a.queries // 2)
    q = embedder.encode_queries(qtexts)
    k = cfg.topk
    exact = exact_topk(emb, q, k)
    flat = faiss.read_index(str(out / "index.faiss"))
    got, qps = timed_search(flat, q, k)
    print(f"queries: {len(q)} ({len(q) // 2} from {samples.origin} passages, rest from filler); "
          f"recall@{k} vs exact flat; "
          f"search batch {len(q)}, faiss threads {faiss.omp_get_max_threads()}")
    print(f"  flat              recall@{k} {recall_at_k(got, exact):.4f}  {qps:9.0f} q/s")

    for kind, knob, values in (("hnsw", "hnsw_ef_search", (16, 64, 128, 256)),
                               ("ivfpq", "ivf_nprobe", (8, 16, 32, 64))):
        t0 = time.perf_counter()
        index = build_faiss(emb, IndexConfig(kind=kind))
        built = time.perf_counter() - t0
        size = faiss.serialize_index(index).nbytes
        extra = f", nlist {effective_nlist(IndexConfig(), emb.rows)}, pq_m {IndexConfig().pq_m}" if kind == "ivfpq" \
            else f", M {IndexConfig().hnsw_m}"
        print(f"  {kind}: built in {built:.1f} s, {size / 1e6:.1f} MB (flat {emb.rows * emb.dim * 4 / 1e6:.1f} MB)"
              f"{extra}")
        default = getattr(IndexConfig(), knob)
        for v in values:
            set_search_params(index, IndexConfig(kind=kind, **{knob: v}))
            got, qps = timed_search(index, q, k)
            mark = "  <- config default" if v == default else ""
            print(f"    {knob}={v:<4d} recall@{k} {recall_at_k(got, exact):.4f}  {qps:9.0f} q/s{mark}")
    print(f"load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
