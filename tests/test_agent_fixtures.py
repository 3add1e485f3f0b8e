"""Shared fixtures for the agent and evaluation tests (no tests here): a tiny fictional world, a keyword
searcher, a character tokenizer and a scripted generator. Named test_* only to sit with the files it serves."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from searchr1.agent.generators import TurnOutput
from searchr1.agent.trace import Question
from searchr1.retrieval.base import Hit

# ~20 fictional facts: the model cannot know them, so only retrieval can answer.
FACTS = [
    ("Velmora Quist", "Velmora Quist is a painter born in the city of Tarnhollow in 1911."),
    ("Tarnhollow", "Tarnhollow is a river port in the province of Ebrisca, founded by salt traders."),
    ("Orrin Dace", "Orrin Dace is an engineer who designed the Kelvane Bridge; he was born in Mirefield."),
    ("Kelvane Bridge", "The Kelvane Bridge is a suspension bridge completed in 1934 over the Sable River."),
    ("Mirefield", "Mirefield is a mining town in the province of Dunmarch."),
    ("Sefa Lorne", "Sefa Lorne is a novelist who wrote The Glass Orchard, published in 1952."),
    ("The Glass Orchard", "The Glass Orchard is a novel by Sefa Lorne set in the valley of Ostrel."),
    ("Brannoc Institute", "The Brannoc Institute is a research school founded by Ilsa Varro in Quenby."),
    ("Ilsa Varro", "Ilsa Varro is a chemist born in 1880 in the town of Pellhaven."),
    ("Pellhaven", "Pellhaven is a fishing town on the coast of Ebrisca."),
    ("Corvin Ashe", "Corvin Ashe is a composer who wrote the opera Winter Lanterns and was born in Quenby."),
    ("Quenby", "Quenby is a university city in the province of Dunmarch."),
    ("Dalla Freen", "Dalla Freen is an astronomer who discovered the comet Ysolde in 1967."),
    ("Ysolde", "Ysolde is a comet discovered by Dalla Freen at the Harrowgate Observatory."),
    ("Harrowgate Observatory", "The Harrowgate Observatory stands on Mount Ketter in Ebrisca."),
    ("Tobin Marsh", "Tobin Marsh is a sculptor born in 1923, younger than Velmora Quist."),
]

QUESTIONS: list[Question] = [
    {"id": "q1", "question": "In which city was Velmora Quist born?", "golden_answers": ["Tarnhollow"]},
    {"id": "q2", "question": "Who designed the Kelvane Bridge?", "golden_answers": ["Orrin Dace"]},
    {"id": "q3", "question": "Who wrote The Glass Orchard?", "golden_answers": ["Sefa Lorne"]},
    {"id": "q4", "question": "Who founded the Brannoc Institute?", "golden_answers": ["Ilsa Varro"]},
    {"id": "q5", "question": "Which comet did Dalla Freen discover?", "golden_answers": ["Ysolde", "comet Ysolde"]},
    {"id": "q6", "question": "In which province is Tarnhollow?", "golden_answers": ["Ebrisca"]},
    {"id": "q7", "question": "What opera did Corvin Ashe write?", "golden_answers": ["Winter Lanterns"]},
    {"id": "q8", "question": "In which year was Ilsa Varro born?", "golden_answers": ["1880"]},
    {"id": "q9", "question": "On which mountain is the Harrowgate Observatory?", "golden_answers": ["Mount Ketter"]},
    {"id": "q10", "question": "Which river does the Kelvane Bridge cross?", "golden_answers": ["Sable River", "Sable"]},
    {"id": "q11", "question": "In which town was Orrin Dace born?", "golden_answers": ["Mirefield"]},
    {"id": "q12", "question": "In which valley is The Glass Orchard set?", "golden_answers": ["Ostrel"]},
    {"id": "q13", "question": "In which province is the birthplace of Orrin Dace?", "golden_answers": ["Dunmarch"]},
    {"id": "q14", "question": "In which province is the birthplace of Ilsa Varro?", "golden_answers": ["Ebrisca"]},
    {"id": "q15", "question": "Who is older, Tobin Marsh or Velmora Quist?", "golden_answers": ["Velmora Quist"]},
    {"id": "q16", "question": "In which city was the composer of Winter Lanterns born?", "golden_answers": ["Quenby"]},
    {"id": "q17", "question": "In which year was the Kelvane Bridge completed?", "golden_answers": ["1934"]},
    {"id": "q18", "question": "Where is the observatory where comet Ysolde was discovered?",
     "golden_answers": ["Mount Ketter", "Ebrisca"]},
    {"id": "q19", "question": "In which year was The Glass Orchard published?", "golden_answers": ["1952"]},
    {"id": "q20", "question": "What kind of town is Pellhaven?", "golden_answers": ["fishing town", "fishing"]},
]

_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an", "of", "in", "which", "who", "what", "was", "is", "did", "does", "where", "by", "on"}


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


class KeywordSearcher:
    """Scores a passage by the query words it shares; deterministic, enough for tests."""

    def __init__(self, facts: Sequence[tuple[str, str]] = FACTS):
        self.docs = [{"id": f"d{i}", "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(facts)]
        self.calls: list[list[str]] = []

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        self.calls.append(list(queries))
        out = []
        for q in queries:
            qw = _words(q)
            scored = sorted(((len(qw & _words(d["contents"])), i) for i, d in enumerate(self.docs)),
                            key=lambda x: (-x[0], x[1]))
            out.append([{"document": self.docs[i], "score": float(s)} for s, i in scored[:topk]])
        return out


class CharTokenizer:
    """A stand-in tokenizer (one token per character) with a Qwen2.5-like ChatML tool template."""

    eos_token, unk_token_id, eos_token_id, pad_token_id = "<|im_end|>", 0, 2, 2

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=False, tokenize=False):
        out = ""
        for i, m in enumerate(messages):
            if m["role"] == "tool":
                out += f"<|im_start|>user\n<tool_response>\n{m['content']}\n</tool_response><|im_end|>\n"
            else:
                extra = "\n# Tools: search" if tools and i == 0 else ""
                out += f"<|im_start|>{m['role']}\n{m['content']}{extra}<|im_end|>\n"
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)

    def convert_tokens_to_ids(self, token):
        return self.unk_token_id


def search_then_answer(history: str, turn: int) -> str:
    """A well-behaved agent: search the question, then answer with the first retrieved title."""
    if turn == 0:
        question = history.rsplit("Question: ", 1)[-1].split("<|im_end|>")[0].strip()
        return ('<think>I need to search.</think>\n<tool_call>\n{"name": "search", "arguments": '
                '{"query_list": [' + json.dumps(question) + "]}}\n</tool_call>")
    title = history.rsplit("<tool_response>", 1)[-1].split('(Title: "', 1)[-1].split('"', 1)[0]
    return f"<think>Found it.</think>\n<answer> {title} </answer>"


class ScriptedGenerator:
    """Generator whose turn text is `script(history, turn)`: exercises the loop without a model."""

    def __init__(self, script=search_then_answer, tokenizer=None):
        self.script, self.tokenizer = script, tokenizer or CharTokenizer()
        self.history: list[str] = []
        self.turn: list[int] = []
        self.generate_calls: list[list[int]] = []

    def start(self, prompts):
        self.history, self.turn = list(prompts), [0] * len(prompts)
        self.prompt_len = [len(p) for p in prompts]
        self.written = [[0] * len(p) for p in prompts]  # per character: 1 if "the model" wrote it
        return list(self.prompt_len)

    def completion(self, row):
        ids = [ord(c) for c in self.history[row]][self.prompt_len[row]:]
        return ids, self.written[row][self.prompt_len[row]:]

    def generate(self, rows, max_new_tokens, stop):
        self.generate_calls.append(list(rows))
        outs = []
        for r in rows:
            text = self.script(self.history[r], self.turn[r])[:max_new_tokens]
            self.turn[r] += 1
            self.history[r] += text + "<|im_end|>"
            self.written[r] += [1] * (len(text) + len("<|im_end|>"))
            outs.append(TurnOutput(text, len(text) + 1, True, False))
        return outs

    def extend(self, row, text):
        self.history[row] += text
        self.written[row] += [0] * len(text)
        return len(text)
