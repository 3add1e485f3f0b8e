"""Supervised warm start on search traces: a deviation from Search-R1, on only where the policy needs it.

SmolLM2-135M never calls the tool by itself (0 of 32 samples; DESIGN.md), so every GRPO group
has zero reward variance and nothing to learn. We first fine-tune on traces built from the
synthetic world's train split, one search call per hop:

    question -> what the question asks for (its last hop's relation) -> search(hop query) -> the REAL
    tool response from the searcher -> that hop's result, "not" what is asked for -> search(next hop
    query) -> ... -> the last hop's result, what the question asks for -> <answer>golden</answer>

Saying each hop's result makes the next query copy its entity from the sentence rather than pick one
among the passages' names; saying what the question asks for first gives the choice to go on or answer
a word to compare with (the 135M policy does not count a question's hops). Traces where a hop's result
is not in that hop's retrieved text are dropped (the model would learn to state what it never read).
The loss covers only what the model would write: tool responses, the prompt and the chat template's
turn headers are masked, as in GRPO.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from searchr1.agent.prompts import build_messages, tools_for
from searchr1.agent.protocol import AgentProtocol
from searchr1.agent.trace import Question
from searchr1.corpus.hops import hop_relation
from searchr1.io import atomic_dir
from searchr1.retrieval.base import Searcher
from searchr1.rewards import normalize_answer
from searchr1.tracking import MetricsLogger, null_logger
from searchr1.training.prefix import last_hidden

IGNORE = -100


# Reflective checks a verifying trace says before its second search; each holds a phrase of the default
# lexicon, so the analysis counts them as the study defines reflection. All open with the same word so
# that after a hop's result the policy weighs one choice, "Wait" against going on: split over three first
# words, a 50% verify rate would be 17% per word and greedy decoding would never pick any of them.
VERIFY_PHRASES = ("Wait, let me verify that this is really about {e} and not a similar name.",
                  "Wait, let me double-check {e}.",
                  "Wait, on second thought, let me re-verify the passage about {e}.")


def goal_phrase(q: Question) -> str:
    """What the question asks for, in the hop queries' words: its last hop's relation ("the employer")."""
    return "the earlier year" if q["metadata"].get("skill") == "comparison" else f"the {hop_relation(q, -1)}"


def hop_result(q: Question, hop: int) -> str:
    """A hop's query and what its search found ("Yogoth Voumil employer is Puteix Works")."""
    return f"{q['metadata']['hop_queries'][hop]} is {q['metadata']['hop_answers'][hop]}"


def search_reasoning(q: Question, hop: int) -> str:
    """The reasoning before hop `hop`'s search: what the question asks for (first search) or the previous hop's
    result and that it is not yet that (e.g. "X creator is Yogoth Voumil, not the employer."), then the query."""
    query = q["metadata"]["hop_queries"][hop]
    if hop == 0:
        return f"The question asks for {goal_phrase(q)}. I need to search for {query}."
    return f"{hop_result(q, hop - 1)}, not {goal_phrase(q)}. Now I need to search for {query}."


def final_reasoning(q: Question) -> str:
    """The last turn's reasoning: the last hop's result and that it is what the question asks for; a comparison
    names the earlier of its two years and answers with that entity."""
    if q["metadata"].get("skill") == "comparison":
        early = sorted(q["metadata"]["hop_answers"], key=int)[0]
        return f"{hop_result(q, -1)}: {early} is the earlier year, so the answer is {q['golden_answers'][0]}."
    return f"{hop_result(q, -1)}: {goal_phrase(q)} the question asks for."


def trace_messages(q: Question, tool_texts: Sequence[str], verify: tuple[int, int] | None = None
                   ) -> list[dict[str, Any]]:
    """The chat of one warm-start trace (tool_call prompt style): one search per hop, then the answer.

    `verify` = (hop, phrase): after that hop's result, a reflective phrase and a second search for the
    hop's entity; `tool_texts` then holds one more text, right after that hop's.
    """
    hops = q["metadata"]["hop_queries"]
    golden = q["golden_answers"][0]
    msgs: list[dict[str, Any]] = list(build_messages(q["question"], "tool_call"))
    texts = iter(tool_texts)

    def call(think: str, query: str) -> None:
        msgs.append({"role": "assistant", "content": think, "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": {"query_list": [query]}}}]})
        msgs.append({"role": "tool", "name": "search", "content": next(texts)})

    for i, hop in enumerate(hops):
        call(f"<think>{search_reasoning(q, i)}</think>", hop)
        if verify is not None and verify[0] == i:
            entity = q["metadata"]["hop_entities"][i]
            call(f"<think>{VERIFY_PHRASES[verify[1]].format(e=entity)}</think>", entity)
    final = f"<think>{final_reasoning(q)}</think>\n<answer>{golden}</answer>"
    msgs.append({"role": "assistant", "content": final})
    return msgs


def tokenize_trace(tokenizer, messages: Sequence[Mapping[str, Any]], tools) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = IGNORE everywhere except the assistant's own tokens.

    The chat is rendered one message at a time; each piece is the new text the template adds, so
    the header that opens an assistant turn (part of the generation prompt) stays masked.
    """
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, msg in enumerate(messages):
        is_assistant = msg["role"] == "assistant"
        if is_assistant:  # the turn header belongs to the prompt
            head = tokenizer.apply_chat_template(list(messages[:i]), tools=tools, add_generation_prompt=True,
                                                 tokenize=False)
            ids, labels, done = _extend(tokenizer, ids, labels, done, head, train=False)
        full = tokenizer.apply_chat_template(list(messages[: i + 1]), tools=tools, tokenize=False)
        ids, labels, done = _extend(tokenizer, ids, labels, done, full, train=is_assistant)
    return ids, labels


def _extend(tokenizer, ids, labels, done: str, text: str, train: bool):
    if not text.startswith(done):
        raise ValueError("the chat template is not prefix-preserving; cannot mask turns of a warm-start trace")
    piece = tokenizer(text[len(done):], add_special_tokens=False)["input_ids"]
    return ids + piece, labels + (piece if train else [IGNORE] * len(piece)), text


def build_traces(questions: Mapping[str, Sequence[Question]], searcher: Searcher, tokenizer, cfg,
                 n_examples: int) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Traces for up to `n_examples` questions, the suites interleaved (`skill_weights` of each per round); only
    those where every hop's search finds that hop's result."""
    rng = random.Random(cfg.run.seed)
    protocol = AgentProtocol.from_config(cfg.agent)
    needed = ("hop_queries", "hop_answers", "hop_entities")
    pools = {b: [q for q in qs if all(q.get("metadata", {}).get(k) for k in needed)] for b, qs in questions.items()}
    if not any(pools.values()):
        raise ValueError(f"warm start needs questions with metadata {', '.join(needed)} (the synthetic suites); "
                         f"none found in {sorted(questions)}")
    weights = cfg.training.warm_start.skill_weights
    if unknown := sorted(set(weights) - set(pools)):
        raise ValueError(f"training.warm_start.skill_weights names {unknown}: expected training suites, "
                         f"some of {sorted(pools)}")
    for pool in pools.values():
        rng.shuffle(pool)
    order: list[Question] = []
    while any(pools.values()) and len(order) < 2 * n_examples:
        for suite, pool in pools.items():
            for _ in range(weights.get(suite, 1)):
                if pool:
                    order.append(pool.pop())
    # one batched searcher call per chunk of questions (a query at a time is ~50x slower with a dense encoder)
    verify_rate = cfg.training.warm_start.verify_rate
    traces: list[list[dict[str, Any]]] = []
    dropped = verified = 0
    chunk = 64
    bar = tqdm(total=n_examples, desc="warm-start traces", leave=False)
    for c in range(0, len(order), chunk):
        if len(traces) >= n_examples:
            break
        qs = order[c: c + chunk]
        plans: list[tuple[Question, list[str], tuple[int, int] | None]] = []
        for q in qs:
            hops = list(q["metadata"]["hop_queries"])
            verify = None
            if rng.random() < verify_rate:  # every pooled question has hop_entities
                # always one hop, the last: spread over the hops, a 50% rate is 25% at each decision point of a
                # two-hop trace and greedy decoding never checks (measured: 0 phrases in a whole tiny run). After
                # the last hop a check is always followed by the answer; checking the first hop put a check in
                # the middle of a chain, and the policy lost count of the hops after it (session 12's run:
                # single-hop questions searched a spurious third time, 8% EM; three-hop ones answered after their
                # second hop, 9%)
                verify = (len(hops) - 1, rng.randrange(len(VERIFY_PHRASES)))
                hops.insert(verify[0] + 1, q["metadata"]["hop_entities"][verify[0]])
            plans.append((q, hops, verify))
        hits = iter(searcher.search([h for _, hops, _ in plans for h in hops], protocol.topk))
        for q, hops, verify in plans:
            texts = [protocol.observation([next(hits)], tokenizer) for _ in hops]
            if len(traces) >= n_examples:
                continue
            # every result a trace says must be in its own hop's tool response (a check comes after the last hop)
            if not all(normalize_answer(a) in normalize_answer(texts[i])
                       for i, a in enumerate(q["metadata"]["hop_answers"])):
                dropped += 1
                continue
            traces.append(trace_messages(q, texts, verify))
            verified += verify is not None
            bar.update(1)
    bar.close()
    return traces, {"traces": len(traces), "dropped_result_not_retrieved": dropped, "verifying_traces": verified,
                    "verify_rate": verified / len(traces) if traces else 0.0}


def decision_turn(trace: Sequence[Mapping[str, Any]], word: str = "Wait") -> int | None:
    """The index of the assistant turn right after the last hop's result, where a trace checks or answers: the
    check's turn in a verifying trace (it opens with `word`), the answer's otherwise. None before any search."""
    turns = [i for i, m in enumerate(trace) if m["role"] == "assistant"]
    if len(turns) < 2:
        return None
    checks = [i for i in turns if str(trace[i]["content"]).startswith("<think>" + word)]
    return checks[0] if checks else turns[-1]


def check_probability(model, tokenizer, traces: Sequence[Sequence[Mapping[str, Any]]], tools, limit: int = 32,
                      word: str = "Wait") -> float | None:
    """What the policy learnt of the checks: its mean probability of opening the turn after the last hop's
    result with `word` (how every check begins), over the first `limit` traces with such a turn.

    The traces check at `verify_rate`; a policy that puts far less than that on the word will not check when it
    decodes greedily, and rarely when it samples. None when no trace has searched before its last turn.
    """
    import torch

    think = tokenizer("<think>", add_special_tokens=False)["input_ids"]
    opened = tokenizer("<think>" + word, add_special_tokens=False)["input_ids"]
    if opened[:len(think)] != think or len(opened) == len(think):
        raise ValueError(f"check_probability: {word!r} does not start a token after '<think>' in this tokenizer")
    target = opened[len(think)]
    probs = []
    decisions = [(t, d) for t in traces if (d := decision_turn(t, word)) is not None][:limit]
    with torch.no_grad():
        for t, d in decisions:
            # the tokens the model was trained on, up to that turn's "<think>": its first trained token
            ids, labels = tokenize_trace(tokenizer, t[:d + 1], tools)
            turn = next(i for i in range(len(labels) - 1, -1, -1) if labels[i] == IGNORE) + 1
            if ids[turn:turn + len(think)] != think:
                raise ValueError("check_probability: a trace's decision turn does not open with '<think>': "
                                 f"{t[d]['content']!r:.80}")
            logits = model(input_ids=torch.tensor([ids[:turn + len(think)]]), logits_to_keep=1).logits[0, -1]
            probs.append(float(logits.float().softmax(-1)[target]))
    return sum(probs) / len(probs) if probs else None


def masked_lm_loss(model, input_ids, attention_mask, labels, *, shared_prefix: bool = False):
    """Next-token loss on the labelled positions only, projecting just those through the LM head.

    The 49k-word head over every prompt and tool token is what makes a full forward costly on CPU
    (DESIGN.md: it dominates memory); the trained tokens are ~15% of a trace. With `shared_prefix` the
    rows' common first tokens go through the model once (see `last_hidden`).
    """
    import torch.nn.functional as F

    hidden = last_hidden(model, input_ids, attention_mask, shared_prefix=shared_prefix)
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep])


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches of example indices: neighbours in length (less padding), in random order."""
    by_len = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [by_len[b: b + batch_size] for b in range(0, len(by_len), batch_size)]
    rng.shuffle(batches)
    return batches


def trainable_policy(policy_path: Path | str, ws, trust_remote_code: bool = False):
    """(model, optimiser) as the warm start trains them: fp32 weights, `ws.gradient_checkpointing`, AdamW at
    `ws.learning_rate` without weight decay."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if ws.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=ws.learning_rate, weight_decay=0.0)


def lr_schedule(opt, kind: str, total_steps: int):
    """The warm start's learning-rate schedule over `total_steps` optimiser steps, by transformers' name (the one
    `training.warm_start.lr_schedule` allows): step k (from 0) trains at learning_rate x (1 - k / total_steps)
    for "linear", at learning_rate for "constant"."""
    from transformers import get_scheduler

    return get_scheduler(kind, opt, num_warmup_steps=0, num_training_steps=total_steps)


def train_step(model, opt, batch: Sequence[tuple[list[int], list[int]]], pad_id: int, *,
               shared_prefix: bool, bf16: bool = False) -> tuple[float, int]:
    """One optimiser step on (input_ids, labels) examples, right-padded: (loss, tokens in the batch). `bf16`:
    the forward under bf16 autocast (weights, gradients and the optimiser stay fp32)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch])
    labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in batch])
    attn = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = masked_lm_loss(model, input_ids, attn, labels, shared_prefix=shared_prefix)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item(), int(attn.sum())


def warm_start(policy_path: Path | str, questions: Mapping[str, Sequence[Question]], searcher: Searcher, cfg,
               out_dir: Path, log_metrics: MetricsLogger = null_logger) -> dict[str, Any]:
    """Fine-tune on search traces; the HF folder goes to out_dir/model (written atomically)."""
    import torch
    from transformers import AutoTokenizer

    ws = cfg.training.warm_start
    torch.manual_seed(cfg.run.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=cfg.policy.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    traces, summary = build_traces(questions, searcher, tok, cfg, ws.n_examples)
    if not traces:
        raise ValueError("warm start: no trace found its answer in the retrieved text; check the index")
    with (out_dir / "traces.jsonl").open("w", encoding="utf-8") as fh:
        for t in traces:
            fh.write(json.dumps(t) + "\n")
    tools = tools_for("tool_call")
    examples = [tokenize_trace(tok, t, tools) for t in traces]
    model, opt = trainable_policy(policy_path, ws, cfg.policy.trust_remote_code)
    rng = random.Random(cfg.run.seed)
    step, t0, tokens, losses = 0, time.perf_counter(), 0, []
    total = ws.epochs * ((len(examples) + ws.batch_size - 1) // ws.batch_size)
    sched = lr_schedule(opt, ws.lr_schedule, total)
    bar = tqdm(total=total, desc="warm start")
    for _ in range(ws.epochs):
        for idx in length_batches([len(ids) for ids, _ in examples], ws.batch_size, rng):
            lr = opt.param_groups[0]["lr"]
            loss, n = train_step(model, opt, [examples[i] for i in idx], tok.pad_token_id,
                                 shared_prefix=ws.shared_prefix, bf16=ws.bf16)
            sched.step()
            step += 1
            tokens += n
            losses.append(loss)
            log_metrics({"warm-start/loss": losses[-1], "warm-start/lr": lr,
                         "warm-start/tokens_per_s": tokens / (time.perf_counter() - t0)}, step)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    with atomic_dir(out_dir / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    seconds = time.perf_counter() - t0
    model.eval()
    summary["check_probability"] = check_probability(model, tok, traces, tools)
    return {**summary, "steps": step, "loss_first": losses[0], "loss_last": losses[-1],
            "trained_tokens_per_example": sum(sum(x != IGNORE for x in lab) for _, lab in examples) / len(examples),
            "seconds": seconds, "tokens_per_s": tokens / seconds, "model": str(out_dir / "model")}
