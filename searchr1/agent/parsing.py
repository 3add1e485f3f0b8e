"""Read one assistant turn: did it search (with which queries), answer, or neither?

Model output is untrusted text: nothing here raises on it, and every odd case is counted by name
in `ParsedTurn.issues` so evaluation can report how often the format breaks. Tags are found with
`str.find` (linear time), never a backtracking regex, so enormous or adversarial text cannot hang.

The seed's `parse_queries` rule: the text inside a call is JSON naming `search` → its `query_list`;
anything else → the raw text itself is the query.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from searchr1.rewards import extract_answer, find_blocks

Action = Literal["search", "answer", "none"]

TAGS = {"tool_call": ("<tool_call>", "</tool_call>"), "search_r1": ("<search>", "</search>")}


@dataclass
class ParsedTurn:
    action: Action
    queries: list[str] = field(default_factory=list)
    calls: int = 0          # call blocks the model opened (closed or not)
    invalid: int = 0        # of those, not a well-formed call (raw-text fallback, unclosed, empty)
    answer: str | None = None
    issues: Counter = field(default_factory=Counter)


def _clean(queries: list, issues: Counter, max_queries: int, max_chars: int) -> list[str]:
    out = []
    for q in queries:
        if not isinstance(q, str):
            issues["non_string_query"] += 1
            continue
        q = " ".join(q.split())
        if not q:
            issues["empty_query"] += 1
            continue
        if len(q) > max_chars:
            issues["long_query"] += 1
            q = q[:max_chars]
        out.append(q)
    if len(out) > max_queries:
        issues["too_many_queries"] += 1
        out = out[:max_queries]
    return out


def queries_from_arguments(args: Any, issues: Counter, max_queries: int = 3, max_chars: int = 512) -> list[str]:
    """The cleaned `query_list` of a `search` call's arguments (a dict, or a JSON string of one)."""
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            args = {}
        issues["arguments_as_string"] += 1
    query_list = args.get("query_list", []) if isinstance(args, dict) else []
    if isinstance(query_list, str):
        issues["query_list_not_list"] += 1
        query_list = [query_list]
    elif not isinstance(query_list, list):
        issues["query_list_not_list"] += 1
        query_list = []
    queries = _clean(query_list, issues, max_queries, max_chars)
    if not queries:
        issues["no_queries"] += 1
    return queries


def parse_queries(raw: str, max_queries: int = 3, max_chars: int = 512,
                  issues: Counter | None = None) -> tuple[list[str], bool]:
    """(queries, well_formed) for the text inside one call, by the seed's rule; never raises."""
    issues = Counter() if issues is None else issues
    raw = raw.strip()
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        payload, kind = None, "invalid_json"
    else:
        kind = None
        if not isinstance(payload, dict):
            kind = "json_not_object"
        elif payload.get("name") != "search":
            kind = "not_search_tool"
    if kind is None:
        queries = queries_from_arguments(payload.get("arguments", {}), issues, max_queries, max_chars)
        return queries, bool(queries)
    # The seed's fallback: the raw text is the query.
    issues[kind] += 1
    return _clean([raw], issues, max_queries, max_chars), False


def parse_turn(text: str, style: Literal["tool_call", "search_r1"] = "tool_call", max_queries: int = 3,
               max_query_chars: int = 512) -> ParsedTurn:
    """What one assistant turn asks for. A search call wins over an answer in the same turn
    (the seed searches whenever a call is present); the answer is the last `<answer>` block."""
    issues: Counter = Counter()
    try:
        open_tag, close_tag = TAGS[style]
    except KeyError:
        raise ValueError(f"prompt style {style!r}: expected one of {sorted(TAGS)}") from None
    blocks, unclosed = find_blocks(text, open_tag, close_tag)
    calls, invalid, queries = len(blocks) + int(unclosed), int(unclosed), []
    if unclosed:
        issues["unclosed_call"] += 1
    if len(blocks) > 1:
        issues["several_calls"] += 1
    for block in blocks:
        if style == "tool_call":
            found, ok = parse_queries(block, max_queries, max_query_chars, issues)
        else:  # Search-R1: the text between <search> tags is the query
            found = _clean([block], issues, max_queries, max_query_chars)
            ok = bool(found)
        invalid += not ok
        queries.extend(found)
    if len(queries) > max_queries:
        issues["too_many_queries"] += 1
        queries = queries[:max_queries]
    answer = extract_answer(text)
    if answer is None and "<answer>" in text:
        issues["unclosed_answer"] += 1
    if queries:
        return ParsedTurn("search", queries, calls, invalid, answer, issues)
    if answer is not None:
        return ParsedTurn("answer", [], calls, invalid, answer, issues)
    return ParsedTurn("none", [], calls, invalid, None, issues)
