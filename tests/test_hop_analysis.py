"""Searches against hops, on rollouts whose counts are planted: each share, the per-form exact match, the
checkpoint order, the figure, and the errors for rollouts of another run's questions."""

from __future__ import annotations

import pandas as pd
import pytest

from searchr1.agent.trace import write_rollouts
from searchr1.corpus.hops import hop_relation, hops_needed, relation_chain
from searchr1.evaluation.hops import em_by_chain, hop_frame, hop_section, searches_by_hops

SINGLE = {"id": "s-0", "question": "Who created The Iron Clock?", "golden_answers": ["Ann Vell"],
          "metadata": {"skill": "single_hop", "hop_queries": ["The Iron Clock creator"],
                       "hop_entities": ["The Iron Clock"], "hop_answers": ["Ann Vell"]}}


def three_hop(i: int) -> dict:
    return {"id": f"c-{i}", "question": f"Where is the employer of the maker of Work {i} based?",
            "golden_answers": ["Tarn"],
            "metadata": {"skill": "compositional", "hop_queries": [f"Work {i} creator", "Bo Ray employer",
                                                                   "Kell Guild headquarters"],
                         "hop_entities": [f"Work {i}", "Bo Ray", "Kell Guild"],
                         "hop_answers": ["Bo Ray", "Kell Guild", "Tarn"]}}


QUESTIONS = {"single_hop": [SINGLE], "compositional": [three_hop(i) for i in range(4)]}


def row(ckpt: str, step: int, bench: str, qid: str, searches: int, em: float) -> dict:
    return {"checkpoint": ckpt, "step": step, "method": "search_agent", "benchmark": bench, "question_id": qid,
            "question": "q", "golden_answers": ["a"], "prediction": "a", "em": em, "f1": em, "contains": em,
            "turns": searches + 1, "search_calls": searches, "invalid_calls": 0, "queries": [], "doc_ids": [],
            "segments": [], "response": "", "gen_tokens": 10, "stop_reason": "answer"}


def write_run(root, plan: dict[str, tuple[int, list[tuple[int, float]]]]) -> None:
    """plan: checkpoint -> (step, [(searches, em) for s-0, c-0, c-1, c-2, c-3])."""
    for ckpt, (step, cells) in plan.items():
        (single, *comp) = cells
        write_rollouts([row(ckpt, step, "single_hop", "s-0", *single)],
                       root / ckpt / "search_agent__single_hop.parquet")
        write_rollouts([row(ckpt, step, "compositional", f"c-{i}", *c) for i, c in enumerate(comp)],
                       root / ckpt / "search_agent__compositional.parquet")
    # a baseline's rollouts are not the agent's: never counted
    write_rollouts([row("warm-start", 0, "single_hop", "s-0", 0, 1.0) | {"method": "rag"}],
                   root / "warm-start" / "rag__single_hop.parquet")


PLAN = {"step-000002": (2, [(1, 1.0), (3, 1.0), (3, 0.0), (4, 1.0), (2, 0.0)]),
        "warm-start": (0, [(2, 0.0), (2, 0.0), (2, 0.0), (2, 0.0), (3, 1.0)]),
        "base": (0, [(0, 0.0), (0, 0.0), (0, 0.0), (0, 0.0), (0, 0.0)])}


def test_hops_and_chains_from_metadata():
    assert hops_needed(SINGLE) == 1 and hops_needed(three_hop(0)) == 3
    assert hop_relation(three_hop(0), 1) == "employer"
    assert relation_chain(three_hop(0)) == "creator → employer → headquarters"
    real = {"id": "nq-1", "question": "who wrote x", "golden_answers": ["y"], "metadata": {}}
    assert hops_needed(real) is None and relation_chain(real) == ""


def test_shares_of_short_exact_and_more(tmp_path):
    write_run(tmp_path, PLAN)
    frame = hop_frame(tmp_path, QUESTIONS)
    assert len(frame) == 15  # 3 checkpoints x 5 agent rollouts; the rag rollout is not counted
    table = searches_by_hops(frame)
    # base, then the warm start (both step 0), then step 2 -- not alphabetical, not by folder
    assert list(dict.fromkeys(table["checkpoint"])) == ["base", "warm-start", "step-000002"]
    three = table[(table["checkpoint"] == "step-000002") & (table["hops"] == 3)].iloc[0]
    assert three["n"] == 4 and three["searches"] == pytest.approx(3.0)
    assert (three["short"], three["exact"], three["more"]) == (0.25, 0.5, 0.25)
    assert three["em"] == 0.5 and three["em_exact"] == 0.5  # of the two that searched three times, one right
    ws = table[(table["checkpoint"] == "warm-start") & (table["hops"] == 3)].iloc[0]
    assert ws["short"] == 0.75 and ws["em_exact"] == 1.0
    one = table[(table["checkpoint"] == "warm-start") & (table["hops"] == 1)].iloc[0]
    assert one["more"] == 1.0 and pd.isna(one["em_exact"])  # no rollout searched exactly once


def test_exact_match_by_form_of_question(tmp_path):
    write_run(tmp_path, PLAN)
    chains = em_by_chain(hop_frame(tmp_path, QUESTIONS))
    assert list(chains.columns) == ["hops", "chain", "n", "base", "warm-start", "step-000002"]
    comp = chains[chains["chain"] == "creator → employer → headquarters"].iloc[0]
    assert comp["n"] == 4 and comp["warm-start"] == 25.0 and comp["step-000002"] == 50.0
    assert chains[chains["chain"] == "creator"].iloc[0]["step-000002"] == 100.0


def test_section_and_figure(tmp_path):
    write_run(tmp_path / "rollouts", PLAN)
    md, headline, png = hop_section(tmp_path / "rollouts", QUESTIONS, tmp_path)
    assert png == tmp_path / "hops.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # from the policy RL started from (the warm start, the later of the step-0 policies) to the last checkpoint
    assert headline == ("searches per question for 1 / 3 hops: 2.00 / 2.25 at warm-start (75% of the 3-hop "
                        "rollouts stopped short) → 1.00 / 3.00 at step-000002 (25% of the 3-hop rollouts stopped "
                        "short)")
    assert "| warm-start | 1 | 1 | 2.00 | 0.0 | 0.0 | 100.0 | 0.0 | – |" in md  # no exact rollout: a dash, not nan
    assert "| 3 | creator → employer → headquarters | 4 | 0.0 | 25.0 | 50.0 |" in md


def test_real_benchmarks_have_nothing_to_count(tmp_path):
    write_rollouts([row("step-000001", 1, "nq", "nq-1", 2, 1.0)], tmp_path / "step-000001" / "search_agent__nq.parquet")
    md, headline, png = hop_section(tmp_path, {"nq": [{"id": "nq-1", "question": "q", "golden_answers": ["a"],
                                                       "metadata": {}}]}, tmp_path)
    assert png is None and headline is None and "name no hops" in md


def test_rollouts_of_other_questions_are_refused(tmp_path):
    write_run(tmp_path, PLAN)
    with pytest.raises(ValueError, match=r"search_agent__compositional\.parquet: question 'c-3' is not in the "
                                         r"compositional question set"):
        hop_frame(tmp_path, {"single_hop": [SINGLE], "compositional": [three_hop(i) for i in range(3)]})
