"""Load test of the retrieval server on 127.0.0.1: many clients, mixed good and bad requests, clients
that hang up mid-request. Bounded in time and count; it stops by itself.

Checks: zero 5xx; every good request gets exactly its own results (compared with the in-process
searcher's answer for the same query and topk); every bad request gets a 4xx; the server's memory
stays flat; the server still answers /health afterwards. Prints p50/p99 and the counts.

    python benchmarks/load_retrieval_server.py [--clients 64] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_retrieval_server import build_bench_index, make_queries  # noqa: E402

from searchr1.corpus.samples import DATA_ARG_HELP  # noqa: E402
from searchr1.retrieval.config import RetrievalConfig  # noqa: E402
from searchr1.retrieval.searcher import load_searcher  # noqa: E402
from searchr1.retrieval.server import running_server  # noqa: E402

# (name, body bytes) — each must be refused with a 4xx
BAD_BODIES = [
    ("malformed json", b'{"queries": ["a"'),
    ("not utf-8", b'{"queries": ["\xff\xfe"], "topk": 3}'),
    ("empty query list", b'{"queries": [], "topk": 3}'),
    ("topk zero", b'{"queries": ["a"], "topk": 0}'),
    ("topk above cap", b'{"queries": ["a"], "topk": 100000}'),
    ("queries not a list", b'{"queries": "a", "topk": 3}'),
    ("over-long query", json.dumps({"queries": ["x" * 100_000], "topk": 3}).encode()),
    ("too many queries", json.dumps({"queries": ["q"] * 5000, "topk": 3}).encode()),
]


async def _request(host: str, port: int, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, await reader.read()
    finally:
        writer.close()


async def _hang_up(host: str, port: int, body: bytes) -> None:
    """Send half a request (or a whole one) and close without reading the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + body[: len(body) // 2] if random.random() < 0.5 else head + body)
    await writer.drain()
    writer.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, pid: int, expected: dict, queries: list[str], clients: int, seconds: float,
               max_requests: int, seed: int) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    port_i = int(port)
    stats = {"good": 0, "bad": 0, "hangups": 0, "5xx": 0, "bad_not_4xx": 0, "mixed_up": 0, "errors": 0}
    lat: list[float] = []
    memory: list[float] = []
    deadline = time.perf_counter() + seconds
    sent = 0

    async def client(i: int) -> None:
        nonlocal sent
        rng = random.Random(seed + i)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            roll = rng.random()
            try:
                if roll < 0.05:
                    await _hang_up(host, port_i, json.dumps({"queries": [rng.choice(queries)], "topk": 3}).encode())
                    stats["hangups"] += 1
                elif roll < 0.25:
                    _, body = rng.choice(BAD_BODIES)
                    status, _ = await _request(host, port_i, body)
                    stats["bad"] += 1
                    stats["5xx"] += status >= 500
                    stats["bad_not_4xx"] += not 400 <= status < 500
                else:
                    qs = rng.sample(queries, rng.randint(1, 3))
                    topk = rng.randint(1, 5)
                    t0 = time.perf_counter()
                    status, body = await _request(host, port_i, json.dumps(
                        {"queries": qs, "topk": topk, "return_scores": True}).encode())
                    lat.append(time.perf_counter() - t0)
                    stats["good"] += 1
                    stats["5xx"] += status >= 500
                    if status != 200:
                        stats["errors"] += 1
                        continue
                    got = [[h["document"]["id"] for h in hits] for hits in json.loads(body)["result"]]
                    stats["mixed_up"] += got != [expected[q][:topk] for q in qs]
            except (OSError, asyncio.IncompleteReadError, ValueError):
                stats["errors"] += 1

    async def sample_memory() -> None:
        while time.perf_counter() < deadline:
            memory.append(rss_mb(pid))
            await asyncio.sleep(1.0)

    t0 = time.perf_counter()
    await asyncio.gather(sample_memory(), *(client(i) for i in range(clients)))
    lat_ms = np.array(lat) * 1000 if lat else np.array([float("nan")])
    warm = memory[len(memory) // 4:] or memory  # after warm-up: allocator pools, first batches
    return {**stats, "seconds": time.perf_counter() - t0, "requests_per_s": sent / (time.perf_counter() - t0),
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "rss_mb_start": memory[0] if memory else float("nan"), "rss_mb_max": max(memory, default=float("nan")),
            "rss_mb_growth_after_warmup": (warm[-1] - warm[0]) if warm else float("nan")}


def run(clients: int, seconds: float, max_requests: int, passages: int, work: Path, seed: int = 0,
        data: Path | None = None) -> dict:
    index_dir, rows = build_bench_index(work, passages, data)
    cfg = RetrievalConfig()
    queries = make_queries(rows, 200, seed)
    searcher = load_searcher(index_dir, cfg)
    answers = searcher.search(queries, 5)
    expected = {q: [h["document"]["id"] for h in hits] for q, hits in zip(queries, answers, strict=True)}
    with running_server(index_dir, cfg) as url:
        pid = httpx.get(f"{url}/health").json()["pid"]
        result = asyncio.run(load(url, pid, expected, queries, clients, seconds, max_requests, seed))
        result["healthy_after"] = httpx.get(f"{url}/health", timeout=30).status_code == 200
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=50_000)
    p.add_argument("--passages", type=int, default=1000)
    p.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "retrieval")
    p.add_argument("--data", type=Path, default=None, help=DATA_ARG_HELP)
    a = p.parse_args()
    r = run(a.clients, a.seconds, a.max_requests, a.passages, a.work, data=a.data)
    print(f"{a.clients} clients for {r['seconds']:.0f} s on 127.0.0.1 (load avg {os.getloadavg()[0]:.1f})")
    for k, v in r.items():
        print(f"  {k:>28}: {v:.1f}" if isinstance(v, float) else f"  {k:>28}: {v}")
    ok = r["5xx"] == 0 and r["mixed_up"] == 0 and r["bad_not_4xx"] == 0 and r["healthy_after"]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
