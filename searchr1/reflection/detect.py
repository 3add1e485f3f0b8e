"""Find reflective phrases in what the model itself wrote.

Only `assistant` segments count: retrieved passages (`tool` segments) and the prompt are never
model behaviour. Inside the model's own text the spans that are not reasoning are blanked out too:
the JSON of a `<tool_call>` (a search query such as "wait times at JFK" is not reflection), the
`<answer>` (an entity called "Wait Until Dark"), and any `<tool_response>`/`<information>` block the
model may have hallucinated. Blanking keeps character offsets, so a match's position still points
into the original segment.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from searchr1.agent.trace import Segment
from searchr1.reflection.lexicon import Lexicon, default_lexicon

MASKED_TAGS = ("tool_call", "answer", "tool_response", "information", "search")


@dataclass(frozen=True)
class PhraseMatch:
    phrase: str          # the lexicon's canonical phrase
    category: str
    text: str            # the text as written
    start: int           # character offsets in the text that was searched (the segment, for segments)
    end: int
    turn: int | None = None  # 1-based index of the assistant segment; None for plain text


def _mask_pattern(tags: tuple[str, ...]) -> re.Pattern:
    names = "|".join(re.escape(t) for t in tags)
    # an unclosed tag (generation cut off mid-call) masks to the end of the text
    return re.compile(rf"<({names})>.*?(?:</\1>|\Z)", re.IGNORECASE | re.DOTALL)


_MASK = _mask_pattern(MASKED_TAGS)


def reasoning_text(text: str, masked_tags: tuple[str, ...] = MASKED_TAGS) -> str:
    """`text` with tool calls, answers and quoted tool output replaced by spaces (same length)."""
    pattern = _MASK if masked_tags == MASKED_TAGS else _mask_pattern(masked_tags)
    return pattern.sub(lambda m: " " * (m.end() - m.start()), text) if masked_tags else text


def find_phrases(text: str, lexicon: Lexicon | None = None) -> list[PhraseMatch]:
    """Every lexicon phrase in `text`, left to right, non-overlapping (longest phrase wins at a position)."""
    lexicon = lexicon or default_lexicon()
    return [PhraseMatch(p.text, p.category, text[a:b], a, b) for p, a, b in lexicon.finditer(text)]


def _segments(segments: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, str]]:
    for i, seg in enumerate(segments):
        try:
            role, text = seg["role"], seg["text"]
        except (KeyError, TypeError, IndexError):
            raise ValueError(f"segment {i}: expected a mapping with 'role' and 'text', got {seg!r:.120}") from None
        yield role, text or ""


def matches_in_segments(segments: Iterable[Segment | Mapping[str, Any]], lexicon: Lexicon | None = None,
                        masked_tags: tuple[str, ...] = MASKED_TAGS) -> list[PhraseMatch]:
    """Phrase matches in the assistant segments of one rollout, each tagged with its turn."""
    lexicon = lexicon or default_lexicon()
    out: list[PhraseMatch] = []
    turn = 0
    for role, text in _segments(segments):
        if role != "assistant":
            continue
        turn += 1
        for m in find_phrases(reasoning_text(text, masked_tags), lexicon):
            out.append(PhraseMatch(m.phrase, m.category, text[m.start:m.end], m.start, m.end, turn))
    return out


def count_in_segments(segments: Iterable[Segment | Mapping[str, Any]], lexicon: Lexicon | None = None,
                      masked_tags: tuple[str, ...] = MASKED_TAGS) -> dict[str, Any]:
    """Summary of one rollout: {"reflective", "n_phrases", "phrases": {phrase: n},
    "categories": {category: n}, "turns": [turn of each match]} (JSON-able)."""
    matches = matches_in_segments(segments, lexicon, masked_tags)
    return {
        "reflective": bool(matches),
        "n_phrases": len(matches),
        "phrases": dict(Counter(m.phrase for m in matches)),
        "categories": dict(Counter(m.category for m in matches)),
        "turns": [m.turn for m in matches],
    }


def reflective_ratio(rollouts_segments: Iterable[Iterable[Segment | Mapping[str, Any]]],
                     lexicon: Lexicon | None = None) -> float:
    """Share of rollouts with at least one reflective phrase in the model's own text; NaN for no rollouts."""
    n = hits = 0
    for segments in rollouts_segments:
        n += 1
        hits += bool(matches_in_segments(segments, lexicon))
    return hits / n if n else math.nan
