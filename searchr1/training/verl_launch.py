"""The GPU engine: render everything verl 0.9.1 needs from our config, launch it, follow it.

`render_verl` writes, into one folder:
- `search_tool.py`: the `search(query_list)` function tool verl loads through
  `rollout.multi_turn.function_tool_path` (verl 0.9.1 ships no search tool of its own); it calls
  our retrieval server's `/retrieve` and formats passages as our trainer and evaluation do;
- `reward.py`: `compute_score` = our exact match on the last `<answer>` (Search-R1's reward);
- `plan.json`: the argv for `python -m verl.trainer.main_ppo` (hydra overrides), env vars, Ray
  settings — and `launch.sh`, the same command for a person to read or run.
The data parquet comes from the train-data stage (`searchr1.training.data`). `launch_verl` runs it
and streams verl's console metrics into `log_metrics`; resume is verl's own (`trainer.resume_mode=auto`
finds the last `global_step_N` in the same checkpoint folder); `merge_checkpoint` turns a sharded
FSDP actor checkpoint into an HF folder for evaluation.

The tool and reward files are rendered here and execute on the GPU node, where this package is
installed (requirements-gpu.txt), so they import `searchr1` instead of repeating its code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from searchr1.cache import write_text_atomic
from searchr1.tracking import MetricsLogger, null_logger
from searchr1.training.data import TRAIN_FILE, VAL_FILE, VERL_DIR

VERL_VERSION = "0.9.1"
KEYS_FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / f"verl_{VERL_VERSION}_ppo_trainer_keys.json"

SEARCH_TOOL_FILE = '''"""Rendered by searchr1.training.verl_launch: the search tool verl calls (function_tool_path)."""

from searchr1.retrieval.client import RetrievalClient
from searchr1.training.search_tool import make_search_tool
from verl.tools.function_tool import function_tool

_search = make_search_tool(RetrievalClient({url!r}), topk={topk}, max_obs_tokens={max_obs_tokens},
                           max_queries={max_queries}, max_query_chars={max_query_chars})


@function_tool("search")
def search(query_list: list[str]):  # no return annotation: it would add "return" to the schema
    """Search a Wikipedia passage index and return the most relevant passages.

    Args:
        query_list: Fully-formed semantic queries.
    """
    return _search(query_list)
'''

REWARD_FILE = '''"""Rendered by searchr1.training.verl_launch: Search-R1's reward, exact match of the last <answer>."""

from searchr1.rewards import exact_match, extract_answer


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    golden = ground_truth["target"] if isinstance(ground_truth, dict) else ground_truth
    answer = extract_answer(solution_str)
    if answer is None:
        return 0.0
    return exact_match(answer, list(golden)) or {format_reward!r}
'''


@dataclass
class VerlPlan:
    argv: list[str]
    env: dict[str, str]
    out_dir: Path
    checkpoint_dir: Path
    files: dict[str, str] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)

    @property
    def overrides(self) -> list[str]:
        return self.argv[3:]  # after `python -m verl.trainer.main_ppo`

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"], data["checkpoint_dir"] = str(self.out_dir), str(self.checkpoint_dir)
        return data


def _bool(v: bool) -> str:
    return "true" if v else "false"


def verl_overrides(cfg, train_data_dir: Path, out_dir: Path, tool_path: Path, reward_path: Path) -> list[str]:
    """Hydra overrides for verl.trainer.main_ppo: Search-R1's GRPO with verl's multi-turn tool agent."""
    v, g, agent = cfg.training.verl, cfg.training.grpo, cfg.agent
    data = Path(train_data_dir).resolve() / VERL_DIR
    policy = cfg.policy.model
    ov = [
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=false",
        f"data.train_files={data / TRAIN_FILE}",
        f"data.val_files={data / VAL_FILE}",
        f"data.train_batch_size={v.train_batch_size}",
        f"data.val_batch_size={v.val_batch_size}",
        f"data.max_prompt_length={v.max_prompt_length}",
        f"data.max_response_length={v.max_response_length}",
        "data.filter_overlong_prompts=true",
        "data.truncation=error",
        "data.return_raw_chat=true",
        f"data.seed={cfg.run.seed}",
        f"actor_rollout_ref.model.path={policy}",
        f"actor_rollout_ref.model.trust_remote_code={_bool(cfg.policy.trust_remote_code)}",
        "actor_rollout_ref.model.use_remove_padding=true",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={_bool(v.gradient_checkpointing)}",
        f"actor_rollout_ref.actor.optim.lr={g.learning_rate}",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps_ratio={v.lr_warmup_steps_ratio}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={v.ppo_mini_batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={v.ppo_micro_batch_size_per_gpu}",
        "actor_rollout_ref.actor.use_kl_loss=true",
        f"actor_rollout_ref.actor.kl_loss_coef={g.kl_coef}",
        f"actor_rollout_ref.actor.kl_loss_type={v.kl_loss_type}",
        f"actor_rollout_ref.actor.entropy_coeff={v.entropy_coeff}",
        f"actor_rollout_ref.actor.fsdp_config.param_offload={_bool(v.param_offload)}",
        f"actor_rollout_ref.actor.fsdp_config.optimizer_offload={_bool(v.param_offload)}",
        f"actor_rollout_ref.ref.fsdp_config.param_offload={_bool(v.ref_param_offload)}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={v.log_prob_micro_batch_size_per_gpu}",
        f"actor_rollout_ref.rollout.name={v.rollout_engine}",
        "actor_rollout_ref.rollout.mode=async",  # the agent loop (multi-turn tools) runs on the async server
        f"actor_rollout_ref.rollout.n={g.group_size}",
        f"actor_rollout_ref.rollout.temperature={g.temperature}",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={v.gpu_memory_utilization}",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={v.tensor_model_parallel_size}",
        f"actor_rollout_ref.rollout.max_model_len={v.max_model_len}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={v.log_prob_micro_batch_size_per_gpu}",
        "actor_rollout_ref.rollout.multi_turn.enable=true",
        f"actor_rollout_ref.rollout.multi_turn.max_assistant_turns={v.max_assistant_turns or agent.max_turns}",
        f"actor_rollout_ref.rollout.multi_turn.max_tool_response_length={v.max_tool_response_length}",
        "actor_rollout_ref.rollout.multi_turn.tool_response_truncate_side=right",
        f"actor_rollout_ref.rollout.multi_turn.format={v.tool_parser_format}",
        f"actor_rollout_ref.rollout.multi_turn.function_tool_path={tool_path}",
        "actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent",
        f"reward.custom_reward_function.path={reward_path}",
        "reward.custom_reward_function.name=compute_score",
        "trainer.critic_warmup=0",
        f"trainer.logger={json.dumps(list(v.logger))}",
        f"trainer.project_name={cfg.run.experiment}",
        f"trainer.experiment_name={cfg.run.name}",
        f"trainer.n_gpus_per_node={v.n_gpus_per_node}",
        f"trainer.nnodes={v.nnodes}",
        f"trainer.save_freq={g.save_every}",
        f"trainer.test_freq={v.test_freq}",
        f"trainer.total_training_steps={g.steps}",
        f"trainer.total_epochs={v.total_epochs}",
        f"trainer.val_before_train={_bool(v.val_before_train)}",
        f"trainer.default_local_dir={Path(out_dir).resolve() / 'checkpoints'}",
        "trainer.resume_mode=auto",  # verl's own resume: the last global_step_N under default_local_dir
    ]
    return ov + list(v.extra_overrides)


def load_schema_keys(path: Path = KEYS_FIXTURE) -> set[str]:
    return set(json.loads(Path(path).read_text())["keys"])


def validate_overrides(overrides: list[str], keys: set[str]) -> list[str]:
    """Problems with hydra overrides against verl's config keys: unknown keys, or `+key` for an existing one."""
    problems = []
    prefixes = {k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)}
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep:
            problems.append(f"{item!r}: expected key=value")
            continue
        bare = key.lstrip("+~")
        if key.startswith("++"):
            continue
        if key.startswith("+"):
            if bare in keys:
                problems.append(f"{item!r}: {bare} already exists in verl {VERL_VERSION}'s config; drop the '+'")
        elif bare not in keys:
            hint = " (it is a section, not a value)" if bare in prefixes else ""
            problems.append(f"{item!r}: {bare} is not a key of verl {VERL_VERSION}'s ppo_trainer config{hint}")
    return problems


def render_verl(cfg, train_data_dir: Path, retrieval_url: str, out_dir: Path) -> VerlPlan:
    """Write the tool/reward files and the plan; raise ValueError when an override is not in verl's schema."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = Path(train_data_dir) / VERL_DIR
    for name in (TRAIN_FILE, VAL_FILE):
        if not (data / name).is_file():
            raise FileNotFoundError(f"{data / name}: verl training data missing; run the train-data stage first")
    agent = cfg.agent
    tool_path, reward_path = out_dir / "search_tool.py", out_dir / "reward.py"
    write_text_atomic(tool_path, SEARCH_TOOL_FILE.format(
        url=retrieval_url, topk=agent.topk, max_obs_tokens=agent.max_obs_tokens,
        max_queries=agent.max_queries_per_call, max_query_chars=agent.max_query_chars))
    write_text_atomic(reward_path, REWARD_FILE.format(format_reward=float(cfg.training.grpo.format_reward)))
    overrides = verl_overrides(cfg, train_data_dir, out_dir, tool_path, reward_path)
    problems = validate_overrides(overrides, load_schema_keys())
    if problems:
        raise ValueError("verl overrides do not match verl's config schema:\n  " + "\n  ".join(problems))
    v = cfg.training.verl
    env = {"PYTHONUNBUFFERED": "1", "VLLM_USE_V1": "1", "TOKENIZERS_PARALLELISM": "true",
           "HYDRA_FULL_ERROR": "1"}
    if v.ray_address:
        env["RAY_ADDRESS"] = v.ray_address  # ray.init() joins this cluster instead of starting one
    ray = {"address": v.ray_address or "local", "nnodes": v.nnodes, "gpus_per_node": v.n_gpus_per_node}
    plan = VerlPlan(argv=["python", "-m", "verl.trainer.main_ppo", *overrides], env=env, out_dir=out_dir,
                    checkpoint_dir=out_dir / "checkpoints",
                    files={"search_tool": str(tool_path), "reward": str(reward_path),
                           "plan": str(out_dir / "plan.json"), "launch": str(out_dir / "launch.sh")}, ray=ray)
    write_text_atomic(out_dir / "plan.json", json.dumps(plan.to_json(), indent=2))
    script = "#!/usr/bin/env bash\n# Rendered by searchr1.training.verl_launch\nset -euo pipefail\n" + "".join(
        f"export {k}={shlex.quote(val)}\n" for k, val in env.items()) + " \\\n    ".join(
        shlex.quote(a) for a in plan.argv) + "\n"
    write_text_atomic(out_dir / "launch.sh", script)
    return plan


_LINE = re.compile(r"^step:(\d+) - (.*)$")


def parse_metrics_line(line: str) -> tuple[int, dict[str, float]] | None:
    """verl's console logger line `step:N - key:value - ...` -> (N, {key: value}); None for other lines."""
    m = _LINE.match(line.strip())
    if not m:
        return None
    metrics = {}
    for part in m.group(2).split(" - "):
        key, sep, value = part.rpartition(":")
        if not sep:
            continue
        try:
            metrics[key.strip()] = float(value)
        except ValueError:
            continue
    return int(m.group(1)), metrics


def launch_verl(plan: VerlPlan, log_metrics: MetricsLogger = null_logger) -> dict[str, Any]:
    """Run verl (same command resumes: resume_mode=auto); stream its per-step metrics; keep its log."""
    log_path = plan.out_dir / "verl.log"
    env = {**os.environ, **plan.env}
    argv = [sys.executable, *plan.argv[1:]]
    last_step, steps = 0, 0
    with open(log_path, "a", encoding="utf-8") as log, subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            parsed = parse_metrics_line(line)
            if parsed:
                last_step, metrics = parsed
                steps += 1
                log_metrics(metrics, last_step)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"verl exited with status {rc}; see {log_path}")
    return {"engine": "verl", "last_step": last_step, "steps_logged": steps, "log": str(log_path),
            "checkpoints": [str(p) for _, p in verl_checkpoints(plan.checkpoint_dir)]}


def verl_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """verl's `global_step_N/actor` folders, oldest first (verl writes latest_checkpointed_iteration.txt last)."""
    found = []
    root = Path(checkpoint_dir)
    for child in root.glob("global_step_*"):
        m = re.fullmatch(r"global_step_(\d+)", child.name)
        if m and (child / "actor").is_dir():
            found.append((int(m.group(1)), child / "actor"))
    return sorted(found)


def merge_command(actor_dir: Path, target_dir: Path) -> list[str]:
    return [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", str(actor_dir), "--target_dir", str(target_dir)]


def merge_checkpoint(actor_dir: Path, target_dir: Path) -> Path:
    """Sharded FSDP actor checkpoint -> HF folder (verl's model merger), published atomically."""
    from searchr1.cache import atomic_dir

    with atomic_dir(Path(target_dir)) as tmp:
        subprocess.run(merge_command(actor_dir, tmp), check=True)
    return Path(target_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m searchr1.training.verl_launch",
                                 description="Render (and with --launch, run) verl GRPO from a pipeline config.")
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="folder for the rendered files and checkpoints")
    ap.add_argument("--train-data", type=Path, default=None,
                    help="train-data stage folder (with verl/train.parquet); default: render a small one "
                         "from placeholder questions into OUT/data, for a dry run")
    ap.add_argument("--retrieval-url", default=None, help="default: http://<retrieval.server.host>:<port>/retrieve")
    ap.add_argument("--dry-run", action="store_true", help="render and validate only (no GPU needed)")
    ap.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = ap.parse_args(argv)
    from searchr1.config import load_config_for_cli

    cfg = load_config_for_cli(args.config, args.overrides)
    if cfg is None:
        return 2
    url = args.retrieval_url or f"http://{cfg.retrieval.server.host}:{cfg.retrieval.server.port}/retrieve"
    data_dir = args.train_data
    if data_dir is None:
        from searchr1.training.data import build_train_data

        data_dir = args.out / "data"
        placeholder = {b: [{"id": f"{b}-0", "question": "who wrote the novel 1984?",
                            "golden_answers": ["George Orwell"]}] for b in cfg.questions.train_benchmarks}
        build_train_data(placeholder, cfg, data_dir)
    try:
        plan = render_verl(cfg, data_dir, url, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# verl {VERL_VERSION} plan: {len(plan.overrides)} overrides validated against its config schema")
    print(f"# files: {json.dumps(plan.files, indent=1)}")
    print(Path(plan.files["launch"]).read_text())
    if args.dry_run:
        return 0
    launch_verl(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
