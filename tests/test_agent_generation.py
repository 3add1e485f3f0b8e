"""The real policy model (SmolLM2-135M) through the rollout loop: slow tests."""

from pathlib import Path

import pytest
from test_agent_fixtures import QUESTIONS, KeywordSearcher

from searchr1.agent.config import AgentConfig, PolicyConfig
from searchr1.agent.generators import TransformersGenerator
from searchr1.agent.rollout import run_agent

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def policy():
    from searchr1.models import ModelNotFoundError, load_policy, resolve_policy

    try:
        path = resolve_policy(PolicyConfig(), ROOT / "artifacts")
    except ModelNotFoundError as exc:
        pytest.skip(f"policy model not installed: {exc}")
    model, tok = load_policy(path, PolicyConfig())
    model.eval()
    return model, tok


def test_kv_cache_reuse_gives_the_same_rollouts(policy):
    """Batched + cached (the shared prompt prefix computed once) == the same without the shared prefix ==
    batched re-encoded == one at a time, over several turns with tool text of different lengths between
    them (Search-R1 style: a turn without action gets a hint)."""
    model, tok = policy
    cfg = AgentConfig(prompt_style="search_r1", max_turns=3, max_new_tokens=8, batch_size=4)
    questions = QUESTIONS[:4]
    runs = {}
    for name, reuse, share, batch in (("cached", True, True, 4), ("unshared", True, False, 4),
                                      ("recomputed", False, False, 4), ("single", True, True, 1)):
        gen = TransformersGenerator(model, tok, reuse_cache=reuse, share_prefix=share)
        runs[name] = run_agent(questions, gen, KeywordSearcher(), cfg.model_copy(update={"batch_size": batch}),
                               progress=False)
    assert max(r.turns for r in runs["cached"]) >= 2  # the cache really was carried across turns
    shared = TransformersGenerator(model, tok)
    shared.start([r.prompt for r in runs["cached"]])  # the prefix really was computed once and kept
    assert len(shared.history[0]) >= TransformersGenerator.MIN_SHARED_PREFIX and shared._cache is not None
    for name in ("unshared", "recomputed", "single"):
        assert [r.response for r in runs[name]] == [r.response for r in runs["cached"]], name
    for r in runs["cached"]:
        assert r.gen_tokens <= cfg.max_turns * cfg.max_new_tokens
        assert r.stop_reason in ("answer", "max_turns", "max_tokens", "no_action")


def test_tool_call_style_with_the_real_template(policy):
    model, tok = policy
    cfg = AgentConfig(max_turns=2, max_new_tokens=16, batch_size=2)
    rollouts = run_agent(QUESTIONS[:2], TransformersGenerator(model, tok), KeywordSearcher(), cfg, progress=False)
    for r in rollouts:
        assert "<tools>" in r.prompt and '"query_list"' in r.prompt and "You are a helpful and harmless" in r.prompt
        assert r.segments[0]["role"] == "assistant" and 0 < r.gen_tokens <= 32
