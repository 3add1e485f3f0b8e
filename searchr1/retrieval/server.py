"""Search-R1's retrieval HTTP API, with cross-request micro-batching.

    POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}
      -> {"result": [[{"document": {"id": .., "contents": ..}, "score": s}, ..], ..]}
      (return_scores false -> {"result": [[{"id": .., "contents": ..}, ..], ..]}, as Search-R1 returns)
    GET /health -> {"status": "ok", ...}

Search-R1's server encodes and searches once per HTTP request, so 32 rollouts asking one query
each cost 32 encoder calls. Here every request joins a queue; one worker takes whatever is
waiting (plus anything that arrives within `batch_window_ms`, up to `max_batch_queries`) and
answers it with one encoder call. Bad requests get a 4xx and a reason; the server never crashes.

CLI: searchr1 retriever serve --index DIR [--config configs/tiny.yaml] [--host H] [--port P] [key.sub=value ...]
(or python -m searchr1.retrieval.server with the same arguments)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from searchr1.retrieval.base import Hit, Searcher
from searchr1.retrieval.config import RetrievalConfig

SearchFn = Callable[[Sequence[str], Sequence[int]], list[list[Hit]]]


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def mixed_search_fn(searcher: Searcher) -> SearchFn:
    """`search_mixed(queries, topks)` if the searcher has it (one encoder call), else one call per topk."""
    if hasattr(searcher, "search_mixed"):
        return searcher.search_mixed

    def by_topk(queries: Sequence[str], topks: Sequence[int]) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in queries]
        for k in sorted(set(topks)):
            idx = [i for i, t in enumerate(topks) if t == k]
            for i, hits in zip(idx, searcher.search([queries[i] for i in idx], k), strict=True):
                out[i] = hits
        return out

    return by_topk


@dataclass
class _Job:
    queries: list[str]
    topk: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects concurrent requests and answers them with one search call per batch."""

    def __init__(self, search: SearchFn, window_ms: float, max_batch_queries: int):
        self.search, self.window_s, self.max_batch = search, window_ms / 1000.0, max_batch_queries
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        # one worker thread: the encoder already uses every core; two concurrent calls only fight
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieve")
        self.batches = 0
        self.queries = 0
        self._carry: _Job | None = None  # a request that did not fit the last batch: it opens the next

    async def submit(self, queries: list[str], topk: int) -> list[list[Hit]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(queries, topk, future))
        return await future

    async def _collect(self) -> list[_Job]:
        first, self._carry = self._carry, None
        jobs = [first if first is not None else await self.queue.get()]
        n = len(jobs[0].queries)
        deadline = asyncio.get_running_loop().time() + self.window_s
        while n < self.max_batch:
            try:
                job = self.queue.get_nowait()  # backlog that built up during the last batch: free to take
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            if n + len(job.queries) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            n += len(job.queries)
        return jobs

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [j for j in await self._collect() if not j.future.done()]  # drop cancelled requests
            if not jobs:
                continue
            queries = [q for j in jobs for q in j.queries]
            topks = [j.topk for j in jobs for _ in j.queries]
            try:
                results = await loop.run_in_executor(self.executor, self.search, queries, topks)
            except Exception as exc:  # answer every waiting request with the error; keep serving
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.batches += 1
            self.queries += len(queries)
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(results[start:start + len(j.queries)])
                start += len(j.queries)


def parse_request(body: bytes, cfg: RetrievalConfig) -> tuple[list[str], int, bool]:
    """(queries, topk, return_scores) from a request body, or BadRequest with the reason."""
    s = cfg.server
    if len(body) > s.max_body_bytes:
        raise BadRequest(413, f"request body is {len(body)} bytes; the limit is {s.max_body_bytes}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(422, f"expected a JSON object with 'queries', got {type(data).__name__}")
    queries = data.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest(422, "'queries' must be a list of strings")
    if not queries:
        raise BadRequest(422, "'queries' is empty; send at least one query")
    if len(queries) > s.max_queries_per_request:
        raise BadRequest(413, f"{len(queries)} queries in one request; the limit is {s.max_queries_per_request}")
    for i, q in enumerate(queries):
        if len(q) > s.max_query_chars:
            raise BadRequest(422, f"queries[{i}] is {len(q)} characters; the limit is {s.max_query_chars}")
    topk = data.get("topk")
    if topk is None:
        topk = cfg.topk  # Search-R1 falls back to its configured top-k
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise BadRequest(422, f"'topk' must be an integer, got {topk!r}")
    if not 1 <= topk <= s.max_topk:
        raise BadRequest(422, f"'topk' must be between 1 and {s.max_topk}, got {topk}")
    return_scores = data.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(422, f"'return_scores' must be true or false, got {return_scores!r}")
    return queries, topk, return_scores


def _json(data: Any, status: int = 200) -> Response:
    # plain json.dumps: FastAPI's encoder walks every nested dict and costs more than the search
    return Response(json.dumps(data, ensure_ascii=False).encode(), status_code=status,
                    media_type="application/json")


def create_app(searcher: Searcher, cfg: RetrievalConfig, info: dict[str, Any] | None = None) -> FastAPI:
    """The ASGI app; the micro-batch worker runs for the app's lifetime."""
    batcher = MicroBatcher(mixed_search_fn(searcher), cfg.server.batch_window_ms, cfg.server.max_batch_queries)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        ready = os.environ.get("SEARCHR1_READY_FILE")
        if ready:  # tells running_server() the port we bound; written only once we can serve
            Path(ready).write_text(app.state.url)
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="searchr1 retrieval", lifespan=lifespan)
    app.state.url = ""
    app.state.batcher = batcher

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cfg.server.max_body_bytes:
            return _json({"detail": f"request body is {declared} bytes; the limit is "
                                    f"{cfg.server.max_body_bytes}"}, 413)
        try:
            queries, topk, return_scores = parse_request(await request.body(), cfg)
        except BadRequest as exc:
            return _json({"detail": exc.reason}, exc.status)
        try:
            results = await batcher.submit(queries, topk)
        except Exception as exc:
            return _json({"detail": f"retrieval failed: {type(exc).__name__}: {exc}"}, 500)
        if not return_scores:
            return _json({"result": [[h["document"] for h in hits] for hits in results]})
        return _json({"result": results})

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok", **(info or {}), "pid": os.getpid(), "default_topk": cfg.topk,
                      "max_topk": cfg.server.max_topk, "max_queries_per_request": cfg.server.max_queries_per_request,
                      "batches": batcher.batches, "queries": batcher.queries})

    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(index_dir: Path, cfg: RetrievalConfig, host: str | None = None, port: int | None = None) -> None:
    """Load the index and serve until interrupted (binds the socket first so port 0 can be reported)."""
    import uvicorn

    from searchr1.retrieval.searcher import load_searcher, read_meta

    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    if cfg.embedder.num_threads:
        import torch

        torch.set_num_threads(cfg.embedder.num_threads)  # our own process: the trainer is not affected
    searcher = load_searcher(index_dir, cfg)
    meta = read_meta(index_dir)
    app = create_app(searcher, cfg, info={"kind": meta["kind"], "count": meta["count"], "index": str(index_dir)})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    app.state.url = _url(host, sock.getsockname()[1])
    print(f"retrieval server on {app.state.url} (index {index_dir}, {meta['count']} passages)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30))
    server.run(sockets=[sock])


@contextlib.contextmanager
def running_server(index_dir: Path, cfg, port: int = 0, timeout: float = 180.0) -> Iterator[str]:
    """Start the server in a subprocess, wait for /health, yield its base URL, stop it on exit.

    `cfg` is a RetrievalConfig or a PipelineConfig (its retrieval section is used).
    """
    import yaml

    retrieval = getattr(cfg, "retrieval", cfg)
    with tempfile.TemporaryDirectory(prefix="searchr1-retrieval-") as tmp:
        cfg_path, ready, log_path = Path(tmp) / "config.yaml", Path(tmp) / "ready", Path(tmp) / "server.log"
        cfg_path.write_text(yaml.safe_dump({"retrieval": retrieval.model_dump(mode="json")}))
        root = str(Path(__file__).resolve().parents[2])  # so `-m searchr1...` works without an install
        env = {**server_env(), "SEARCHR1_READY_FILE": str(ready),
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        args = [sys.executable, "-m", "searchr1.retrieval.server", "--index", str(index_dir),
                "--config", str(cfg_path), "--host", retrieval.server.host, "--port", str(port)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = _wait_ready(proc, ready, log_path, timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_env() -> dict[str, str]:
    """Environment for a server subprocess. OpenMP threads that busy-wait between parallel regions
    starve when another process (the trainer) uses the same cores; passive waiting avoids that."""
    return {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}


def _wait_ready(proc: subprocess.Popen, ready: Path, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"retrieval server exited with code {proc.returncode} before it was ready:\n{tail}")
        if ready.is_file() and (url := ready.read_text().strip()):
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise TimeoutError(f"retrieval server not healthy after {timeout:.0f}s; log tail:\n{tail}")


def main(argv: Sequence[str] | None = None, prog: str = "python -m searchr1.retrieval.server") -> int:
    from searchr1.config import apply_overrides, config_from_dict, load_config

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, required=True, help="index directory written by build_index")
    p.add_argument("--config", type=Path, default=None, help="pipeline YAML (default: built-in defaults)")
    p.add_argument("--host", default=None, help="default: retrieval.server.host (127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="default: retrieval.server.port; 0 = any free port")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, e.g. retrieval.server.batch_window_ms=5")
    a = p.parse_intermixed_args(argv)
    try:
        if a.config is not None:
            cfg = load_config(a.config, a.overrides)
        else:
            cfg = config_from_dict(apply_overrides({}, a.overrides), source="overrides")
        if not a.index.is_dir():
            raise FileNotFoundError(f"--index {a.index}: not a directory (expected an index stage folder)")
        serve(a.index, cfg.retrieval, a.host, a.port)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:  # bad config/index/port: no traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
