"""The two prompt styles and how retrieved passages are shown to the model.

- "tool_call": the seed's prompt (system + user prefix) rendered through the Qwen2.5 tool-calling
  chat template with the `search(query_list)` schema; results come back as `<tool_response>`.
- "search_r1": Search-R1's original single user message (`<search>` / `<information>` tags),
  also rendered through the chat template, as Search-R1's data prep does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from searchr1.retrieval.base import Hit

PromptStyle = Literal["tool_call", "search_r1"]

# The seed's inference script, word for word (its system and user prefix).
SEED_SYSTEM = "You are a helpful and harmless assistant."
SEED_USER_PREFIX = (
    "Answer the given question. You must conduct reasoning inside <think> and "
    "</think> first every time you get new information. After reasoning, if you "
    "lack knowledge, call a search engine by <tool_call> query </tool_call>. "
    "It returns results between <tool_response> and </tool_response>. "
    "Provide the final answer inside <answer>. For example, <answer> Beijing </answer>. Question: ")

# Search-R1's prefix (scripts/data_process/nq_search.py, make_prefix, template_type "base").
SEARCH_R1_PREFIX = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time "
    "you get new information. After reasoning, if you find you lack some knowledge, you can call a search "
    "engine by <search> query </search> and it will return the top searched results between <information> "
    "and </information>. You can search as many times as your want. If you find no further external "
    "knowledge needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: ")

# The seed's tool schema: same name and parameters; the description names our retriever.
SEARCH_TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search a Wikipedia passage index and return the most relevant passages.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Fully-formed semantic queries.",
                }
            },
            "required": ["query_list"],
        },
    },
}

# Search-R1's message after a turn with neither a search nor an answer (its generation.py).
SEARCH_R1_INVALID = ("\nMy previous action is invalid. If I want to search, I should put the query between "
                     "<search> and </search>. If I want to give the final answer, I should put the answer "
                     "between <answer> and </answer>. Let me try again.\n")

# Baselines, one turn, no tool: Search-R1's own prompts (scripts/data_process/nq.py and nq_rag.py,
# template "base"), so "direct" and "RAG" mean what they mean in the paper's table.
DIRECT_PROMPT = ("Answer the given question. You should first have a reasoning process in mind and then provides "
                 "the answer. Show your reasoning in <think> </think> tags and return the final answer in <answer> "
                 "</answer> tags, for example <answer> Beijing </answer>. Question: {question}\n")
RAG_PROMPT = ("Answer the given question with some potentially useful context. You should analyze the question "
              "carefully, evaluate the given context (which may or may not be useful), and then generate an "
              "accurate and well-reasoned response. You should first have a reasoning process in mind and then "
              "provides the answer. Show your reasoning in <think> </think> tags and return the final answer in "
              "<answer> </answer> tags, for example <answer> Beijing </answer>. "
              "Question: {question} Context: {context} \n")


def build_messages(question: str, style: PromptStyle = "tool_call") -> list[dict[str, str]]:
    """Chat messages for the search agent; render with `tools=tools_for(style)`."""
    question = question.strip()
    if style == "tool_call":
        return [{"role": "system", "content": SEED_SYSTEM},
                {"role": "user", "content": SEED_USER_PREFIX + question}]
    if style == "search_r1":
        # Search-R1 appends "\n" after the question; no system message (the template adds its default).
        return [{"role": "user", "content": SEARCH_R1_PREFIX + question + "\n"}]
    raise ValueError(f"prompt style {style!r}: expected 'tool_call' or 'search_r1'")


def tools_for(style: PromptStyle) -> list[dict[str, Any]] | None:
    """The `tools=` argument for apply_chat_template: the schema only in the tool_call style."""
    return [SEARCH_TOOL_SCHEMA] if style == "tool_call" else None


def baseline_messages(question: str, hits: Sequence[Hit] | None = None) -> list[dict[str, str]]:
    """Direct answer (hits=None) or RAG with the passages in the prompt, in Search-R1's words."""
    question = question.strip()
    if hits is None:
        return [{"role": "user", "content": DIRECT_PROMPT.format(question=question)}]
    return [{"role": "user", "content": RAG_PROMPT.format(question=question, context=format_hits(hits))}]


def split_contents(contents: str) -> tuple[str, str]:
    """wiki-18 `contents` is '"Title"\\ntext': (title line, rest). Title keeps its quotes, as in Search-R1."""
    title, _, text = contents.partition("\n")
    return title, text


def format_hits(hits: Sequence[Hit]) -> str:
    """Search-R1's layout: one line per passage, `Doc i(Title: <title>) <text>`."""
    lines = []
    for i, hit in enumerate(hits, start=1):
        title, text = split_contents(hit["document"]["contents"])
        lines.append(f"Doc {i}(Title: {title}) {text}\n")
    return "".join(lines)
