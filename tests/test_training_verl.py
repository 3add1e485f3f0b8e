"""verl rendering and launching without a GPU: configs/paper.yaml renders overrides that are keys of verl
0.9.1's config, the plug-in files verl loads, and a launch that streams metrics and names why verl stopped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from searchr1.agent.protocol import AgentProtocol
from searchr1.config import load_config
from searchr1.training.data import TRAIN_FILE, VERL_DIR, build_train_data
from searchr1.training.train import _mlflow_run_id
from searchr1.training.verl_launch import (
    VerlPlan,
    launch_verl,
    load_schema_keys,
    main,
    merge_command,
    mlflow_env,
    parse_metrics_line,
    render_verl,
    validate_overrides,
    verl_checkpoints,
)
from searchr1.training.verl_plugins import AGENT_NAME, PPO_TRAINER_KEYS

ROOT = Path(__file__).resolve().parents[1]
QS = {"nq": [{"id": "nq-0", "question": "who wrote 1984?", "golden_answers": ["George Orwell", "Orwell"]}],
      "hotpotqa": [{"id": "h-0", "question": "which is older?", "golden_answers": ["A"]}]}
URL = "http://127.0.0.1:8000"


@pytest.fixture
def paper(tmp_path):
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    build_train_data(QS, cfg, tmp_path / "data")
    plan = render_verl(cfg, tmp_path / "data", URL, tmp_path / "verl")
    return cfg, plan


def _ov(plan) -> dict[str, str]:
    return dict(o.split("=", 1) for o in plan.overrides)


def test_paper_plan_runs_our_plugins(paper):
    cfg, plan = paper
    assert plan.argv[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    ov = _ov(plan)
    assert ov["algorithm.adv_estimator"] == "grpo" and ov["actor_rollout_ref.rollout.n"] == "5"
    assert ov["actor_rollout_ref.rollout.agent.default_agent_loop"] == AGENT_NAME
    assert ov["data.max_response_length"] == str(cfg.agent.max_response_tokens)
    assert ov["trainer.resume_mode"] == "auto" and ov["trainer.use_v1"] == "true"
    assert ov["trainer.logger"] == '["console", "mlflow"]'
    assert Path(ov["data.train_files"]).is_file() and Path(ov["data.val_files"]).is_file()
    # the plug-ins are the package's own files, not rendered code
    plugins = ROOT / "searchr1" / "training" / "verl_plugins"
    assert Path(ov["reward.custom_reward_function.path"]) == plugins / "reward.py"
    assert Path(ov["trainer.v1.sampler.custom_sampler.path"]) == plugins / "sampler.py"
    assert "function_tool_path" not in " ".join(plan.overrides)
    for key in ("tool_config", "agent_loop", "reward", "sampler", "plan", "launch", "search_r1"):
        assert Path(plan.files[key]).is_file()


def test_plugin_config_files_are_data_with_one_protocol(paper):
    cfg, plan = paper
    protocol = AgentProtocol.from_config(cfg.agent)
    tools = yaml.safe_load(Path(plan.files["tool_config"]).read_text())["tools"]
    assert [t["class_name"] for t in tools] == ["searchr1.training.verl_plugins.tool.SearchTool"]
    conf = tools[0]["config"]
    assert conf["base_url"] == URL and conf["tokenizer"] == cfg.policy.model and "tool_schema" not in tools[0]
    assert AgentProtocol(**conf["protocol"]) == protocol
    loops = yaml.safe_load(Path(plan.files["agent_loop"]).read_text())
    assert [loop["name"] for loop in loops] == [AGENT_NAME, "tool_agent"]  # rows tagged for verl's loop run ours
    assert {loop["_target_"] for loop in loops} == {"searchr1.training.verl_plugins.agent_loop.SearchAgentLoop"}
    assert all(AgentProtocol(**loop["protocol"]) == protocol for loop in loops)
    # verl loads the reward by file path (importlib), as here
    spec = importlib.util.spec_from_file_location("rendered_reward", _ov(plan)["reward.custom_reward_function.path"])
    reward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reward)
    gt = {"target": ["George Orwell"]}
    assert reward.compute_score("searchR1_nq", "<answer>x</answer> <answer>george orwell.</answer>", gt) == 1.0
    assert reward.compute_score("searchR1_nq", "no answer", gt) == 0.0


def test_every_override_is_a_key_of_verl_0_9_1(paper):
    _, plan = paper
    keys = load_schema_keys()
    assert PPO_TRAINER_KEYS.parent.name == "verl_plugins" and "tests" not in PPO_TRAINER_KEYS.parts
    assert len(keys) > 500
    assert validate_overrides(plan.overrides, keys) == []


def test_unknown_misplaced_keys_and_wrong_inputs_are_refused(tmp_path):
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
        render_verl(cfg, tmp_path / "data", URL, tmp_path / "verl")
    with pytest.raises(FileNotFoundError, match="train-data stage"):
        render_verl(cfg, tmp_path / "nothing", URL, tmp_path / "verl2")
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    with pytest.raises(ValueError, match="base URL"):  # the old bug: every call went to /retrieve/retrieve
        render_verl(cfg, tmp_path / "data", URL + "/retrieve", tmp_path / "verl3")
    odd = load_config(ROOT / "configs" / "paper.yaml", ["training.verl.ppo_mini_batch_size=128",
                                                        "training.verl.n_gpus_per_node=3",
                                                        "training.verl.check_deviations=false"])
    with pytest.raises(ValueError, match="do not split over 3 GPUs"):
        render_verl(odd, tmp_path / "data", URL, tmp_path / "verl4")
    rows = pq.read_table(tmp_path / "data" / VERL_DIR / TRAIN_FILE).to_pylist()
    pq.write_table(pa.Table.from_pylist([{**r, "agent_name": "single_turn_agent"} for r in rows]),
                   tmp_path / "data" / VERL_DIR / TRAIN_FILE)
    with pytest.raises(ValueError, match="single_turn_agent.*outside the agent protocol"):
        render_verl(cfg, tmp_path / "data", URL, tmp_path / "verl5")


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


STAND_IN = """
import os, sys
print("step:1 - search/calls:12 - search/failed_share:0.0")
print("env", os.environ["MLFLOW_RUN_ID"], os.environ["MLFLOW_TRACKING_URI"], os.environ["FROM_PLAN"])
print("argv", " ".join(sys.argv[1:]))
if os.environ.get("FAIL"):
    print("ray.exceptions.RayTaskError: searchr1.training.search_tool.ToolFailureError: step 2: 9 of 10 failed")
    sys.exit(1)
"""


def test_launch_streams_metrics_passes_mlflow_env_and_names_the_guard(tmp_path):
    """launch_verl with a stand-in for `python -m verl.trainer.main_ppo` (same process handling)."""
    got = []
    env = mlflow_env("sqlite:///m.db", "run123")
    plan = VerlPlan(argv=["python", "-c", STAND_IN], env={"FROM_PLAN": "1"}, out_dir=tmp_path,
                    checkpoint_dir=tmp_path / "checkpoints")
    summary = launch_verl(plan, lambda m, s: got.append((s, m)), env)
    assert got == [(1, {"search/calls": 12.0, "search/failed_share": 0.0})] and summary["last_step"] == 1
    log = (tmp_path / "verl.log").read_text()
    assert "env run123 sqlite:///m.db 1" in log
    assert "+ray_kwargs.ray_init.runtime_env.env_vars.MLFLOW_RUN_ID=run123" in log  # verl's Ray actors get it too
    plan.env["FAIL"] = "1"
    with pytest.raises(RuntimeError, match="status 1 .*ToolFailureError: step 2: 9 of 10 failed"):
        launch_verl(plan, lambda m, s: None, env)


def test_stage_run_id_is_found_behind_the_committed_logger():
    class Run:
        run_id = "abc"

    class Committed:
        sink = Run()

    assert _mlflow_run_id(Run()) == "abc" and _mlflow_run_id(Committed()) == "abc"
    assert _mlflow_run_id(lambda m, s=None: None) is None


def test_dry_run_cli(tmp_path, capsys):
    assert main(["--config", str(ROOT / "configs" / "paper.yaml"), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "validated against its config schema" in out and "verl.trainer.main_ppo" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert any(o.endswith("tool_config.yaml") for o in plan["argv"]) and plan["search_r1"]
    assert main(["--config", str(ROOT / "configs" / "paper.yaml"), "--dry-run", "--out", str(tmp_path / "b"),
                 "training.verl.nnodes=0"]) == 2
