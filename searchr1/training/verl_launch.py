"""The GPU engine: render everything verl 0.9.1 needs from our config, launch it, follow it.

`render_verl` writes, into one folder:
- `tool_config.yaml`: verl's tool config naming our `search` tool (`verl_plugins.tool.SearchTool`) with
  the retrieval server's base URL, the policy's tokenizer and the agent protocol;
- `agent_loop.yaml`: our agent loop (`verl_plugins.agent_loop.SearchAgentLoop`) in verl's registry;
- `plan.json`: the argv for `python -m verl.trainer.main_ppo` (hydra overrides), env vars, Ray
  settings, and the run held against Search-R1's hyperparameters; `launch.sh`, the same command for
  a person to read or run; `search_r1.md`, that comparison as a table.
The reward (`verl_plugins/reward.py`) and the step guard (`verl_plugins/sampler.py`) are this
package's files, named by path. The data parquet comes from the train-data stage. `launch_verl` runs
verl; verl's own `mlflow` logger writes into the train stage's MLflow run, and the console lines feed
the stage's committed metric series. Resume is verl's own (`trainer.resume_mode=auto` finds the last
`global_step_N`); `merge_checkpoint` turns a sharded FSDP actor checkpoint into an HF folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from searchr1.agent.protocol import AgentProtocol
from searchr1.io import write_text_atomic
from searchr1.tracking import MetricsLogger, null_logger
from searchr1.training.data import TRAIN_FILE, VAL_FILE, VERL_DIR
from searchr1.training.verl_plugins import AGENT_NAME, PPO_TRAINER_KEYS, VERL_VERSION
from searchr1.training.verl_plugins import reward as reward_plugin
from searchr1.training.verl_plugins import search_r1_reference as reference
from searchr1.training.verl_plugins.configs import LOOP_NAMES, agent_loop_config, tool_config, write_yaml

PLUGINS_DIR = Path(reward_plugin.__file__).resolve().parent
SAMPLER_FILE, SAMPLER_CLASS = PLUGINS_DIR / "sampler.py", "SearchCheckedReplayBuffer"


@dataclass
class VerlPlan:
    argv: list[str]
    env: dict[str, str]
    out_dir: Path
    checkpoint_dir: Path
    files: dict[str, str] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)
    search_r1: list[dict[str, Any]] = field(default_factory=list)  # each reference row: theirs, ours, why

    @property
    def overrides(self) -> list[str]:
        return self.argv[3:]  # after `python -m verl.trainer.main_ppo`

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"], data["checkpoint_dir"] = str(self.out_dir), str(self.checkpoint_dir)
        return data


def _bool(v: bool) -> str:
    return "true" if v else "false"


def verl_overrides(cfg, train_data_dir: Path, out_dir: Path, tool_config_path: Path,
                   agent_loop_path: Path) -> list[str]:
    """Hydra overrides for verl.trainer.main_ppo: Search-R1's GRPO, rolled out by our agent loop."""
    v, g, agent = cfg.training.verl, cfg.training.grpo, cfg.agent
    data = Path(train_data_dir).resolve() / VERL_DIR
    A, R = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout."
    ov = [
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=false",  # GRPO's KL is the actor's loss term (use_kl_loss)
        f"data.train_files={data / TRAIN_FILE}",
        f"data.val_files={data / VAL_FILE}",
        f"data.train_batch_size={v.train_batch_size}",
        f"data.val_batch_size={v.val_batch_size}",
        f"data.max_prompt_length={v.max_prompt_length}",
        f"data.max_response_length={agent.max_response_tokens}",  # the whole multi-turn response
        "data.filter_overlong_prompts=true",
        "data.truncation=error",
        "data.return_raw_chat=true",
        "data.shuffle=true",
        f"data.seed={cfg.run.seed}",
        f"actor_rollout_ref.model.path={cfg.policy.model}",
        f"actor_rollout_ref.model.trust_remote_code={_bool(cfg.policy.trust_remote_code)}",
        "actor_rollout_ref.model.use_remove_padding=true",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={_bool(v.gradient_checkpointing)}",
        f"{A}optim.lr={g.learning_rate}",
        f"{A}optim.lr_warmup_steps_ratio={v.lr_warmup_steps_ratio}",
        f"{A}optim.lr_scheduler_type=constant",
        f"{A}optim.clip_grad={v.grad_clip}",
        f"{A}ppo_mini_batch_size={v.ppo_mini_batch_size}",
        f"{A}ppo_micro_batch_size_per_gpu={v.ppo_micro_batch_size_per_gpu}",
        f"{A}ppo_epochs={v.ppo_epochs}",
        f"{A}shuffle=false",
        f"{A}loss_agg_mode=token-mean",
        f"{A}use_kl_loss=true",
        f"{A}kl_loss_coef={g.kl_coef}",
        f"{A}kl_loss_type={v.kl_loss_type}",
        f"{A}entropy_coeff={v.entropy_coeff}",
        f"{A}clip_ratio={v.clip_ratio}",
        f"{A}fsdp_config.param_offload={_bool(v.param_offload)}",
        f"{A}fsdp_config.optimizer_offload={_bool(v.param_offload)}",
        f"actor_rollout_ref.ref.fsdp_config.param_offload={_bool(v.ref_param_offload)}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={v.log_prob_micro_batch_size_per_gpu}",
        f"{R}name={v.rollout_engine}",
        f"{R}mode=async",  # agent loops run on the async server
        f"{R}n={g.group_size}",
        f"{R}temperature={g.temperature}",
        f"{R}top_p={g.top_p}",
        f"{R}top_k=-1",
        f"{R}gpu_memory_utilization={v.gpu_memory_utilization}",
        f"{R}tensor_model_parallel_size={v.tensor_model_parallel_size}",
        f"{R}max_model_len={v.max_model_len}",
        f"{R}log_prob_micro_batch_size_per_gpu={v.log_prob_micro_batch_size_per_gpu}",
        f"{R}multi_turn.enable=true",
        f"{R}multi_turn.tool_config_path={tool_config_path}",
        f"{R}agent.agent_loop_config_path={agent_loop_path}",
        f"{R}agent.default_agent_loop={AGENT_NAME}",
        f"reward.custom_reward_function.path={Path(reward_plugin.__file__).resolve()}",
        "reward.custom_reward_function.name=compute_score",
        # the protocol reward's terms, as the TRL engine hands them over, and the style that says what a call is
        *(f"+reward.custom_reward_function.reward_kwargs.{k}={float(x)}" for k, x in g.reward_terms.items()),
        f"+reward.custom_reward_function.reward_kwargs.prompt_style={agent.prompt_style}",
        # the step guard lives in the V1 trainer's replay buffer (verl_plugins/sampler.py says why)
        "trainer.use_v1=true",
        "trainer.v1.trainer_mode=sync",
        f"trainer.v1.sampler.custom_sampler.path={SAMPLER_FILE}",
        f"trainer.v1.sampler.custom_sampler.name={SAMPLER_CLASS}",
        f"+trainer.v1.sampler.sampler_kwargs.max_tool_error_rate={g.max_tool_error_rate}",
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


def load_schema_keys(path: Path = PPO_TRAINER_KEYS) -> set[str]:
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


def check_run_shape(cfg) -> list[str]:
    """What verl 0.9.1 would pad or reject: an update's samples must split evenly over the GPUs."""
    v, n = cfg.training.verl, cfg.training.grpo.group_size
    gpus = v.n_gpus_per_node * v.nnodes
    if (v.ppo_mini_batch_size * n) % gpus:
        return [f"training.verl.ppo_mini_batch_size x training.grpo.group_size ({v.ppo_mini_batch_size} x {n}) "
                f"samples per update do not split over {gpus} GPUs: verl would pad the batch with dummy rows"]
    return []


def check_agent_names(data_dir: Path) -> list[str]:
    """Rows name the agent loop verl runs for them; every name must be one our agent-loop file registers."""
    problems = []
    for name in (TRAIN_FILE, VAL_FILE):
        path = Path(data_dir) / name
        if "agent_name" not in pq.read_schema(path).names:
            continue
        found = set(pq.read_table(path, columns=["agent_name"]).column(0).to_pylist())
        if found - set(LOOP_NAMES):
            problems.append(f"{path}: agent_name {sorted(found - set(LOOP_NAMES))} is not one of {list(LOOP_NAMES)} "
                            f"(verl would run another loop, outside the agent protocol)")
    return problems


def render_verl(cfg, train_data_dir: Path, retrieval_url: str, out_dir: Path) -> VerlPlan:
    """Write the plug-in config files and the plan; raise ValueError when an override is not in verl's
    schema, the run shape would make verl pad, or the run differs from Search-R1 without a stated reason."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = Path(train_data_dir) / VERL_DIR
    for name in (TRAIN_FILE, VAL_FILE):
        if not (data / name).is_file():
            raise FileNotFoundError(f"{data / name}: verl training data missing; run the train-data stage first")
    protocol = AgentProtocol.from_config(cfg.agent)
    tool_path = write_yaml(out_dir / "tool_config.yaml", tool_config(
        protocol, retrieval_url, cfg.policy.model, trust_remote_code=cfg.policy.trust_remote_code))
    loop_path = write_yaml(out_dir / "agent_loop.yaml", agent_loop_config(protocol))
    overrides = verl_overrides(cfg, train_data_dir, out_dir, tool_path, loop_path)
    v = cfg.training.verl
    rows = reference.compare(overrides, asdict(protocol), v.deviations)
    problems = validate_overrides(overrides, load_schema_keys()) + check_run_shape(cfg) + check_agent_names(data)
    if v.check_deviations:
        problems += reference.problems(rows, v.deviations)
    if problems:
        raise ValueError("the verl run cannot be rendered:\n  " + "\n  ".join(problems))
    env = {"PYTHONUNBUFFERED": "1", "VLLM_USE_V1": "1", "TOKENIZERS_PARALLELISM": "true",
           "HYDRA_FULL_ERROR": "1"}
    if v.ray_address:
        env["RAY_ADDRESS"] = v.ray_address  # ray.init() joins this cluster instead of starting one
    ray = {"address": v.ray_address or "local", "nnodes": v.nnodes, "gpus_per_node": v.n_gpus_per_node}
    table = out_dir / "search_r1.md"
    write_text_atomic(table, reference.markdown_table(rows))
    plan = VerlPlan(argv=["python", "-m", "verl.trainer.main_ppo", *overrides], env=env, out_dir=out_dir,
                    checkpoint_dir=out_dir / "checkpoints",
                    files={"tool_config": str(tool_path), "agent_loop": str(loop_path),
                           "reward": str(Path(reward_plugin.__file__).resolve()), "sampler": str(SAMPLER_FILE),
                           "plan": str(out_dir / "plan.json"), "launch": str(out_dir / "launch.sh"),
                           "search_r1": str(table)},
                    ray=ray, search_r1=[{"name": r.ref.name, "search_r1": r.ref.search_r1, "source": r.ref.source,
                                         "rendered": r.rendered, "same": r.same, "reason": r.reason} for r in rows])
    write_text_atomic(out_dir / "plan.json", json.dumps(plan.to_json(), indent=2, default=str))
    script = "#!/usr/bin/env bash\n# Rendered by searchr1.training.verl_launch\nset -euo pipefail\n" + "".join(
        f"export {k}={shlex.quote(val)}\n" for k, val in env.items()) + " \\\n    ".join(
        shlex.quote(a) for a in plan.argv) + "\n"
    write_text_atomic(out_dir / "launch.sh", script)
    return plan


def mlflow_env(tracking_uri: str, run_id: str) -> dict[str, str]:
    """What verl's `mlflow` logger reads to log into an existing run instead of creating one."""
    return {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": run_id}


def ray_env_overrides(env: Mapping[str, str]) -> list[str]:
    """The same variables for verl's Ray actors (the trainer runs in one, possibly on another node)."""
    return [f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}={v}" for k, v in env.items()]


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


def launch_verl(plan: VerlPlan, log_metrics: MetricsLogger = null_logger,
                extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run verl (same command resumes: resume_mode=auto); stream its console metrics to `log_metrics`;
    keep its log. `extra_env` (e.g. `mlflow_env`) reaches verl's process and its Ray actors."""
    log_path = plan.out_dir / "verl.log"
    extra = dict(extra_env or {})
    env = {**os.environ, **plan.env, **extra}
    argv = [sys.executable, *plan.argv[1:], *ray_env_overrides(extra)]
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
        raise RuntimeError(f"verl exited with status {rc}{_failure_line(log_path)}; see {log_path}")
    return {"engine": "verl", "last_step": last_step, "steps_logged": steps, "log": str(log_path),
            "checkpoints": [str(p) for _, p in verl_checkpoints(plan.checkpoint_dir)]}


def _failure_line(log_path: Path) -> str:
    """The step guard's message, when that is why verl stopped (it is buried in a Ray traceback)."""
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if "ToolFailureError" in ln]
    return f" ({lines[-1].strip()})" if lines else ""


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
    from searchr1.io import atomic_dir

    with atomic_dir(Path(target_dir)) as tmp:
        subprocess.run(merge_command(actor_dir, tmp), check=True)
    return Path(target_dir)


def main(argv: list[str] | None = None, prog: str = "python -m searchr1.training.verl_launch") -> int:
    ap = argparse.ArgumentParser(prog=prog,
                                 description="Render (and with --launch, run) verl GRPO from a pipeline config.")
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="folder for the rendered files and checkpoints")
    ap.add_argument("--train-data", type=Path, default=None,
                    help="train-data stage folder (with verl/train.parquet); default: render a small one "
                         "from placeholder questions into OUT/data, for a dry run")
    ap.add_argument("--retrieval-url", default=None,
                    help="the retrieval server's base URL; default: http://<retrieval.server.host>:<port>")
    ap.add_argument("--dry-run", action="store_true", help="render and validate only (no GPU needed)")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = ap.parse_intermixed_args(argv)
    from searchr1.config import load_config_for_cli

    cfg = load_config_for_cli(args.config, args.overrides)
    if cfg is None:
        return 2
    url = args.retrieval_url or f"http://{cfg.retrieval.server.host}:{cfg.retrieval.server.port}"
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
