"""The batched multi-turn search-agent loop, and the single-turn baselines.

One loop, Search-R1 style: a question's turn ends; if it called the search tool it gets the
passages appended (top-k, truncated to a token budget) and its next turn is submitted; if it
answered (or did nothing, or ran out of budget) it leaves. The generator decides how turns are
batched (`turn_stream`): vLLM keeps the batch full by taking a row's next turn while the others
still decode; the transformers loop moves all rows turn by turn together.
Each rollout is kept whole: who wrote each segment, the queries, the doc ids, token counts,
and why it stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from searchr1.agent.config import AgentConfig
from searchr1.agent.generators import Generator, TurnStream, turn_stream
from searchr1.agent.prompts import baseline_messages
from searchr1.agent.protocol import AgentProtocol
from searchr1.agent.trace import Question, Segment, StopReason, model_text
from searchr1.retrieval.base import Hit, Searcher
from searchr1.rewards import extract_answer, score


@dataclass
class Rollout:
    question: Question
    prompt: str
    segments: list[Segment] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    turns: int = 0
    search_calls: int = 0
    invalid_calls: int = 0
    gen_tokens: int = 0
    response_tokens: int = 0
    stop_reason: StopReason | None = None
    issues: Counter = field(default_factory=Counter)
    # The response as tokens after the prompt, and the loss mask (1 = the model wrote it, 0 = tool text):
    # what a trainer optimises. Filled when the generator can tell (all of ours can).
    completion_ids: list[int] = field(default_factory=list)
    completion_mask: list[int] = field(default_factory=list)

    @property
    def response(self) -> str:
        return "".join(s["text"] for s in self.segments)

    @property
    def prediction(self) -> str | None:
        # Only the model's own text: retrieved passages or Search-R1's invalid-action hint mention <answer>.
        return AgentProtocol.prediction(model_text(self.segments))

    def to_row(self, checkpoint: str, step: int, method: str, benchmark: str) -> dict[str, Any]:
        """One ROLLOUT_SCHEMA row, scored."""
        q, pred = self.question, self.prediction
        return {"checkpoint": checkpoint, "step": step, "method": method, "benchmark": benchmark,
                "question_id": str(q.get("id", "")), "question": q["question"],
                "golden_answers": list(q["golden_answers"]), "prediction": pred or "",
                **score(pred, q["golden_answers"]),
                "turns": self.turns, "search_calls": self.search_calls, "invalid_calls": self.invalid_calls,
                "queries": self.queries, "doc_ids": self.doc_ids, "segments": self.segments,
                "response": self.response, "gen_tokens": self.gen_tokens, "stop_reason": self.stop_reason}


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], tools: list | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)


def run_agent(questions: Sequence[Question], generator: Generator | TurnStream, searcher: Searcher,
              cfg: AgentConfig, *, progress: bool = True, desc: str = "rollouts") -> list[Rollout]:
    """Search-agent rollouts for all questions, `cfg.batch_size` at a time, under the agent protocol."""
    proto = AgentProtocol.from_config(cfg)
    stream = turn_stream(generator)
    tok = stream.tokenizer
    rollouts = [Rollout(q, proto.render_prompt(tok, q["question"])) for q in questions]
    bar = tqdm(total=len(rollouts), desc=desc, disable=not progress)
    for lo in range(0, len(rollouts), cfg.batch_size):
        batch = rollouts[lo:lo + cfg.batch_size]
        stream.start([r.prompt for r in batch])
        for row in range(len(batch)):
            stream.submit(row, cfg.max_new_tokens, proto.stop_strings)
        while stream.busy:
            searching: list[tuple[int, list[str], bool]] = []
            for row, out in stream.step():
                ro = batch[row]
                turn = ro.turns  # 0-based: this turn's index
                ro.turns += 1
                ro.gen_tokens += out.n_tokens
                ro.response_tokens += out.n_tokens
                ro.segments.append({"role": "assistant", "text": out.text})
                parsed = proto.parse(out.text)
                ro.search_calls += parsed.calls
                ro.invalid_calls += parsed.invalid
                ro.issues.update(parsed.issues)
                decision = proto.decide(parsed, turn, ro.response_tokens, out.hit_limit)
                if decision == "search":
                    searching.append((row, parsed.queries, out.ended_with_eos))
                elif decision == "retry":  # Search-R1 tells the model its action was invalid and goes on
                    ro.segments.append({"role": "tool", "text": proto.invalid_action_hint})
                    ro.response_tokens += stream.extend(row, proto.invalid_action_hint)
                    stream.submit(row, cfg.max_new_tokens, proto.stop_strings)
                else:
                    ro.stop_reason = decision
                    bar.update(1)
            if searching:  # the rows whose turns ended in this step search together
                flat = [q for _, qs, _ in searching for q in qs]
                hits = searcher.search(flat, cfg.topk)
                pos = 0
                for row, qs, ended_with_eos in searching:
                    ro, mine = batch[row], hits[pos:pos + len(qs)]
                    pos += len(qs)
                    ro.queries.extend(qs)
                    ro.doc_ids.extend(str(h["document"]["id"]) for hs in mine for h in hs)
                    shown, fed = proto.tool_text(tok, proto.observation(mine, tok), ended_with_eos)
                    ro.segments.append({"role": "tool", "text": shown})
                    ro.response_tokens += stream.extend(row, fed)
                    stream.submit(row, cfg.max_new_tokens, proto.stop_strings)
        for row, ro in enumerate(batch):
            ro.completion_ids, ro.completion_mask = stream.completion(row)
    bar.close()
    return rollouts


def run_baseline(method: str, questions: Sequence[Question], generator: Generator, searcher: Searcher | None,
                 cfg: AgentConfig, *, progress: bool = True) -> list[Rollout]:
    """"direct": the question alone; "rag": the question's top-k passages in the prompt. One turn each."""
    if method not in ("direct", "rag"):
        raise ValueError(f"baseline {method!r}: expected 'direct' or 'rag'")
    if method == "rag" and searcher is None:
        raise ValueError("the rag baseline needs a searcher")
    tok = generator.tokenizer
    hits: list[list[Hit]] = (searcher.search([q["question"] for q in questions], cfg.topk)
                             if method == "rag" else [[] for _ in questions])
    rollouts = []
    for q, h in zip(questions, hits, strict=True):
        msgs = baseline_messages(q["question"], h if method == "rag" else None)
        ro = Rollout(q, render_prompt(tok, msgs))
        ro.doc_ids = [str(x["document"]["id"]) for x in h]
        rollouts.append(ro)
    bar = tqdm(total=len(rollouts), desc=method, disable=not progress)
    for lo in range(0, len(rollouts), cfg.batch_size):
        batch = rollouts[lo:lo + cfg.batch_size]
        generator.start([r.prompt for r in batch])
        outs = generator.generate(range(len(batch)), cfg.max_new_tokens, ("</answer>",))
        for ro, out in zip(batch, outs, strict=True):
            ro.turns, ro.gen_tokens, ro.response_tokens = 1, out.n_tokens, out.n_tokens
            ro.segments.append({"role": "assistant", "text": out.text})
            ro.stop_reason = ("answer" if extract_answer(out.text) is not None
                              else "max_tokens" if out.hit_limit else "no_action")
        bar.update(len(batch))
    bar.close()
    return rollouts


def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The same metrics from ROLLOUT_SCHEMA rows (e.g. read back from parquet on resume)."""
    n = len(rows)
    if n == 0:
        return {"n": 0.0}
    calls = sum(r["search_calls"] for r in rows)
    return {"n": float(n),
            "em": sum(r["em"] for r in rows) / n,
            "f1": sum(r["f1"] for r in rows) / n,
            "contains": sum(r["contains"] for r in rows) / n,
            "mean_turns": sum(r["turns"] for r in rows) / n,
            "search_calls": calls / n,
            "invalid_call_rate": (sum(r["invalid_calls"] for r in rows) / calls) if calls else 0.0,
            "format_failure_rate": sum(not r["prediction"] for r in rows) / n}  # no (or an empty) <answer>
