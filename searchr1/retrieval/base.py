"""What every retriever returns: Search-R1's result shape, so the HTTP API is a plain dump of it."""

from collections.abc import Sequence
from typing import Protocol, TypedDict


class Doc(TypedDict):
    id: str
    contents: str  # wiki-18 layout: '"Title"\ntext'


class Hit(TypedDict):
    document: Doc
    score: float


class Searcher(Protocol):
    """In-process retriever, HTTP client and BM25 all satisfy this."""

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]: ...
