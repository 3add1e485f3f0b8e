"""Retrieval library: passages, resumable embedding, FAISS/BM25 indexes, searcher, GPU path choice, batcher.

A hashed bag-of-words embedder stands in for the real model here (fast, deterministic, lexical);
tests/test_retrieval_server.py runs the real embedder behind the HTTP server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from searchr1.corpus.samples import SampleFiles
from searchr1.retrieval import faiss_index
from searchr1.retrieval.app import BadRequest, parse_request
from searchr1.retrieval.batcher import MicroBatcher
from searchr1.retrieval.client import RetrievalClient, RetrievalError
from searchr1.retrieval.config import EmbedderConfig, IndexConfig, RetrievalConfig
from searchr1.retrieval.embeddings import Embeddings
from searchr1.retrieval.index import build_index
from searchr1.retrieval.passages import CorpusFormatError, PassageStore, find_shards
from searchr1.retrieval.searcher import DenseSearcher, load_searcher, read_meta


def write_shards(rows: list[dict], corpus_dir: Path, per_shard: int) -> Path:
    out = corpus_dir / "passages"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(rows), per_shard):
        pq.write_table(pa.Table.from_pylist(rows[i:i + per_shard]), out / f"part-{i // per_shard:05d}.parquet")
    return corpus_dir


class HashEmbedder:
    """Unit vectors of hashed word counts: passages sharing words with a query score high."""

    dim = 64

    def __init__(self, fail_after_calls: int | None = None):
        self.calls, self.rows, self.fail_after = 0, 0, fail_after_calls

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for w in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return v / max(np.linalg.norm(v), 1e-6)

    def encode_passages(self, texts, progress=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.rows += len(texts)
        if progress is not None:
            progress.update(len(texts))
        return np.stack([self._vec(t) for t in texts])

    def encode_queries(self, texts):
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def cfg_for(kind: str = "flat", shard_rows: int = 100, **index) -> RetrievalConfig:
    return RetrievalConfig(embedder=EmbedderConfig(shard_rows=shard_rows),
                           index=IndexConfig(kind=kind, recall_probe_queries=50, **index))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, generated_data: SampleFiles) -> tuple[Path, list[dict]]:
    rows = generated_data.passage_rows(1000)
    return write_shards(rows, tmp_path_factory.mktemp("corpus"), per_shard=400), rows


# ---------------------------------------------------------------- passages


def test_find_shards_accepts_stage_dir_or_passages_dir(corpus):
    corpus_dir, _ = corpus
    assert find_shards(corpus_dir) == find_shards(corpus_dir / "passages")
    assert [p.name for p in find_shards(corpus_dir)] == ["part-00000.parquet", "part-00001.parquet",
                                                          "part-00002.parquet"]


def test_missing_column_is_named(tmp_path):
    (tmp_path / "passages").mkdir()
    pq.write_table(pa.table({"id": ["1"], "text": ["x"]}), tmp_path / "passages" / "part-00000.parquet")
    with pytest.raises(CorpusFormatError, match="part-00000.parquet: missing column 'contents'"):
        build_index(tmp_path, tmp_path / "idx", cfg_for(), embedder=HashEmbedder())


def test_no_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no part-\\*.parquet"):
        build_index(tmp_path, tmp_path / "idx", cfg_for(), embedder=HashEmbedder())


# ---------------------------------------------------------------- build, search, resume


def test_flat_index_is_self_contained_and_finds_the_passage(corpus, tmp_path):
    corpus_dir, rows = corpus
    summary = build_index(corpus_dir, tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    assert summary["passages"] == 1000 and summary["dims"] == 64
    assert all(isinstance(v, float) for v in summary.values())  # loggable as MLflow metrics
    meta = read_meta(tmp_path / "idx")
    assert meta["count"] == 1000 and meta["kind"] == "flat" and meta["dims"] == 64
    store = PassageStore(tmp_path / "idx" / "passages.arrow")
    assert store.docs(np.array([0, 999])) == [rows[0], rows[999]]  # row order = corpus order

    searcher = load_searcher(tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    hits = searcher.search([rows[123]["contents"], rows[7]["contents"]], 3)
    assert [h[0]["document"] for h in hits] == [rows[123], rows[7]]
    assert all(len(h) == 3 and h[0]["score"] >= h[1]["score"] >= h[2]["score"] for h in hits)


def test_search_mixed_equals_separate_searches(corpus, tmp_path):
    """A micro-batch with different topk per query gives what each request alone would get."""
    corpus_dir, rows = corpus
    build_index(corpus_dir, tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    s = load_searcher(tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    queries = [rows[i]["contents"][:60] for i in (1, 50, 300, 640)]
    topks = [1, 5, 3, 5]
    mixed = s.search_mixed(queries, topks)
    assert mixed == [s.search([q], k)[0] for q, k in zip(queries, topks, strict=True)]
    assert [len(m) for m in mixed] == topks


def test_build_is_skipped_when_finished(corpus, tmp_path):
    corpus_dir, _ = corpus
    first = build_index(corpus_dir, tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    again = HashEmbedder()
    assert build_index(corpus_dir, tmp_path / "idx", cfg_for(), embedder=again) == first
    assert again.calls == 0


def test_killed_embedding_resumes_at_first_unfinished_shard(corpus, tmp_path):
    corpus_dir, rows = corpus
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_dir, out, cfg_for(shard_rows=100), embedder=HashEmbedder(fail_after_calls=4))
    done = sorted(p.name for p in (out / "embeddings").glob("part-*.npy"))
    assert done == [f"part-{i:05d}.npy" for i in range(4)]
    assert not (out / "index_meta.json").exists()  # nothing looks finished
    assert not list(out.rglob("*.tmp*"))

    resumed = HashEmbedder()
    summary = build_index(corpus_dir, out, cfg_for(shard_rows=100), embedder=resumed)
    assert resumed.rows == 600 and resumed.calls == 6  # shards 4..9 only
    assert summary["resumed_shards"] == 4

    clean = tmp_path / "clean"
    build_index(corpus_dir, clean, cfg_for(shard_rows=100), embedder=HashEmbedder())
    a, b = (faiss.read_index(str(d / "index.faiss")) for d in (out, clean))
    assert np.array_equal(a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal))


def test_keep_embeddings_false_frees_the_disk(corpus, tmp_path):
    corpus_dir, rows = corpus
    build_index(corpus_dir, tmp_path / "idx", cfg_for(keep_embeddings=False), embedder=HashEmbedder())
    assert not (tmp_path / "idx" / "embeddings").exists()
    s = load_searcher(tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    assert s.search([rows[5]["contents"]], 1)[0][0]["document"] == rows[5]


@pytest.fixture
def one_torch_thread():
    """On a shared 2-core box, 2 OpenMP threads spin against other processes (20x slower here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # loads the real embedder twice (ours and sentence-transformers')
def test_real_embedder_matches_sentence_transformers_encode(one_torch_thread, generated_data: SampleFiles):
    """Our batching (windows, length-sorted, own pooling) gives the same vectors as plain ST encode."""
    from sentence_transformers import SentenceTransformer

    from searchr1.retrieval.embedder import Embedder, resolve_model_path

    texts = [r["contents"][:300] for r in generated_data.passage_rows(20)] + ["short query", "who wrote 1984"]
    cfg = EmbedderConfig(batch_size=4)
    embedder = Embedder(cfg)
    embedder.window_batches = 2  # windows of 8 texts: 22 texts span three
    ours = embedder.encode_passages(texts)
    ref = SentenceTransformer(resolve_model_path(cfg.model), device="cpu").encode(texts, batch_size=32)
    assert ours.shape == (22, 384)
    assert np.abs(ours - ref).max() < 1e-5


def test_changed_corpus_discards_old_embeddings(corpus, tmp_path):
    corpus_dir, rows = corpus
    out = tmp_path / "idx"
    build_index(corpus_dir, out, cfg_for(), embedder=HashEmbedder())
    other = write_shards(rows[:250], tmp_path / "other", per_shard=250)
    fresh = HashEmbedder()
    summary = build_index(other, out, cfg_for(), embedder=fresh)
    assert fresh.rows == 250 and summary["passages"] == 250
    assert len(list((out / "embeddings").glob("part-*.npy"))) == 3


def test_searcher_refuses_a_different_embedder(corpus, tmp_path):
    corpus_dir, _ = corpus
    build_index(corpus_dir, tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    other = cfg_for().model_copy(update={"embedder": EmbedderConfig(query_prefix="query: ")})
    with pytest.raises(ValueError, match="index was built with embedder"):
        load_searcher(tmp_path / "idx", other, embedder=HashEmbedder())


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_indexes_record_recall_against_flat(corpus, tmp_path, kind):
    corpus_dir, rows = corpus
    extra = {"pq_m": 16, "ivf_nprobe": 8} if kind == "ivfpq" else {}
    summary = build_index(corpus_dir, tmp_path / kind, cfg_for(kind, **extra), embedder=HashEmbedder())
    assert 0.3 <= summary["recall_at_3"] <= 1.0
    meta = read_meta(tmp_path / kind)
    if kind == "ivfpq":
        assert meta["ivf_nlist"] == 1000 // 39  # capped so every list has enough training points
    s = load_searcher(tmp_path / kind, cfg_for(kind, **extra), embedder=HashEmbedder())
    top = s.search([rows[10]["contents"]], 3)[0]
    assert len(top) == 3 and top[0]["document"]["id"] == rows[10]["id"]


def test_ivfpq_rejects_bad_pq_m(corpus, tmp_path):
    corpus_dir, _ = corpus
    with pytest.raises(ValueError, match="pq_m=48 must divide the embedding size 64"):
        build_index(corpus_dir, tmp_path / "idx", cfg_for("ivfpq"), embedder=HashEmbedder())


def test_exact_topk_matches_flat_index(tmp_path):
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((250, 16)).astype(np.float32)
    xq = rng.standard_normal((20, 16)).astype(np.float32)
    paths = []
    for i, lo in enumerate(range(0, 250, 100)):  # 3 shards, the last one short
        paths.append(tmp_path / f"part-{i:05d}.npy")
        np.save(paths[-1], xb[lo:lo + 100])
    got = faiss_index.exact_topk(Embeddings(tuple(paths), 250, 16), xq, 5)
    flat = faiss.IndexFlatIP(16)
    flat.add(xb)
    assert np.array_equal(got, flat.search(xq, 5)[1])


def test_bm25_index_and_search(corpus, tmp_path):
    corpus_dir, rows = corpus
    summary = build_index(corpus_dir, tmp_path / "bm25", cfg_for("bm25"))
    assert summary["passages"] == 1000 and "dims" not in summary
    s = load_searcher(tmp_path / "bm25", cfg_for("bm25"))
    hits = s.search([rows[42]["contents"], "zzzzqqq"], 3)
    assert hits[0][0]["document"] == rows[42]
    assert hits[1] == []  # no term in common: nothing, as pyserini answers


@pytest.mark.realdata
def test_real_wiki18_passages_are_indexed_and_found(reference_data: SampleFiles, tmp_path):
    """The real wiki-18 rows go through the same build: a known passage is found by BM25 and dense search."""
    rows = reference_data.passage_rows()
    corpus_dir = write_shards(rows, tmp_path / "corpus", per_shard=400)
    build_index(corpus_dir, tmp_path / "bm25", cfg_for("bm25"))
    hits = load_searcher(tmp_path / "bm25", cfg_for("bm25")).search(["Evan Morris lobbyist Genentech"], 3)
    assert hits[0][0]["document"] == rows[0] and rows[0]["contents"].startswith('"Evan Morris"\n')
    summary = build_index(corpus_dir, tmp_path / "flat", cfg_for(), embedder=HashEmbedder())
    assert summary["passages"] == len(rows)
    dense = load_searcher(tmp_path / "flat", cfg_for(), embedder=HashEmbedder())
    assert dense.search([rows[123]["contents"]], 1)[0][0]["document"] == rows[123]


# ---------------------------------------------------------------- GPU code path (no GPU here)


def test_gpu_requested_without_faiss_gpu_is_a_clear_error(monkeypatch):
    for name in ("StandardGpuResources", "get_num_gpus"):
        monkeypatch.delattr(faiss, name, raising=False)
    assert faiss_index.gpu_count() == 0
    with pytest.raises(RuntimeError, match="no GPU support \\(faiss-cpu\\); install faiss-gpu"):
        faiss_index.to_gpu(faiss.IndexFlatIP(8), IndexConfig(use_gpu=True))


def test_gpu_path_shards_across_all_gpus(monkeypatch, tmp_path):
    calls = {}

    def fake_all_gpus(index, co=None, ngpu=-1):
        calls.update(shard=co.shard, fp16=co.useFloat16, ngpu=ngpu, ntotal=index.ntotal)
        return "gpu-index"

    class FakeOptions:
        shard = False
        useFloat16 = False

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 4, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", FakeOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_all_gpus, raising=False)
    index = faiss.IndexFlatIP(8)
    index.add(np.eye(8, dtype=np.float32))
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    got = faiss_index.read_index(tmp_path / "i.faiss", IndexConfig(use_gpu=True, gpu_shards=True, gpu_fp16=True))
    assert got == "gpu-index" and calls == {"shard": True, "fp16": True, "ngpu": 4, "ntotal": 8}
    hnsw = faiss.IndexHNSWFlat(8, 8, faiss.METRIC_INNER_PRODUCT)
    assert faiss_index.to_gpu(hnsw, IndexConfig(use_gpu=True)) is hnsw  # no GPU HNSW in faiss: stays on CPU


def test_cpu_only_path_never_touches_gpu_functions(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise AssertionError("GPU function called on the CPU path")

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", boom, raising=False)
    index = faiss.IndexFlatIP(8)
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    assert isinstance(faiss_index.read_index(tmp_path / "i.faiss", IndexConfig(use_gpu=False)), faiss.IndexFlatIP)


def test_embedder_device_choice(monkeypatch):
    import torch

    from searchr1.retrieval.embedder import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="device is 'cuda' but torch sees no GPU"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"


# ---------------------------------------------------------------- request parsing and micro-batching

BAD_BODIES = {
    "malformed JSON": (b'{"queries": ["a"', 400),
    "not an object": (b'["a"]', 422),
    "queries missing": (b'{"topk": 3}', 422),
    "queries not a list": (b'{"queries": "a"}', 422),
    "query not a string": (b'{"queries": ["a", 3]}', 422),
    "empty query list": (b'{"queries": []}', 422),
    "huge query list": (json.dumps({"queries": ["q"] * 513}).encode(), 413),
    "topk zero": (b'{"queries": ["a"], "topk": 0}', 422),
    "topk negative": (b'{"queries": ["a"], "topk": -2}', 422),
    "topk above cap": (b'{"queries": ["a"], "topk": 51}', 422),
    "topk not int": (b'{"queries": ["a"], "topk": "3"}', 422),
    "topk bool": (b'{"queries": ["a"], "topk": true}', 422),
    "return_scores not bool": (b'{"queries": ["a"], "return_scores": "yes"}', 422),
    "over-long query": (json.dumps({"queries": ["x" * 2049]}).encode(), 422),
    "body too big": (json.dumps({"queries": ["x" * 2000] * 2100}).encode(), 413),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_parse_request_rejects(name):
    body, status = BAD_BODIES[name]
    with pytest.raises(BadRequest) as err:
        parse_request(body, RetrievalConfig())
    assert err.value.status == status and err.value.reason


def test_parse_request_defaults_like_search_r1():
    assert parse_request(b'{"queries": ["a"]}', RetrievalConfig()) == (["a"], 3, False)
    assert parse_request(b'{"queries": ["a"], "topk": null, "return_scores": true}', RetrievalConfig()) == (
        ["a"], 3, True)


def test_micro_batcher_batches_and_routes_each_result_back():
    batches: list[list[str]] = []

    def search(queries, topks):
        batches.append(list(queries))
        return [[{"document": {"id": q, "contents": q}, "score": float(k)}] for q, k in zip(queries, topks,
                                                                                          strict=True)]

    async def main():
        b = MicroBatcher(search, window_ms=20, max_batch_queries=64)
        worker = asyncio.create_task(b.run())
        reqs = [[f"q{i}-{j}" for j in range(i % 3 + 1)] for i in range(32)]
        out = await asyncio.gather(*(b.submit(r, 1 + i % 4) for i, r in enumerate(reqs)))
        worker.cancel()
        return reqs, out

    reqs, out = asyncio.run(main())
    for i, (r, res) in enumerate(zip(reqs, out, strict=True)):
        assert [x[0]["document"]["id"] for x in res] == r
        assert all(x[0]["score"] == 1 + i % 4 for x in res)
    assert len(batches) < 32 and max(len(b) for b in batches) <= 64
    assert sorted(q for b in batches for q in b) == sorted(q for r in reqs for q in r)


def test_micro_batcher_never_splits_a_request_and_keeps_order():
    batches: list[list[str]] = []

    def search(queries, topks):
        batches.append(list(queries))
        return [[] for _ in queries]

    async def main():
        b = MicroBatcher(search, window_ms=50, max_batch_queries=5)
        worker = asyncio.create_task(b.run())
        reqs = [[f"r{i}-{j}" for j in range(n)] for i, n in enumerate([3, 3, 2, 6, 1])]
        await asyncio.gather(*(b.submit(r, 3) for r in reqs))
        worker.cancel()
        return reqs

    reqs = asyncio.run(main())
    assert [q for batch in batches for q in batch] == [q for r in reqs for q in r]  # arrival order
    assert all(len(b) <= 5 or len(b) == 6 for b in batches)  # only the 6-query request exceeds the cap, alone
    assert ["r3-0", "r3-1", "r3-2", "r3-3", "r3-4", "r3-5"] in batches


def test_micro_batcher_survives_a_failing_search():
    calls = {"n": 0}

    def search(queries, topks):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("index exploded")
        return [[] for _ in queries]

    async def main():
        b = MicroBatcher(search, window_ms=0, max_batch_queries=8)
        worker = asyncio.create_task(b.run())
        with pytest.raises(RuntimeError, match="index exploded"):
            await b.submit(["a"], 3)
        ok = await b.submit(["b"], 3)
        worker.cancel()
        return ok

    assert asyncio.run(main()) == [[]]


def test_client_retries_then_names_the_last_error():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RetrievalClient(f"http://127.0.0.1:{port}", timeout=1, retries=2, backoff_s=0.01) as client:
        with pytest.raises(RetrievalError, match="failed after 3 attempts; last error: ConnectError"):
            client.search(["a"], 3)


def test_dense_searcher_rejects_mismatched_store(corpus, tmp_path):
    corpus_dir, _ = corpus
    build_index(corpus_dir, tmp_path / "idx", cfg_for(), embedder=HashEmbedder())
    store = PassageStore(tmp_path / "idx" / "passages.arrow")
    with pytest.raises(ValueError, match="index has 3 vectors but the passage store"):
        DenseSearcher(_flat_with(3), HashEmbedder(), store)


def _flat_with(n: int) -> faiss.Index:
    index = faiss.IndexFlatIP(4)
    index.add(np.ones((n, 4), dtype=np.float32))
    return index
