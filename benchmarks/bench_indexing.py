"""Indexing throughput: build_index (flat) vs sentence-transformers' plain `encode`, same passages.

Baseline: `SentenceTransformer(model).encode(passages)` with its defaults (batch 32) - embeddings
only, nothing written. Ours: the whole `build_index` (copy passages, tokenise once, length-sorted
batches, per-shard atomic writes, FAISS flat index, metadata) into a fresh directory. Rounds
alternate so background load hits both alike; medians are quoted. Also checks that both give the
same vectors.

    python benchmarks/bench_indexing.py [--passages 600] [--rounds 3] [--data ../shared/data]

Generated passages are one sentence each, real wiki-18 ones ~100 words: quote rates with `--data`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from searchr1.corpus.samples import DATA_ARG_HELP, open_samples  # noqa: E402
from searchr1.retrieval.config import RetrievalConfig  # noqa: E402
from searchr1.retrieval.embedder import load_embedder, resolve_model_path  # noqa: E402
from searchr1.retrieval.index import build_index  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--passages", type=int, default=600)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", type=Path, default=None, help=DATA_ARG_HELP)
    a = p.parse_args()
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory(prefix="bench-indexing-") as tmp:
        samples = open_samples(a.data, Path(tmp), a.passages)
        rows = samples.passage_rows(a.passages)
        texts = [r["contents"] for r in rows]
        cfg = RetrievalConfig()
        st = SentenceTransformer(resolve_model_path(cfg.embedder.model), device="cpu")
        embedder = load_embedder(cfg.embedder)  # loaded once, like the model in the baseline
        print(f"{len(texts)} {samples.origin} wiki-18-format passages ({samples.passages}), embedder "
              f"{cfg.embedder.model}, batch {cfg.embedder.batch_size}, {os.cpu_count()} cores, torch threads "
              f"{__import__('torch').get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")
        ours, base, embed_only = [], [], []
        corpus = Path(tmp) / "corpus" / "passages"
        corpus.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), corpus / "part-00000.parquet")
        st.encode(texts[:64])
        embedder.encode_passages(texts[:64])  # warm-up both
        for rnd in range(a.rounds):
            for name in ("ours", "baseline") if rnd % 2 == 0 else ("baseline", "ours"):
                if name == "baseline":
                    t0 = time.perf_counter()
                    ref = st.encode(texts)
                    base.append(len(texts) / (time.perf_counter() - t0))
                    rate = base[-1]
                else:
                    out = Path(tmp) / "index"
                    shutil.rmtree(out, ignore_errors=True)
                    summary = build_index(corpus.parent, out, cfg, embedder=embedder)
                    ours.append(summary["passages_per_s"])
                    embed_only.append(summary["embed_passages_per_s"])
                    rate = ours[-1]
                print(f"  round {rnd + 1} {name:8s} {rate:6.1f} passages/s  (load avg {os.getloadavg()[0]:.1f})",
                      flush=True)
        mine = np.concatenate([np.load(f) for f in sorted((Path(tmp) / "index" / "embeddings").glob("part-*.npy"))])
    diff = float(np.abs(mine - ref).max())
    o, b = float(np.median(ours)), float(np.median(base))
    print(f"\nbaseline sentence-transformers encode (batch 32): {b:.1f} passages/s (median of {a.rounds})")
    print(f"build_index flat, end to end: {o:.1f} passages/s (embedding alone {np.median(embed_only):.1f}/s)")
    print(f"ratio build_index / plain encode: {o / b:.2f}x; max |embedding difference| {diff:.1e}")


if __name__ == "__main__":
    main()
