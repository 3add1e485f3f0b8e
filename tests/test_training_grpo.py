"""TRL GRPO with the search tool on the real policy: the loss mask of a real multi-turn rollout, the
rollout_func TRL calls, and kill/resume.

Slow (loads SmolLM2-135M): 3 GRPO steps of 2 prompts x 2 completions, <= 32 response tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from searchr1.config import PipelineConfig, config_from_dict
from searchr1.training.checkpoints import list_checkpoints
from searchr1.training.data import build_train_data
from searchr1.training.search_tool import WordOverlapSearcher

pytestmark = pytest.mark.slow

DOCS = [{"id": str(i), "contents": f'"Baneix Jeseimae {i}"\nBaneix Jeseimae {i} was born in Triabrus{i}.'}
        for i in range(6)]
QS = {"single_hop": [{"id": f"q{i}", "question": f"Where was Baneix Jeseimae {i} born?",
                      "golden_answers": [f"Triabrus{i}"]} for i in range(6)]}


def _cfg(steps: int, tmp: Path, max_response: int = 32, max_obs: int = 48) -> PipelineConfig:
    return config_from_dict({
        "run": {"artifacts_dir": str(tmp / "artifacts")},
        "agent": {"max_turns": 2, "max_obs_tokens": max_obs, "topk": 1, "max_new_tokens": 16,
                  "max_response_tokens": max_response},
        "training": {"grpo": {"steps": steps, "prompts_per_step": 2, "group_size": 2, "save_every": 1,
                              "learning_rate": 1e-5}}})


@pytest.fixture(scope="module")
def policy():
    from searchr1.models import resolve_policy

    repo_artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    return resolve_policy(PipelineConfig().policy, repo_artifacts)


def test_loss_mask_is_zero_on_exactly_the_fed_tokens(policy):
    """The real generator, two real turns around tool text: the completion is every token after the prompt,
    the mask is 1 on what the model wrote and 0 on what it was fed (the tool response)."""
    from searchr1.agent.generators import TransformersGenerator
    from searchr1.training.grpo import load_for_training

    model, tok = load_for_training(policy, _cfg(1, Path(".")))
    model.eval()
    gen = TransformersGenerator(model, tok, greedy=False, temperature=1.0)
    prompt = "<|im_start|>user\nWhere was Baneix Jeseimae 3 born?<|im_end|>\n<|im_start|>assistant\n"
    (n_prompt,) = gen.start([prompt])
    first = gen.generate([0], 6, ())[0]
    tool = "<|im_end|>\n<|im_start|>user\n<tool_response>\nDoc 1(Title: x) y\n</tool_response><|im_end|>\n"
    n_tool = gen.extend(0, tool)
    second = gen.generate([0], 5, ())[0]
    ids, mask = gen.completion(0)
    assert len(ids) == len(mask) == first.n_tokens + n_tool + second.n_tokens
    assert mask == [1] * first.n_tokens + [0] * n_tool + [1] * second.n_tokens
    assert tok.decode(ids[first.n_tokens:first.n_tokens + n_tool]) == tool
    assert gen.history[0][:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]


def test_rollout_func_gives_trl_one_masked_rollout_per_prompt(policy, tmp_path):
    """What TRL receives: prompt ids rendered by the protocol, completions, the env mask, the rollouts."""
    from types import SimpleNamespace

    from searchr1.agent.protocol import AgentProtocol
    from searchr1.training.grpo import load_for_training, make_rollout_func

    cfg = _cfg(1, tmp_path)
    model, tok = load_for_training(policy, cfg)
    model.train()
    fn = make_rollout_func(WordOverlapSearcher(DOCS), cfg.agent, temperature=1.0, top_p=1.0)
    prompts = [QS["single_hop"][0]["question"]] * 2 + [QS["single_hop"][1]["question"]] * 2
    out = fn(prompts, SimpleNamespace(model=model, processing_class=tok, state=SimpleNamespace(global_step=0)))
    assert model.training  # handed back in train mode
    assert {len(out[k]) for k in ("prompt_ids", "completion_ids", "env_mask", "rollout")} == {4}
    assert out["logprobs"] is None  # same model samples and trains: TRL needs no correction
    proto = AgentProtocol.from_config(cfg.agent)
    for q, ids, comp, mask, ro in zip(prompts, out["prompt_ids"], out["completion_ids"], out["env_mask"],
                                      out["rollout"], strict=True):
        assert ids == tok(proto.render_prompt(tok, q), add_special_tokens=False)["input_ids"]
        assert len(comp) == len(mask) and sum(mask) == ro.gen_tokens
        assert ro.stop_reason in ("answer", "max_turns", "max_tokens", "no_action")


def test_rollout_func_refills_flat_groups_from_the_training_questions(policy, tmp_path):
    """With refill on, every flat group sampled is either replaced by a varied group of another training
    question or counted as kept; each rollout carries the question (and answers) it was sampled for."""
    from types import SimpleNamespace

    from searchr1.agent.protocol import AgentProtocol
    from searchr1.agent.trace import model_text
    from searchr1.training.data import read_trl_rows
    from searchr1.training.grpo import flat_groups, load_for_training, make_rollout_func

    cfg = _cfg(1, tmp_path)
    build_train_data(QS, cfg, tmp_path / "data")
    rows = read_trl_rows(tmp_path / "data")
    model, tok = load_for_training(policy, cfg)
    fn = make_rollout_func(WordOverlapSearcher(DOCS), cfg.agent, temperature=1.0, top_p=1.0, questions=rows,
                           group_size=2, refill_rounds=2, seed=0)
    prompts = [rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2
    out = fn(prompts, SimpleNamespace(model=model, processing_class=tok, state=SimpleNamespace(global_step=0)))
    ros = out["rollout"]
    assert {len(out[k]) for k in ("prompt_ids", "completion_ids", "env_mask", "rollout")} == {4}
    by_prompt = {r["prompt"]: r for r in rows}
    for ro, ids in zip(ros, out["prompt_ids"], strict=True):
        assert ro.question["golden_answers"] == by_prompt[ro.question["question"]]["golden_answers"]
        assert ids == tok(ro.prompt, add_special_tokens=False)["input_ids"]
    proto = AgentProtocol.from_config(cfg.agent)
    rewards = [proto.reward(model_text(r.segments), r.question["golden_answers"]) for r in ros]
    assert len(flat_groups(rewards, 2)) == out["grpo__flat_groups_trained"]
    sampled = out["grpo__flat_groups_sampled"]
    assert out["grpo__refill_rollouts"] >= 2 * sampled * (sampled > 0)
    assert all(ro.question.get("refill") for ro in ros if ro.question["question"] not in prompts)


def test_train_kill_resume_continues_the_step_series(policy, tmp_path):
    from searchr1.training.grpo import ROLLOUTS_DIR, STAGING_DIR, train_grpo

    searcher = WordOverlapSearcher(DOCS)
    build_train_data(QS, _cfg(2, tmp_path), tmp_path / "data")
    work = tmp_path / "train"
    series: list[tuple[int, dict]] = []

    def log(metrics, step):
        series.append((step, dict(metrics)))

    first = train_grpo(policy, tmp_path / "data", searcher, _cfg(1, tmp_path), work, log)
    assert first["steps"] == 1 and first["resumed_from_step"] == 0
    assert [s for s, _ in list_checkpoints(work)] == [1]
    for key in ("reward/mean", "reward/std", "em", "kl", "search/calls_per_rollout",
                "search/invalid_calls_per_rollout", "reflection/ratio", "perf/tokens_per_s",
                "perf/seconds_per_step", "response/length_mean", "response/budget_stop_ratio"):
        assert key in series[-1][1], key
    assert 0 <= series[-1][1]["response/budget_stop_ratio"] <= 1
    assert "response/clipped_ratio" not in series[-1][1]  # TRL's: 1.0 whenever a rollout ends on "</answer>"
    ck = list_checkpoints(work)[-1][1]
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "tokenizer_config.json"):
        assert (ck / name).is_file(), name
    # a kill while writing checkpoint 2 leaves only a staging folder: it must never be picked
    shutil.copytree(ck, work / STAGING_DIR / "checkpoint-2")
    (work / STAGING_DIR / "checkpoint-2" / "model.safetensors").write_bytes(b"half")
    assert [s for s, _ in list_checkpoints(work)] == [1]

    second = train_grpo(policy, tmp_path / "data", searcher, _cfg(2, tmp_path), work, log)
    assert second["resumed_from_step"] == 1 and second["steps"] == 2
    assert [s for s, _ in series] == [1, 2]  # one continuous series, no step repeated
    assert [s for s, _ in list_checkpoints(work)] == [1, 2]
    state = json.loads((list_checkpoints(work)[-1][1] / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    rows = pq.read_table(work / ROLLOUTS_DIR / "step-000002.parquet").to_pylist()
    assert len(rows) == 4 and {r["step"] for r in rows} == {2}
    assert {r["checkpoint"] for r in rows} == {"train"} and {r["benchmark"] for r in rows} == {"single_hop"}
    assert all(r["method"] == "search_agent" for r in rows)
    # killed after the last checkpoint (before the stage published): the resume trains no extra step
    third = train_grpo(policy, tmp_path / "data", searcher, _cfg(2, tmp_path), work, log)
    assert third["steps"] == 2 and third["resumed_from_step"] == 2 and third["history"] == []
    assert [s for s, _ in list_checkpoints(work)] == [1, 2]


def _one_step_updates(policy, tmp_path, monkeypatch, variants: dict[str, dict]) -> tuple[dict, dict]:
    """One GRPO step from the same policy under each variant of `training.grpo`: (weight deltas, responses) per
    variant. Plain SGD at lr 1 without clipping, so the update is the gradient itself (a wrong scale shows); the
    reward is made to vary with the response length, so that the groups have advantages (the untrained policy's
    exact match is 0 everywhere)."""
    from safetensors.torch import load_file

    from searchr1.agent.protocol import AgentProtocol
    from searchr1.training.grpo import ROLLOUTS_DIR, train_grpo

    monkeypatch.setattr(AgentProtocol, "reward", lambda self, text, gold, **terms: len(text) / 100.0)
    base = _cfg(1, tmp_path, max_response=48).model_dump(mode="json")
    build_train_data(QS, config_from_dict(base), tmp_path / "data")
    start = load_file(str(Path(policy) / "model.safetensors"))
    deltas, responses = {}, {}
    for label, grpo in variants.items():
        base["training"]["grpo"].update(grpo)
        work = tmp_path / label
        res = train_grpo(policy, tmp_path / "data", WordOverlapSearcher(DOCS), config_from_dict(base), work,
                         trl_overrides={"optim": "sgd", "learning_rate": 1.0, "max_grad_norm": 1e9})
        trained = load_file(str(Path(res["checkpoints"][0]) / "model.safetensors"))
        deltas[label] = {k: trained[k] - start[k] for k in trained if k in start}
        rows = pq.read_table(work / ROLLOUTS_DIR / "step-000001.parquet").to_pylist()
        responses[label] = [(r["response"], r["gen_tokens"]) for r in rows]
    return deltas, responses


def _same_update(deltas: dict, responses: dict, label: str, baseline: str) -> None:
    import torch

    assert responses[label] == responses[baseline]  # the same rollouts (same seed, same weights)
    assert len({len(r) for r, _ in responses[baseline]}) > 1  # rewards differ, so the step had a gradient
    assert any(d.abs().max() > 0 for d in deltas[baseline].values())
    for name, d in deltas[baseline].items():  # float summation order: an element's error is small against the tensor's
        torch.testing.assert_close(deltas[label][name], d, rtol=1e-3, atol=1e-3 * float(d.abs().max()) + 1e-9,
                                   msg=lambda m, name=name: f"update of {name}: {m}")


def test_micro_batches_of_neighbouring_length_give_the_whole_steps_update(policy, tmp_path, monkeypatch):
    """training.grpo.micro_batch_size: a step's 4 rollouts trained as 2 micro-batches (sorted by length, each cut
    to its own widths, gradients summed) move the weights as one pass over all 4 does."""
    deltas, responses = _one_step_updates(policy, tmp_path, monkeypatch,
                                          {"micro-4": {"micro_batch_size": 4}, "micro-2": {"micro_batch_size": 2}})
    _same_update(deltas, responses, "micro-2", "micro-4")


def test_the_shared_prefix_log_probs_give_trls_update(policy, tmp_path, monkeypatch):
    """training.grpo.shared_prefix: the step scored by `completion_logps` (the rows' common prompt once, the loss's
    tokens only through the LM head) moves the weights as TRL's own log-prob function does, and is really used."""
    from searchr1.training import prefix

    calls = []
    real = prefix.completion_logps
    monkeypatch.setattr(prefix, "completion_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    deltas, responses = _one_step_updates(policy, tmp_path, monkeypatch,
                                          {"trl": {"shared_prefix": False}, "shared": {"shared_prefix": True}})
    assert calls, "the shared-prefix run never called completion_logps"
    _same_update(deltas, responses, "shared", "trl")


def test_warmup_factor_is_verls_ramp_one_step_on():
    import torch
    from transformers import get_constant_schedule_with_warmup

    from searchr1.training.grpo import warmup_factor

    # HF's ramp (the trainer's without the option; verl's is the same): step 0 at 0
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    hf = get_constant_schedule_with_warmup(opt, num_warmup_steps=2)
    lrs = []
    for _ in range(4):
        lrs.append(hf.get_last_lr()[0])
        opt.step()
        hf.step()
    assert lrs == [0.0, 0.5, 1.0, 1.0]
    assert [warmup_factor(k, 2) for k in range(4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    assert [warmup_factor(k, 0) for k in range(2)] == [1.0] * 2


def test_a_warmup_whose_first_step_moves_changes_the_first_checkpoint(policy, tmp_path, monkeypatch):
    """warmup_ratio 0.5 of 2 steps = 1 warmup step: verl's ramp trains step 1 at learning rate 0 (its checkpoint
    is the start's weights), `warmup_first_step_moves` at half the rate. The reward varies with the response
    length, so that the step has a gradient (the untrained policy's exact match is 0 everywhere)."""
    from safetensors.torch import load_file

    from searchr1.agent.protocol import AgentProtocol
    from searchr1.training.grpo import train_grpo

    monkeypatch.setattr(AgentProtocol, "reward", lambda self, text, gold, **terms: len(text) / 100.0)
    start = load_file(str(Path(policy) / "model.safetensors"))
    moved = {}
    for moves in (False, True):
        cfg = _cfg(2, tmp_path).model_dump(mode="json")
        cfg["training"]["grpo"].update(warmup_ratio=0.5, warmup_first_step_moves=moves)
        cfg = config_from_dict(cfg)
        build_train_data(QS, cfg, tmp_path / "data")
        work = tmp_path / f"moves-{moves}"
        train_grpo(policy, tmp_path / "data", WordOverlapSearcher(DOCS), cfg, work)
        first = load_file(str(list_checkpoints(work)[0][1] / "model.safetensors"))
        moved[moves] = sum(int((first[k] != start[k]).sum()) for k in first if k in start)
        lrs = [h["learning_rate"] for h in json.loads((list_checkpoints(work)[-1][1] / "trainer_state.json")
                                                      .read_text())["log_history"] if "learning_rate" in h]
        assert lrs == pytest.approx([5e-6 if moves else 0.0, 1e-5]), lrs
    assert moved[False] == 0 and moved[True] > 0, moved
