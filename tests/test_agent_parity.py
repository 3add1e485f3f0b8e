"""One question through the three engines under the agent protocol, with the real policy tokenizer:

- evaluation: `searchr1.agent.rollout.run_agent` (the prompt `AgentProtocol.render_prompt` renders);
- TRL: `searchr1.training.grpo.make_rollout_func` (TRL's rollout_func) and the `search` tool function;
- verl: verl 0.9.1's AgentLoopWorker running our agent loop and our `SearchTool` against the live server.
Same prompt token ids; the same observation text for the same hits; for the same model turns the same
token stream and loss mask; the same reward for the same responses.
"""

from __future__ import annotations

import asyncio

import pytest
from test_verl_fixtures import (
    QUESTION,
    ScriptedServer,
    ScriptedTurns,
    live_server,
    make_worker,
    policy_path,
    policy_tokenizer,
    run_verl_loop,
    small_verl_config,
    unpad,
)

from searchr1.agent.rollout import run_agent
from searchr1.retrieval.client import RetrievalClient
from searchr1.rewards import score
from searchr1.training.search_tool import make_search_tool

pytestmark = pytest.mark.slow  # a retrieval server subprocess, verl's imports, a tiny model for TRL's rollout

TURNS = {
    "tool_call": ['<think>Search.</think>\n<tool_call>\n{"name": "search", "arguments": {"query_list": '
                  '["Velmora Quist born", "Tarnhollow"]}}\n</tool_call> ignored', "<answer> Tarnhollow </answer>"],
    "search_r1": ["<think>Hmm.</think>", "<search> Velmora Quist born </search>", "<answer> Tarnhollow </answer>"],
}
QUERIES = ["Velmora Quist born", "Tarnhollow"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(the policy tokenizer, a live retrieval server's base URL)"""
    with live_server(tmp_path_factory.mktemp("retrieval")) as base:
        yield policy_tokenizer(), base


@pytest.fixture(scope="module", params=["tool_call", "search_r1"])
def engines(request, tmp_path_factory, world):
    """For one prompt style: the verl worker and row, the protocol, and the evaluation rollout of TURNS."""
    (tokenizer, url), style = world, request.param
    worker, row, proto = make_worker(tmp_path_factory.mktemp(style), url, style)
    with RetrievalClient(url) as client:
        rollout = run_agent([QUESTION], ScriptedTurns(tokenizer, TURNS[style]), client,
                            small_verl_config(policy_path(), style).agent, progress=False)[0]
    return style, worker, row, proto, rollout


def test_same_prompt_token_ids(engines, world):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from searchr1.training.grpo import make_rollout_func

    (style, worker, row, proto, rollout), (tokenizer, url) = engines, world
    evaluation = tokenizer(rollout.prompt, add_special_tokens=False)["input_ids"]
    assert rollout.prompt == proto.render_prompt(tokenizer, QUESTION["question"])
    # TRL: its rollout_func, sampling from a (tiny, random) model being trained
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    trainer = type("Trainer", (), {"model": model, "processing_class": tokenizer,
                                   "state": type("State", (), {"global_step": 0})()})()
    cfg = small_verl_config(policy_path(), style)
    with RetrievalClient(url) as client:
        trl = make_rollout_func(client, cfg.agent, temperature=1.0, top_p=1.0)([QUESTION["question"]], trainer)
    worker.llm_client = ScriptedServer(tokenizer, TURNS[style])
    verl_prompt = unpad(run_verl_loop(worker, row))[0]
    assert trl["prompt_ids"][0] == evaluation == verl_prompt
    assert worker.llm_client.requests[0]["prompt_ids"] == evaluation


def test_same_observation_for_the_same_hits(engines, world):
    (_, worker, _, proto, _), (tokenizer, url) = engines, world
    with RetrievalClient(url) as client:
        expected = proto.observation(client.search(QUERIES, proto.topk), tokenizer)
        trl_tool = make_search_tool(client, proto, tokenizer)(QUERIES)
    search = next(t for t in worker.tools if t.name == "search")

    async def verl_call():
        instance, _ = await search.create()
        return (await search.execute(instance, {"query_list": QUERIES}))[0].text

    assert trl_tool == asyncio.run(verl_call()) == expected
    assert "Velmora Quist is a painter" in expected


def test_same_token_stream_mask_and_reward(engines, world, tmp_path):
    from searchr1.training.grpo import SearchR1Reward
    from searchr1.training.verl_plugins.reward import compute_score

    (style, worker, row, proto, rollout), (tokenizer, _) = engines, world
    worker.llm_client = ScriptedServer(tokenizer, TURNS[style])
    out = run_verl_loop(worker, row)
    _, response, mask = unpad(out)
    extra = out.extra_fields
    # evaluation's (and so TRL's) completion and loss mask == verl's response and response_mask, token for token
    assert rollout.completion_ids == response and rollout.completion_mask == mask
    assert 0 in mask and rollout.search_calls == extra["search_calls"] == 1
    assert rollout.stop_reason == extra["stop_reason"] == "answer"
    # the same reward for the same responses: right, wrong answer, no answer
    for golden, want in ((["Tarnhollow"], 1.0), (["Quenby"], 0.0)):
        evaluation = score(rollout.prediction, golden)["em"]
        trl = SearchR1Reward(tmp_path, proto)(
            [QUESTION["question"]], [""], rollout=[rollout], golden_answers=[golden], question_id=["q0"],
            benchmark=["single_hop"])[0]
        verl = compute_score(row["data_source"], tokenizer.decode(response, skip_special_tokens=True),
                             {"target": golden}, extra_info=extra)
        assert evaluation == trl == verl == want
    unanswered = {**extra, "model_text": "<think>Hmm.</think>"}
    assert compute_score(row["data_source"], "", {"target": ["Tarnhollow"]}, extra_info=unanswered) == \
        proto.reward("<think>Hmm.</think>", ["Tarnhollow"]) == 0.0
