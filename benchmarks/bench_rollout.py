"""Benchmark: the batched multi-turn rollout loop vs the seed's loop.

Baseline ("seed loop"): one question at a time, and every turn re-encodes the whole history
string and runs generate on it from scratch, as the seed's inference script does.
Ours: `TransformersGenerator`, all questions of a batch together, left padding, the KV cache
kept across turns. Same model (SmolLM2-135M, the tiny profile's policy), same questions (FlashRAG
format: generated, or with `--data DIR` the real NQ sample), same retriever, greedy decoding, same
conversation logic (both run through `run_agent`, so only the generation strategy differs).
Prints questions/s of each, the ratio, and how many full responses are identical.

    PYTHONPATH=. python benchmarks/bench_rollout.py [--batch 16] [--style search_r1] [--max-new 48] [--turns 3]

The search_r1 prompt style is the default because the untrained model makes no tool call in
the tool_call style (a one-turn loop), while Search-R1's loop answers a turn with no action
with an "invalid action" hint and continues: several turns, so cache reuse is exercised.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from searchr1.agent.config import AgentConfig, PolicyConfig
from searchr1.agent.generators import TransformersGenerator, TurnOutput, cut_turn, end_token_ids
from searchr1.agent.rollout import run_agent
from searchr1.corpus.samples import DATA_ARG_HELP, open_samples
from searchr1.models import load_policy, resolve_policy
from searchr1.retrieval.base import Hit


class SeedLoopGenerator:
    """The seed's way: the history is a string; each turn re-encodes all of it, one question at a time."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.end_ids = end_token_ids(model, tokenizer)
        self.history: list[str] = []
        # the same prebuilt stop-string criteria as ours: only the generation strategy differs
        self.stopping_criteria = TransformersGenerator(model, tokenizer).stopping_criteria

    def start(self, prompts: Sequence[str]) -> list[int]:
        self.history = list(prompts)
        self.pieces: list[list[tuple[list[int], int]]] = [[] for _ in prompts]  # (ids, 1 if generated)
        return [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    def extend(self, row: int, text: str) -> int:
        self.history[row] += text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        self.pieces[row].append((ids, 0))
        return len(ids)

    def completion(self, row: int) -> tuple[list[int], list[int]]:
        while self.pieces[row] and self.pieces[row][-1][1] == 0:  # tool text no turn followed
            self.pieces[row].pop()
        return ([t for ids, _ in self.pieces[row] for t in ids],
                [g for ids, g in self.pieces[row] for _ in ids])

    def generate(self, rows: Sequence[int], max_new_tokens: int, stop: Sequence[str]) -> list[TurnOutput]:
        outs = []
        for r in rows:
            enc = self.tokenizer(self.history[r], return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                seq = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          eos_token_id=self.end_ids, pad_token_id=self.end_ids[0],
                                          stopping_criteria=self.stopping_criteria(stop))
            tokens = seq[0, enc["input_ids"].shape[1]:].tolist()
            n, eos = cut_turn(tokens, self.tokenizer.batch_decode([[t] for t in tokens]), self.end_ids, stop)
            self.history[r] += self.tokenizer.decode(tokens[:n])
            self.pieces[r].append((tokens[:n], 1))
            outs.append(TurnOutput(self.tokenizer.decode(tokens[:n], skip_special_tokens=True), n, eos,
                                   n == max_new_tokens and not eos))
        return outs


class WordOverlapSearcher:
    """Deterministic in-process retriever over wiki-18-format passages."""

    def __init__(self, docs: list[dict]):
        self.docs = docs
        self.words = [set(re.findall(r"[a-z0-9]+", d["contents"].lower())) for d in self.docs]

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        out = []
        for q in queries:
            qw = set(re.findall(r"[a-z0-9]+", q.lower()))
            best = sorted(range(len(self.docs)), key=lambda i: (-len(qw & self.words[i]), i))[:topk]
            out.append([{"document": self.docs[i], "score": float(len(qw & self.words[i]))} for i in best])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--style", choices=["search_r1", "tool_call"], default="search_r1")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each; medians are printed")
    ap.add_argument("--data", type=Path, default=None, help=DATA_ARG_HELP)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        samples = open_samples(args.data, Path(tmp))
        questions, passages = samples.question_rows(), samples.passage_rows()
    questions = (questions * (1 + args.questions // len(questions)))[:args.questions]
    searcher = WordOverlapSearcher(passages)
    model, tok = load_policy(resolve_policy(PolicyConfig(), Path("artifacts")), PolicyConfig())
    model.eval()
    cfg = AgentConfig(prompt_style=args.style, max_turns=args.turns, max_new_tokens=args.max_new,
                      max_response_tokens=4096, batch_size=args.batch)
    seed_cfg = cfg.model_copy(update={"batch_size": 1})
    print(f"{samples.origin} data: {len(passages)} passages  torch threads: {torch.get_num_threads()}  "
          f"questions: {len(questions)}  style: {args.style}  "
          f"max_new_tokens: {args.max_new}  max_turns: {args.turns}  batch: {args.batch}")
    # warm-up (stop-string tables, allocator) outside the timings
    run_agent(questions[:2], TransformersGenerator(model, tok), searcher, cfg.model_copy(update={"max_turns": 1}),
              progress=False)

    def timed(make, c):
        times, result = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = run_agent(questions, make(), searcher, c, progress=False)
            times.append(time.perf_counter() - t0)
        return statistics.median(times), result

    t_seed, seed = timed(lambda: SeedLoopGenerator(model, tok), seed_cfg)
    t_ours, ours = timed(lambda: TransformersGenerator(model, tok, reuse_cache=True), cfg)
    t_nocache, nocache = timed(lambda: TransformersGenerator(model, tok, reuse_cache=False), cfg)
    n = len(questions)
    same = sum(a.response == b.response for a, b in zip(seed, ours, strict=True))
    same_pred = sum(a.prediction == b.prediction for a, b in zip(seed, ours, strict=True))
    same_nc = sum(a.response == b.response for a, b in zip(nocache, ours, strict=True))
    turns = sum(r.turns for r in ours) / n
    toks = sum(r.gen_tokens for r in ours)
    print(f"mean turns per question: {turns:.2f}   generated tokens (ours): {toks}   "
          f"search calls: {sum(r.search_calls for r in ours)}")
    print(f"seed loop (batch 1, re-encode history)   : {n / t_seed:7.3f} questions/s  ({t_seed:.1f} s)")
    print(f"batched, no cache reuse (batch {args.batch:>2})       : {n / t_nocache:7.3f} questions/s  "
          f"({t_nocache:.1f} s)")
    print(f"batched + KV cache across turns (batch {args.batch:>2}): {n / t_ours:7.3f} questions/s  ({t_ours:.1f} s)")
    print(f"load average after the runs (1/5/15 min): {os.getloadavg()} on {os.cpu_count()} cores")
    print(f"RATIO vs seed loop: {t_seed / t_ours:.2f}x   (no-cache batched: {t_seed / t_nocache:.2f}x)")
    print(f"identical full responses vs seed loop: {same}/{n}; identical predictions: {same_pred}/{n}; "
          f"cache vs no-cache identical: {same_nc}/{n}")
    for a, b in zip(seed, ours, strict=True):
        if a.response != b.response:
            print("--- first difference ---\nseed: ", repr(a.response[:400]), "\nours: ", repr(b.response[:400]))
            break


if __name__ == "__main__":
    main()
