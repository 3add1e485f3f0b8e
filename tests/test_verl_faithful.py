"""configs/paper.yaml rendered for verl, held against Search-R1's hyperparameters (train_grpo.sh + its fork's
ppo_trainer.yaml): every value is Search-R1's or a deviation the config names, and the overrides compose
into verl 0.9.1's own config."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchr1.config import load_config
from searchr1.training.data import build_train_data
from searchr1.training.verl_launch import render_verl
from searchr1.training.verl_plugins.search_r1_reference import NAMES, SEARCH_R1

ROOT = Path(__file__).resolve().parents[1]
QS = {"nq": [{"id": "nq-0", "question": "who wrote 1984?", "golden_answers": ["George Orwell"]}],
      "hotpotqa": [{"id": "h-0", "question": "which is older?", "golden_answers": ["A"]}]}

# Search-R1's values, restated here so that an edit of the library's table cannot pass unnoticed
# (PeterGriffinJin/Search-R1 a14dc3a: train_grpo.sh, verl/trainer/config/ppo_trainer.yaml, generation.py)
SEARCH_R1_VALUES = {
    "prompts per step": 512, "rollouts per prompt": 5, "learning rate": 1e-6, "warm-up ratio": 0.285,
    "KL coefficient": 0.001, "KL estimator": "low_var_kl", "entropy coefficient": 0.001, "top-p": 0.95,
    "temperature": 1.0, "clip ratio": 0.2, "gradient clip": 1.0, "samples per update": 256, "updates per step": 10,
    "search rounds": 2, "tokens per turn": 500, "observation tokens": 500, "passages per query": 3,
    "training steps": 1005, "save every": 100, "validate every": 50, "max prompt tokens": 4096,
}
# What paper.yaml deliberately does differently (each named, with a reason, under training.verl.deviations)
PAPER_DEVIATIONS = {"base model": "Qwen/Qwen2.5-3B-Instruct", "prompt style": "tool_call", "samples per update": 320,
                    "updates per step": 8, "actor offload": False, "validate before training": False}


def render(tmp_path: Path, *overrides: str):
    cfg = load_config(ROOT / "configs" / "paper.yaml", list(overrides))
    build_train_data(QS, cfg, tmp_path / "data")
    return cfg, render_verl(cfg, tmp_path / "data", "http://127.0.0.1:8000", tmp_path / "verl")


def test_paper_run_is_search_r1_or_a_named_deviation(tmp_path):
    cfg, plan = render(tmp_path)
    rows = {r["name"]: r for r in plan.search_r1}
    assert set(rows) == NAMES and len(SEARCH_R1) == len(NAMES)
    for name, value in SEARCH_R1_VALUES.items():
        assert rows[name]["search_r1"] == value, name
    differ = {name: r["rendered"] for name, r in rows.items() if not r["same"]}
    assert differ == PAPER_DEVIATIONS
    for name in differ:
        assert len(rows[name]["reason"]) > 40 and rows[name]["reason"] == cfg.training.verl.deviations[name]
    # the three the issue found dropped or wrong: top-p, entropy, and the per-turn cap
    ov = dict(o.split("=", 1) for o in plan.overrides)
    assert ov["actor_rollout_ref.rollout.top_p"] == "0.95" and ov["actor_rollout_ref.actor.entropy_coeff"] == "0.001"
    assert ov["actor_rollout_ref.actor.ppo_mini_batch_size"] == "64"  # x 5 = 320 samples: 2,560 / 320 = 8 updates
    table = Path(plan.files["search_r1"]).read_text()
    assert table.startswith("| hyperparameter | Search-R1 | rendered verl run | why different |")
    assert table.count("\n") == len(SEARCH_R1) + 2


def test_an_unexplained_difference_is_refused(tmp_path):
    with pytest.raises(ValueError, match="top-p: Search-R1 0.95 .* this run 1.0; say why"):
        render(tmp_path / "a", "training.grpo.top_p=1.0")
    with pytest.raises(ValueError, match="deviations.top-p: this run has Search-R1's value"):
        render(tmp_path / "b", "training.verl.deviations={top-p: stale}")
    with pytest.raises(ValueError, match="deviations.bogus: not a row"):
        render(tmp_path / "c", "training.verl.deviations={bogus: why}")
    _, plan = render(tmp_path / "d", "training.grpo.top_p=1.0", "training.verl.check_deviations=false")
    assert {r["name"]: r["same"] for r in plan.search_r1}["top-p"] is False  # still recorded in the plan


@pytest.mark.slow  # imports verl's config package
def test_overrides_compose_into_verl_0_9_1s_config(tmp_path):
    from test_verl_fixtures import compose_verl

    from searchr1.training.verl_launch import mlflow_env, ray_env_overrides

    _, plan = render(tmp_path)
    vcfg = compose_verl(plan.overrides + ray_env_overrides(mlflow_env("sqlite:///x.db", "abc")))
    rollout, actor = vcfg.actor_rollout_ref.rollout, vcfg.actor_rollout_ref.actor
    assert (rollout.top_p, rollout.n, rollout.response_length, actor.entropy_coeff) == (0.95, 5, 3000, 0.001)
    assert rollout.agent.default_agent_loop == "searchr1_agent"
    assert vcfg.trainer.v1.sampler.custom_sampler.name == "SearchCheckedReplayBuffer"
    assert vcfg.trainer.v1.sampler.sampler_kwargs.max_tool_error_rate == 0.05
    assert vcfg.reward.custom_reward_function.reward_kwargs.format_reward == 0.0
    assert vcfg.ray_kwargs.ray_init.runtime_env.env_vars.MLFLOW_RUN_ID == "abc"
    assert list(vcfg.trainer.logger) == ["console", "mlflow"]
