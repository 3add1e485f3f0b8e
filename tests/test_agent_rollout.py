from pathlib import Path

import pytest
from test_agent_fixtures import QUESTIONS, CharTokenizer, KeywordSearcher, ScriptedGenerator

from searchr1.agent.config import AgentConfig
from searchr1.agent.generators import BatchedTurns, TurnOutput, cut_turn
from searchr1.agent.prompts import SEARCH_R1_INVALID
from searchr1.agent.protocol import tool_glue
from searchr1.agent.rollout import run_agent, run_baseline
from searchr1.agent.trace import ROLLOUT_SCHEMA, model_text, read_rollouts, write_rollouts


def test_search_then_answer_rollout_is_kept_whole():
    searcher = KeywordSearcher()
    gen = ScriptedGenerator()
    cfg = AgentConfig(batch_size=4, topk=2, max_new_tokens=400, max_obs_tokens=10_000)
    rollouts = run_agent(QUESTIONS[:6], gen, searcher, cfg, progress=False)
    assert [len(c) for c in gen.generate_calls] == [4, 4, 2, 2]  # batches of 4 and 2, two turns each
    assert len(searcher.calls) == 2  # one retrieval call per batch turn, all queries together
    first = rollouts[0]
    assert (first.turns, first.search_calls, first.invalid_calls, first.stop_reason) == (2, 1, 0, "answer")
    assert first.queries == ["In which city was Velmora Quist born?"]
    assert first.doc_ids == ["d0", "d15"]  # Velmora Quist, then Tobin Marsh (mentions her)
    assert [s["role"] for s in first.segments] == ["assistant", "tool", "assistant"]
    tool = first.segments[1]["text"]
    assert tool.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\nDoc 1(Title: \"Velmora Quist\")")
    assert tool.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert first.prediction == "Velmora Quist"
    assert "<tool_response>" not in model_text(first.segments)
    assert first.response == "".join(s["text"] for s in first.segments)
    # the generator saw the template's tool glue without a second <|im_end|> (the model ended its turn)
    assert "<|im_end|><|im_end|>" not in gen.history[0]


class StaggeredStream(ScriptedGenerator):
    """A turn stream like vLLM's: row r's turn t ends (r + t) % 3 + 1 steps after it was submitted, so rows finish
    turns at different steps and the slow rows of one turn are not those of the next; it records, per step, which
    rows were running."""

    def __init__(self, script=None):
        super().__init__(*(() if script is None else (script,)))
        self.running: dict[int, int] = {}  # row -> steps left
        self.log: list[tuple[int, ...]] = []

    def start(self, prompts):
        assert not self.running
        return super().start(prompts)

    def submit(self, row, max_new_tokens, stop):
        assert row not in self.running
        self.running[row] = (row + self.turn[row]) % 3 + 1
        self._budget = max_new_tokens

    @property
    def busy(self):
        return bool(self.running)

    def step(self) -> list[tuple[int, TurnOutput]]:
        self.log.append(tuple(sorted(self.running)))
        ended = sorted(r for r in self.running if self.running[r] == 1)
        for r in self.running:
            self.running[r] -= 1
        for r in ended:
            del self.running[r]
        return [(r, out) for r, out in zip(ended, ScriptedGenerator.generate(self, ended, self._budget, ()),
                                           strict=True)] if ended else []


def test_a_streaming_generator_takes_a_rows_next_turn_while_others_decode_and_gives_the_same_rollouts():
    """Continuous batching across turns (vLLM) and the turn-synchronous loop (`BatchedTurns`) run the same rules:
    the same rollouts, searches and completions; only when each row's next turn starts differs."""
    cfg = AgentConfig(batch_size=6, topk=2, max_new_tokens=400, max_obs_tokens=10_000)
    stream, searcher = StaggeredStream(), KeywordSearcher()
    got = run_agent(QUESTIONS[:6], stream, searcher, cfg, progress=False)
    ref = run_agent(QUESTIONS[:6], BatchedTurns(ScriptedGenerator()), KeywordSearcher(), cfg, progress=False)
    for a, b in zip(got, ref, strict=True):
        assert (a.segments, a.queries, a.doc_ids, a.turns, a.stop_reason) == (b.segments, b.queries, b.doc_ids,
                                                                                b.turns, b.stop_reason)
        assert (a.completion_ids, a.completion_mask) == (b.completion_ids, b.completion_mask)
    # rows 0 and 3 end their first turn at step 1 and are running their second at step 2, beside rows still
    # in their first turn
    assert stream.log[0] == (0, 1, 2, 3, 4, 5) and stream.log[1] == (0, 1, 2, 3, 4, 5)
    # two turns of 3 steps each for the turn-synchronous loop; here no row takes more than 5 (rows 1 and 4: 2 + 3)
    assert len(stream.log) == 5
    assert len(searcher.calls) == 3  # the rows whose turns ended in a step search together, one call a step


def test_rows_round_trip_through_the_rollout_schema(tmp_path: Path):
    rollouts = run_agent(QUESTIONS[:3], ScriptedGenerator(), KeywordSearcher(), AgentConfig(), progress=False)
    rows = [r.to_row("base", 0, "search_agent", "single_hop") for r in rollouts]
    write_rollouts(rows, tmp_path / "r.parquet")
    table = read_rollouts([tmp_path / "r.parquet"])
    assert table.schema == ROLLOUT_SCHEMA and table.num_rows == 3
    assert table.column("segments").to_pylist()[0][1]["role"] == "tool"


def test_max_turns_tokens_and_no_action():
    always_search = ScriptedGenerator(lambda h, t: '<tool_call>{"name": "search", "arguments": '
                                                   '{"query_list": ["Quenby"]}}</tool_call>')
    r = run_agent(QUESTIONS[:1], always_search, KeywordSearcher(), AgentConfig(max_turns=3), progress=False)[0]
    assert (r.turns, r.search_calls, r.stop_reason, r.prediction) == (3, 3, "max_turns", None)
    assert len(r.queries) == 2  # the last turn's call is not executed: no turn is left to read it
    budget = AgentConfig(max_turns=4, max_response_tokens=300, max_obs_tokens=200)
    r = run_agent(QUESTIONS[:1], always_search, KeywordSearcher(), budget, progress=False)[0]
    assert r.stop_reason == "max_tokens" and r.response_tokens >= 300
    tool_texts = [s["text"] for s in r.segments if s["role"] == "tool"]
    assert all(len(t) < 200 + 200 for t in tool_texts)  # results truncated to max_obs_tokens (+ the glue)
    silent = ScriptedGenerator(lambda h, t: "I think it is Paris.")
    r = run_agent(QUESTIONS[:1], silent, KeywordSearcher(), AgentConfig(), progress=False)[0]
    assert (r.turns, r.stop_reason, r.prediction) == (1, "no_action", None)


def test_search_r1_style_invalid_action_and_information_block():
    def script(history, turn):
        if turn == 0:
            return "<think>hmm</think>"
        if turn == 1:
            return "<search> Velmora Quist </search>"
        return "<answer> Tarnhollow </answer>"
    r = run_agent(QUESTIONS[:1], ScriptedGenerator(script), KeywordSearcher(),
                  AgentConfig(prompt_style="search_r1"), progress=False)[0]
    assert r.stop_reason == "answer" and r.turns == 3 and r.prediction == "Tarnhollow"
    tools = [s["text"] for s in r.segments if s["role"] == "tool"]
    assert tools[0] == SEARCH_R1_INVALID  # its hint mentions <answer> but is not the model's answer
    assert tools[1].startswith("\n\n<information>Doc 1(Title:") and tools[1].endswith("</information>\n\n")
    assert "<search> query </search>" in r.prompt


def test_baselines():
    answer = ScriptedGenerator(lambda h, t: "<answer> Tarnhollow </answer>")
    direct = run_baseline("direct", QUESTIONS[:2], answer, None, AgentConfig(), progress=False)
    assert [r.prediction for r in direct] == ["Tarnhollow", "Tarnhollow"]
    assert direct[0].to_row("base", 0, "direct", "b")["em"] == 1.0
    assert "Documents" not in direct[0].prompt
    rag = run_baseline("rag", QUESTIONS[:1], answer, KeywordSearcher(), AgentConfig(topk=2), progress=False)
    assert "Doc 1(Title: \"Velmora Quist\")" in rag[0].prompt and rag[0].doc_ids[0] == "d0"
    with pytest.raises(ValueError, match="searcher"):
        run_baseline("rag", QUESTIONS[:1], answer, None, AgentConfig(), progress=False)


def test_tool_glue_from_the_template():
    assert tool_glue(CharTokenizer()) == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n",
                                          "\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_cut_turn():
    pieces = ["<tool", "_call", ">x</", "tool_call", ">", "junk"]
    assert cut_turn([5, 6, 7, 8, 9, 10], pieces, [2], ["</tool_call>"]) == (5, False)
    assert cut_turn([5, 2, 7], ["a", "", "b"], [2], ["</tool_call>"]) == (2, True)
    assert cut_turn([5, 6], ["a", "b"], [2], []) == (2, False)
