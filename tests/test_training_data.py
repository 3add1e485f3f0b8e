"""Training data layout (verl + TRL) and checkpoint listing: fast, no model."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from searchr1.agent.prompts import build_messages
from searchr1.training.checkpoints import COMPLETE_MARKER, latest_checkpoint, list_checkpoints, step_name
from searchr1.training.data import build_train_data, read_trl_rows

QUESTIONS = {
    "single_hop": [{"id": f"s{i}", "question": f"Where was person {i} born?", "golden_answers": [f"Town{i}"],
                    "metadata": {"skill": "single_hop", "hop_queries": [f"person {i} birthplace"]}} for i in range(5)],
    "bridge": [{"id": f"b{i}", "question": f"Who founded org {i}?", "golden_answers": [f"Founder{i}", "F"]}
               for i in range(3)],
}


def _cfg():
    from searchr1.config import PipelineConfig

    return PipelineConfig()


def test_verl_layout_matches_verl_search_r1_preprocessing(tmp_path):
    summary = build_train_data(QUESTIONS, _cfg(), tmp_path)
    assert summary["train_rows"] == 8 and summary["per_benchmark"] == {"single_hop": 5, "bridge": 3}
    rows = pq.read_table(tmp_path / "verl" / "train.parquet").to_pylist()
    assert len(rows) == 8
    row = next(r for r in rows if r["extra_info"]["question_id"] == "b1")
    assert row["data_source"] == "searchR1_bridge"  # the prefix verl's reward router knows
    assert row["agent_name"] == "tool_agent"  # without it verl never calls the tool (#3008)
    assert row["reward_model"]["ground_truth"] == {"target": ["Founder1", "F"]}
    create = row["extra_info"]["tools_kwargs"]["search"]["create_kwargs"]
    assert create["ground_truth"] == {"target": ["Founder1", "F"]} and create["question"] == "Who founded org 1?"
    assert row["extra_info"]["need_tools_kwargs"] is True
    assert row["prompt"] == build_messages("Who founded org 1?", "tool_call")
    val = pq.read_table(tmp_path / "verl" / "val.parquet")
    assert 0 < val.num_rows <= 8


def test_trl_rows_and_shuffle_is_seeded(tmp_path):
    build_train_data(QUESTIONS, _cfg(), tmp_path / "a")
    build_train_data(QUESTIONS, _cfg(), tmp_path / "b")
    a, b = read_trl_rows(tmp_path / "a"), read_trl_rows(tmp_path / "b")
    assert [r["question_id"] for r in a] == [r["question_id"] for r in b]
    assert {r["benchmark"] for r in a} == {"single_hop", "bridge"}
    # dealt round-robin: while both suites last, consecutive rows alternate between them
    assert [r["benchmark"] for r in a[:6]] == ["single_hop", "bridge"] * 3
    # the bare question: the rollout loop renders it under the agent protocol, as evaluation does
    assert {r["prompt"] for r in a} == {q["question"] for qs in QUESTIONS.values() for q in qs}


def test_bad_questions_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"bridge.*\[0\].*golden_answers"):
        build_train_data({"bridge": [{"id": "x", "question": "q"}]}, _cfg(), tmp_path)
    with pytest.raises(ValueError, match="golden_answers is empty"):
        build_train_data({"bridge": [{"id": "x", "question": "q", "golden_answers": []}]}, _cfg(), tmp_path)
    with pytest.raises(FileNotFoundError, match="train-data stage"):
        read_trl_rows(tmp_path / "nowhere")


def _ckpt(root, step, complete=True):
    d = root / "checkpoints" / step_name(step)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    if complete:
        (d / COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    return d


def test_list_checkpoints_only_complete_ones_in_step_order(tmp_path):
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    _ckpt(tmp_path, 20)
    _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 30, complete=False)  # killed before the marker: never picked
    (tmp_path / "checkpoints" / ".step-000040.tmp").mkdir()  # a staging name
    (tmp_path / "checkpoints" / "step-12").mkdir()  # not our naming
    found = list_checkpoints(tmp_path)
    assert [s for s, _ in found] == [10, 20]
    assert latest_checkpoint(tmp_path)[0] == 20
