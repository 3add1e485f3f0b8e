"""Micro-batched retrieval server vs a Search-R1-style server, same index, same embedder, same load.

Baseline (what Search-R1's retrieval_server.py does): a synchronous FastAPI endpoint, request body
validated by a pydantic model, one query-encoder call + one FAISS search per HTTP request, no
batching across requests (FastAPI runs concurrent requests in its thread pool, so encoder calls
overlap on the same cores). Ours: searchr1.retrieval.server (requests queued, answered together).

Load: N concurrent clients (default 32), each sending one query per request (what verl's search
tool does per rollout), topk=3, return_scores=true; rounds alternate ours/baseline so background
load on a shared machine hits both alike. Prints throughput, p50/p99 per server, their ratio, and
whether every query got the same top-k ids from both.

    python benchmarks/bench_retrieval_server.py [--queries 2000] [--clients 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from searchr1.corpus.samples import DATA_ARG_HELP, open_samples  # noqa: E402
from searchr1.retrieval.config import RetrievalConfig  # noqa: E402
from searchr1.retrieval.index import build_index  # noqa: E402
from searchr1.retrieval.server import _wait_ready, running_server, server_env  # noqa: E402

# ------------------------------------------------------------------ the baseline server


class QueryRequest(BaseModel):  # Search-R1's request model (module level so FastAPI resolves the annotation)
    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


def bench_config(threads: int | None) -> RetrievalConfig:
    cfg = RetrievalConfig()
    return cfg.model_copy(update={"embedder": cfg.embedder.model_copy(update={"num_threads": threads})})


def serve_baseline(index_dir: Path, ready_file: Path, threads: int | None) -> None:
    """Search-R1's request handling over our searcher's encoder + index (no lock, no batching)."""
    import socket

    import uvicorn
    from fastapi import FastAPI

    from searchr1.retrieval.searcher import load_searcher

    cfg = bench_config(threads)
    if threads:
        import torch

        torch.set_num_threads(threads)  # same setting the batched server applies from its config
    searcher = load_searcher(index_dir, cfg)
    app = FastAPI()

    @app.post("/retrieve")
    def retrieve(request: QueryRequest):  # sync: FastAPI runs it in its thread pool, like Search-R1
        topk = request.topk or 3
        vecs = searcher.embedder.encode_queries(request.queries)  # one encode per request
        results = searcher.search_vectors(vecs, [topk] * len(request.queries))  # one search per request
        if request.return_scores:
            return {"result": results}
        return {"result": [[h["document"] for h in hits] for hits in results]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ready_file.write_text(f"http://127.0.0.1:{sock.getsockname()[1]}")
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


class BaselineServer:
    def __init__(self, index_dir: Path, threads: int | None):
        self.index_dir, self.threads = index_dir, threads

    def __enter__(self) -> str:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-baseline-")
        ready, log = Path(self.tmp.name) / "ready", Path(self.tmp.name) / "log"
        with open(log, "wb") as f:
            args = [sys.executable, __file__, "--serve-baseline", str(self.index_dir), "--ready-file", str(ready)]
            if self.threads:
                args += ["--threads", str(self.threads)]
            # same environment as running_server gives ours (OMP_WAIT_POLICY=PASSIVE)
            self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=server_env())
        return _wait_ready(self.proc, ready, log, 180)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.tmp.cleanup()


# ------------------------------------------------------------------ load


def make_queries(rows: list[dict], n: int, seed: int = 0) -> list[str]:
    """Query-like strings from real passages: titles, 'who/what is <title>', and short text spans."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        r = rows[int(rng.integers(len(rows)))]
        title, _, text = r["contents"].partition("\n")
        title = title.strip('"')
        words = re.findall(r"\w[\w'-]*", text)
        kind = int(rng.integers(3))
        if kind == 0:
            q = f"{rng.choice(['who is', 'what is', 'tell me about'])} {title}"
        elif kind == 1 and len(words) > 8:
            s = int(rng.integers(len(words) - 8))
            q = " ".join(words[s:s + int(rng.integers(4, 9))])
        else:
            q = f"{title} {' '.join(rng.choice(words, size=min(3, len(words)), replace=False))}" if words else title
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


class Connection:
    """A bare HTTP/1.1 keep-alive connection: the load generator shares the 2 cores with the servers,
    so it must cost far less per request than an HTTP library does, or it becomes the bottleneck."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post_json(self, path: str, payload: dict) -> tuple[int, bytes]:
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def drive(url: str, queries: list[str], clients: int, topk: int) -> tuple[float, list[float], dict]:
    """`clients` concurrent connections, one query per request; returns (seconds, latencies, answers)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    todo = iter(queries)
    latencies: list[float] = []
    answers: dict[str, list[tuple[str, float]]] = {}

    async def worker() -> None:
        conn = Connection(host, int(port))
        await conn.open()
        for q in todo:  # a shared iterator: each query is sent once, by whichever client is free
            t0 = time.perf_counter()
            status, body = await conn.post_json("/retrieve", {"queries": [q], "topk": topk, "return_scores": True})
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{url} answered {status}: {body[:300]!r}")
            answers[q] = [(h["document"]["id"], h["score"]) for h in json.loads(body)["result"][0]]
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0, latencies, answers


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): what a request costs, whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(url: str, pid: int, queries: list[str], clients: int, topk: int) -> dict:
    asyncio.run(drive(url, queries[:clients * 2], clients, topk))  # warm-up: connections, first batches
    cpu0 = cpu_seconds(pid)
    seconds, lat, answers = asyncio.run(drive(url, queries, clients, topk))
    cpu = cpu_seconds(pid) - cpu0
    lat_ms = np.array(lat) * 1000
    return {"qps": len(queries) / seconds, "p50": float(np.percentile(lat_ms, 50)),
            "p99": float(np.percentile(lat_ms, 99)), "q_per_cpu_s": len(queries) / max(cpu, 1e-9),
            "answers": answers}


# ------------------------------------------------------------------ main


def build_bench_index(work: Path, n_passages: int, data: Path | None = None) -> tuple[Path, list[dict]]:
    """A flat index over the first n passages of the reference samples in `data`, or of generated ones."""
    samples = open_samples(data, work, n_passages)
    rows = samples.passage_rows(n_passages)
    corpus = work / f"corpus-{samples.origin}-{len(rows)}" / "passages"
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), corpus / "part-00000.parquet")
    index_dir = work / f"index-{samples.origin}-{len(rows)}"
    summary = build_index(corpus.parent, index_dir, RetrievalConfig())  # reused when already built
    print(f"index: {summary['passages']:.0f} {samples.origin} passages ({samples.passages}), flat, "
          f"{summary['dims']:.0f} dims ({index_dir})")
    return index_dir, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--passages", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch threads per server (default: torch's)")
    p.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "retrieval")
    p.add_argument("--data", type=Path, default=None, help=DATA_ARG_HELP)
    p.add_argument("--serve-baseline", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_baseline:
        serve_baseline(a.serve_baseline, a.ready_file, a.threads)
        return

    index_dir, rows = build_bench_index(a.work, a.passages, a.data)
    queries = make_queries(rows, a.queries)
    print(f"load: {len(queries)} distinct queries x {a.rounds} rounds per server, {a.clients} concurrent "
          f"clients, 1 query/request, topk={a.topk}; {os.cpu_count()} CPU cores, torch threads per server: "
          f"{a.threads or 'default'}; load avg before start {os.getloadavg()[0]:.1f}")
    results: dict[str, list[dict]] = {"baseline": [], "batched": []}
    cfg = bench_config(a.threads)
    baseline = BaselineServer(index_dir, a.threads)
    with baseline as base_url, running_server(index_dir, cfg) as our_url:
        pids = {"baseline": baseline.proc.pid, "batched": httpx.get(f"{our_url}/health").json()["pid"]}
        for rnd in range(a.rounds):
            for name, url in (("batched", our_url), ("baseline", base_url)) if rnd % 2 == 0 else (
                    ("baseline", base_url), ("batched", our_url)):
                res = run_load(url, pids[name], queries, a.clients, a.topk)
                results[name].append(res)
                print(f"  round {rnd + 1} {name:9s} {res['qps']:7.1f} q/s  p50 {res['p50']:7.1f} ms  "
                      f"p99 {res['p99']:7.1f} ms  {res['q_per_cpu_s']:6.1f} queries per server CPU-second",
                      flush=True)
        stats = httpx.get(f"{our_url}/health").json()
    print(f"load avg after: {os.getloadavg()[0]:.1f}")

    def med(name: str, key: str) -> float:
        return float(np.median([r[key] for r in results[name]]))

    base_ans, our_ans = results["baseline"][0]["answers"], results["batched"][0]["answers"]
    same = sum(1 for q in queries if [d for d, _ in base_ans[q]] == [d for d, _ in our_ans[q]])
    score_diff = max(abs(s1 - s2) for q in queries for (_, s1), (_, s2) in zip(base_ans[q], our_ans[q], strict=False))
    ratios = [b["qps"] / s["qps"] for b, s in zip(results["batched"], results["baseline"], strict=True)]
    print(f"\nbaseline (Search-R1 style: 1 encode + 1 search per request): {med('baseline', 'qps'):.1f} q/s, "
          f"p50 {med('baseline', 'p50'):.1f} ms, p99 {med('baseline', 'p99'):.1f} ms  (medians over rounds)")
    print(f"micro-batched server (window {RetrievalConfig().server.batch_window_ms} ms): "
          f"{med('batched', 'qps'):.1f} q/s, p50 {med('batched', 'p50'):.1f} ms, p99 {med('batched', 'p99'):.1f} ms; "
          f"mean batch {stats['queries'] / max(stats['batches'], 1):.1f} queries")
    print(f"throughput ratio batched/baseline: {med('batched', 'qps') / med('baseline', 'qps'):.2f}x "
          f"(per round: {', '.join(f'{r:.2f}x' for r in ratios)})")
    print(f"CPU cost ratio (queries per server CPU-second, batched/baseline): "
          f"{med('batched', 'q_per_cpu_s') / med('baseline', 'q_per_cpu_s'):.2f}x "
          f"({med('batched', 'q_per_cpu_s'):.1f} vs {med('baseline', 'q_per_cpu_s'):.1f})")
    print(f"identical top-{a.topk} ids: {same}/{len(queries)} queries; max |score difference| {score_diff:.1e}")


if __name__ == "__main__":
    main()
