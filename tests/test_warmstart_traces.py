"""Warm-start traces: one search per hop, and at a stated rate a reflective check with a second search."""

from __future__ import annotations

import pytest
from test_agent_fixtures import CharTokenizer

from searchr1.config import config_from_dict
from searchr1.corpus.config import SyntheticWorldConfig
from searchr1.corpus.synthetic import build_questions, build_world, render_passages
from searchr1.reflection.detect import reflective_ratio
from searchr1.training.search_tool import WordOverlapSearcher
from searchr1.training.warmstart import VERIFY_PHRASES, build_traces

WORLD_CFG = SyntheticWorldConfig(n_people=60, n_places=12, n_organisations=10, n_works=30, questions_per_skill=20,
                                 namesake_fraction=0.3)


@pytest.fixture(scope="module")
def world():
    w = build_world(WORLD_CFG)
    questions = {k: v["train"] for k, v in build_questions(w, WORLD_CFG).items()}
    return questions, WordOverlapSearcher([p for _, p in render_passages(w, WORLD_CFG.seed)])


def _traces(world, rate: float, n: int = 24):
    questions, searcher = world
    cfg = config_from_dict({"training": {"warm_start": {"verify_rate": rate}}, "agent": {"max_obs_tokens": 400}})
    return build_traces(questions, searcher, CharTokenizer(), cfg, n)


def _searches(trace) -> int:
    return sum(len(m.get("tool_calls") or []) for m in trace)


def _segments(trace):
    return [{"role": "assistant" if m["role"] == "assistant" else "tool", "text": str(m["content"])}
            for m in trace if m["role"] in ("assistant", "tool")]


def test_plain_traces_search_once_per_hop_and_never_reflect(world):
    traces, summary = _traces(world, 0.0)
    assert summary["verifying_traces"] == 0 and summary["verify_rate"] == 0.0 and len(traces) > 10
    questions = {q["question"]: q for qs in world[0].values() for q in qs}
    for t in traces:
        q = questions[t[1]["content"].rsplit("Question: ", 1)[1]]
        assert _searches(t) == len(q["metadata"]["hop_queries"])
    assert reflective_ratio([_segments(t) for t in traces]) == 0.0


def test_verifying_traces_check_a_hop_with_a_reflective_phrase(world):
    traces, summary = _traces(world, 1.0)
    assert summary["verifying_traces"] == len(traces) and summary["verify_rate"] == 1.0
    questions = {q["question"]: q for qs in world[0].values() for q in qs}
    for t in traces:
        q = questions[t[1]["content"].rsplit("Question: ", 1)[1]]
        assert _searches(t) == len(q["metadata"]["hop_queries"]) + 1  # the check is one more search
        checks = [m for m in t if m["role"] == "assistant" and any(
            m["content"] == f"<think>{p.format(e=e)}</think>" for p in VERIFY_PHRASES
            for e in q["metadata"]["hop_entities"])]
        assert len(checks) == 1
        assert t.index(checks[0]) == 4  # right after the first hop's result: one decision point, at the full rate
        query = checks[0]["tool_calls"][0]["function"]["arguments"]["query_list"][0]
        assert query in q["metadata"]["hop_entities"]  # it searches the entity it checks
        assert t[-1]["content"].endswith(f"<answer>{q['golden_answers'][0]}</answer>")
    assert reflective_ratio([_segments(t) for t in traces]) > 0  # the detector sees them
    # one first word for every check: the verify rate is the weight of one choice, which greedy decoding can pick
    assert len({p.split()[0] for p in VERIFY_PHRASES}) == 1


def test_rate_is_a_rate(world):
    _, summary = _traces(world, 0.5, n=40)
    assert 0.2 < summary["verify_rate"] < 0.8


def test_namesakes_are_one_letter_apart_and_leave_the_rest_of_the_world_unchanged():
    plain = build_world(WORLD_CFG.model_copy(update={"namesake_fraction": 0.0}))
    w = build_world(WORLD_CFG)
    assert len(w.people) == len(plain.people) + round(0.3 * len(plain.people))
    assert [(p.name, p.born, p.birthplace.name) for p in w.people[:len(plain.people)]] == \
           [(p.name, p.born, p.birthplace.name) for p in plain.people]
    originals = {p.name: p for p in w.people[:len(plain.people)]}
    for twin in w.people[len(plain.people):]:
        near = [o for name, o in originals.items() if len(name) == len(twin.name)
                and sum(a != b for a, b in zip(name, twin.name, strict=True)) == 1]
        assert len(near) == 1, twin.name
        assert near[0].occupation == twin.occupation and near[0].birthplace is not twin.birthplace
    assert len({p.name.lower() for p in w.people}) == len(w.people)  # still no exact duplicate
