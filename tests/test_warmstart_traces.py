"""Warm-start traces: what is asked, one search per hop, each hop's result, and at a stated rate a reflective
check with a second search."""

from __future__ import annotations

import math
from types import SimpleNamespace

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


def _question(world, trace) -> dict:
    """The world's question a trace answers (its user turn ends with "Question: <text>")."""
    text = trace[1]["content"].rsplit("Question: ", 1)[1]
    return next(q for qs in world[0].values() for q in qs if q["question"] == text)


def _searches(trace) -> int:
    return sum(len(m.get("tool_calls") or []) for m in trace)


def _segments(trace):
    return [{"role": "assistant" if m["role"] == "assistant" else "tool", "text": str(m["content"])}
            for m in trace if m["role"] in ("assistant", "tool")]


def test_plain_traces_search_once_per_hop_and_never_reflect(world):
    traces, summary = _traces(world, 0.0)
    assert summary["verifying_traces"] == 0 and summary["verify_rate"] == 0.0 and len(traces) > 10
    for t in traces:
        q = _question(world, t)
        assert _searches(t) == len(q["metadata"]["hop_queries"])
    assert reflective_ratio([_segments(t) for t in traces]) == 0.0


def test_verifying_traces_check_a_hop_with_a_reflective_phrase(world):
    traces, summary = _traces(world, 1.0)
    assert summary["verifying_traces"] == len(traces) and summary["verify_rate"] == 1.0
    for t in traces:
        q = _question(world, t)
        assert _searches(t) == len(q["metadata"]["hop_queries"]) + 1  # the check is one more search
        checks = [m for m in t if m["role"] == "assistant" and any(
            m["content"] == f"<think>{p.format(e=e)}</think>" for p in VERIFY_PHRASES
            for e in q["metadata"]["hop_entities"])]
        assert len(checks) == 1
        # right after the last hop's result (system, question, then a call and a result per hop): one decision
        # point, at the full rate, and nothing but the answer after it
        assert t.index(checks[0]) == 2 + 2 * len(q["metadata"]["hop_queries"]) == len(t) - 3
        query = checks[0]["tool_calls"][0]["function"]["arguments"]["query_list"][0]
        assert query == q["metadata"]["hop_entities"][-1]  # it searches the entity it checks
        assert t[-1]["content"].endswith(f"<answer>{q['golden_answers'][0]}</answer>")
    assert reflective_ratio([_segments(t) for t in traces]) > 0  # the detector sees them
    # one first word for every check: the verify rate is the weight of one choice, which greedy decoding can pick
    assert len({p.split()[0] for p in VERIFY_PHRASES}) == 1


def test_rate_is_a_rate(world):
    _, summary = _traces(world, 0.5, n=40)
    assert 0.2 < summary["verify_rate"] < 0.8


def test_skill_weights_deal_a_suite_more_traces_and_unknown_suites_are_refused(world):
    from collections import Counter

    questions, searcher = world

    def skills(weights):
        cfg = config_from_dict({"training": {"warm_start": {"verify_rate": 0.0, "skill_weights": weights}},
                                "agent": {"max_obs_tokens": 400}})
        traces, _ = build_traces(questions, searcher, CharTokenizer(), cfg, 20)
        return Counter(_question(world, t)["metadata"]["skill"] for t in traces)

    even, heavy = skills({}), skills({"compositional": 3})
    assert max(even.values()) - min(even.values()) <= 1  # one of each per round
    assert heavy["compositional"] >= 2 * max(n for s, n in heavy.items() if s != "compositional")
    assert sum(heavy.values()) == sum(even.values()) == 20  # the same n_examples, shared differently
    with pytest.raises(ValueError, match=r"skill_weights names \['trivia'\]"):
        skills({"trivia": 2})


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


def test_turns_say_what_is_asked_then_each_hops_result_and_whether_it_is_that(world):
    """The first search says what the question asks for (its last hop's relation); each later search and the answer
    open with the previous hop's result as it stands in that hop's tool response, then "not" the asked-for thing
    (search on) or that it is (answer). Comparisons name the earlier year."""
    from searchr1.rewards import normalize_answer

    traces, _ = _traces(world, 0.5)
    skills = set()
    for t in traces:
        q = _question(world, t)
        meta, golden = q["metadata"], q["golden_answers"][0]
        hops, results, skills = meta["hop_queries"], meta["hop_answers"], skills | {meta["skill"]}
        goal = "the earlier year" if meta["skill"] == "comparison" else f"the {hops[-1].split()[-1]}"
        searches = [m["content"] for m in t if m.get("tool_calls") and not m["content"].startswith("<think>Wait")]
        assert searches[0] == f"<think>The question asks for {goal}. I need to search for {hops[0]}.</think>"
        for i in range(1, len(hops)):
            assert searches[i] == (f"<think>{hops[i - 1]} is {results[i - 1]}, not {goal}. "
                                   f"Now I need to search for {hops[i]}.</think>")
        responses = [str(m["content"]) for m in t if m["role"] == "tool"]
        for i, result in enumerate(results):
            assert normalize_answer(result) in normalize_answer(responses[i])  # said only what was retrieved
        if meta["skill"] == "comparison":
            said = f"{min(results, key=int)} is the earlier year, so the answer is {golden}."
        else:
            assert results[-1] == golden
            said = f"{goal} the question asks for."
        assert t[-1]["content"] == f"<think>{hops[-1]} is {results[-1]}: {said}</think>\n<answer>{golden}</answer>"
    assert skills == {"single_hop", "bridge", "comparison", "compositional"}


def test_traces_whose_hop_result_was_not_retrieved_are_dropped(world):
    from searchr1.rewards import normalize_answer

    questions, searcher = world
    passage = searcher.search(["nothing at all"], 1)[0][0]

    class Blind:  # retrieves the same passage whatever the query
        def search(self, queries, k):
            return [[passage] for _ in queries]

    cfg = config_from_dict({"training": {"warm_start": {"verify_rate": 0.0}}, "agent": {"max_obs_tokens": 400}})
    traces, summary = build_traces(questions, Blind(), CharTokenizer(), cfg, 8)
    assert summary["dropped_result_not_retrieved"] > len(traces)
    for t in traces:  # kept only where that one passage happens to hold every result the trace says
        assert all(normalize_answer(r) in normalize_answer(passage["document"]["contents"])
                   for r in _question(world, t)["metadata"]["hop_answers"])


def test_questions_without_hop_results_are_refused_by_name(world):
    questions, searcher = world
    bare = {b: [{**q, "metadata": {k: v for k, v in q["metadata"].items() if k != "hop_answers"}} for q in qs]
            for b, qs in questions.items()}
    with pytest.raises(ValueError, match="hop_answers"):
        build_traces(bare, searcher, CharTokenizer(), config_from_dict({}), 4)


def test_check_probability_reads_the_policy_at_the_last_hop_decision(world):
    """The warm start's diagnostic: the model is asked, at the turn after the last hop's result (where every check
    begins, or the answer), for the probability of the check's first word; the mean over traces is returned."""
    import torch

    from searchr1.agent.prompts import tools_for
    from searchr1.training.warmstart import check_probability

    traces, _ = _traces(world, 0.5)
    seen: list[str] = []

    class Policy:  # P("W") = 0.25 after "<think>", wherever it is asked
        def __call__(self, input_ids, logits_to_keep=1):
            text = "".join(chr(i) for i in input_ids[0].tolist())
            seen.append(text)
            logits = torch.full((1, 1, 256), -1e9)
            logits[0, 0, ord("W")] = 0.0
            logits[0, 0, ord("N")] = math.log(3.0) if text.endswith("<think>") else 1e9
            return SimpleNamespace(logits=logits)

    p = check_probability(Policy(), CharTokenizer(), traces, tools_for("tool_call"), limit=5)
    assert p == pytest.approx(0.25)
    assert len(seen) == 5
    for t, text in zip(traces, seen, strict=False):  # the prompt, every hop's call and result, the new turn's opening
        hops = len(_question(world, t)["metadata"]["hop_queries"])
        assert text.endswith("<|im_start|>assistant\n<think>") and text.count("</tool_response><|im_end|>") == hops
    assert {len(_question(world, t)["metadata"]["hop_queries"])
            for t in traces[:5]} != {1}  # multi-hop traces are among them
    assert check_probability(Policy(), CharTokenizer(), [t[:4] for t in traces], None) is None  # no second turn
