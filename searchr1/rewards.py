"""Answer scoring as Search-R1 / FlashRAG compute it: exact match, token F1, answer-contained.

Normalisation is theirs exactly (lowercase, drop ASCII punctuation, drop the articles a/an/the,
collapse whitespace), so numbers here are comparable with the paper's. The answer is the LAST
`<answer>…</answer>` of the response: Search-R1's prompt itself shows an example `<answer>`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = set(string.punctuation)  # ASCII only, as in Search-R1's qa_em.py; "’" or "–" are kept
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golden_list(golden_answers: str | Sequence[str]) -> list[str]:
    # FlashRAG files sometimes hold a bare string; a list of one is meant.
    if isinstance(golden_answers, str):
        return [golden_answers]
    return [str(g) for g in golden_answers]


def exact_match(prediction: str | None, golden_answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised golden answer."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golden_list(golden_answers)))


def answer_contained(prediction: str | None, golden_answers: str | Sequence[str]) -> float:
    """1.0 if any normalised golden answer occurs inside the normalised prediction (Search-R1's subem)."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(g and g in pred for g in (normalize_answer(x) for x in _golden_list(golden_answers))))


def _f1(pred: str, gold: str) -> float:
    # FlashRAG: a yes/no/noanswer prediction only scores when it is exactly right.
    if pred in ("yes", "no", "noanswer") and pred != gold:
        return 0.0
    if gold in ("yes", "no", "noanswer") and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golden_answers: str | Sequence[str]) -> float:
    """Best token-level F1 of the normalised prediction over the golden answers."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return max((_f1(pred, normalize_answer(g)) for g in _golden_list(golden_answers)), default=0.0)


def find_blocks(text: str, open_tag: str, close_tag: str) -> tuple[list[str], bool]:
    """Contents of every `open…close` block, left to right (like a lazy regex, but linear time on
    adversarial text), and whether a last opened block is left unclosed."""
    blocks: list[str] = []
    pos = 0
    while True:
        start = text.find(open_tag, pos)
        if start < 0:
            return blocks, False
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            return blocks, True
        blocks.append(text[start + len(open_tag):end])
        pos = end + len(close_tag)


def extract_answer(response: str) -> str | None:
    """The text of the last complete `<answer>…</answer>`, stripped; None when there is none."""
    blocks, _ = find_blocks(response, "<answer>", "</answer>")
    return blocks[-1].strip() if blocks else None


def score(prediction: str | None, golden_answers: str | Sequence[str]) -> dict[str, float]:
    return {"em": exact_match(prediction, golden_answers), "f1": f1_score(prediction, golden_answers),
            "contains": answer_contained(prediction, golden_answers)}
