"""TRL GRPO with the search tool on the real policy: the tool mask on a real rollout, and kill/resume.

Slow (loads SmolLM2-135M): 3 GRPO steps of 2 prompts x 2 completions, <= 32 completion tokens.
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


def _cfg(steps: int, tmp: Path, max_completion: int = 32, max_obs: int = 48) -> PipelineConfig:
    return config_from_dict({
        "run": {"artifacts_dir": str(tmp / "artifacts")},
        "agent": {"max_turns": 2, "max_obs_tokens": max_obs, "topk": 1},
        "training": {"grpo": {"steps": steps, "prompts_per_step": 2, "group_size": 2, "save_every": 1,
                              "max_completion_length": max_completion, "learning_rate": 1e-5}}})


@pytest.fixture(scope="module")
def policy():
    from searchr1.models import resolve_policy

    repo_artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    return resolve_policy(PipelineConfig().policy, repo_artifacts)


def test_tool_mask_covers_exactly_the_retrieved_text(policy, tmp_path, monkeypatch):
    """A rollout whose first turn calls the tool: the real tool runs, the real model continues after it,
    and TRL's tool_mask is 0 on exactly the tool-response tokens."""
    from datasets import Dataset

    from searchr1.training import grpo

    cfg = _cfg(1, tmp_path, max_completion=100, max_obs=24)  # the call, the cut passage, a few tokens after it
    build_train_data(QS, cfg, tmp_path / "data")
    model, tok = grpo.load_for_training(policy, cfg)
    tool = grpo.make_search_tool(WordOverlapSearcher(DOCS), 1, 24, tok)
    _, Trainer = grpo._trainer_classes()
    reward = grpo.SearchR1Reward(tmp_path / "w", 0.0, tok, [tok.eos_token_id])
    trainer = Trainer(model=model, reward_funcs=[reward], args=grpo.grpo_args(cfg, tmp_path / "w"),
                      train_dataset=Dataset.from_list(grpo.read_trl_rows(tmp_path / "data")), processing_class=tok,
                      tools=[tool])
    call = ('<tool_call>\n{"name": "search", "arguments": {"query_list": ["Baneix Jeseimae 3 born"]}}\n'
            '</tool_call><|im_end|>')
    scripted = tok(call, add_special_tokens=False)["input_ids"]
    real_generate = trainer._generate_single_turn
    turns = []

    def first_turn_scripted(prompt_ids, *args, **kwargs):
        turns.append(len(prompt_ids))
        if len(turns) == 1:  # the model's first turn: a search call
            return [list(scripted) for _ in prompt_ids], None
        return real_generate(prompt_ids, *args, **kwargs)  # after the tool: the real model

    monkeypatch.setattr(trainer, "_generate_single_turn", first_turn_scripted)
    trainer.model.eval()
    prompts = [r["prompt"] for r in grpo.read_trl_rows(tmp_path / "data")[:2]]
    trainer._sync_tool_dicts = [{"search": tool} for _ in prompts]  # TRL builds these per batch in _prepare_inputs
    trainer._async_tool_dicts = [{} for _ in prompts]
    _, completion_ids, tool_mask, completions, *_ = trainer._generate(prompts)
    assert len(turns) == 2, f"no post-tool generation ran: {completions}"
    retrieved = tool(["Baneix Jeseimae 3 born"]).strip()  # exactly what the tool returned (cut to 24 tokens)
    assert retrieved.startswith("Doc 1(Title:")
    for ids, mask, msgs in zip(completion_ids, tool_mask, completions, strict=True):
        assert len(ids) == len(mask)
        masked = tok.decode([t for t, m in zip(ids, mask, strict=True) if m == 0])
        kept = tok.decode([t for t, m in zip(ids, mask, strict=True) if m == 1])
        assert retrieved in masked and "<tool_response>" in masked  # the retrieved passage is masked
        assert retrieved not in kept  # and none of it is trained on
        assert kept.startswith("<tool_call>") and "Baneix Jeseimae 3 born" in kept
        assert ids[: len(scripted)] == scripted and all(mask[: len(scripted)])
        assert any(m == 1 for m in mask[len(scripted):]) or len(ids) == len(mask)
        assert [m["role"] for m in msgs][:2] == ["assistant", "tool"]
        assert grpo.rollout_stats(msgs)["search_calls"] == 1


def test_train_kill_resume_continues_the_step_series(policy, tmp_path):
    from searchr1.training.grpo import ROLLOUTS_DIR, STAGING_DIR, train_grpo

    searcher = WordOverlapSearcher(DOCS)
    build_train_data(QS, _cfg(2, tmp_path), tmp_path / "data")
    work = tmp_path / "train"
    series: list[tuple[int, dict]] = []

    def log(metrics, step):
        series.append((step, dict(metrics)))

    first = train_grpo(policy, tmp_path / "data", searcher, _cfg(2, tmp_path), work, log)
    assert first["steps"] == 2 and first["resumed_from_step"] == 0
    assert [s for s, _ in list_checkpoints(work)] == [1, 2]
    for key in ("reward/mean", "reward/std", "em", "kl", "search/calls_per_rollout",
                "search/invalid_calls_per_rollout", "reflection/ratio", "perf/tokens_per_s",
                "perf/seconds_per_step", "response/length_mean"):
        assert key in series[-1][1], key
    ck = list_checkpoints(work)[-1][1]
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "tokenizer_config.json"):
        assert (ck / name).is_file(), name
    # a kill while writing checkpoint 3 leaves only a staging folder: it must never be picked
    shutil.copytree(ck, work / STAGING_DIR / "checkpoint-3")
    (work / STAGING_DIR / "checkpoint-3" / "model.safetensors").write_bytes(b"half")
    assert [s for s, _ in list_checkpoints(work)] == [1, 2]

    second = train_grpo(policy, tmp_path / "data", searcher, _cfg(3, tmp_path), work, log)
    assert second["resumed_from_step"] == 2 and second["steps"] == 3
    assert [s for s, _ in series] == [1, 2, 3]  # one continuous series, no step repeated
    assert [s for s, _ in list_checkpoints(work)] == [1, 2, 3]
    state = json.loads((list_checkpoints(work)[-1][1] / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    rows = pq.read_table(work / ROLLOUTS_DIR / "step-000003.parquet").to_pylist()
    assert len(rows) == 4 and {r["step"] for r in rows} == {3}
    assert {r["checkpoint"] for r in rows} == {"train"} and {r["benchmark"] for r in rows} == {"single_hop"}
    assert all(r["method"] == "search_agent" for r in rows)
    # killed after the last checkpoint (before the stage published): the resume trains no extra step
    third = train_grpo(policy, tmp_path / "data", searcher, _cfg(3, tmp_path), work, log)
    assert third["steps"] == 3 and third["resumed_from_step"] == 3 and third["history"] == []
    assert [s for s, _ in list_checkpoints(work)] == [1, 2, 3]
