"""The `search` tool as a plain Python function over a `Searcher`, under the agent protocol.

verl's `SearchTool` (training.verl_plugins.tool) executes it; its signature and docstring also give
exactly `searchr1.agent.prompts.SEARCH_TOOL_SCHEMA` to any engine that derives a schema from a
function (TRL's `tools=`, transformers' `get_json_schema`). Query cleaning and the observation text
are the protocol's (`AgentProtocol`), as in the evaluation loop, which the TRL engine trains with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from searchr1.agent.protocol import AgentProtocol
from searchr1.retrieval.base import Hit, Searcher


@dataclass
class ToolStats:
    """Counts since the last `reset()`; the trainer reads them once per step."""

    calls: int = 0
    empty_calls: int = 0    # the model's fault: no usable query (the model sees an error message)
    errors: int = 0         # the retriever's fault: the search itself raised (server down, bad answer)
    seconds: float = 0.0

    def reset(self) -> None:
        self.calls = self.empty_calls = self.errors = 0
        self.seconds = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


class ToolFailureError(RuntimeError):
    """Too many search calls failed in one training step: training would go on without retrieval."""


def check_tool_failures(stats: ToolStats, max_rate: float, step: int) -> None:
    """Stop a run whose retriever fails: engines turn a tool exception into the tool's text and carry on."""
    if stats.calls and stats.error_rate > max_rate:
        raise ToolFailureError(
            f"step {step}: {stats.errors} of {stats.calls} search calls failed ({stats.error_rate:.0%} > "
            f"training.grpo.max_tool_error_rate={max_rate:.0%}); is the retriever up? The run stops rather than "
            f"train without retrieval.")


def make_search_tool(searcher: Searcher, protocol: AgentProtocol, tokenizer: Any,
                     stats: ToolStats | None = None) -> Callable[..., str]:
    """A `search(query_list)` function returning the protocol's observation for the queries."""
    stats = stats if stats is not None else ToolStats()

    def search(query_list: list[str]):  # no return annotation: it would add "return" to the schema
        """Search a Wikipedia passage index and return the most relevant passages.

        Args:
            query_list: Fully-formed semantic queries.
        """
        stats.calls += 1
        queries = protocol.queries_from_arguments({"query_list": query_list})
        if not queries:
            stats.empty_calls += 1
            raise ValueError("query_list is empty: give at least one query")
        t0 = time.perf_counter()
        try:
            hits = searcher.search(queries, protocol.topk)
        except Exception:
            stats.errors += 1
            raise
        finally:
            stats.seconds += time.perf_counter() - t0
        return protocol.observation(hits, tokenizer)

    search.stats = stats  # type: ignore[attr-defined]
    return search


class WordOverlapSearcher:
    """A dependency-free `Searcher` for tests and benchmarks: ranks passages by shared words.

    Not a retriever to train with for real (use the FAISS index); it exists so the trainer can be
    exercised on a handful of passages without loading an embedder.
    """

    def __init__(self, docs: Sequence[Mapping[str, str]]):
        import re

        self._word = re.compile(r"\w+")
        self.docs = [{"id": str(d["id"]), "contents": str(d["contents"])} for d in docs]
        self.bags = [set(self._word.findall(d["contents"].lower())) for d in self.docs]

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        out = []
        for q in queries:
            words = set(self._word.findall(q.lower()))
            scored = sorted(((len(words & bag), -i) for i, bag in enumerate(self.bags)), reverse=True)[:topk]
            out.append([{"document": dict(self.docs[-i]), "score": float(s)} for s, i in scored])
        return out
