"""verl rendering: the dry run for configs/paper.yaml validates against verl 0.9.1's config schema (no GPU)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from searchr1.agent.prompts import SEARCH_TOOL_SCHEMA
from searchr1.config import load_config
from searchr1.training.data import build_train_data
from searchr1.training.verl_launch import (
    load_schema_keys,
    main,
    merge_command,
    parse_metrics_line,
    render_verl,
    validate_overrides,
    verl_checkpoints,
)

ROOT = Path(__file__).resolve().parents[1]
QS = {"nq": [{"id": "nq-0", "question": "who wrote 1984?", "golden_answers": ["George Orwell", "Orwell"]}],
      "hotpotqa": [{"id": "h-0", "question": "which is older?", "golden_answers": ["A"]}]}


@pytest.fixture
def paper(tmp_path):
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    build_train_data(QS, cfg, tmp_path / "data")
    plan = render_verl(cfg, tmp_path / "data", "http://127.0.0.1:8000/retrieve", tmp_path / "verl")
    return cfg, plan


def _ov(plan) -> dict[str, str]:
    return dict(o.split("=", 1) for o in plan.overrides)


def test_paper_plan_is_search_r1_grpo(paper):
    cfg, plan = paper
    assert plan.argv[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    ov = _ov(plan)
    # Search-R1 train_grpo.sh / verl's search_r1_like example values
    assert ov["algorithm.adv_estimator"] == "grpo"
    assert ov["actor_rollout_ref.rollout.n"] == "5"
    assert float(ov["actor_rollout_ref.actor.optim.lr"]) == 1e-6
    assert ov["actor_rollout_ref.actor.optim.lr_warmup_steps_ratio"] == "0.285"
    assert float(ov["actor_rollout_ref.actor.kl_loss_coef"]) == 0.001
    assert ov["actor_rollout_ref.actor.kl_loss_type"] == "low_var_kl"
    assert ov["data.train_batch_size"] == "512" and ov["actor_rollout_ref.actor.ppo_mini_batch_size"] == "256"
    assert ov["trainer.total_training_steps"] == "1005" and ov["trainer.save_freq"] == "100"
    # verl issue #3008's fixes
    assert ov["actor_rollout_ref.rollout.multi_turn.format"] == "hermes"
    assert ov["actor_rollout_ref.rollout.multi_turn.enable"] == "true"
    assert int(ov["actor_rollout_ref.rollout.multi_turn.max_tool_response_length"]) >= 1500
    assert int(ov["actor_rollout_ref.rollout.multi_turn.max_assistant_turns"]) >= 3
    assert ov["actor_rollout_ref.rollout.agent.default_agent_loop"] == "tool_agent"
    assert ov["trainer.resume_mode"] == "auto"
    assert Path(ov["data.train_files"]).is_file() and Path(ov["data.val_files"]).is_file()
    for key in ("search_tool", "reward", "plan", "launch"):
        assert Path(plan.files[key]).is_file()


def test_every_override_is_a_key_of_verl_0_9_1(paper):
    _, plan = paper
    keys = load_schema_keys()
    assert len(keys) > 500
    assert validate_overrides(plan.overrides, keys) == []


def test_unknown_or_misplaced_keys_are_refused(tmp_path):
    keys = load_schema_keys()
    problems = validate_overrides(["actor_rollout_ref.rollout.n_agent=5",  # Search-R1's old fork name
                                   "actor_rollout_ref.rollout.multi_turn=3",  # a section
                                   "+trainer.save_freq=3",  # exists: '+' would make hydra fail
                                   "+ray_kwargs.ray_init.address=auto", "noequals"], keys)
    assert len(problems) == 4
    assert "n_agent is not a key" in problems[0] and "section" in problems[1] and "drop the '+'" in problems[2]
    cfg = load_config(ROOT / "configs" / "paper.yaml", ["training.verl.extra_overrides=[trainer.bogus=1]"])
    build_train_data(QS, cfg, tmp_path / "data")
    with pytest.raises(ValueError, match="trainer.bogus"):
        render_verl(cfg, tmp_path / "data", "http://x/retrieve", tmp_path / "verl")
    with pytest.raises(FileNotFoundError, match="train-data stage"):
        render_verl(cfg, tmp_path / "nothing", "http://x/retrieve", tmp_path / "verl2")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rendered_tool_registers_our_schema_and_reward_is_em(paper, monkeypatch):
    from transformers.utils import get_json_schema

    _, plan = paper
    registered = {}

    def function_tool(name):  # stands in for verl.tools.function_tool.function_tool, same schema inference
        def deco(fn):
            schema = get_json_schema(fn)
            schema["function"]["name"] = name
            registered[name] = schema
            return fn
        return deco

    fake = types.ModuleType("verl.tools.function_tool")
    fake.function_tool = function_tool
    for mod in ("verl", "verl.tools"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setitem(sys.modules, "verl.tools.function_tool", fake)
    _load(Path(plan.files["search_tool"]), "rendered_search_tool")
    assert registered["search"] == SEARCH_TOOL_SCHEMA
    reward = _load(Path(plan.files["reward"]), "rendered_reward")
    gt = {"target": ["George Orwell"]}
    assert reward.compute_score("searchR1_nq", "<answer>x</answer> <answer>george orwell.</answer>", gt) == 1.0
    assert reward.compute_score("searchR1_nq", "<answer>Orwell</answer>", gt) == 0.0
    assert reward.compute_score("searchR1_nq", "no answer", gt) == 0.0


def test_console_metrics_lines_and_checkpoint_folders(tmp_path):
    assert parse_metrics_line("step:3 - critic/score/mean:0.25 - timing_s/gen:12.5 - note:abc") == (
        3, {"critic/score/mean": 0.25, "timing_s/gen": 12.5})
    assert parse_metrics_line("(TaskRunner pid=1) starting") is None
    for s in (100, 20):
        (tmp_path / f"global_step_{s}" / "actor").mkdir(parents=True)
    (tmp_path / "global_step_7").mkdir()  # no actor shards yet
    assert [s for s, _ in verl_checkpoints(tmp_path)] == [20, 100]
    cmd = merge_command(tmp_path / "global_step_20" / "actor", tmp_path / "hf")
    assert cmd[1:5] == ["-m", "verl.model_merger", "merge", "--backend"] and "--target_dir" in cmd


def test_dry_run_cli(tmp_path, capsys):
    assert main(["--config", str(ROOT / "configs" / "paper.yaml"), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "validated against its config schema" in out and "verl.trainer.main_ppo" in out
    assert main(["--config", str(ROOT / "configs" / "paper.yaml"), "--dry-run", "--out", str(tmp_path / "b"),
                 "training.verl.nnodes=0"]) == 2
