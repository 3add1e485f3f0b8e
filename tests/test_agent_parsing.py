import json
import random
import time

import pytest

from searchr1.agent.parsing import parse_queries, parse_turn


def call(payload) -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return f"<tool_call>\n{body}\n</tool_call>"


def test_seed_rule_json_naming_search():
    t = parse_turn("<think>hm</think>" + call({"name": "search", "arguments": {"query_list": ["a", "b"]}}))
    assert (t.action, t.queries, t.calls, t.invalid) == ("search", ["a", "b"], 1, 0)


@pytest.mark.parametrize(("body", "issue"), [
    ("who wrote 1984", "invalid_json"),
    ('{"name": "search", "arguments": {"query_list": ["x"]', "invalid_json"),
    ('["a", "b"]', "json_not_object"),
    ("5", "json_not_object"),                        # the seed's parse_queries would crash here
    ('{"name": "calculator", "arguments": {}}', "not_search_tool"),
])
def test_anything_else_is_the_raw_query(body, issue):
    t = parse_turn(call(body))
    assert t.action == "search" and t.queries == [" ".join(body.split())]
    assert t.invalid == 1 and t.issues[issue] == 1


def test_odd_cases_are_counted():
    t = parse_turn(call({"name": "search", "arguments": {"query_list": ["", "  ", 7, "ok"]}}))
    assert t.queries == ["ok"] and t.issues["empty_query"] == 2 and t.issues["non_string_query"] == 1
    t = parse_turn(call({"name": "search", "arguments": {"query_list": "single string"}}))
    assert t.queries == ["single string"] and t.issues["query_list_not_list"] == 1
    t = parse_turn(call({"name": "search", "arguments": {}}))
    assert t.action == "none" and t.invalid == 1 and t.issues["no_queries"] == 1
    t = parse_turn(call({"name": "search", "arguments": json.dumps({"query_list": ["q"]})}))
    assert t.queries == ["q"] and t.issues["arguments_as_string"] == 1
    t = parse_turn(call({"name": "search", "arguments": {"query_list": ["x" * 5000]}}), max_query_chars=100)
    assert t.queries == ["x" * 100] and t.issues["long_query"] == 1
    t = parse_turn(call({"name": "search", "arguments": {"query_list": list("abcdef")}}), max_queries=3)
    assert t.queries == ["a", "b", "c"] and t.issues["too_many_queries"] == 1


def test_several_calls_unclosed_and_answers():
    two = call({"name": "search", "arguments": {"query_list": ["a"]}}) + call("b")
    t = parse_turn(two)
    assert t.queries == ["a", "b"] and t.calls == 2 and t.invalid == 1 and t.issues["several_calls"] == 1
    t = parse_turn("<tool_call>{\"name\": \"search\", \"arguments\": {\"query_list\": [\"a\"]}}")
    assert t.action == "none" and t.calls == 1 and t.invalid == 1 and t.issues["unclosed_call"] == 1
    t = parse_turn("<think>x</think><answer> Paris </answer>")
    assert (t.action, t.answer, t.calls) == ("answer", "Paris", 0)
    t = parse_turn("<answer> Par")
    assert t.action == "none" and t.issues["unclosed_answer"] == 1
    # a call wins over an answer in the same turn (the seed searches whenever a call is present)
    assert parse_turn("<answer>x</answer>" + call("q")).action == "search"
    assert parse_turn("plain text, no tags").action == "none"


def test_search_r1_style():
    t = parse_turn("<think>x</think><search> capital of France </search>", "search_r1")
    assert (t.action, t.queries, t.invalid) == ("search", ["capital of France"], 0)
    t = parse_turn("<search>   </search>", "search_r1")
    assert t.action == "none" and t.invalid == 1
    t = parse_turn(call("q"), "search_r1")  # the other style's tags are just text here
    assert t.action == "none" and t.calls == 0
    with pytest.raises(ValueError, match="prompt style"):
        parse_turn("x", "xml")  # a programming error, not model output


def test_parse_queries_never_raises_on_deep_json():
    queries, ok = parse_queries("[" * 100_000 + "]" * 100_000)
    assert not ok and len(queries) == 1


ALPHABET = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<search>", "</search>", "<think>",
            '{"name": "search", "arguments": {"query_list": [', '"q"', "]}}", "{", "}", "[", "]", '"', "\\",
            ",", ":", "null", "\n", " ", "\x00", "é", "🙂", "<", ">", "/", "name", "search", "\ud800"]


@pytest.mark.parametrize("seed", range(5))
def test_fuzz_parser_never_raises(seed):
    rng = random.Random(seed)
    for _ in range(400):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60)))
        for style in ("tool_call", "search_r1"):
            t = parse_turn(text, style, max_queries=3, max_query_chars=64)
            assert t.action in ("search", "answer", "none")
            assert len(t.queries) <= 3 and all(0 < len(q) <= 64 for q in t.queries)
            assert 0 <= t.invalid <= t.calls


def test_adversarial_sizes_do_not_hang():
    # Many openings without closings is quadratic for a lazy regex; the parser is linear.
    cases = ["<tool_call>" * 200_000, "<answer>" * 200_000, "<tool_call>" + "x" * 2_000_000 + "</tool_call>",
             call({"name": "search", "arguments": {"query_list": ["q"] * 100_000}}),
             "<tool_call>" + "[" * 50_000 + "</tool_call>"]
    start = time.monotonic()
    for text in cases:
        parse_turn(text)
    assert time.monotonic() - start < 30  # a generous bound: only catches a hang, not a timing
