"""The `search` tool as the trainers call it: a plain Python function over a `Searcher`.

TRL builds the tool's JSON schema from the function's signature and docstring, so the docstring
below is written to give exactly `searchr1.agent.prompts.SEARCH_TOOL_SCHEMA` (a test checks it):
the model sees the same tool description in warm start, GRPO and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from searchr1.agent.prompts import format_hits
from searchr1.retrieval.base import Hit, Searcher

QUERY_SEPARATOR = "\n---\n"  # between the results of several queries in one call, as the seed joins them


@dataclass
class ToolStats:
    """Counts since the last `reset()`; the trainer reads them once per step."""

    calls: int = 0
    queries: int = 0
    empty_calls: int = 0
    seconds: float = 0.0
    recent: list[list[str]] = field(default_factory=list)

    def reset(self) -> None:
        self.calls = self.queries = self.empty_calls = 0
        self.seconds = 0.0
        self.recent = []


def truncate_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """Keep the first `max_tokens` tokens of `text` (Search-R1's max_obs_length cut)."""
    if tokenizer is None:
        return text[: max_tokens * 4]  # ~4 characters per token when no tokenizer is at hand
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens])


def clean_queries(query_list, max_queries: int, max_chars: int) -> list[str]:
    """The model's `query_list` as a list of non-empty strings; a bare string counts as one query."""
    if isinstance(query_list, str):
        query_list = [query_list]
    if not isinstance(query_list, list | tuple):
        raise TypeError(f"query_list must be a list of strings, got {type(query_list).__name__}")
    out = [str(q).strip()[:max_chars] for q in query_list if str(q).strip()]
    return out[:max_queries]


def format_results(hits_per_query: Sequence[Sequence[Hit]], tokenizer, max_obs_tokens: int) -> str:
    """The tool's text: the evaluation agent's layout (searchr1.agent.rollout), so train and test match."""
    text = QUERY_SEPARATOR.join(format_hits(hits).rstrip("\n") for hits in hits_per_query)
    return truncate_tokens(text, tokenizer, max_obs_tokens)


def make_search_tool(searcher: Searcher, topk: int, max_obs_tokens: int, tokenizer=None,
                     max_queries: int = 3, max_query_chars: int = 512,
                     stats: ToolStats | None = None) -> Callable[..., str]:
    """A `search(query_list)` function returning Search-R1's passage layout, cut to `max_obs_tokens`."""
    import time

    stats = stats if stats is not None else ToolStats()

    def search(query_list: list[str]):  # no return annotation: it would add "return" to the schema
        """Search a Wikipedia passage index and return the most relevant passages.

        Args:
            query_list: Fully-formed semantic queries.
        """
        t0 = time.perf_counter()
        queries = clean_queries(query_list, max_queries, max_query_chars)
        stats.calls += 1
        stats.queries += len(queries)
        stats.recent.append(queries)
        if not queries:
            stats.empty_calls += 1
            raise ValueError("query_list is empty: give at least one query")
        text = format_results(searcher.search(queries, topk), tokenizer, max_obs_tokens)
        stats.seconds += time.perf_counter() - t0
        return text

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
