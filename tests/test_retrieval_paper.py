"""The paper profile's retrieval on CPU: e5-style encoding, sharded flat index, embedding pool, prebuilt index.

The encoder is a tiny BERT with random weights, written here from a config and a local vocabulary:
what is under test is the code path (prefixes, mean pooling over the attention mask, 256-token cut,
L2 normalisation) with the settings configs/paper.yaml gives, not the quality of e5.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from searchr1.config import load_config
from searchr1.retrieval import faiss_index
from searchr1.retrieval.config import EmbedderConfig, IndexConfig, RetrievalConfig
from searchr1.retrieval.embedder import Embedder
from searchr1.retrieval.embeddings import Embeddings
from searchr1.retrieval.index import EMB_DIR, build_index
from searchr1.retrieval.searcher import INDEX_FILE, load_searcher, read_meta

REPO = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(300)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAPER_MAX_TOKENS = 256


@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory) -> Path:
    """An e5-shaped encoder folder (BERT config + weights + fast tokenizer), random weights, built locally."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("e5-tiny")
    vocab = {token: i for i, token in enumerate(SPECIAL + ["query", "passage", ":", "?", "."] + WORDS)}
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    # every word is one known token, so token counts below are word counts plus [CLS] prefix [SEP]
    assert tokenizer.tokenize("passage: w0 w299 ?") == ["passage", ":", "w0", "w299", "?"]
    return folder


def paper_embedder(e5_dir: Path, **update) -> EmbedderConfig:
    """configs/paper.yaml's embedder section with only the model (and device) swapped for the local one."""
    cfg = load_config(REPO / "configs" / "paper.yaml").retrieval.embedder
    assert (cfg.query_prefix, cfg.passage_prefix, cfg.pooling, cfg.normalize, cfg.max_length) == \
        ("query: ", "passage: ", "mean", True, PAPER_MAX_TOKENS), "paper.yaml no longer has Search-R1's e5 settings"
    return cfg.model_copy(update={"model": str(e5_dir), "device": "cpu", "devices": [], "batch_size": 4,
                                  "num_threads": None, **update})


def text(n_words: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n_words))


def reference_vectors(e5_dir: Path, texts: list[str]) -> np.ndarray:
    """Independent computation: plain transformers forward per text, mean over the attention mask, L2 norm."""
    from transformers import BertModel, BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(e5_dir)
    model = BertModel.from_pretrained(e5_dir).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok([t], truncation=True, max_length=PAPER_MAX_TOKENS, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)[0].numpy())
    return np.stack(out)


# ---------------------------------------------------------------- encoder: prefixes, pooling, 256 tokens, norm


def test_paper_embedder_matches_a_plain_torch_reference(e5_dir):
    embedder = Embedder(paper_embedder(e5_dir))
    queries = ["w1 w2 ?", text(9, 40), text(30, 7)]
    passages = [text(3), text(600, 11), text(50, 100), text(120, 5), "w7 ."]  # one past 256 tokens; batches pad
    got_q, got_p = embedder.encode_queries(queries), embedder.encode_passages(passages)
    want_q = reference_vectors(e5_dir, [f"query: {q}" for q in queries])
    want_p = reference_vectors(e5_dir, [f"passage: {p}" for p in passages])
    np.testing.assert_allclose(got_q, want_q, atol=2e-6)
    np.testing.assert_allclose(got_p, want_p, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got_p, axis=1), 1.0, atol=1e-6)
    # the checks have teeth: without the prefix the vectors are not the same
    assert np.abs(reference_vectors(e5_dir, queries) - want_q).max() > 1e-2


def test_paper_embedder_cuts_at_256_tokens_counting_prefix_and_specials(e5_dir):
    embedder = Embedder(paper_embedder(e5_dir))
    lengths: list[int] = []
    embedder.model.register_forward_pre_hook(lambda _m, _a, kw: lengths.append(kw["input_ids"].shape[1]),
                                             with_kwargs=True)
    budget = PAPER_MAX_TOKENS - 4  # [CLS] passage : ... [SEP]
    same = embedder.encode_passages([text(budget) + " w299 w298", text(budget) + " w1 w2 w3"])
    differ = embedder.encode_passages([text(budget - 1) + " w299", text(budget - 1) + " w298"])
    assert max(lengths) == PAPER_MAX_TOKENS
    np.testing.assert_array_equal(same[0], same[1])  # they differ only after token 256
    assert np.abs(differ[0] - differ[1]).max() > 1e-3  # they differ at token 255


# ---------------------------------------------------------------- sharded flat index (faiss-cpu)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def saved_embeddings(folder: Path, vecs: np.ndarray, shard_rows: int) -> Embeddings:
    folder.mkdir(parents=True)
    paths = []
    for i, lo in enumerate(range(0, len(vecs), shard_rows)):
        paths.append(folder / f"part-{i:05d}.npy")
        np.save(paths[-1], vecs[lo:lo + shard_rows])
    return Embeddings(tuple(paths), len(vecs), vecs.shape[1])


def assert_same_search(index, reference, queries: np.ndarray, k: int) -> None:
    got_d, got_i = index.search(queries, k)
    want_d, want_i = reference.search(queries, k)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, atol=1e-6)


def test_sharded_flat_index_equals_unsharded_and_resumes_per_shard(tmp_path):
    vecs, queries = unit_rows(1003, 16, 0), unit_rows(300, 16, 1)
    emb = saved_embeddings(tmp_path / "emb", vecs, 300)  # shard ranges cross embedding-shard borders
    flat = faiss.IndexFlatIP(16)
    flat.add(vecs)
    folder = tmp_path / "index.faiss"
    assert faiss_index.write_flat_shards(folder, emb.row_range, 1003, 16, 4, {"build": 1}) == 0
    sharded = faiss_index.read_index(folder, IndexConfig(shards=4))
    assert isinstance(sharded, faiss.IndexShards) and sharded.ntotal == 1003
    assert [faiss.downcast_index(sharded.at(j)).ntotal for j in range(4)] == [250, 251, 251, 251]
    assert_same_search(sharded, flat, queries, 10)

    # a killed build: shard 2 never written, a half-written temp file left behind
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.faiss")}
    faiss_index.shard_file(folder, 2).unlink()
    (folder / ".shard-00002.faiss.999.tmp").write_bytes(b"partial")
    assert faiss_index.write_flat_shards(folder, emb.row_range, 1003, 16, 4, {"build": 1}) == 3
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.faiss")}
    assert {n: t for n, t in after.items() if n != "shard-00002.faiss"} == \
        {n: t for n, t in before.items() if n != "shard-00002.faiss"}
    assert not list(folder.glob(".*.tmp"))
    assert_same_search(faiss_index.read_index(folder, IndexConfig()), flat, queries, 10)
    # shards of another build are never reused
    assert faiss_index.write_flat_shards(folder, emb.row_range, 1003, 16, 4, {"build": 2}) == 0
    with pytest.raises(ValueError, match="retrieval.index.shards=2000 but there are only 1003 passages"):
        faiss_index.write_flat_shards(tmp_path / "x", emb.row_range, 1003, 16, 2000, {})


def test_sharded_index_goes_to_gpu_j_mod_n_through_the_same_path(monkeypatch, tmp_path):
    """No GPU here: faiss's GPU functions are stand-ins that record the placement and keep the shard on CPU."""
    placed, resources = [], []

    class FakeResources:
        def __init__(self):
            resources.append(self)

    class FakeOptions:
        useFloat16 = False

    def fake_to_gpu(res, gpu, index, co):
        placed.append((gpu, co.useFloat16, resources.index(res)))
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", FakeOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_to_gpu, raising=False)
    vecs = unit_rows(500, 8, 2)
    emb = saved_embeddings(tmp_path / "emb", vecs, 500)
    faiss_index.write_flat_shards(tmp_path / "idx", emb.row_range, 500, 8, 5, {})
    got = faiss_index.read_index(tmp_path / "idx", IndexConfig(use_gpu=True, gpu_fp16=True))
    assert placed == [(0, True, 0), (1, True, 1), (0, True, 0), (1, True, 1), (0, True, 0)]  # one resource per GPU
    flat = faiss.IndexFlatIP(8)
    flat.add(vecs)
    assert_same_search(got, flat, unit_rows(50, 8, 3), 7)


def test_sharding_and_prebuilt_need_a_flat_index_and_devices_are_checked():
    with pytest.raises(ValueError, match="retrieval.index.shards needs kind: flat"):
        IndexConfig(kind="hnsw", shards=4)
    with pytest.raises(ValueError, match="retrieval.index.prebuilt needs kind: flat"):
        IndexConfig(kind="bm25", prebuilt="PeterJinGo/wiki-18-e5-index")
    with pytest.raises(ValueError, match="String should match pattern"):
        EmbedderConfig(devices=["gpu0"])
    assert EmbedderConfig(devices=["cuda:0", "cuda:1"]).devices == ["cuda:0", "cuda:1"]


# ---------------------------------------------------------------- build_index: shards, worker pool, prebuilt


def write_corpus(folder: Path, rows: list[dict]) -> Path:
    (folder / "passages").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "passages" / "part-00000.parquet")
    return folder


@pytest.fixture(scope="module")
def corpus_rows() -> list[dict]:
    rng = np.random.default_rng(5)
    return [{"id": str(i), "contents": f'"w{i}"\n' + " ".join(f"w{j}" for j in rng.integers(0, 300, 6 + i % 40))}
            for i in range(60)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, corpus_rows) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), corpus_rows)


QUERIES = [text(4, 3 * i) for i in range(20)]


def hits_of(index_dir: Path, cfg: RetrievalConfig, k: int = 5) -> tuple[list[list[str]], np.ndarray]:
    hits = load_searcher(index_dir, cfg).search(QUERIES, k)
    return [[h["document"]["id"] for h in q] for q in hits], np.array([[h["score"] for h in q] for q in hits])


def assert_same_hits(a, b) -> None:
    assert a[0] == b[0]
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def paper_retrieval(e5_dir: Path, devices=(), **index) -> RetrievalConfig:
    return RetrievalConfig(embedder=paper_embedder(e5_dir, shard_rows=10, devices=list(devices)),
                           index=IndexConfig(**index))


def test_build_index_with_shards_searches_like_one_index(e5_dir, corpus, tmp_path):
    one = build_index(corpus, tmp_path / "one", paper_retrieval(e5_dir))
    three = build_index(corpus, tmp_path / "three", paper_retrieval(e5_dir, shards=3))
    assert three["reused_index_shards"] == 0 and read_meta(tmp_path / "three")["shards"] == 3
    assert sorted(p.name for p in (tmp_path / "three" / INDEX_FILE).iterdir()) == \
        ["manifest.json", "shard-00000.faiss", "shard-00001.faiss", "shard-00002.faiss"]
    assert one["dims"] == three["dims"] == 32
    assert_same_hits(hits_of(tmp_path / "three", paper_retrieval(e5_dir)),
                     hits_of(tmp_path / "one", paper_retrieval(e5_dir)))
    # the same directory rebuilt as one file: the shard folder is replaced, not mixed in
    build_index(corpus, tmp_path / "three", paper_retrieval(e5_dir, shards=1))
    assert (tmp_path / "three" / INDEX_FILE).is_file()


@pytest.mark.slow
def test_two_worker_processes_give_the_same_index_as_one_and_resume_per_shard(e5_dir, corpus, tmp_path):
    one = tmp_path / "one"
    build_index(corpus, one, paper_retrieval(e5_dir))
    two = tmp_path / "two"
    summary = build_index(corpus, two, paper_retrieval(e5_dir, devices=["cpu", "cpu"]))
    assert summary["resumed_shards"] == 0
    workers = json.loads((two / EMB_DIR / "manifest.json").read_text())["workers"]
    assert set(workers.values()) == {"cpu#0", "cpu#1"}, workers  # both took shards: they start together
    names = [f"part-{i:05d}.npy" for i in range(6)]
    for name in names:
        np.testing.assert_allclose(np.load(two / EMB_DIR / name), np.load(one / EMB_DIR / name), atol=1e-6)
    assert_same_hits(hits_of(two, paper_retrieval(e5_dir)), hits_of(one, paper_retrieval(e5_dir)))

    # what a killed run leaves: some shards, a half-written one, no index
    for gone in (two / "index_meta.json", two / INDEX_FILE, two / EMB_DIR / names[1], two / EMB_DIR / names[4]):
        gone.unlink()
    (two / EMB_DIR / f".{names[2]}.4242.tmp").write_bytes(b"half")
    kept = {n: (two / EMB_DIR / n).stat().st_mtime_ns for n in names if n not in (names[1], names[4])}
    summary = build_index(corpus, two, paper_retrieval(e5_dir, devices=["cpu", "cpu"]))
    assert summary["resumed_shards"] == 4
    assert {n: (two / EMB_DIR / n).stat().st_mtime_ns for n in kept} == kept
    assert not list((two / EMB_DIR).glob(".*.tmp"))
    assert_same_hits(hits_of(two, paper_retrieval(e5_dir)), hits_of(one, paper_retrieval(e5_dir)))


@pytest.mark.slow
def test_a_failing_worker_stops_the_build_and_names_its_device(e5_dir, corpus, tmp_path):
    with pytest.raises(RuntimeError, match=r"retrieval.embedder.devices\[0\]='cuda:99'"):
        build_index(corpus, tmp_path / "idx", paper_retrieval(e5_dir, devices=["cuda:99"]))
    assert not (tmp_path / "idx" / "index_meta.json").exists()


def split_like_search_r1(index: faiss.Index, folder: Path, parts: int = 2) -> Path:
    """What PeterJinGo/wiki-18-e5-index holds: one faiss file cut into byte parts part_aa, part_ab, ..."""
    folder.mkdir(parents=True)
    whole = folder.parent / "e5_Flat.index"
    faiss.write_index(index, str(whole))
    blob = whole.read_bytes()
    cut = -(-len(blob) // parts)
    for j in range(parts):
        (folder / f"part_a{'abcdefgh'[j]}").write_bytes(blob[j * cut:(j + 1) * cut])
    return folder


@pytest.fixture(scope="module")
def original(e5_dir, corpus_rows, tmp_path_factory) -> tuple[faiss.Index, Path]:
    """A flat index of the corpus made outside build_index, as Search-R1's index_builder does, and its parts."""
    vecs = Embedder(paper_embedder(e5_dir)).encode_passages([r["contents"] for r in corpus_rows])
    index = faiss.index_factory(vecs.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(vecs)
    return index, split_like_search_r1(index, tmp_path_factory.mktemp("prebuilt") / "parts")


@pytest.mark.parametrize("shards", [1, 3])
def test_prebuilt_index_from_parts_searches_like_the_original(e5_dir, corpus, original, tmp_path, shards):
    index, parts = original
    cfg = paper_retrieval(e5_dir, prebuilt=str(parts), shards=shards)
    summary = build_index(corpus, tmp_path / "idx", cfg)
    assert not (tmp_path / "idx" / EMB_DIR).exists()  # nothing embedded
    assert summary["prebuilt_check_min_cosine"] > 0.9999
    meta = read_meta(tmp_path / "idx")
    assert meta["prebuilt"]["parts"] == ["part_aa", "part_ab"] and meta["prebuilt"]["check_rows"] == 16
    assert not (tmp_path / "idx" / ".prebuilt-joined.faiss").exists()
    searcher = load_searcher(tmp_path / "idx", cfg)
    queries = searcher.embedder.encode_queries(QUERIES)
    assert_same_search(searcher.index, index, queries, 5)


def test_prebuilt_joined_file_and_hub_download_use_the_same_path(e5_dir, corpus, original, tmp_path, monkeypatch):
    index, parts = original
    whole = str(parts.parent / "e5_Flat.index")
    joined = build_index(corpus, tmp_path / "file", paper_retrieval(e5_dir, prebuilt=whole))
    calls = []

    def fake_snapshot_download(**kw):
        calls.append(kw)
        return str(parts)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    hub = build_index(corpus, tmp_path / "hub", paper_retrieval(e5_dir, prebuilt="PeterJinGo/wiki-18-e5-index",
                                                                 prebuilt_revision="abc123"))
    assert calls == [{"repo_id": "PeterJinGo/wiki-18-e5-index", "repo_type": "dataset", "revision": "abc123",
                      "allow_patterns": ["part_*"]}]
    assert joined["dims"] == hub["dims"] == 32
    assert (tmp_path / "hub" / INDEX_FILE).read_bytes() == (parts.parent / "e5_Flat.index").read_bytes()


def test_prebuilt_index_that_does_not_fit_the_corpus_is_refused(e5_dir, corpus_rows, original, tmp_path):
    _, parts = original
    cfg = paper_retrieval(e5_dir, prebuilt=str(parts))
    shorter = write_corpus(tmp_path / "shorter", corpus_rows[:-1])
    with pytest.raises(ValueError, match="has 60 vectors but the corpus has 59 passages"):
        build_index(shorter, tmp_path / "a", cfg)
    shuffled = write_corpus(tmp_path / "shuffled", corpus_rows[::-1])
    with pytest.raises(ValueError, match=r"cosine .* with its passage re-embedded"):
        build_index(shuffled, tmp_path / "b", cfg)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "part_aa").write_bytes((parts / "part_aa").read_bytes())
    with pytest.raises(ValueError, match="not a readable faiss index"):
        build_index(write_corpus(tmp_path / "c", corpus_rows), tmp_path / "c-idx",
                    paper_retrieval(e5_dir, prebuilt=str(tmp_path / "half")))
    with pytest.raises(FileNotFoundError, match="no part_\\* files"):
        build_index(write_corpus(tmp_path / "d", corpus_rows), tmp_path / "d-idx",
                    paper_retrieval(e5_dir, prebuilt=str(tmp_path / "d")))
