"""Cross-request micro-batching: concurrent requests answered by one search call.

Search-R1's server encodes and searches once per HTTP request, so 32 rollouts asking one query
each cost 32 encoder calls. Here every request joins a queue; one worker takes whatever is
waiting (plus anything that arrives within the batch window, up to a query budget) and answers
it with one encoder call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from searchr1.retrieval.base import Hit, Searcher

SearchFn = Callable[[Sequence[str], Sequence[int]], list[list[Hit]]]


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
