"""DAPO-style dynamic sampling for the TRL engine: groups whose rollouts all got the same reward are
replaced by fresh questions' groups that did not, and the reward follows each rollout's own question."""

from __future__ import annotations

from types import SimpleNamespace

from searchr1.agent.protocol import AgentProtocol
from searchr1.agent.rollout import Rollout
from searchr1.config import PipelineConfig
from searchr1.training.grpo import SearchR1Reward, flat_groups, refill_flat_groups


def _ro(name: str, answer: str, refill: int | None = None) -> Rollout:
    q = {"id": name, "question": name, "golden_answers": [name.upper()]}
    if refill:
        q["refill"] = refill
    ro = Rollout(q, prompt=name)
    ro.segments = [{"role": "assistant", "text": f"<answer>{answer}</answer>"}]
    return ro


def test_flat_groups_are_the_ones_without_reward_variance():
    assert flat_groups([0, 0, 1, 0, 1, 1, 0.5, 0.5], 2) == [0, 2, 3]
    assert flat_groups([0, 1, 0, 1], 4) == []


def test_refill_replaces_flat_groups_with_varied_fresh_ones_only():
    rollouts = [_ro(f"q{i}", "") for i in range(8)]
    rewards = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # groups of 2: flat, varied, flat, flat
    draws: list[tuple[int, int]] = []

    def sample(round_: int, k: int):
        draws.append((round_, k))
        fresh = [_ro(f"r{round_}-{i}", "", refill=round_ + 1) for i in range(2 * k)]
        # round 0: the first new group varies, the others are flat; round 1: every new group varies
        rw = [0.0, 1.0] + [0.0, 0.0] * (k - 1) if round_ == 0 else [1.0, 0.0] * k
        return fresh, rw

    stats = refill_flat_groups(rollouts, rewards, 2, rounds=3, sample=sample)
    assert draws == [(0, 3), (1, 2)]  # stops once no flat group is left
    assert [r.prompt for r in rollouts] == ["r0-0", "r0-1", "q2", "q3", "r1-0", "r1-1", "r1-2", "r1-3"]
    assert rewards == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0] and not flat_groups(rewards, 2)
    assert stats == {"grpo/flat_groups_sampled": 3.0, "grpo/flat_groups_trained": 0.0, "grpo/refill_rollouts": 10.0}


def test_refill_keeps_flat_groups_when_the_draws_run_out():
    rollouts, rewards = [_ro("a", ""), _ro("b", "")], [0.0, 0.0]
    stats = refill_flat_groups(rollouts, rewards, 2, rounds=2, sample=lambda r, k: ([_ro("x", ""), _ro("y", "")],
                                                                                      [1.0, 1.0]))
    assert [r.prompt for r in rollouts] == ["a", "b"] and stats["grpo/flat_groups_trained"] == 1.0
    assert stats["grpo/refill_rollouts"] == 4.0


def test_reward_scores_a_refilled_rollout_against_its_own_question(tmp_path):
    """TRL hands the reward function the scheduled question's answers; a refilled rollout answers another."""
    reward = SearchR1Reward(tmp_path, AgentProtocol.from_config(PipelineConfig().agent))
    kept, refilled = _ro("q1", "TRL GOLD"), _ro("fresh", "FRESH", refill=1)
    refilled.question["benchmark"] = "bridge"
    out = reward(["q1", "q2"], ["", ""], rollout=[kept, refilled], golden_answers=[["TRL GOLD"], ["TRL GOLD 2"]],
                 question_id=["id1", "id2"], benchmark=["single_hop", "single_hop"],
                 trainer_state=SimpleNamespace(global_step=0), rollout_seconds=[3.0, 3.0],
                 grpo__flat_groups_sampled=[2.0, 2.0])
    assert out == [1.0, 1.0]
    assert kept.question["id"] == "id1" and refilled.question["id"] == "fresh"
    metrics = reward.pending[1]
    assert metrics["grpo/flat_groups_sampled"] == 2.0 and metrics["perf/rollout_seconds"] == 3.0
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "rollouts" / "step-000001.parquet")
    assert list(rows["benchmark"]) == ["single_hop", "bridge"]


def test_the_trainers_reward_takes_the_configs_named_deviations(tmp_path):
    grpo = PipelineConfig.model_validate({"training": {"grpo": {"invalid_call_penalty": 0.25}}}).training.grpo
    assert grpo.reward_terms == {"format_reward": 0.0, "invalid_call_penalty": 0.25}
    clean, garbled = _ro("q1", "Q1"), _ro("q2", "Q2")
    garbled.segments.insert(0, {"role": "assistant", "text": "<tool_call>q2's answer</tool_call>"})
    out = SearchR1Reward(tmp_path, AgentProtocol.from_config(PipelineConfig().agent), grpo.reward_terms)(
        ["q1", "q2"], ["", ""], rollout=[clean, garbled], golden_answers=[["Q1"], ["Q2"]], question_id=["1", "2"],
        benchmark=["single_hop"] * 2, trainer_state=SimpleNamespace(global_step=0))
    assert out == [1.0, 0.75]


def test_refill_is_the_trl_engines_option():
    import pytest

    with pytest.raises(ValueError, match="refill_rounds.*verl"):
        PipelineConfig.model_validate({"training": {"engine": "verl", "grpo": {"refill_rounds": 1}}})


def test_spare_groups_are_sampled_in_the_first_batch_and_replace_flat_groups():
    """training.grpo.spare_groups: fresh questions' groups ride in the step's one batch of rollouts and take the
    place of the flat groups; no refill round runs after it when the spares vary."""
    from contextlib import nullcontext

    from test_agent_fixtures import QUESTIONS, CharTokenizer, KeywordSearcher, ScriptedGenerator, search_then_answer

    from searchr1.training.grpo import make_rollout_func

    rows = [{"prompt": q["question"], "golden_answers": q["golden_answers"], "question_id": q["id"],
             "benchmark": "single_hop"} for q in QUESTIONS[:8]]
    scheduled = [rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2
    calls = iter(range(10_000))

    def script(history: str, turn: int) -> str:
        """Wrong on the scheduled questions (flat groups), right on every other call elsewhere (varied)."""
        if not turn:
            return search_then_answer(history, turn)
        gold = next(r["golden_answers"][0] for r in rows if r["prompt"] in history)
        wrong = any(p in history for p in scheduled) or next(calls) % 2
        return f"<think>Found it.</think>\n<answer> {'nobody' if wrong else gold} </answer>"

    class CountingGenerator(ScriptedGenerator):
        batches = 0

        def start(self, prompts):
            CountingGenerator.batches += 1
            return super().start(prompts)

    gen = CountingGenerator(script)
    cfg = PipelineConfig()
    fn = make_rollout_func(KeywordSearcher(), cfg.agent, temperature=1.0, top_p=1.0, questions=rows, group_size=2,
                           refill_rounds=2, seed=0, sampler=lambda trainer, step: nullcontext(gen), spare_groups=2)
    out = fn(scheduled, SimpleNamespace(processing_class=CharTokenizer(), state=SimpleNamespace(global_step=0)))
    assert CountingGenerator.batches == 1  # the spares came with the step's own rollouts
    questions = [ro.question["question"] for ro in out["rollout"]]
    assert len(questions) == 4 and not set(questions) & set(scheduled)  # both flat groups replaced by spares
    assert all(ro.question["refill"] == "spare" for ro in out["rollout"])
    assert out["grpo__spare_rollouts"] == 4 and out["grpo__flat_groups_sampled"] == 2
    assert out["grpo__flat_groups_trained"] == 0
