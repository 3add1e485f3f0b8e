"""Search-R1's retrieval HTTP API as an ASGI app, answered through the micro-batcher (batcher.py).

    POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}
      -> {"result": [[{"document": {"id": .., "contents": ..}, "score": s}, ..], ..]}
      (return_scores false -> {"result": [[{"id": .., "contents": ..}, ..], ..]}, as Search-R1 returns)
    GET /health -> {"status": "ok", ...}

Bad requests get a 4xx and a reason; the app never crashes on a request. Running it as a process
(index loading, the socket, the CLI, starting and stopping it from other code) is server.py's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from searchr1.retrieval.base import Searcher
from searchr1.retrieval.batcher import MicroBatcher, mixed_search_fn
from searchr1.retrieval.config import RetrievalConfig

# the app writes its base URL to this file once it can serve: how a parent process learns port 0's port
READY_FILE_ENV = "SEARCHR1_READY_FILE"


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


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
        ready = os.environ.get(READY_FILE_ENV)
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
