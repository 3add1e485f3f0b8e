"""The agent protocol's rules, one by one: what every engine (evaluation, TRL, verl) applies."""

from __future__ import annotations

import pytest
from test_agent_fixtures import CharTokenizer, KeywordSearcher

from searchr1.agent.config import EVALUATION_ONLY_FIELDS, PROTOCOL_FIELDS, AgentConfig, agent_paths, protocol_paths
from searchr1.agent.parsing import ParsedTurn
from searchr1.agent.prompts import SEARCH_R1_INVALID, SEARCH_TOOL_SCHEMA
from searchr1.agent.protocol import QUERY_SEPARATOR, AgentProtocol

TOK = CharTokenizer()  # one token per character: budgets are easy to count


def test_from_config_carries_every_budget():
    cfg = AgentConfig(prompt_style="search_r1", topk=2, max_turns=3, max_new_tokens=7, max_response_tokens=99,
                      max_obs_tokens=11, max_queries_per_call=2, max_query_chars=5)
    p = AgentProtocol.from_config(cfg)
    assert (p.style, p.topk, p.max_turns, p.max_new_tokens, p.max_response_tokens, p.max_obs_tokens,
            p.max_queries_per_call, p.max_query_chars) == ("search_r1", 2, 3, 7, 99, 11, 2, 5)


def test_protocol_fields_are_all_the_protocol_reads():
    """The warm start's cache key is `protocol_paths()`: a field the protocol reads but the key missed would
    reuse a warm start trained on other rules; one the key holds but the protocol ignores would rebuild it."""
    base = AgentConfig()
    engine_only = AgentConfig(temperature=0.3, generator="vllm", batch_size=3, vllm={"cpu_kv_cache_gib": 1.0})
    assert AgentProtocol.from_config(engine_only) == AgentProtocol.from_config(base)
    changed = {"prompt_style": "search_r1", "topk": 5, "max_turns": 9, "max_new_tokens": 9, "max_response_tokens": 9,
               "max_obs_tokens": 9, "max_queries_per_call": 9, "max_query_chars": 9}
    assert set(changed) == set(PROTOCOL_FIELDS)
    for name, value in changed.items():
        assert AgentProtocol.from_config(AgentConfig(**{name: value})) != AgentProtocol.from_config(base), name
    assert protocol_paths() == [f"agent.{f}" for f in PROTOCOL_FIELDS]
    train_key = agent_paths(exclude=EVALUATION_ONLY_FIELDS)  # GRPO's rollouts use the rest (vllm, temperature)
    assert "agent.batch_size" not in train_key and "agent.generator" not in train_key
    assert {"agent.vllm", "agent.temperature", *protocol_paths()} <= set(train_key)


def test_prompt_and_schema_per_style():
    call = AgentProtocol(style="tool_call")
    assert call.tools() == [SEARCH_TOOL_SCHEMA]
    assert [m["role"] for m in call.messages("Who?")] == ["system", "user"]
    prompt = call.render_prompt(TOK, "Who?")
    assert prompt.endswith("Question: Who?<|im_end|>\n<|im_start|>assistant\n")  # opens the assistant turn
    assert "# Tools: search" in prompt  # the schema goes through the chat template
    r1 = AgentProtocol(style="search_r1")
    assert r1.tools() is None and r1.stop_strings == ("</search>", "</answer>")
    assert r1.messages("Who?")[0]["content"].endswith("Question: Who?\n")


def test_observation_layout_separator_and_token_cut():
    hits = KeywordSearcher().search(["Velmora Quist born", "Kelvane Bridge"], 2)
    full = AgentProtocol(max_obs_tokens=10_000).observation(hits, TOK)
    assert full.startswith('Doc 1(Title: "Velmora Quist") Velmora Quist is a painter')
    assert full.count("Doc 1(") == 2 and QUERY_SEPARATOR in full and "Doc 3(" not in full
    cut = AgentProtocol(max_obs_tokens=25).observation(hits, TOK)
    assert cut == full[:25]  # exactly max_obs_tokens tokens of the policy's tokenizer
    assert AgentProtocol().wrap_observation(" x ") == "\n\n<information>x</information>\n\n"


def test_structured_arguments_cleaned_like_text_calls():
    p = AgentProtocol(max_queries_per_call=2, max_query_chars=6)
    assert p.queries_from_arguments({"query_list": ["  a   b ", "", "abcdefgh", "c"]}) == ["a b", "abcdef"]
    assert p.queries_from_arguments({"query_list": "one"}) == ["one"]  # a bare string is one query
    assert p.queries_from_arguments('{"query_list": ["x"]}') == ["x"]  # double-encoded arguments
    assert p.queries_from_arguments({"query_list": 3}) == [] and p.queries_from_arguments(None) == []
    text = p.parse('<tool_call>{"name": "search", "arguments": {"query_list": ["  a   b "]}}</tool_call>')
    assert text.queries == p.queries_from_arguments({"query_list": ["  a   b "]})
    raw = p.parse("<tool_call> who is x </tool_call>")  # the seed's rule: raw text is the query
    assert raw.action == "search" and raw.queries == ["who is"] and raw.invalid == 1


@pytest.mark.parametrize("style,parsed,turn,tokens,hit_limit,expected", [
    ("tool_call", ParsedTurn("answer", answer="x"), 0, 10, False, "answer"),
    ("tool_call", ParsedTurn("answer", answer="x"), 3, 10_000, True, "answer"),  # an answer always ends it
    ("tool_call", ParsedTurn("search", ["q"]), 0, 500, False, "max_tokens"),  # response budget spent
    ("tool_call", ParsedTurn("search", ["q"]), 3, 10, False, "max_turns"),  # last turn: no search after it
    ("tool_call", ParsedTurn("search", ["q"]), 2, 10, False, "search"),
    ("tool_call", ParsedTurn("none"), 0, 10, False, "no_action"),  # the seed's loop ends
    ("tool_call", ParsedTurn("none"), 0, 10, True, "max_tokens"),  # ... labelled by why
    ("search_r1", ParsedTurn("none"), 0, 10, False, "retry"),  # Search-R1 retries with its hint
])
def test_end_of_turn_rules(style, parsed, turn, tokens, hit_limit, expected):
    p = AgentProtocol(style=style, max_turns=4, max_response_tokens=500)
    assert p.decide(parsed, turn, tokens, hit_limit) == expected
    assert p.invalid_action_hint == SEARCH_R1_INVALID


def test_reward_is_exact_match_of_the_last_answer():
    p = AgentProtocol()
    assert p.reward("<answer> Beijing </answer> ... <answer>The Tarnhollow</answer>", ["tarnhollow"]) == 1.0
    assert p.reward("<answer>Tarnhollow</answer> then <answer>Quenby</answer>", ["Tarnhollow"]) == 0.0
    assert p.reward("no answer at all: Tarnhollow", ["Tarnhollow"]) == 0.0
    assert p.reward("<answer>Quenby</answer>", ["Tarnhollow"], format_reward=0.1) == 0.1  # a named deviation
    assert p.reward("Tarnhollow", ["Tarnhollow"], format_reward=0.1) == 0.0  # no answer, no format credit


def test_invalid_call_penalty_takes_off_only_a_right_answer_beside_a_malformed_call():
    p = AgentProtocol()
    good = '<tool_call>{"name": "search", "arguments": {"query_list": ["Quenby birthplace"]}}</tool_call>'
    bad = '<tool_call>{"name": "verify", "arguments": {"query_list": ["Quenby"]}}</tool_call>'
    unreadable = "<tool_call>Quenby was born in Tarnhollow</tool_call>"
    right = "<answer>Tarnhollow</answer>"
    for malformed in (bad, unreadable, good + bad):
        assert p.reward(malformed + right, ["Tarnhollow"], invalid_call_penalty=0.2) == pytest.approx(0.8)
        assert p.reward(malformed + right, ["Tarnhollow"]) == 1.0  # Search-R1's EM does not see it
        assert p.reward(malformed + "<answer>Quenby</answer>", ["Tarnhollow"], invalid_call_penalty=0.2) == 0.0
    assert p.reward(good + right, ["Tarnhollow"], invalid_call_penalty=0.2) == 1.0
    assert p.reward(bad + "<answer>Quenby</answer>", ["Tarnhollow"], format_reward=0.1,
                    invalid_call_penalty=0.2) == 0.1  # a wrong answer keeps its format credit
    search_r1 = AgentProtocol(style="search_r1")  # the <search> style's malformed call: an empty query
    empty = "<search> </search>" + right
    assert search_r1.reward(empty, ["Tarnhollow"], invalid_call_penalty=0.2) == pytest.approx(0.8)
    assert search_r1.reward("<search>Quenby</search>" + right, ["Tarnhollow"], invalid_call_penalty=0.2) == 1.0
