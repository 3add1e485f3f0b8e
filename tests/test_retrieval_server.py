"""The HTTP server with the real embedder over wiki-18-format passages, started as `running_server` does.

The passages are generated (tests/conftest.py); the realdata test repeats the key check on real wiki-18 rows.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from searchr1.corpus.samples import SampleFiles
from searchr1.retrieval.client import RetrievalClient, RetrievalError
from searchr1.retrieval.config import EmbedderConfig, RetrievalConfig
from searchr1.retrieval.index import build_index
from searchr1.retrieval.searcher import load_searcher
from searchr1.retrieval.server import running_server

pytestmark = pytest.mark.slow  # a server subprocess and the real embedder
N_PASSAGES = 100


@pytest.fixture(scope="module")
def rows(generated_data: SampleFiles) -> list[dict]:
    return generated_data.passage_rows(N_PASSAGES)


@pytest.fixture(scope="module")
def cfg() -> RetrievalConfig:
    return RetrievalConfig(embedder=EmbedderConfig(shard_rows=64))


def build_real_index(rows: list[dict], root: Path, cfg: RetrievalConfig) -> Path:
    (root / "corpus" / "passages").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus" / "passages" / "part-00000.parquet")
    build_index(root / "corpus", root / "index", cfg)
    return root / "index"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, rows, cfg) -> Path:
    return build_real_index(rows, tmp_path_factory.mktemp("retrieval"), cfg)


@pytest.fixture(scope="module")
def url(index_dir, cfg):
    with running_server(index_dir, cfg) as base:
        yield base


@pytest.fixture(scope="module")
def local(index_dir, cfg):
    return load_searcher(index_dir, cfg)


def titles(rows: list[dict]) -> list[str]:
    """Each distinct title once (an entity has several passages), in corpus order."""
    return list(dict.fromkeys(r["contents"].split("\n", 1)[0].strip('"') for r in rows))


def test_response_matches_search_r1_field_for_field(url, rows):
    by_id = {r["id"]: r["contents"] for r in rows}
    own_text = rows[0]["contents"].split("\n", 1)[1]
    r = httpx.post(f"{url}/retrieve", json={"queries": [own_text, "football"], "topk": 3,
                                           "return_scores": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["result"] and len(body["result"]) == 2
    for hits in body["result"]:
        assert len(hits) == 3
        for hit in hits:
            assert set(hit) == {"document", "score"} and isinstance(hit["score"], float)
            assert set(hit["document"]) == {"id", "contents"}
            assert by_id[hit["document"]["id"]] == hit["document"]["contents"]  # the corpus row, untouched
    assert body["result"][0][0]["document"]["id"] == "0"  # passage 0's own text finds passage 0
    # the way verl's search tool and Search-R1's rollout read it: title on the first line
    assert body["result"][0][0]["document"]["contents"].split("\n")[0].strip('"') == titles(rows)[0]


def test_without_scores_returns_bare_documents_like_search_r1(url, rows):
    body = httpx.post(f"{url}/retrieve", json={"queries": [titles(rows)[0]], "topk": 2}).json()
    assert len(body["result"][0]) == 2
    assert all(set(doc) == {"id", "contents"} for doc in body["result"][0])


def test_topk_defaults_to_config(url, rows):
    body = httpx.post(f"{url}/retrieve", json={"queries": [titles(rows)[0]], "return_scores": True}).json()
    assert len(body["result"][0]) == 3


@pytest.mark.realdata
def test_real_wiki18_passages_with_the_real_embedder(reference_data: SampleFiles, tmp_path, cfg):
    """On real wiki-18 rows the real embedder finds the passage a query is about, title on its first line."""
    real = reference_data.passage_rows(N_PASSAGES)
    searcher = load_searcher(build_real_index(real, tmp_path, cfg), cfg)
    top = searcher.search(["Evan Morris lobbyist"], 3)[0][0]["document"]
    assert top == real[0] and top["contents"].split("\n")[0] == '"Evan Morris"'


def test_http_results_equal_in_process_searcher(url, local, rows):
    queries = titles(rows)[:20]
    with RetrievalClient(url) as client:
        remote = client.search(queries, 5)
    here = local.search(queries, 5)
    for a, b in zip(remote, here, strict=True):
        assert [h["document"]["id"] for h in a] == [h["document"]["id"] for h in b]
        assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-4)


def test_concurrent_clients_get_their_own_results(url, local, rows):
    """32 threads with distinct queries and topk at once: each answer is the one for its own query."""
    queries = titles(rows)[:96]
    expected = {}
    for k in (1, 2, 3, 4):
        for q, hits in zip(queries, local.search(queries, k), strict=True):
            expected[(q, k)] = [h["document"]["id"] for h in hits]
    before = httpx.get(f"{url}/health").json()
    errors: list[str] = []

    def worker(i: int) -> None:
        with RetrievalClient(url, timeout=120) as client:
            for j in range(3):
                q, k = queries[i * 3 + j], 1 + (i + j) % 4
                got = [h["document"]["id"] for h in client.search([q], k)[0]]
                if got != expected[(q, k)]:
                    errors.append(f"{q!r} top{k}: got {got}, expected {expected[(q, k)]}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    after = httpx.get(f"{url}/health").json()
    assert after["queries"] - before["queries"] == 96
    assert after["batches"] - before["batches"] < 96  # requests were answered together


BAD = {
    "malformed JSON": (b'{"queries": [', 400),
    "not an object": (b'"hello"', 422),
    "empty query list": (b'{"queries": []}', 422),
    "huge query list": (json.dumps({"queries": ["q"] * 513}).encode(), 413),
    "query not a string": (b'{"queries": [null]}', 422),
    "topk zero": (b'{"queries": ["a"], "topk": 0}', 422),
    "topk negative": (b'{"queries": ["a"], "topk": -1}', 422),
    "topk above cap": (b'{"queries": ["a"], "topk": 1000}', 422),
    "topk float": (b'{"queries": ["a"], "topk": 2.5}', 422),
    "over-long query": (json.dumps({"queries": ["word " * 1000]}).encode(), 422),
    "not UTF-8": (b'{"queries": ["\xff\xfe"]}', 400),
    "body too big": (b'{"queries": ["' + b"x" * 4_100_000 + b'"]}', 413),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request_gets_4xx_with_reason(url, name):
    body, status = BAD[name]
    r = httpx.post(f"{url}/retrieve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert httpx.get(f"{url}/health").status_code == 200  # still serving


def test_wrong_method_and_path_are_4xx(url):
    assert httpx.get(f"{url}/retrieve").status_code == 405
    assert httpx.post(f"{url}/nope", json={}).status_code == 404


def test_client_raises_on_4xx_without_retrying(url):
    with RetrievalClient(url, retries=5, backoff_s=10) as client:  # a retry would take 10 s
        with pytest.raises(RetrievalError, match="HTTP 422.*'topk' must be between 1 and 50"):
            client.search(["a"], 0)


def test_health_and_loopback_default(url):
    h = httpx.get(f"{url}/health").json()
    assert h["status"] == "ok" and h["kind"] == "flat" and h["count"] == N_PASSAGES
    assert url.startswith("http://127.0.0.1:")


def test_running_server_reports_a_failed_start(tmp_path, cfg):
    (tmp_path / "no-index").mkdir()  # a folder, so the server gets as far as reading the index
    with pytest.raises(RuntimeError, match="(?s)exited with code 2.*index_meta.json: missing"):
        with running_server(tmp_path / "no-index", cfg, timeout=60):
            pass
