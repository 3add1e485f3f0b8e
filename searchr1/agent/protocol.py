"""The agent protocol: the one set of rules every engine follows (evaluation, TRL, verl).

What a model is shown and how it is judged must not depend on which engine runs it, or a
policy trained under one set of rules is evaluated under another. This module owns:

- the prompt (system + user messages per style) and the `search` tool schema;
- reading a turn: the tool call's queries (the seed's `parse_queries` rule), the answer;
- the observation: Search-R1's `Doc i(Title: …) text` layout, queries joined by a separator,
  cut to `max_obs_tokens` tokens of the policy's tokenizer;
- the end-of-turn rules: what happens after a turn (search, answer, retry, stop and why);
- the reward: exact match of the LAST `<answer>` in the model's own text.

The prompt texts, the parser and the scorer live in `prompts`, `parsing` and `searchr1.rewards`;
engines call them only through `AgentProtocol`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from searchr1.agent.config import PROTOCOL_FIELDS, AgentConfig
from searchr1.agent.parsing import ParsedTurn, queries_from_arguments
from searchr1.agent.parsing import parse_turn as _parse_turn
from searchr1.agent.prompts import (
    SEARCH_R1_INVALID,
    PromptStyle,
    build_messages,
    format_hits,
    tools_for,
)
from searchr1.agent.trace import StopReason
from searchr1.retrieval.base import Hit
from searchr1.rewards import exact_match, extract_answer

QUERY_SEPARATOR = "\n---\n"  # between the results of several queries in one call, as the seed joins them
STOP_STRINGS: dict[str, tuple[str, ...]] = {"tool_call": ("</tool_call>", "</answer>"),
                                            "search_r1": ("</search>", "</answer>")}

# After a turn: go on with a search, go on after Search-R1's invalid-action hint, or stop (and why).
Decision = Literal["search", "retry"] | StopReason


def tool_glue(tokenizer: Any) -> tuple[str, str]:
    """(before, after) the tool result, as the chat template renders a tool message after an
    assistant turn and opens the next assistant turn. Falls back to the seed's inline
    `<tool_response>` when the template has no tool role."""
    a, b = "\x00ASSISTANT\x00", "\x00TOOL\x00"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}, {"role": "tool", "content": b}]
    try:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    except Exception:  # templates without a tool role raise (jinja's raise_exception)
        text = ""
    if a in text and b in text:
        glue = text.split(a, 1)[1]
        before, after = glue.split(b, 1)
        return before, after
    return "<tool_response>\n", "\n</tool_response>"


def turn_end_text(tokenizer: Any) -> str:
    """The text of the token that closes an assistant turn (ChatML's <|im_end|>, else EOS)."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        return "<|im_end|>"
    return tokenizer.eos_token or ""


def truncate_tokens(text: str, tokenizer: Any, max_tokens: int) -> str:
    """The first `max_tokens` tokens of `text` (Search-R1's `max_obs_length` cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


@dataclass(frozen=True)
class AgentProtocol:
    """The rules, with their budgets; build it from the `agent` config section."""

    style: PromptStyle = "tool_call"
    topk: int = 3
    max_turns: int = 4
    max_new_tokens: int = 256          # per assistant turn
    max_response_tokens: int = 1024    # the whole multi-turn response, tool text included
    max_obs_tokens: int = 256          # retrieved text per search call
    max_queries_per_call: int = 3
    max_query_chars: int = 512

    @classmethod
    def from_config(cls, agent: AgentConfig) -> AgentProtocol:
        fields = {name: getattr(agent, name) for name in PROTOCOL_FIELDS}  # the warm start's cache key too
        return cls(style=fields.pop("prompt_style"), **fields)

    # ------------------------------------------------------------ prompt

    def messages(self, question: str) -> list[dict[str, str]]:
        return build_messages(question, self.style)

    def tools(self) -> list[dict[str, Any]] | None:
        """The `tools=` argument for the chat template (the schema only in the tool_call style)."""
        return tools_for(self.style)

    def render_prompt(self, tokenizer: Any, question: str) -> str:
        return tokenizer.apply_chat_template(self.messages(question), tools=self.tools(),
                                             add_generation_prompt=True, tokenize=False)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return STOP_STRINGS[self.style]

    # ------------------------------------------------------------ reading the model

    def parse(self, text: str) -> ParsedTurn:
        return _parse_turn(text, self.style, self.max_queries_per_call, self.max_query_chars)

    def queries_from_arguments(self, arguments: Any) -> list[str]:
        """The queries of a tool call an engine already parsed (TRL, verl): same cleaning as `parse`."""
        return queries_from_arguments(arguments, Counter(), self.max_queries_per_call, self.max_query_chars)

    # ------------------------------------------------------------ the observation

    def observation(self, hits_per_query: Sequence[Sequence[Hit]], tokenizer: Any) -> str:
        """The tool's text for one call: passages per query, cut to `max_obs_tokens` tokens."""
        text = QUERY_SEPARATOR.join(format_hits(h).rstrip("\n") for h in hits_per_query)
        return truncate_tokens(text, tokenizer, self.max_obs_tokens)

    def wrap_observation(self, observation: str) -> str:
        """How the observation is written into the search_r1 style's text (the tool_call style's glue is
        the chat template's tool message, which every engine renders the same way)."""
        return f"\n\n<information>{observation.strip()}</information>\n\n"

    def tool_text(self, tokenizer: Any, observation: str, ended_with_eos: bool) -> tuple[str, str]:
        """(as the conversation reads, as fed to the model) after a search: the chat template's tool
        message around the observation, or Search-R1's `<information>` block. The template's tool
        message starts by closing the assistant turn; when the model already closed it with its end
        token, that token is in the history and is not fed twice."""
        if self.style != "tool_call":
            text = self.wrap_observation(observation)
            return text, text
        before, after = tool_glue(tokenizer)
        text, eos = before + observation + after, turn_end_text(tokenizer)
        return text, (text[len(eos):] if ended_with_eos and eos and text.startswith(eos) else text)

    invalid_action_hint = SEARCH_R1_INVALID

    # ------------------------------------------------------------ end of turn

    def decide(self, parsed: ParsedTurn, turn: int, response_tokens: int, hit_limit: bool) -> Decision:
        """What follows assistant turn number `turn` (0-based), given the whole response's tokens so far.

        An answer ends the episode; so do the token and turn budgets; a search goes on; a turn with
        neither is retried with Search-R1's hint in its style, and ends the seed's tool_call loop.
        """
        if parsed.action == "answer":
            return "answer"
        if response_tokens >= self.max_response_tokens:
            return "max_tokens"
        if turn >= self.max_turns - 1:
            return "max_turns"
        if parsed.action == "search":
            return "search"
        if self.style == "search_r1":
            return "retry"
        return "max_tokens" if hit_limit else "no_action"

    # ------------------------------------------------------------ reward

    @staticmethod
    def prediction(model_text: str) -> str | None:
        """The answer of a response: its last `<answer>` (the prompt shows an example one)."""
        return extract_answer(model_text)

    def reward(self, model_text: str, golden_answers: str | Sequence[str], format_reward: float = 0.0,
               invalid_call_penalty: float = 0.0) -> float:
        """Search-R1's reward: exact match of the last answer. Two named deviations, both 0 in Search-R1's
        runs: `format_reward` for a wrong but present answer, and `invalid_call_penalty` taken off a right
        answer whose text holds a malformed search call (the branch of Search-R1's `qa_em_format` that scores
        a right answer in an invalid sequence `score - structure_format_score`; here "invalid" is narrower:
        a call the parser could not read as a `search` call, which the seed's rule still runs as raw text)."""
        pred = self.prediction(model_text)
        if pred is None:
            return 0.0
        if not exact_match(pred, golden_answers):
            return float(format_reward)
        if invalid_call_penalty and self.parse(model_text).invalid:
            return 1.0 - float(invalid_call_penalty)
        return 1.0
