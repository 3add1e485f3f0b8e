"""What a synthetic question's metadata says about its hops: how many searches it needs and which relation each asks.

The synthetic world writes `metadata.hop_queries` (one "<entity> <relation>" query per hop) and
`metadata.hop_entities`; the warm-start traces and the hop analysis of the evaluation read them through here.
Real benchmarks (NQ, HotpotQA, ...) carry no hop metadata: `hops_needed` is None for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def hop_relation(q: Mapping[str, Any], hop: int) -> str:
    """The relation a hop's query asks for: the query less its entity ("Yogoth Voumil employer" -> "employer")."""
    query, entity = q["metadata"]["hop_queries"][hop], q["metadata"]["hop_entities"][hop]
    return query[len(entity):].strip() if query.startswith(entity) else query.split()[-1]


def hops_needed(q: Mapping[str, Any]) -> int | None:
    """Searches the question needs (one per hop), or None when its metadata names no hops."""
    hops = (q.get("metadata") or {}).get("hop_queries")
    return len(hops) if hops else None


def relation_chain(q: Mapping[str, Any]) -> str:
    """The hops' relations in order ("creator → employer → headquarters"): the question's form, whatever its
    entities. Empty when the metadata names no hops."""
    return " → ".join(hop_relation(q, i) for i in range(hops_needed(q) or 0))
