"""HTTP client for the retrieval server (ours or Search-R1's): a Searcher with timeouts and retries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from searchr1.retrieval.base import Hit

RETRIEVE_PATH = "/retrieve"


class RetrievalError(RuntimeError):
    """The server refused the request (4xx: retrying would not help) or stayed unreachable."""


def base_url(url: str) -> str:
    """The server's base URL (`http://host:port`, optionally a path prefix), without a trailing slash.

    The client appends the endpoints itself, so a URL already ending in `/retrieve` (the form
    Search-R1's `retriever.url` takes) would be requested as `/retrieve/retrieve` and 404 on every
    call; it is refused here, at construction, instead.
    """
    from urllib.parse import urlsplit

    base = url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"retrieval server URL {url!r}: expected http(s)://host:port")
    if parts.path.endswith(RETRIEVE_PATH) or parts.query or parts.fragment:
        raise ValueError(f"retrieval server URL {url!r}: give the server's base URL "
                         f"({parts.scheme}://{parts.netloc}{parts.path.removesuffix(RETRIEVE_PATH)}); "
                         f"the client appends {RETRIEVE_PATH} itself")
    return base


class RetrievalClient:
    """`search(queries, topk)` over `POST {base_url}/retrieve`.

    Connection errors, timeouts and 5xx answers are retried `retries` times with exponential
    backoff (a server restarting mid-training should not kill a run); a 4xx raises at once with
    the server's reason. Long query lists are split into requests of `max_queries_per_request`.
    """

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff_s: float = 0.5,
                 max_queries_per_request: int = 512):
        self.url = base_url(url)
        self.retries, self.backoff_s, self.chunk = retries, backoff_s, max_queries_per_request
        self._http = httpx.Client(timeout=timeout)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        out: list[list[Hit]] = []
        for start in range(0, len(queries), self.chunk):
            batch = list(queries[start:start + self.chunk])
            result = self._post({"queries": batch, "topk": topk, "return_scores": True})["result"]
            if not isinstance(result, list) or len(result) != len(batch):
                raise RetrievalError(f"{self.url}{RETRIEVE_PATH} returned {type(result).__name__} of "
                                     f"{len(result) if isinstance(result, list) else '?'} results for "
                                     f"{len(batch)} queries")
            out.extend(result)
        return out

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", RETRIEVE_PATH, payload)

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                r = self._http.request(method, self.url + path, json=payload)
            except httpx.TransportError as exc:  # refused, reset, timed out
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:500]}"
                continue
            if r.status_code >= 400:
                raise RetrievalError(f"{self.url}{path} refused the request (HTTP {r.status_code}): {_reason(r)}")
            return r.json()
        raise RetrievalError(f"{self.url}{path} failed after {self.retries + 1} attempts; last error: {last}")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text[:500]
