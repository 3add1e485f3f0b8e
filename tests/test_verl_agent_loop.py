"""verl 0.9.1's own agent-loop machinery runs our loop, tool and reward against a live retrieval server.

verl's config is composed from the overrides `render_verl` writes; verl's `AgentLoopWorker` loads our tool
from the tool config file and our loop from the agent-loop file, instantiates the loop the training row
names and pads its output; a scripted stand-in for verl's LLM server plays the model (token ids).
"""

from __future__ import annotations

import pytest
from test_verl_fixtures import (
    QUESTION,
    ScriptedServer,
    live_server,
    make_worker,
    policy_tokenizer,
    run_verl_loop,
    unpad,
)

from searchr1.agent.protocol import tool_glue, turn_end_text
from searchr1.retrieval.client import RetrievalClient

pytestmark = pytest.mark.slow  # a retrieval server subprocess, verl's imports (~10 s)

SEARCH = ('<think>I need to search.</think>\n<tool_call>\n{"name": "search", "arguments": '
          '{"query_list": ["Velmora Quist born"]}}\n</tool_call> and text after the stop string')
ANSWER = "<think>Found it.</think>\n<answer> Tarnhollow </answer><|im_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return policy_tokenizer()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("retrieval")) as base:
        yield base


@pytest.fixture(scope="module")
def tool_call(tmp_path_factory, url):
    return make_worker(tmp_path_factory.mktemp("tool_call"), url, "tool_call")


@pytest.fixture(scope="module")
def search_r1(tmp_path_factory, url):
    return make_worker(tmp_path_factory.mktemp("search_r1"), url, "search_r1")


def play(worker, row, tokenizer, turns: list[str]):
    """Run one trajectory with these model turns; (server, prompt ids, response ids, mask, extra fields)."""
    worker.llm_client = server = ScriptedServer(tokenizer, turns)
    out = run_verl_loop(worker, row)
    return (server, *unpad(out), out.extra_fields)


def runs(ids: list[int], mask: list[int], value: int) -> list[list[int]]:
    """The maximal stretches of `ids` whose mask is `value`, in order."""
    out, cur = [], []
    for t, m in zip(ids, mask, strict=True):
        if m == value:
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def test_search_then_answer_tool_text_masked_and_rewarded(tool_call, tokenizer, url):
    from searchr1.training.verl_plugins.reward import compute_score

    worker, row, proto = tool_call
    server, prompt, response, mask, extra = play(worker, row, tokenizer, [SEARCH, ANSWER])
    assert prompt == tokenizer(proto.render_prompt(tokenizer, QUESTION["question"]),
                               add_special_tokens=False)["input_ids"]
    # the protocol's per-turn cap and stop strings reach the server; each turn continues the whole history
    assert [r["sampling_params"]["max_tokens"] for r in server.requests] == [proto.max_new_tokens] * 2
    assert server.requests[0]["sampling_params"]["stop"] == ["</tool_call>", "</answer>"]
    # model tokens (mask 1): each turn cut at the token completing a stop string (what followed, even the
    # end-of-turn token, was never part of the turn); tool tokens (mask 0) in between
    model, fed = runs(response, mask, 1), runs(response, mask, 0)
    assert server.requests[1]["prompt_ids"] == prompt + model[0] + fed[0]
    assert [tokenizer.decode(r) for r in model] == [SEARCH[:SEARCH.index("</tool_call>") + 12],
                                                    ANSWER.removesuffix("<|im_end|>")]
    assert len(fed) == 1 and mask == [1] * len(model[0]) + [0] * len(fed[0]) + [1] * len(model[1])
    # the tool response holds the passages: the protocol's observation of the live server's hits
    with RetrievalClient(url) as client:
        observation = proto.observation(client.search(["Velmora Quist born"], proto.topk), tokenizer)
    assert "Velmora Quist is a painter born in the city of Tarnhollow" in observation
    assert len(tokenizer(observation, add_special_tokens=False)["input_ids"]) <= proto.max_obs_tokens
    before, after = tool_glue(tokenizer)
    assert tokenizer.decode(fed[0]) == before + observation + after  # turn 1 did not end with <|im_end|>
    assert before.startswith(turn_end_text(tokenizer))
    assert (extra["search_calls"], extra["search_errors"], extra["stop_reason"]) == (1, 0, "answer")
    # the reward: exact match of the last answer the model wrote
    text = tokenizer.decode(response, skip_special_tokens=True)
    gt = row["reward_model"]["ground_truth"]
    assert compute_score(row["data_source"], text, gt, extra_info=extra) == 1.0
    assert compute_score(row["data_source"], text, {"target": ["Quenby"]}, extra_info=extra) == 0.0


def test_raw_text_call_is_searched_by_the_seed_rule(tool_call, tokenizer):
    worker, row, _ = tool_call
    _, _, response, mask, extra = play(worker, row, tokenizer,
                                       ["<tool_call> Velmora Quist born </tool_call>", ANSWER])
    assert (extra["search_calls"], extra["stop_reason"]) == (1, "answer")
    assert "painter born in the city of Tarnhollow" in tokenizer.decode(runs(response, mask, 0)[0])


def test_turn_budget_and_per_turn_cap(tool_call, tokenizer):
    worker, row, proto = tool_call
    server, _, _, mask, extra = play(worker, row, tokenizer, [SEARCH] * 5)
    # max_turns=3: two searches, then a last turn whose call is not executed
    assert len(server.requests) == proto.max_turns and extra["search_calls"] == proto.max_turns - 1
    assert extra["stop_reason"] == "max_turns" and len(runs(mask, mask, 1)) == proto.max_turns
    rambling = "I am not sure what to do here, so I will keep writing words " * 20
    server, _, _, mask, extra = play(worker, row, tokenizer, [rambling])
    assert sum(mask) == proto.max_new_tokens and extra["stop_reason"] == "max_tokens"


def test_retrieval_failure_is_shown_and_counted(tool_call, tokenizer):
    from searchr1.training.verl_plugins.tool import SearchTool

    worker, row, proto = tool_call
    live = worker.tools
    dead = SearchTool({**live[0].config, "base_url": "http://127.0.0.1:9", "retries": 0})
    worker.tools = [dead]
    try:
        _, _, response, mask, extra = play(worker, row, tokenizer, [SEARCH, ANSWER])
    finally:
        worker.tools = live
    assert (extra["search_calls"], extra["search_errors"]) == (1, 1) and dead.stats.errors == 1
    assert "Error executing tool 'search'" in tokenizer.decode(runs(response, mask, 0)[0])


def test_search_r1_style_retry_search_information(search_r1, tokenizer):
    from searchr1.training.verl_plugins.reward import compute_score

    worker, row, proto = search_r1
    turns = ["<think>Let me think.</think>", "<search> Velmora Quist born </search> more", ANSWER]
    server, prompt, response, mask, extra = play(worker, row, tokenizer, turns)
    assert server.requests[0]["sampling_params"]["stop"] == ["</search>", "</answer>"]
    assert prompt == tokenizer(proto.render_prompt(tokenizer, QUESTION["question"]),
                               add_special_tokens=False)["input_ids"]
    hint, information = (tokenizer.decode(r) for r in runs(response, mask, 0))
    assert hint == proto.invalid_action_hint  # Search-R1's retry, fed (mask 0)
    assert information.startswith("\n\n<information>Doc 1(Title: \"Velmora Quist\")") and \
        information.endswith("</information>\n\n")
    assert [tokenizer.decode(r) for r in runs(response, mask, 1)][1] == "<search> Velmora Quist born </search>"
    assert (extra["search_calls"], extra["stop_reason"]) == (1, "answer")
    # the hint names <answer> tags: only the model's own text is scored
    assert compute_score(row["data_source"], tokenizer.decode(response, skip_special_tokens=True),
                         row["reward_model"]["ground_truth"], extra_info=extra) == 1.0
